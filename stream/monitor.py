"""Drift detection and live metrics, with river.

Per device and overall:
- input statistics: ADWIN on the mean magnitude of each window (|specific force| averages about
  9.81 m/s² whatever the exercise, so a shift means the sensor or its units changed, not the exercise);
- orientation: ADWIN on the angle between each window's mean gravity direction and the usual direction
  for the exercise it was classified as on this device (a strap turned on the wrist, the other wrist);
  on devices sending labels, the angle to the usual direction of the window's true exercise instead, and
  to the direction of the set under way (a turn in the middle of a set shows within seconds); on every
  device, the angle to the direction of the run of steadily moving windows under way (a set, as far as
  can be told without labels); a posture held still (sitting, lying) is never checked;
- prediction confidence: ADWIN on each window's top probability; only a fall counts as drift, and only
  on devices without recent labels;
- the error stream, where labels exist: per device, HDDM_A on the 0/1 errors of the classes the model
  has been getting right on that device (its own baseline); overall, FHDDM.

Live metrics are prequential (each labelled window is scored before the learner trains on it):
accuracy, Cohen's kappa and the confusion matrix, rolling and cumulative, per device and overall;
where no labels come, the mean confidence of recent windows estimates accuracy.

Across a restart (``Monitor.snapshot``, ``Monitor.restore``; the consumer keeps it in its checkpoint) all
of this is kept as plain data, exactly (the error detectors as the few numbers they hold), except the
ADWINs, whose state river keeps out of reach: each keeps its last TAIL inputs, fed to a fresh ADWIN on
restore. After a ``kill -9`` the snapshot is the last checkpoint's: the drift events announced after it
(the event store's) are taken up by ``replay_events``.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from river import drift, metrics, stats, utils

from models.labels import REST

__all__ = ["DriftEvent", "Monitor", "window_motion"]


@dataclass
class DriftEvent:
    device: str  # "_all" for the overall detectors
    detector: str
    signal: str
    t: float
    value: float
    needs_labels: bool

    def to_dict(self) -> dict:
        return {"device": self.device, "detector": self.detector, "signal": self.signal, "t": self.t,
                "value": round(self.value, 4), "needs_labels": self.needs_labels}


ORIENTATION_DEG = 75.0  # a turn away from the usual direction beyond this many degrees ...
ORIENTATION_CONFIRM = 2  # ... confirmed by this many more windows, after ADWIN saw the change
COOLDOWN = 600.0  # device seconds in which the same signal on the same device is not reported again
# Devices sending labels: the orientation of each exercise, keyed by the TRUE class. A class's usual direction
# is trusted once at least LABELLED_MIN_WINDOWS of its windows have a mean cosine of CONCENTRATED or more to
# it; a window turned beyond max(LABELLED_DEG, LABELLED_SPREADS × the class's own mean deviation) from it,
# followed by LABELLED_CONFIRM more such windows, is drift. People hold an exercise the same way set after
# set (a few degrees apart), so a strap turned about the forearm shows even where gravity lies near that axis
# (a 30–50° turn of the gravity direction), while a loosely held class needs a turn near 75° as before.
CONCENTRATED = 0.9
LABELLED_MIN_WINDOWS = 5
LABELLED_DEG = 20.0
LABELLED_SPREADS = 3.0
LABELLED_CONFIRM = 1
LABELLED_SKIP = frozenset({REST})  # held any way at all between sets: never a reference
# Devices sending labels, within one set: consecutive labelled windows of one class (SET_GAP device seconds
# apart at most) are held one way, a few degrees apart, whether or not the class was seen before. Once the
# set's first SET_MIN_WINDOWS windows have made its direction, a window turned beyond max(SET_DEG, SET_SPREADS ×
# the set's own mean deviation) from the set's mean direction, confirmed by SET_CONFIRM more, is drift: a sensor
# turned in the
# middle of a set shows within seconds, where the per-class check above needs 5 windows of the class first.
# Only a turned window that moves as much as the set's others (within SET_MOTION_RATIO of their geometric
# mean ``window_motion``, which no turn of the sensor changes) counts: one that moves differently is the
# person doing something else under the same label (muvr's sets: picking the weights up, lying down on
# the bench, putting them down).
SET_MIN_WINDOWS = 3
SET_DEG = 30.0
SET_SPREADS = 6.0
SET_CONFIRM = 1
SET_GAP = 5.0
SET_MOTION_RATIO = 1.5
# Devices without labels: a run is consecutive windows (SET_GAP apart at most) that the model does not call
# rest, none held still, each moving within RUN_MOTION_RATIO of the run's geometric mean motion: a set, as
# far as can be told without its label. Within a run, the set check above (SET_* thresholds) runs, on
# devices with labels too (it needs none).
RUN_MOTION_RATIO = 1.5
# A class held still (a posture: sitting, lying, standing, resting) has no orientation of its own to check:
# people sit, lie or stand a little differently every time (UCI HAPT's waist-worn phone: sitting 20–46°,
# lying 46–92° apart from one bout to the next, no sensor moved). Where the caller gives each window's
# motion (``window_motion``), a class or set of which more than STILL_SHARE of the recent windows move less
# than STILL_MOTION m/s² is neither a reference nor checked (a share, not a mean: people lying down roll
# over now and then). Measured: 95 % of still windows below 0.55 m/s² (UCI HAPT), 95 % of exercise windows
# above 0.8 and at most 2 % below 0.5 (simulator, barbell, exermote, UCI's walking).
STILL_MOTION = 0.5
STILL_SHARE = 0.25
# Error detector of a device: it watches only the classes the model has got right on this device, i.e.
# at least KNOWN_MIN labelled windows of the class with at most KNOWN_ERROR of them wrong (counted before
# the window at hand). A class the model is simply worse on for this person, from its first set on, is a
# fact about the model, not drift: it is not fed to the detector.
KNOWN_MIN = 5
KNOWN_ERROR = 0.34
NEEDING_LABELS_LISTED = 20  # devices named in the metrics message as needing labels (the count is always given)
# Across a restart (Monitor.snapshot) each ADWIN (its buckets are in river's Rust, which neither shows nor takes them)
# is a fresh one fed its last TAIL inputs since it last fired (2 s windows: about 2 minutes). Until version 1 of the
# snapshot HDDM_A and FHDDM were too; they are now kept exactly (_error_state). Chosen on the simulator
# (2026-12-07, a script outside the repository; seeds 20000 and 30000, default.pt, 50 devices each in 5 scenarios,
# units_g sent undeclared among them, the monitor restarted 30, 10 and 2 s before the onset, with labels and
# without): the first detection after the onset was the one without a restart in 600 of 600 runs with 64 (and
# with 128); with 32, 465; detectors started afresh with the rest kept, 429; nothing kept (before), 374, and 117
# of the 264 drifts detected at all. 20 quiet devices a seed restarted at 5, 15 and 25 min (240 restarts): 13
# alarms in the 5 minutes after (12 without a restart), none within 30 s of a restore.
TAIL = 64
SNAPSHOT_VERSION = 2  # 1: the error detectors kept as their last TAIL inputs too (still read: ``restore``)
# Every (detector, signal) ``_emit`` reports: what ``replay_events`` takes from an event store's rows.
# Those ``observe`` reports (the others, ``labelled``): an event's ``t`` is then the window the device's
# clock was at, so one before the device's last window says its clock went back (``_clock_reset``).
OBSERVED_KINDS = frozenset({("ADWIN", "input_magnitude"), ("ADWIN", "confidence"), ("ADWIN", "orientation"),
                            ("run", "orientation")})
EVENT_KINDS = OBSERVED_KINDS | {("labelled", "orientation"), ("set", "orientation"), ("HDDMA", "error"),
                                ("FHDDM", "error")}


def _unit(v: np.ndarray) -> tuple[float, float, float] | None:
    """The accelerometer's direction (the first 3 values) as plain floats (faster than numpy calls on
    3 values), None for a zero vector."""
    x, y, z = (float(a) for a in v[:3])
    norm = math.sqrt(x * x + y * y + z * z)
    return None if norm < 1e-6 else (x / norm, y / norm, z / norm)


def window_motion(window: np.ndarray) -> float:
    """How much a window (T, C; the accelerometer's first 3 channels, m/s²) moves: the root of the summed
    variances of its specific force about their mean, m/s² (a posture held still: about 0.1)."""
    acc = np.asarray(window, dtype=np.float64)[:, :3]
    return float(np.sqrt(acc.var(axis=0).sum()))


def _error_detector(overall: bool):
    """River's HDDM_A (1 = error; a rise of the mean error since the device's watched windows began,
    Hoeffding bound at 1e-4) per device; FHDDM (1 = correct) on the overall error stream, as before."""
    if overall:
        return drift.binary.FHDDM(sliding_window_size=25, confidence_level=1e-6)
    return drift.binary.HDDMA(drift_confidence=1e-4)


def _adwin() -> drift.ADWIN:
    # clock=1: check on every window, so a change is seen within seconds, not 32 windows later
    return drift.ADWIN(delta=0.0005, clock=1, grace_period=15, min_window_length=5)


class _Ring:
    """The last ``size`` values in a float32 ring (a deque of Python floats costs 8 times more): a device's
    confidences, a detector's recent inputs."""

    __slots__ = ("values", "n", "i")

    def __init__(self, size: int) -> None:
        self.values = np.zeros(size, dtype=np.float32)  # summed in float64 by mean()
        self.n = 0
        self.i = 0

    def append(self, value: float) -> None:
        self.values[self.i] = value
        self.i = (self.i + 1) % len(self.values)
        self.n = min(self.n + 1, len(self.values))

    def mean(self) -> float | None:
        return float(self.values[: self.n].sum(dtype=np.float64)) / self.n if self.n else None

    def clear(self) -> None:
        self.n = self.i = 0

    def last(self) -> np.ndarray:
        """The values held, oldest first."""
        if self.n < len(self.values):
            return self.values[: self.n].copy()
        return np.concatenate([self.values[self.i:], self.values[: self.i]])


