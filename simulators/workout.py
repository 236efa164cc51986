"""Simulated devices: a person's workout over time, the sensor's imperfections and drift scenarios.

A ``DeviceStream`` is one person wearing one sensor. Their workout is a timeline of sets of
repetitions (8–15 of an exercise, walking or running bouts), rests between them and the
transitions that take the body from one position to the next; the order of the exercises is
random per person. ``read(duration)`` returns the next samples: specific force and angular velocity
from the body's motion (``simulators.motion``), then the device's gain, bias, noise, resolution and
range, timestamp jitter and lost samples. A seed makes every run bit for bit the same, however the
stream is read.

Samples are generated ahead in vectorised blocks of about ten seconds and ``read`` slices them.
Measured (CPU time, this project's shared 2-core machine): 1.35 µs per sample for a wrist at 50 Hz
read in long stretches (1.1 µs at the waist); 1.85 µs per sample for 2,000 wrist devices each read
0.2 s at a time, i.e. 0.18 s of CPU per second for 100,000 samples/s. A person's exercise
templates are built the first time they are needed, so the first minute costs about twice that::

    python -c "import time; from simulators.workout import DeviceStream as D; \\
    s = [D(f'd{i}', seed=i) for i in range(20)]; c = time.process_time(); \\
    n = sum(len(d.read(600).t) for d in s); print((time.process_time() - c) / n * 1e6, 'us/sample')"

Drift scenarios (``SCENARIOS``) switch on at ``scenario_start`` seconds after the stream starts:
the sensor-side ones (``strap_rotated``, ``other_wrist``, ``units_g``, ``loss_burst``,
``clock_skew``) exactly then, the ones that change what the person does (``fatigue``,
``new_person``, ``unseen_exercise``) at the end of the set or rest under way then;
``DeviceStream.scenario_onset`` tells when it took effect. A chunk's ``unit`` and ``scenario``
are those in force at its end: under ``units_g`` the chunk that spans the switch is in g throughout.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from models.labels import REST, SIMULATED
from simulators import motion
from simulators.motion import EXERCISES, PLACEMENTS, UNSEEN, Person, Place, Segment
from stream.recording import Recording

__all__ = ["SCENARIOS", "G_STANDARD", "Chunk", "DeviceStream", "simulate_recording"]

SCENARIOS = (
    "strap_rotated",  # the sensor turns on the limb by 90–180° about the limb's axis
    "other_wrist",  # the sensor moves to the other side of the body (mirror image)
    "fatigue",  # slower, shallower repetitions, worse with every set
    "units_g",  # acceleration reported in g instead of m/s² (``Chunk.unit``)
    "new_person",  # someone else wears the device
    "unseen_exercise",  # sets of an exercise outside the normal set (``motion.UNSEEN``)
    "loss_burst",  # bursts of 0.3–2.5 s of lost samples
    "clock_skew",  # the device's clock runs 2–5 % fast or slow
)
_BEHAVIOURAL = ("fatigue", "new_person", "unseen_exercise")
G_STANDARD = 9.80665  # m/s² per g, for ``units_g``

# repetitions per set, [low, high); 8–15 unless listed
_REPS = {"burpee": (5, 11), "jumping_jack": (15, 31), "mountain_climber": (12, 25),
         "kettlebell_swing": (10, 21)}
_BOUTS = {"walking": (15.0, 50.0), "running": (15.0, 40.0)}
# labels kept for this long (s of true time) behind the oldest motion still needed: ``truth_label`` of a
# window the consumer classified a while ago (the demo's table, a benchmark scoring late predictions)
LABEL_HORIZON = 3600.0
_PAGE = 4096  # samples per page of sensor noise


@dataclass
class Chunk:
    """Consecutive samples of one device."""

    t: np.ndarray  # (n,) float64 seconds on the device's clock (jittered, dropped samples removed)
    acc: np.ndarray  # (n, 3) float32, specific force in the sensor frame, in `unit`
    gyro: np.ndarray  # (n, 3) float32 rad/s
    label: np.ndarray  # (n,) str, the true exercise at each sample
    unit: str  # "m/s2" or "g"
    scenario: str | None  # active drift scenario name at the end of the chunk, or None

    def __len__(self) -> int:
        return len(self.t)


class _Timeline:
    """One device's workout as labelled segments in true time, generated ahead on demand."""

    def __init__(self, person: Person, exercises: Sequence[str], rng: np.random.Generator,
                 scenario: str | None, scenario_start: float, next_person, unseen: str) -> None:
        self.rng = rng
        self.rest_allowed = REST in exercises
        self.choices = [e for e in exercises if e != REST]
        self.scenario = scenario if scenario in _BEHAVIOURAL else None
        self.scenario_start = scenario_start
        self.onset: float | None = None  # true time the behavioural scenario took effect
        self._next_person = next_person
        self._unseen = unseen
        self.eras: list[tuple[float, Person]] = [(0.0, person)]
        self.segments: deque[Segment] = deque()
        # labelled runs in true time: their starts and their names' codes (indices into _vocab_names, which
        # only grows by a class name: a code taken for a sample stays valid while older runs are pruned)
        self.label_starts: deque[float] = deque()
        self._label_codes: deque[int] = deque()
        self._vocab: dict[str, int] = {}
        self._vocab_names: list[str] = []
        self._names = np.empty(0, dtype="<U1")
        self._starts = np.empty(0)
        self._codes = np.empty(0, dtype=np.intp)
        self._labels_changed = False
        self.labels_from = -math.inf  # true time from which labels are kept (the oldest run's start, once pruned)
        self.end = 0.0
        self.person = person
        self.pose = motion.stand_at(person, (0.0, 0.0), 0.0)
        self.place = Place(np.zeros(2), 0.0, "stand")
        self._queue: list[str] = []
        self._rest_next = self.rest_allowed
        self._first_rest = True
        self._fatigue_sets = 0
        self._last: str | None = None
        self._sets_since_onset = 0

    # -- schedule -------------------------------------------------------------------------
    def extend(self, until: float) -> None:
        while self.end < until:
            self._unit()

    def _append(self, segments: list[Segment]) -> None:
        for seg in segments:
            if seg.end <= seg.start:
                continue
            self.segments.append(seg)
            code = self._vocab.setdefault(seg.label, len(self._vocab))
            if code == len(self._vocab_names):
                self._vocab_names.append(seg.label)
            if not self._label_codes or self._label_codes[-1] != code:
                self.label_starts.append(seg.start)
                self._label_codes.append(code)
                self._labels_changed = True
            self.end = seg.end
        self.pose = self.segments[-1].end_pose()

    def _next_exercise(self) -> str:
        if not self._queue:
            order = list(self.rng.permutation(self.choices))
            self._queue = []
            for name in order:
                sets = 1 if name in _BOUTS else int(self.rng.integers(1, 4))
                self._queue += [str(name)] * sets
        return self._queue.pop(0)

    def _unit(self) -> None:
        rng, t = self.rng, self.end
        if self.scenario and self.onset is None and t >= self.scenario_start:
            self.onset = t
            if self.scenario == "new_person":
                self.person = self._next_person()
                self.eras.append((t, self.person))
                origin = (float(self.pose[motion.PX]), float(self.pose[motion.PY]))
                self.place = Place(np.array(origin), self.place.heading, "stand")
                self.pose = motion.stand_at(self.person, origin, self.place.heading)
                self._rest_next = self.rest_allowed
                self._queue = []
        person = self.person
        if not self.choices or (self._rest_next and self.rest_allowed):
            if self._first_rest:
                duration = float(rng.uniform(3.0, 10.0))
            elif self._queue and self._queue[0] == self._last:
                duration = float(rng.uniform(8.0, 25.0)) * person.rest_scale
            else:
                duration = float(rng.uniform(15.0, 40.0)) * person.rest_scale
            self._first_rest = False
            segments, self.place = motion.rest_segments(person, t, self.pose, self.place, duration, rng)
            self._append(segments)
            self._rest_next = False
            return
        exercise = self._next_exercise()
        self._last = exercise
        tempo = depth = 1.0
        if self.onset is not None and self.scenario == "fatigue":
            tempo = min(1.2 + 0.04 * self._fatigue_sets, 1.45)
            depth = max(0.88 - 0.02 * self._fatigue_sets, 0.75)
            self._fatigue_sets += 1
        if self.onset is not None and self.scenario == "unseen_exercise":
            if self._sets_since_onset % 2 == 0:
                self._queue.insert(0, exercise)
                exercise = self._unseen
            self._sets_since_onset += 1
        lead_label = REST if self.rest_allowed else exercise
        if exercise in _BOUTS:
            duration = float(rng.uniform(*_BOUTS[exercise]))
            segments, self.place = motion.gait_segment(person, exercise, t, self.pose, self.place, duration,
                                                       rng, lead_label, tempo)
        else:
            low, high = _REPS.get(exercise, (8, 16))
            reps = int(rng.integers(low, high))
            segments, self.place = motion.set_segments(person, exercise, t, self.pose, self.place, rng, reps,
                                                       lead_label, tempo, depth)
        self._append(segments)
        self._rest_next = True

    # -- lookups ---------------------------------------------------------------------------
    def era(self, t: float) -> tuple[float, float, Person]:
        """(start, end, person) of the era holding true time ``t``."""
        starts = [e[0] for e in self.eras]
        i = bisect.bisect_right(starts, t) - 1
        end = self.eras[i + 1][0] if i + 1 < len(self.eras) else math.inf
        return self.eras[i][0], end, self.eras[i][1]

    def prune(self, before: float) -> None:
        """Forget the motion of segments that ended before ``before``, and the labels of runs that ended
        more than LABEL_HORIZON before it (``labels`` of older times give the oldest run kept): a simulator
        that runs for days held every label (about 280 kB per device and day)."""
        while len(self.segments) > 1 and self.segments[0].end < before:
            self.segments.popleft()
        starts = self.label_starts
        while len(starts) > 1 and starts[1] < before - LABEL_HORIZON:
            starts.popleft()
            self._label_codes.popleft()
            self._labels_changed = True
            self.labels_from = starts[0]

    def channels(self, t: np.ndarray) -> np.ndarray:
        """Joint channels (n, 13) at increasing true times ``t``."""
        segs = self.segments
        starts = [s.start for s in segs]
        i0 = max(bisect.bisect_right(starts, t[0]) - 1, 0)
        i1 = max(bisect.bisect_right(starts, t[-1]) - 1, 0)
        if i0 == i1:
            return segs[i0].channels(t)
        out = np.empty((len(t), motion.N_CHANNELS))
        cuts = np.searchsorted(t, starts[i0 + 1:i1 + 1])
        lo = 0
        for seg, hi in zip(list(segs)[i0:i1 + 1], [*cuts.tolist(), len(t)], strict=False):
            if hi > lo:
                out[lo:hi] = seg.channels(t[lo:hi])
            lo = hi
        return out

    def names(self) -> np.ndarray:
        """The class names that ``labels`` codes index (cached)."""
        if len(self._names) != len(self._vocab_names):
            self._names = np.array(self._vocab_names)
        return self._names

    def labels(self, t: np.ndarray) -> np.ndarray:
        """Codes (indices into ``names()``) of the labels at true times ``t``."""
        if self._labels_changed:
            self._starts = np.array(self.label_starts)
            self._codes = np.array(self._label_codes, dtype=np.intp)
            self._labels_changed = False
        i = np.searchsorted(self._starts, t, side="right") - 1
        return self._codes[np.maximum(i, 0)]