_Confidences = _Ring  # its name before it held other values (tests import it)


def _feed(detector, ring: _Ring, x) -> None:
    """``detector.update(x)``, ``x`` kept in ``ring`` (the inputs a restart feeds to a fresh detector)."""
    if detector.drift_detected:  # river's detectors start afresh with the input after a detection
        ring.clear()
    ring.append(x)
    detector.update(x)


class _Set:
    """A set under way on a device: consecutive windows of one label (``Monitor._set_angle``), or, without
    labels, a run of steadily moving windows (``label`` "", ``Monitor._run_angle``). Its label, last
    window's time, mean direction, windows and their mean deviation from it (degrees), windows turned
    away in a row, the share of its windows held still and their mean log motion."""

    __slots__ = ("label", "t", "mean", "count", "spread", "turned", "still", "level")

    def __init__(self, label: str, t: float, direction: tuple[float, float, float], motion: float) -> None:
        self.label, self.t, self.mean = label, t, direction
        self.count, self.spread, self.turned = 1, 0.0, 0
        self.still = float(motion < STILL_MOTION)  # share of its windows held still
        self.level = math.log(motion + 0.05)  # mean log motion (0.05: a still window's log stays finite)


class _Detectors:
    """One device's detectors (or the overall ones). What only labels feed (the error detector and the
    prequential metrics, about 4 kB per device) is made when the first labelled window comes."""

    __slots__ = ("device", "rolling_size", "magnitude", "confidence", "orientation", "directions",
                 "orientation_pending", "error", "accuracy", "kappa", "rolling", "rolling_confidence", "drifts",
                 "needs_labels", "last_drift", "label_directions", "label_turned", "fired", "known",
                 "oriented_at", "set", "run", "last_t", "inputs")

    def __init__(self, device: str, rolling: int) -> None:
        self.device = device
        self.rolling_size = rolling
        self.magnitude = _adwin()
        self.confidence = _adwin()
        self.orientation = _adwin()
        self.directions: dict[str, tuple[tuple[float, float, float], int]] = {}  # class -> (mean unit vector, count)
        self.orientation_pending = 0  # windows still to confirm an orientation change
        self.error: drift.binary.FHDDM | None = None
        self.accuracy: metrics.Accuracy | None = None
        self.kappa: metrics.CohenKappa | None = None
        self.rolling: utils.Rolling | None = None
        self.rolling_confidence = _Confidences(rolling)
        self.drifts = 0
        self.needs_labels = False
        self.last_drift: float | None = None
        # labelled windows, by the TRUE class: class -> (mean unit vector, count, mean cosine to it, share of
        # its windows held still)
        self.label_directions: dict[str, tuple[tuple[float, float, float], int, float, float]] | None = None
        self.label_turned = 0  # consecutive labelled windows turned away from their class's usual direction
        self.fired: dict[str, float] | None = None  # signal -> device time it last fired
        self.known: dict[str, list[int]] | None = None  # true class -> [labelled windows, wrong ones]
        self.oriented_at: float | None = None  # device time the device's windows were last turned anew
        self.set: _Set | None = None  # the labelled set under way
        self.run: _Set | None = None  # the run of steadily moving windows under way (no labels needed)
        self.last_t: float | None = None  # device time of the last classified window (a clock reset shows)
        # each ADWIN's recent inputs since it last fired (_feed), for a restart: detector -> ring (the error
        # detector's state is kept as its numbers: _error_state)
        self.inputs = {"magnitude": _Ring(TAIL), "confidence": _Ring(TAIL), "orientation": _Ring(TAIL)}

    def scored(self) -> _Detectors:
        """The label-fed detectors and metrics, made on first use."""
        if self.accuracy is None:
            self.error = _error_detector(self.device == "_all")
            self.accuracy = metrics.Accuracy()
            self.kappa = metrics.CohenKappa()
            self.rolling = utils.Rolling(metrics.Accuracy, window_size=self.rolling_size)
        return self


class Monitor:
    """Every device's detectors and metrics, plus the overall ones (device ``_all``)."""

    def __init__(self, rolling: int = 50, labelled_recently: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rolling = rolling
        self.labelled_recently = labelled_recently
        self.clock = clock  # times the overall detectors' cooldown: their windows come in every device's time
        self._devices: dict[str, _Detectors] = {}
        self._all = _Detectors("_all", rolling * 10).scored()
        self.confusion = metrics.ConfusionMatrix()
        self.events: deque[DriftEvent] = deque(maxlen=1000)
        self.event_counts: Counter[str] = Counter()
        self._last_label_t: dict[str, float] = {}

    def _get(self, device: str) -> _Detectors:
        d = self._devices.get(device)
        if d is None:
            d = self._devices[device] = _Detectors(device, self.rolling)
        return d

    def reoriented(self, device: str, t: float) -> None:
        """The device's windows are turned anew from device time ``t`` on (``models.orientation``): what
        the orientation checks learnt of it no longer holds, and a labelled window from before ``t``
        (labels may come late) must not teach them the old orientation again."""
        dev = self._get(device)
        dev.orientation = _adwin()
        dev.inputs["orientation"].clear()
        dev.directions = {}
        dev.orientation_pending = 0
        dev.label_directions = None
        dev.label_turned = 0
        dev.oriented_at = t
        dev.set = None
        dev.run = None

    def forget(self, device: str) -> None:
        self._devices.pop(device, None)
        self._last_label_t.pop(device, None)

    def _clock_reset(self, device: str, dev: _Detectors) -> None:
        """The device's clock went back (a restarted device: a new session). What is timed in its old
        clock would hold for hours of the new one: when it last labelled, when each signal last fired,
        when it was last turned anew, the set and run under way."""
        self._last_label_t.pop(device, None)
        dev.fired = None
        dev.oriented_at = None
        dev.set = None
        dev.run = None
        dev.orientation_pending = 0
        dev.label_turned = 0

    def observe(self, device: str, t: float, magnitude: float, confidence: float,
                mean_acc: np.ndarray | None = None, predicted: str | None = None,
                motion: float | None = None, new_session: bool = False) -> list[DriftEvent]:
        """One classified window; returns drift detections. ``new_session``: its device's new session's first
        window (``stream.buffers.Window.new_session``), even if it ends after the last one's (``_clock_reset``).

        ``mean_acc`` (the window's mean specific force) and ``predicted`` feed the orientation detectors;
        with ``motion`` (``window_motion``) too, the check within runs of steadily moving windows.
        """
        out = []
        dev = self._get(device)
        if dev.last_t is not None and (t < dev.last_t or new_session):
            self._clock_reset(device, dev)  # windows come in time order: the device's clock went back
        dev.last_t = t
        has_labels = 0.0 <= t - self._last_label_t.get(device, -math.inf) < self.labelled_recently
        if not (math.isfinite(magnitude) and math.isfinite(confidence)):
            return out  # one NaN would poison the detectors' means for good (not seen; cheap insurance)
        direction = _unit(mean_acc) if mean_acc is not None and predicted is not None else None
        if direction is not None:
            usual, count = dev.directions.get(predicted, (direction, 0))
            dot = direction[0] * usual[0] + direction[1] * usual[1] + direction[2] * usual[2]
            angle = math.degrees(math.acos(min(1.0, max(-1.0, dot))))
            if count >= 3:
                _feed(dev.orientation, dev.inputs["orientation"], angle)
                # only a turn away from the usual direction counts, and only once two more windows
                # confirm it: single odd windows (a burpee's jump, a stretch) are not drift
                if dev.orientation.drift_detected and angle > ORIENTATION_DEG:
                    dev.orientation_pending = ORIENTATION_CONFIRM
                elif dev.orientation_pending:
                    turned = angle > ORIENTATION_DEG
                    dev.orientation_pending = dev.orientation_pending - 1 if turned else 0
                    # a device sending labels gets the sharper check keyed by its true classes
                    # (``labelled``); this one, keyed by what the model says, is for the others
                    if dev.orientation_pending == 0 and turned and not has_labels:
                        self._emit(out, dev, device, "ADWIN", "orientation", t, angle, has_labels)
            w = min(count, 20)  # running mean over the last ~20 windows
            mixed = (usual[0] * w + direction[0], usual[1] * w + direction[1], usual[2] * w + direction[2])
            length = math.sqrt(mixed[0] ** 2 + mixed[1] ** 2 + mixed[2] ** 2)
            if length > 0:
                dev.directions[predicted] = ((mixed[0] / length, mixed[1] / length, mixed[2] / length),
                                             count + 1)
        if direction is not None and motion is not None:
            angle = self._run_angle(dev, t, predicted, direction, motion)
            if angle is not None:
                self._emit(out, dev, device, "run", "orientation", t, angle, has_labels)
        for det in (dev, self._all):
            det.rolling_confidence.append(confidence)
            before = det.confidence.estimation
            before_magnitude = det.magnitude.estimation
            _feed(det.magnitude, det.inputs["magnitude"], magnitude)
            # vigorous exercise raises the mean magnitude up to 4-5 fold (jumping jacks on the wrist), but
            # never lowers it far below 1 g; values in g instead of m/s² (or a dead sensor) divide it by
            # ten: a fall below 40 %, or a rise beyond 7 fold (g read as m/s² the other way), is drift
            ratio = magnitude / max(before_magnitude, 1e-6)
            if det.magnitude.drift_detected and (ratio < 0.4 or ratio > 7.0):
                self._emit(out, det, device, "ADWIN", "input_magnitude", t, det.magnitude.estimation, has_labels)
            _feed(det.confidence, det.inputs["confidence"], confidence)
            # a fall, not a recovery; reported for devices without recent labels (and overall): where labels
            # come, the error stream measures what confidence only estimates
            if det.confidence.drift_detected and confidence < before and (not has_labels or det is self._all):
                self._emit(out, det, device, "ADWIN", "confidence", t, det.confidence.estimation, has_labels)
        return out

    def labelled(self, device: str, t: float, truth: str, predicted: str,
                 mean_acc: np.ndarray | None = None, motion: float | None = None) -> list[DriftEvent]:
        """A window whose label is now known (scored before the learner sees it).

        With ``mean_acc``, the orientation check runs on the true class as well: a turned sensor makes
        the model name another exercise, whose usual direction on this device it may not know yet,
        while the true class's direction is known from before the turn. ``motion`` (``window_motion``)
        tells a class held still, whose direction is not checked (STILL_MOTION); None: not known.
        """
        last_t = self._devices[device].last_t if device in self._devices else None
        ended = last_t is not None and t > last_t  # after the device's clock went back: an ended session's
        if not ended:
            self._last_label_t[device] = max(t, self._last_label_t.get(device, -math.inf))
        out = []
        self.confusion.update(truth, predicted)
        dev = self._get(device) if mean_acc is not None and truth not in LABELLED_SKIP and not ended else None
        if dev is not None and (dev.oriented_at is None or t >= dev.oriented_at):  # not from before a turn
            motion = STILL_MOTION if motion is None else float(motion)  # None: moving, as before
            turn = self._labelled_angle(dev, truth, mean_acc, motion)
            if turn is not None:
                angle, limit = turn
                dev.label_turned = dev.label_turned + 1 if angle > limit else 0
                if dev.label_turned == LABELLED_CONFIRM + 1:
                    self._emit(out, dev, device, "labelled", "orientation", t, angle, True)
                    dev.label_turned = 0  # confirmed: the next turn, of any class, is confirmed afresh
            angle = self._set_angle(dev, t, truth, mean_acc, motion)
            if angle is not None:
                self._emit(out, dev, device, "set", "orientation", t, angle, True)
        for det in (self._get(device).scored(), self._all):
            det.accuracy.update(truth, predicted)
            det.kappa.update(truth, predicted)
            det.rolling.update(truth, predicted)
            det.needs_labels = False
            if det is not self._all:
                if det.known is None:
                    det.known = {}
                record = det.known.setdefault(truth, [0, 0])
                watched = record[0] >= KNOWN_MIN and record[1] <= KNOWN_ERROR * record[0]
                record[0] += 1
                record[1] += truth != predicted
                if not watched:  # a class not (yet) known to be right on this device
                    continue
            wrong = truth != predicted
            # river's FHDDM (as MOA's) fires when the rate of ones FALLS: feed 1 for a correct window;
            # HDDM_A takes 1 for an error
            det.error.update(not wrong if isinstance(det.error, drift.binary.FHDDM) else wrong)
            if det.error.drift_detected:
                self._emit(out, det, device, type(det.error).__name__, "error", t, 1.0 - det.rolling.get(), True)
        return out

    @staticmethod
    def _set_angle(dev: _Detectors, t: float, truth: str, mean_acc: np.ndarray,
                   motion: float) -> float | None:
        """The angle of a confirmed turn within the set under way (see SET_DEG), else None."""
        d = _unit(mean_acc)
        if d is None:
            return None
        s = dev.set
        if s is None or s.label != truth or t - s.t > SET_GAP or t < s.t:
            dev.set = _Set(truth, t, d, motion)
            return None
        angle = Monitor._step(s, t, d, motion)
        if angle is not None:
            dev.set = _Set(truth, t, d, motion)  # confirmed: the set goes on held the new way
        return angle

    @staticmethod
    def _run_angle(dev: _Detectors, t: float, predicted: str, d: tuple[float, float, float],
                   motion: float) -> float | None:
        """Without labels: the angle of a confirmed turn within the run under way (see RUN_MOTION_RATIO),
        else None (``d``: the window's unit direction)."""
        if motion < STILL_MOTION or predicted in LABELLED_SKIP:
            dev.run = None
            return None
        s = dev.run
        if s is None or t - s.t > SET_GAP or t < s.t or \
                abs(math.log(motion + 0.05) - s.level) > math.log(RUN_MOTION_RATIO):
            dev.run = _Set("", t, d, motion)
            return None
        angle = Monitor._step(s, t, d, motion)
        if angle is not None:
            dev.run = _Set("", t, d, motion)
        return angle

    @staticmethod
    def _step(s: _Set, t: float, d: tuple[float, float, float], motion: float) -> float | None:
        """One more window of a set (or run): the angle of a turn it confirms, else None (the window
        joins the set's direction, spread and motion unless it is a turn still to confirm)."""
        s.t = t
        s.still = (s.still * min(s.count, 20) + (motion < STILL_MOTION)) / (min(s.count, 20) + 1)
        dot = d[0] * s.mean[0] + d[1] * s.mean[1] + d[2] * s.mean[2]
        angle = math.degrees(math.acos(min(1.0, max(-1.0, dot))))
        same_motion = abs(math.log(motion + 0.05) - s.level) < math.log(SET_MOTION_RATIO)
        if s.count >= SET_MIN_WINDOWS and s.still <= STILL_SHARE and same_motion and \
                angle > max(SET_DEG, SET_SPREADS * s.spread):
            s.turned += 1
            if s.turned <= SET_CONFIRM:
                return None  # the set's direction stays as it was while the turn is confirmed
            return angle
        s.turned = 0
        s.level = (s.level * min(s.count, 20) + math.log(motion + 0.05)) / (min(s.count, 20) + 1)
        s.spread = (s.spread * (s.count - 1) + angle) / s.count  # mean deviation, windows after the first
        w = min(s.count, 20)
        mixed = (s.mean[0] * w + d[0], s.mean[1] * w + d[1], s.mean[2] * w + d[2])
        length = math.sqrt(mixed[0] ** 2 + mixed[1] ** 2 + mixed[2] ** 2)
        if length > 0:
            s.mean = (mixed[0] / length, mixed[1] / length, mixed[2] / length)
        s.count += 1
        return None

    @staticmethod
    def _labelled_angle(dev: _Detectors, truth: str, mean_acc: np.ndarray,
                        motion: float) -> tuple[float, float] | None:
        """Degrees between a labelled window's gravity direction and its true class's usual one on this
        device; None until that class has been seen held in one orientation while moving (rest, held any
        way, never; a class held still, never)."""
        d = _unit(mean_acc)  # the accelerometer's (a gyroscope's may follow)
        if d is None:
            return None
        if dev.label_directions is None:
            dev.label_directions = {}
        usual, count, spread, still = dev.label_directions.get(truth, (d, 0, 1.0, 0.0))
        dot = min(1.0, max(-1.0, d[0] * usual[0] + d[1] * usual[1] + d[2] * usual[2]))
        w = min(count, 20)  # running means over the last ~20 windows of the class
        still = (still * w + (motion < STILL_MOTION)) / (w + 1)
        trusted = count >= LABELLED_MIN_WINDOWS and spread >= CONCENTRATED and still <= STILL_SHARE
        angle = math.degrees(math.acos(dot))
        limit = max(LABELLED_DEG, LABELLED_SPREADS * math.degrees(math.acos(min(1.0, spread))))
        if trusted and angle > limit:
            if dev.label_turned < LABELLED_CONFIRM:
                return angle, limit  # a turn to confirm: the usual direction stays as it was meanwhile
            del dev.label_directions[truth]  # confirmed: learn this class's direction afresh
            return angle, limit
        mixed = (usual[0] * w + d[0], usual[1] * w + d[1], usual[2] * w + d[2])
        length = math.sqrt(mixed[0] ** 2 + mixed[1] ** 2 + mixed[2] ** 2)
        if length > 0:
            spread = (spread * w + dot) / (w + 1) if count else 1.0
            dev.label_directions[truth] = ((mixed[0] / length, mixed[1] / length, mixed[2] / length),
                                           count + 1, spread, still)
        return (angle, limit) if trusted else None

    def _emit(self, out: list[DriftEvent], det: _Detectors, device: str, detector: str, signal: str,
              t: float, value: float, has_labels: bool) -> None:
        """Report a detection, unless the same signal fired on the same device less than COOLDOWN
        seconds (device time; the overall detectors: the consumer's clock) ago: a condition that lasts is
        one drift, not one per set."""
        if det.fired is None:
            det.fired = {}
        if det is self._all:  # its windows come in every device's own clock
            t_cool = self.clock()
        else:
            t_cool = t
        last = det.fired.get(signal)
        det.fired[signal] = t_cool
        if last is not None and 0.0 <= t_cool - last < COOLDOWN:
            self.event_counts[f"{detector}:{signal}:repeated"] += 1
            return
        out.append(self._event(det, device, detector, signal, t, value, has_labels))

    def _event(self, det: _Detectors, device: str, detector: str, signal: str, t: float, value: float,
               has_labels: bool) -> DriftEvent:
        det.drifts += 1
        det.last_drift = t
        det.needs_labels = not has_labels
        event = DriftEvent(det.device if det.device == "_all" else device, detector, signal, t, float(value),
                           not has_labels)
        self.events.append(event)
        self.event_counts[f"{detector}:{signal}"] += 1
        return event

    def _summary(self, det: _Detectors) -> dict:
        conf = det.rolling_confidence.mean()
        labelled = det.accuracy.cm.n_samples if det.accuracy is not None else 0
        # one class in the labels and the predictions alike: chance agreement is 1 and kappa undefined
        # (river's 0.0 would call a device always right on its one exercise no better than chance)
        defined = labelled and len(det.kappa.cm.classes) > 1
        return {
            "accuracy": round(det.accuracy.get(), 4) if labelled else None,
            "kappa": round(det.kappa.get(), 4) if defined else None,
            "rolling_accuracy": round(det.rolling.get(), 4) if labelled else None,
            "labelled_windows": labelled,
            "estimated_accuracy": round(conf, 4) if conf is not None else None,
            "drifts": det.drifts,
            "needs_labels": det.needs_labels,
        }

    def summary(self) -> dict:
        """Overall metrics, the confusion matrix and per-class recall, for the metrics message."""
        out = self._summary(self._all)
        labels = sorted(self.confusion.classes)
        cells = self.confusion.data  # read with get: indexing river's matrix stores every cell it reads
        matrix = [[int(cells.get(t, {}).get(p, 0)) for p in labels] for t in labels]
        out["per_class_recall"] = {c: round(row[i] / sum(row), 4)
                                   for i, (c, row) in enumerate(zip(labels, matrix, strict=True)) if sum(row)}
        out["confusion"] = {"labels": labels, "matrix": matrix}
        out["drift_counts"] = dict(self.event_counts)
        # a device's own drift without labels (an orientation turn is only ever a device's) asks for its
        # labels until one of its windows is labelled; the overall flag alone missed those
        needing = [d for d, det in self._devices.items() if det.needs_labels]
        out["needs_labels"] = bool(out["needs_labels"] or needing)
        out["devices_needing_labels"] = len(needing)
        out["needing_labels"] = sorted(needing)[:NEEDING_LABELS_LISTED]
        return out

    def device_summary(self, device: str) -> dict | None:
        det = self._devices.get(device)
        return None if det is None else self._summary(det)

    # -- across a restart ------------------------------------------------------------------------
    def snapshot(self) -> dict:
        """What a restarted consumer takes up (``restore``), as plain data only: numbers, strings, lists,
        dicts and one tensor, as ``torch.load(weights_only=True)`` reads them without running code from the
        file (no river object is in it).

        Kept exactly: per device, what the orientation checks learnt (each class's usual direction, by
        prediction and by label, the set and run under way, the windows confirming a turn, when it was last
        turned anew), which classes the model gets right on it, when each signal last fired (the overall
        ones: how long ago, as the consumer's clock starts anew in a new process), drift counts, its last
        confidences, when it last labelled; per device and overall, the cumulative confusion matrices
        (accuracy, kappa, the confusion matrix and recall) as counts, and the rolling ones as their last
        windows; the error detectors (HDDM_A per device, FHDDM overall) as the numbers they hold
        (``_error_state``). River's ADWINs keep their state out of reach: their last TAIL inputs since they
        last fired are kept instead (``restore`` feeds them to fresh ones). Not kept: the list of recent
        events (the event store has them).

        Bounded per device (TAIL inputs of 3 ADWINs, its ``rolling`` last windows and confidences, its
        classes, 6 numbers of HDDM_A), and the monitor holds only the devices not evicted (``forget``)."""
        names: dict[str, int] = {}  # class names, written once: cells and windows name them by index
        series: list[np.ndarray] = []  # every detector's float series, in one tensor
        at = 0

        def index(name: str) -> int:
            return names.setdefault(name, len(names))

        def kept(det: _Detectors) -> dict:
            nonlocal at
            out, arrays = self._snapshot(det, index, now, at)
            series.extend(arrays)
            at += sum(len(a) for a in arrays)
            return out

        now = self.clock()
        out = {
            "version": SNAPSHOT_VERSION,
            "all": kept(self._all),
            "devices": {d: kept(det) for d, det in self._devices.items()},
            "last_label": {d: float(t) for d, t in self._last_label_t.items() if d in self._devices},
            "confusion": _cells(self.confusion, index),
            "event_counts": {k: int(n) for k, n in self.event_counts.items()},
        }
        out["classes"] = list(names)
        out["series"] = torch.from_numpy(np.concatenate(series).astype(np.float32))
        return out

    def _snapshot(self, det: _Detectors, index: Callable[[str], int], now: float,
                  at: int) -> tuple[dict, list[np.ndarray]]:
        """One device's (or the overall) part of ``snapshot``, and its series, to be put at ``at``."""
        # each ADWIN's inputs since it last fired; one that fired on its last input starts afresh
        tails = {k: np.empty(0, np.float32) if getattr(det, k).drift_detected else ring.last()
                 for k, ring in det.inputs.items()}
        confidences = det.rolling_confidence.last()
        # every number as a Python float or int: a numpy scalar a caller fed (a window's time or motion as
        # np.float64, a flag mixed from a np.bool_) is a global torch.load(weights_only=True) refuses, and the
        # whole checkpoint holding it, every device's state with it, would be unreadable
        out = {
            "last_t": _plain(det.last_t),
            "oriented_at": _plain(det.oriented_at),
            "drifts": int(det.drifts),
            "needs_labels": bool(det.needs_labels),
            "last_drift": _plain(det.last_drift),
            "directions": {c: [*map(float, u), int(n)] for c, (u, n) in det.directions.items()},
            "orientation_pending": int(det.orientation_pending),
            "label_directions": None if det.label_directions is None else
            {c: [*map(float, u), int(n), float(spread), float(still)]
             for c, (u, n, spread, still) in det.label_directions.items()},
            "label_turned": int(det.label_turned),
            "fired": None if det.fired is None else
            {s: float(now - t) if det is self._all else float(t) for s, t in det.fired.items()},
            "known": None if det.known is None else {c: [int(r[0]), int(r[1])] for c, r in det.known.items()},
            "set": _set_snapshot(det.set),
            "run": _set_snapshot(det.run),
            # where its series start in the snapshot's, and their lengths: the confidences, then each tail
            "at": at,
            "lengths": {"confidences": len(confidences), **{k: len(v) for k, v in tails.items()}},
            "scored": None,
        }
        if det.accuracy is not None:
            # accuracy and kappa keep one confusion matrix each, fed alike; the rolling one, its windows
            out["scored"] = {"matrix": _cells(det.accuracy.cm, index),
                             "rolling": [index(x) for (truth, predicted), _ in det.rolling.window
                                         for x in (truth, predicted)],
                             "error": _error_state(det.error)}
        return out, [confidences, *tails.values()]

    def restore(self, snapshot, devices=None) -> None:
        """Take up what another monitor's ``snapshot`` kept (of the ``devices`` given, else of all); a
        snapshot of another version or malformed is a ``ValueError`` saying why, this monitor left as it was.

        Each ADWIN is a fresh one fed the inputs kept; what it says meanwhile is not reported (an alarm on
        restore would be one the last life raised, or did not), and one that fired on the last of them
        starts afresh with the next input, as it would have. The error detectors are the last life's,
        exactly; of a version 1 snapshot (before they were kept so), fresh ones fed their last inputs, as
        that version's restore did."""
        if not isinstance(snapshot, dict):
            raise ValueError(f"monitor snapshot: a dict expected, not {type(snapshot).__name__}")
        version = snapshot.get("version")
        if type(version) is not int or version not in (1, SNAPSHOT_VERSION):  # a tensor's `in` is no bool
            raise ValueError(f"monitor snapshot of version {str(version)[:40]}, not {SNAPSHOT_VERSION} (or 1)")
        try:
            classes = [_name(c) for c in snapshot["classes"]]
            series = snapshot["series"]
            if not isinstance(series, torch.Tensor) or series.dim() != 1 or not series.dtype.is_floating_point:
                raise TypeError("series: a 1-D float tensor expected")
            values = series.to(torch.float32).numpy()
            if not np.isfinite(values).all():
                raise ValueError("series: values not finite")
            now = self.clock()
            overall = self._restored("_all", self.rolling * 10, snapshot["all"], classes, values, now, version)
            if overall.accuracy is None:
                raise KeyError("the overall metrics")  # always made (Monitor.__init__)
            kept = {}
            for d, s in _mapping(snapshot["devices"]).items():
                if devices is None or _name(d) in devices:
                    kept[_name(d)] = self._restored(d, self.rolling, s, classes, values, now, version)
            last_label = {_name(d): _number(t) for d, t in _mapping(snapshot["last_label"]).items() if d in kept}
            confusion = _matrix(snapshot["confusion"], classes)
            counts = Counter({_name(k): _count(v) for k, v in _mapping(snapshot["event_counts"]).items()})
        # RuntimeError: torch's, a tensor where a number or flag belongs (bool() of several values, int() of a
        # complex one, numpy() of one requiring grad); the consumer catches ValueError only
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError, RuntimeError) as exc:
            raise ValueError(f"monitor snapshot malformed ({type(exc).__name__}: {str(exc)[:200]})") from None
        self._all, self._devices, self._last_label_t = overall, kept, last_label
        self.confusion, self.event_counts = confusion, counts

    def replay_events(self, rows, devices=(), counts: bool = True, now: float | None = None) -> int:
        """Take up the drift events another life published after the ``snapshot`` this monitor was
        restored from: the event store's ``drift`` rows received since the checkpoint was saved, oldest first,
        each (received, device, detector, signal, t, value, needs_labels), ``received`` wall-clock time
        (``time.time()``; ``now``: the wall-clock time now, default ``time.time()``). After a ``kill -9``
        the snapshot is the last checkpoint's: without them, a drift that life announced after it, still
        under way, would be announced again.

        As ``_emit`` took each up: when its signal last fired (a device's in its own time ``t``; the overall
        ones in this monitor's clock, as long ago as ``received``), so the same drift within COOLDOWN is a
        repeat; with ``counts``, the drift counts, when it last drifted and whether it asked for labels too
        (``counts`` False: a monitor started afresh, whose counts begin at this start, takes the cooldowns
        only). Rows of a device neither in this monitor nor in ``devices`` are skipped (a monitor made for a
        device that does not come back would never be forgotten), as are malformed ones (a value of the
        wrong type, not finite, a detector or signal the monitor has not). A device's event that ``observe``
        reported (OBSERVED_KINDS) at a time before the device's last window says the device's clock went back
        in that life (a new session): as ``observe`` did, what is timed in its old clock is forgotten
        (``_clock_reset``) and its last window is the event's. Repeats the other life kept quiet are not in
        the store: a condition it kept repeating is cooled down from the last event announced. Returns how
        many rows were taken."""
        now = time.time() if now is None else now
        clock = self.clock()
        taken = 0
        for row in rows:
            try:
                received, device, detector, signal, t, _, needs_labels = row
            except (TypeError, ValueError):
                continue
            if not (all(type(x) in (int, float) and math.isfinite(x) for x in (received, t))
                    and type(device) is str and (detector, signal) in EVENT_KINDS
                    and needs_labels in (0, 1, None)):  # the flag as written, 0 or 1 (None: not written)
                continue
            if device == "_all":
                det = self._all
            elif device in self._devices or device in devices:
                det = self._get(device)
            else:
                continue
            if det is not self._all and (detector, signal) in OBSERVED_KINDS and det.last_t is not None \
                    and t < det.last_t:  # the device's clock went back in that life (a new session): as
                self._clock_reset(device, det)  # observe did then; else its next window here would reset
                det.last_t = float(t)  # it, the cooldown with it, and the drift under way came again
            if det.fired is None:
                det.fired = {}
            if det is self._all:  # its clock is this process's: as long ago as the event was received
                det.fired[signal] = max(det.fired.get(signal, -math.inf), clock - max(0.0, now - received))
            else:
                det.fired[signal] = float(t)
            if counts:
                det.drifts += 1
                det.last_drift = float(t)
                det.needs_labels = bool(needs_labels)
                self.event_counts[f"{detector}:{signal}"] += 1
            taken += 1
        return taken

    def _restored(self, device: str, rolling: int, s, classes: list[str], values: np.ndarray,
                  now: float, version: int) -> _Detectors:
        s = _mapping(s)
        det = _Detectors(device, rolling)
        det.last_t = _optional(s["last_t"])
        det.oriented_at = _optional(s["oriented_at"])
        det.drifts = _count(s["drifts"])
        det.needs_labels = bool(s["needs_labels"])
        det.last_drift = _optional(s["last_drift"])
        det.directions = {_name(c): (_vector(v[:3]), _count(v[3])) for c, v in _mapping(s["directions"]).items()}
        det.orientation_pending = _count(s["orientation_pending"])
        if s["label_directions"] is not None:
            det.label_directions = {_name(c): (_vector(v[:3]), _count(v[3]), _number(v[4], -1.0, 1.0),
                                               _number(v[5], 0.0, 1.0))
                                    for c, v in _mapping(s["label_directions"]).items()}
        det.label_turned = _count(s["label_turned"])
        if s["fired"] is not None:
            fired = {_name(k): _number(t) for k, t in _mapping(s["fired"]).items()}
            det.fired = {k: now - age for k, age in fired.items()} if device == "_all" else fired
        if s["known"] is not None:
            det.known = {_name(c): [_count(r[0]), _count(r[1])] for c, r in _mapping(s["known"]).items()}
        det.set, det.run = _set_restored(s["set"]), _set_restored(s["run"])
        if s["scored"] is not None:
            scored = _mapping(s["scored"])
            det.scored()
            det.accuracy.cm = _matrix(scored["matrix"], classes)
            det.kappa.cm = _matrix(scored["matrix"], classes)
            pairs = [_class(classes, i) for i in scored["rolling"]]
            for truth, predicted in zip(pairs[::2], pairs[1::2], strict=True):
                det.rolling.update(truth, predicted)
            if version != 1:
                det.error = _error_restored(scored["error"], det.error)
        at, lengths = _count(s["at"]), _mapping(s["lengths"])
        # version 1: the error detector's last inputs too, where labels came
        expected = ["confidences", *det.inputs, *(["error"] if version == 1 and det.error is not None else [])]
        if list(lengths) != expected:
            raise ValueError(f"series of {list(lengths)}, not {expected}")
        for key, n in lengths.items():
            n = _count(n)
            if at + n > len(values):
                raise IndexError(f"series {key} at {at}, {n} long, beyond the {len(values)} values")
            for x in values[at: at + n]:
                if key == "confidences":
                    det.rolling_confidence.append(float(x))
                elif key == "error":  # version 1's (labelled feeds it booleans)
                    det.error.update(bool(x))
                else:  # as observe feeds them
                    _feed(getattr(det, key), det.inputs[key], float(x))
            at += n
        return det