class DeviceStream:
    """One simulated person wearing one sensor, read as a continuous stream of samples.

    Parameters
    ----------
    device : device id, for the caller's bookkeeping.
    seed : makes the person, their workout and the sensor's noise reproducible.
    rate : nominal sample rate, Hz.
    placement : "wrist", "upper_arm" or "waist".
    exercises : exercises to draw sets from (default all of ``models.labels.SIMULATED``); rests
        between sets happen only when "rest" is among them, otherwise transitions carry the label
        of the set they lead into.
    scenario : a name from ``SCENARIOS`` or None.
    scenario_start : seconds after the start of the stream when the scenario switches on.
    t0 : the device clock at the start of the stream, s.
    person : use this person instead of drawing one from ``seed``.
    block : seconds generated at a time.

    Examples
    --------
    >>> stream = DeviceStream("sim-000", seed=7, exercises=["rest"])
    >>> chunk = stream.read(4.0)
    >>> chunk.unit, set(chunk.label.tolist()), len(chunk) <= 200
    ('m/s2', {'rest'}, True)
    >>> bool(9.0 < np.linalg.norm(chunk.acc, axis=1).mean() < 10.6)
    True
    """

    def __init__(self, device: str, seed: int, rate: float = 50.0, placement: str = "wrist",
                 exercises: Sequence[str] | None = None, scenario: str | None = None,
                 scenario_start: float = 0.0, t0: float = 0.0, *, person: Person | None = None,
                 block: float = 10.0) -> None:
        if placement not in PLACEMENTS:
            raise ValueError(f"Invalid 'placement' {placement!r}. Valid values are: {', '.join(PLACEMENTS)}")
        if scenario is not None and scenario not in SCENARIOS:
            raise ValueError(f"Invalid 'scenario' {scenario!r}. Valid values are: {', '.join(SCENARIOS)}")
        if not rate > 0:
            raise ValueError("'rate' must be positive")
        exercises = tuple(SIMULATED if exercises is None else exercises)
        unknown = [e for e in exercises if e not in EXERCISES]
        if unknown or not exercises:
            raise ValueError(f"Invalid 'exercises' {unknown or '[]'}. "
                             f"Valid values are: {', '.join(EXERCISES)}")
        self.device = device
        self.seed = seed
        self.rate = float(rate)
        self.placement = placement
        self.exercises = exercises
        self.scenario = scenario
        self.scenario_start = float(scenario_start)
        self.t0 = float(t0)
        self.block = float(block)

        rng_person, rng_workout, rng_sensor, rng_scenario = (
            np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)
        )
        self.person = person if person is not None else motion.sample_person(rng_person, placement)
        # sensor noise comes in fixed pages of samples, so it does not depend on how blocks are cut
        self._noise_key = int(rng_sensor.integers(2**63))
        self._noise_page: tuple[int, np.ndarray] = (-1, np.empty((0, 8), dtype=np.float32))
        # scenario parameters are drawn whatever the scenario, so the rest of the stream is the same
        strap_angle = float(rng_scenario.uniform(math.pi / 2, math.pi) * rng_scenario.choice([-1.0, 1.0]))
        self._skew = float(rng_scenario.uniform(0.02, 0.05) * rng_scenario.choice([-1.0, 1.0]))
        unseen = str(rng_scenario.choice(UNSEEN))
        self._burst_rng = np.random.default_rng(rng_scenario.integers(2**63))
        self._strap_extra = motion.rotation(motion.LIMB_AXIS[placement], strap_angle)
        self._bursts: list[tuple[float, float]] = []  # (start, end) device time, nominal
        self._timeline = _Timeline(self.person, exercises, rng_workout, scenario, self.scenario_start,
                                   lambda: motion.sample_person(rng_person, placement), unseen)
        self._sensor_onset_k = (
            math.ceil(self.scenario_start * self.rate - 1e-9)
            if scenario is not None and scenario not in _BEHAVIOURAL else None
        )
        self._oversample = max(1, math.ceil(40.0 / self.rate))
        self._axes_cache: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = {}
        self._k_next = 0  # next sample index to generate
        self._tau_read = 0.0  # device time (since t0, nominal) read so far
        # generated, not yet read: (k, t, acc, gyro, codes)
        self._blocks: deque[tuple[np.ndarray, ...]] = deque()
        self._pos = 0  # samples of the first block already read

    # -- clock -------------------------------------------------------------------------------
    def _skewed(self) -> bool:
        return self.scenario == "clock_skew"

    def _true_time(self, tau: np.ndarray) -> np.ndarray:
        """True time of nominal device time ``tau`` (the device clock runs fast or slow under skew)."""
        if not self._skewed():
            return tau
        s = self.scenario_start
        return np.where(tau < s, tau, s + (tau - s) / (1.0 + self._skew))

    # -- ground truth -----------------------------------------------------------------------
    @property
    def scenario_onset(self) -> float | None:
        """Device time when the scenario took effect, None while it has not (or there is none)."""
        if self.scenario is None:
            return None
        if self.scenario in _BEHAVIOURAL:
            onset = self._timeline.onset
            return None if onset is None else self.t0 + onset
        return self.t0 + self.scenario_start if self._k_next > self._sensor_onset_k else None

    @property
    def people(self) -> list[tuple[float, Person]]:
        """(device time from which, person) of everyone who has worn the device so far."""
        return [(self.t0 + start, person) for start, person in self._timeline.eras]

    def truth_label(self, t: float | np.ndarray) -> str | np.ndarray:
        """The true exercise at device time ``t`` (for times already generated, and not more than about
        LABEL_HORIZON before the newest: older ones raise ValueError, their labels are pruned)."""
        tau = np.atleast_1d(np.asarray(t, dtype=float)) - self.t0
        true = self._true_time(tau)
        if len(true) and float(true.min()) < self._timeline.labels_from:
            raise ValueError(f"{self.device}: the labels before time "
                             f"{self.t0 + self._timeline.labels_from:.1f} s are no longer kept (LABEL_HORIZON "
                             f"{LABEL_HORIZON:g} s); ask for the truth of a window while it is recent")
        codes = self._timeline.labels(true)
        names = self._timeline.names()[codes]
        return str(names[0]) if np.ndim(t) == 0 else names

    def _active_at(self, tau: float) -> bool:
        if self.scenario is None:
            return False
        if self.scenario in _BEHAVIOURAL:
            onset = self._timeline.onset
            return onset is not None and self._true_time(np.array([tau]))[0] >= onset
        return tau >= self.scenario_start

    # -- generation -------------------------------------------------------------------------
    def _axes(self, person: Person, active: bool) -> tuple[np.ndarray, np.ndarray]:
        key = (id(person), active)
        if key not in self._axes_cache:
            side, mount = person.side, person.mount
            if active and self.scenario == "strap_rotated":
                mount = mount @ self._strap_extra
            if active and self.scenario == "other_wrist":
                side = "left" if side == "right" else "right"
                if self.placement == "wrist":  # worn the usual way round on the other wrist
                    mount = motion.rotation(2, math.pi) @ mount
            self._axes_cache[key] = motion.sensor_axes(self.placement, side, mount)
        return self._axes_cache[key]

    def _draws(self, k0: int, k1: int) -> np.ndarray:
        """Random numbers of samples k0..k1-1: 7 standard normal (noise, jitter), 1 uniform (drops)."""
        out = np.empty((k1 - k0, 8), dtype=np.float32)
        k = k0
        while k < k1:
            page = k // _PAGE
            if self._noise_page[0] != page:
                rng = np.random.default_rng([self._noise_key, page])
                draws = np.empty((_PAGE, 8), dtype=np.float32)
                draws[:, :7] = rng.standard_normal((_PAGE, 7), dtype=np.float32)
                draws[:, 7] = rng.random(_PAGE, dtype=np.float32)
                self._noise_page = (page, draws)
            a = k - page * _PAGE
            b = min(_PAGE, a + k1 - k)
            out[k - k0:k - k0 + b - a] = self._noise_page[1][a:b]
            k += b - a
        return out

    def _lost(self, tau: np.ndarray) -> np.ndarray:
        """Samples inside loss bursts (nominal device times ``tau``)."""
        start = max(tau[0], self.scenario_start)
        while not self._bursts or self._bursts[-1][1] < tau[-1]:
            last = self._bursts[-1][1] if self._bursts else start
            a = last + float(self._burst_rng.exponential(12.0))
            self._bursts.append((a, a + float(self._burst_rng.uniform(0.3, 2.5))))
        lost = np.zeros(len(tau), dtype=bool)
        for a, b in self._bursts:
            if b >= tau[0] and a <= tau[-1]:
                lost |= (tau >= a) & (tau < b)
        while len(self._bursts) > 1 and self._bursts[0][1] < tau[0]:
            self._bursts.pop(0)
        return lost

    def _generate(self) -> None:
        """Generate the next block of samples into the buffer."""
        rate, m = self.rate, self._oversample
        k0 = self._k_next
        k1 = k0 + max(1, int(round(self.block * rate)))
        onset_k = self._sensor_onset_k
        if onset_k is not None and k0 < onset_k < k1:
            k1 = onset_k
        k = np.arange(k0, k1)
        tau = k / rate
        t_true = self._true_time(tau)
        timeline = self._timeline
        timeline.extend(t_true[-1] + 2.0)
        onset = timeline.onset
        if onset is not None and t_true[0] < onset <= t_true[-1]:  # a new era starts inside the block
            keep = t_true < onset
            k, tau, t_true = k[keep], tau[keep], t_true[keep]
            k1 = int(k[-1]) + 1
        n = len(k)
        era_start, era_end, person = timeline.era(t_true[0])
        device = timeline.eras[0][1]  # the sensor's properties stay with the device
        active = self._active_at(tau[0])
        step = (1.0 / rate) / (1.0 + self._skew if active and self._skewed() else 1.0)
        fine = step / m
        grid = t_true[0] + (np.arange(-1, n * m + 1) - 0.5 * (m - 1)) * fine
        np.clip(grid, era_start, era_end - 1e-9, out=grid)
        f, w = motion.segment_signals(timeline.channels(grid), person, self.placement, fine)
        if m > 1:
            f = f.reshape(n, m, 3).mean(axis=1)
            w = w.reshape(n, m, 3).mean(axis=1)
        to_acc, to_gyro = self._axes(person, active)
        draws = self._draws(k0, k0 + n)
        noise = draws[:, :6]
        acc = f @ (to_acc * device.acc_scale[:, None]).T
        acc += device.acc_bias
        acc += device.acc_noise * noise[:, :3]
        acc *= 1.0 / device.acc_lsb
        np.round(acc, out=acc)
        acc *= device.acc_lsb
        np.clip(acc, -device.acc_range, device.acc_range, out=acc)
        gyro = w @ to_gyro.T
        gyro += device.gyro_bias
        gyro += device.gyro_noise * noise[:, 3:]
        gyro *= 1.0 / device.gyro_lsb
        np.round(gyro, out=gyro)
        gyro *= device.gyro_lsb
        jitter = np.clip(device.jitter * draws[:, 6], -0.4 / rate, 0.4 / rate)
        t_dev = self.t0 + tau + jitter
        keep = draws[:, 7] >= device.drop_rate
        if active and self.scenario == "loss_burst":
            keep &= ~self._lost(tau)
        codes = timeline.labels(self._true_time(tau + jitter))  # the label at the stamped time
        self._blocks.append((k[keep], t_dev[keep], acc[keep].astype(np.float32),
                             gyro[keep].astype(np.float32), codes[keep]))
        self._k_next = k1
        timeline.prune(t_true[0] - 1.0)

    def read(self, duration: float) -> Chunk:
        """The next ``duration`` seconds of samples (device clock); consecutive reads are continuous."""
        if duration < 0:
            raise ValueError("'duration' must not be negative")
        tau_end = self._tau_read + duration
        k_end = math.ceil(tau_end * self.rate - 1e-9)
        while self._k_next < k_end:
            self._generate()
        self._tau_read = tau_end
        pieces = []
        blocks = self._blocks
        while blocks:
            k, t, acc, gyro, codes = blocks[0]
            a = self._pos
            if not len(k):  # every sample of the block lost (a loss burst, a one-sample block dropped)
                blocks.popleft()
                continue
            if k[-1] < k_end:  # all that is left of this block
                pieces.append((t[a:], acc[a:], gyro[a:], codes[a:]))
                blocks.popleft()
                self._pos = 0
                continue
            b = int(k.searchsorted(k_end))
            if b > a:
                pieces.append((t[a:b], acc[a:b], gyro[a:b], codes[a:b]))
                self._pos = b
            break
        if len(pieces) == 1:
            t, acc, gyro, codes = pieces[0]
        elif pieces:
            t, acc, gyro, codes = (np.concatenate(parts) for parts in zip(*pieces, strict=False))
        else:
            t, acc, gyro, codes = (np.empty(0), np.empty((0, 3), np.float32), np.empty((0, 3), np.float32),
                                   np.empty(0, int))
        label = self._timeline.names()[codes]
        active = self._active_at(tau_end)
        unit = "m/s2"
        if active and self.scenario == "units_g":
            unit, acc = "g", acc / np.float32(G_STANDARD)
        return Chunk(t=t, acc=acc, gyro=gyro, label=label, unit=unit,
                     scenario=self.scenario if active else None)