def _cells(cm: metrics.ConfusionMatrix, index: Callable[[str], int]) -> dict:
    """A confusion matrix's non-zero cells as [truth, predicted, count] (class indexes), and its windows."""
    return {"cells": [[index(t), index(p), int(n)] for t, row in cm.data.items() for p, n in row.items() if n],
            "n": cm.n_samples}


def _matrix(s, classes: list[str]) -> metrics.ConfusionMatrix:
    """The confusion matrix ``_cells`` wrote: each cell fed once with its count as the weight (the same sums
    as one window at a time; counts below 2^53 are exact in floats), then its count of windows."""
    s = _mapping(s)
    cm = metrics.ConfusionMatrix()
    for t, p, n in s["cells"]:
        if _count(n) == 0:
            raise ValueError("a confusion matrix cell of no windows")
        cm.update(_class(classes, t), _class(classes, p), w=float(_count(n)))
    cm.n_samples = _count(s["n"])
    return cm


def _error_state(detector) -> list | None:
    """An error detector's state as plain numbers, all of it (river's HDDM_A and FHDDM, 0.26: ``restore``
    sets them on a fresh one): HDDM_A's whether it fired and warned on its last input, and its three means
    (all its inputs since it last fired; the cut points for a rise and a fall) as [windows, mean] each;
    FHDDM's whether it fired, the largest rate of ones in its window since, and the inputs in its window
    (fewer than its size: once full, it drops the oldest after each check). River keeps them in private
    attributes (river 0.26; tests/test_s13_hddm.py says whether another river's are the same); None where they
    are not there (another river: this detector starts afresh after a restart, the rest of the monitor is kept)."""
    if not _known_internals(detector):
        return None
    if isinstance(detector, drift.binary.HDDMA):
        return [bool(detector._drift_detected), bool(detector._warning_detected),
                *(float(x) for m in (detector._z, detector._x_min, detector._x_max) for x in (m.n, m._mean))]
    return [bool(detector._drift_detected), float(detector._u_max), *(bool(x) for x in detector._sliding_window)]


def _error_restored(v, detector):
    """``detector`` (a fresh one of the kind ``_error_state`` kept) with the state kept: exactly the last
    life's, which decides what the last life's would on the same inputs (None: a fresh one, as kept by a river
    whose internals are not those ``_error_state`` reads)."""
    if v is None or not _known_internals(detector):
        return detector
    if not isinstance(v, list):
        raise TypeError(f"error detector: a list expected, not {type(v).__name__}")
    drifted = _flag(v[0])
    if isinstance(detector, drift.binary.HDDMA):
        if len(v) != 8:
            raise ValueError(f"HDDM_A state of {len(v)} values, not 8")
        warned = _flag(v[1])
        (n, mean), (n_min, low), (n_max, high) = ((_windows(v[i]), _number(v[i + 1], 0.0, 1.0)) for i in (2, 4, 6))
        # its cut points are means of its first windows: none before its first input, at least one after
        if not (0 < n_min <= n and 0 < n_max <= n or n == n_min == n_max == 0):
            raise ValueError(f"HDDM_A of {n} windows, cut points at {n_min} and {n_max}")
        detector._drift_detected, detector._warning_detected = drifted, warned
        detector._z, detector._x_min, detector._x_max = _mean(n, mean), _mean(n_min, low), _mean(n_max, high)
        return detector
    window = [_flag(b) for b in v[2:]]
    if len(window) >= detector.sliding_window_size:
        raise ValueError(f"FHDDM window of {len(window)} inputs, not fewer than {detector.sliding_window_size}")
    detector._drift_detected = drifted
    detector._u_max = _number(v[1], 0.0, 1.0)
    detector._sliding_window.extend(window)
    detector.n_one = sum(window)
    return detector