def simulate_recording(n_devices: int, duration: float, seed: int = 0, rate: float = 50.0,
                       placement: str = "wrist", exercises: Sequence[str] | None = None,
                       scenario: str | None = None, scenario_start: float = 0.0) -> Recording:
    """``duration`` seconds of ``n_devices`` simulated people as a recording (acc in m/s², with gyro).

    Device ids are "sim-000", "sim-001", …; each device is its own subject.

    Examples
    --------
    >>> rec = simulate_recording(2, 5.0, seed=3)
    >>> sorted(set(rec.device.tolist())), rec.acc.dtype.name, rec.gyro.shape[1]
    (['sim-000', 'sim-001'], 'float32', 3)
    """
    if n_devices < 1:
        raise ValueError(f"'n_devices' must be at least 1 (got {n_devices})")
    parts = []
    for i in range(n_devices):
        name = f"sim-{i:03d}"
        device_seed = int(np.random.SeedSequence([seed, i]).generate_state(1)[0])
        stream = DeviceStream(name, seed=device_seed, rate=rate, placement=placement, exercises=exercises,
                              scenario=scenario, scenario_start=scenario_start)
        chunk = stream.read(duration)
        acc = chunk.acc * np.float32(G_STANDARD) if chunk.unit == "g" else chunk.acc
        parts.append((np.full(len(chunk), name), chunk.t, acc, chunk.label, chunk.gyro))
    device, t, acc, label, gyro = (np.concatenate(p) for p in zip(*parts, strict=False))
    return Recording(device=device, t=t, acc=acc.astype(np.float32), label=label.astype(str),
                     gyro=gyro.astype(np.float32), subject=device.copy())