# the private attributes _error_state reads and _error_restored sets, by detector (river 0.26's): another river
# (pyproject.toml admits older ones, the only ones on Python 3.10) may keep its state otherwise
_INTERNALS = {"HDDMA": ("_drift_detected", "_warning_detected", "_z", "_x_min", "_x_max"),
              "FHDDM": ("_drift_detected", "_u_max", "_sliding_window", "n_one")}


def _known_internals(detector) -> bool:
    names = _INTERNALS.get(type(detector).__name__, ())
    return bool(names) and all(hasattr(detector, a) for a in names) and all(
        isinstance(getattr(detector, m), stats.Mean) for m in ("_z", "_x_min", "_x_max") if hasattr(detector, m))


def _mean(n: float, mean: float) -> stats.Mean:
    m = stats.Mean()
    m.n, m._mean = n, mean
    return m


def _flag(value) -> bool:
    if type(value) is not bool:  # bool() of anything is a flag: a string, a tensor would pass
        raise TypeError(f"a flag expected, not {type(value).__name__}")
    return value


def _windows(value) -> float:
    """A count river keeps as a float (stats.Mean's), exact up to 2^53."""
    n = _number(value, 0.0, 2.0 ** 53)
    if n != int(n):
        raise ValueError(f"{n} windows")
    return n


def _set_snapshot(s: _Set | None) -> list | None:
    return None if s is None else [s.label, float(s.t), *map(float, s.mean), int(s.count), float(s.spread),
                                   int(s.turned), float(s.still), float(s.level)]


def _plain(x) -> float | None:
    return None if x is None else float(x)


def _set_restored(v) -> _Set | None:
    if v is None:
        return None
    s = _Set(_name(v[0]), _number(v[1]), _vector(v[2:5]), STILL_MOTION)
    s.count, s.spread, s.turned = _count(v[5]), _number(v[6], 0.0, 180.0), _count(v[7])
    s.still, s.level = _number(v[8], 0.0, 1.0), _number(v[9])
    return s


def _mapping(value) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"a dict expected, not {type(value).__name__}")
    return value


def _name(value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"a name expected, not {type(value).__name__}")
    return value


def _class(classes: list[str], i) -> str:
    if not 0 <= int(i) < len(classes):  # a negative index would name a class all the same
        raise IndexError(f"class {i} of {len(classes)}")
    return classes[int(i)]


def _number(value, low: float = -math.inf, high: float = math.inf) -> float:
    x = float(value)
    if not (math.isfinite(x) and low <= x <= high):  # one would poison the means it joins, or acos
        raise ValueError(f"{x} is not a finite number from {low} to {high}")
    return x


def _optional(value) -> float | None:
    return None if value is None else _number(value)


def _count(value) -> int:
    n = int(value)
    if n < 0:
        raise ValueError(f"a count of {n}")
    return n


def _vector(v) -> tuple[float, float, float]:
    x, y, z = (_number(a) for a in v)  # a ValueError unless 3
    if abs(x * x + y * y + z * z - 1.0) > 1e-6:
        raise ValueError(f"({x}, {y}, {z}) is no direction (a unit vector)")
    return x, y, z
