"""How a device is worn, found without labels: turn a sensor worn upside down or turned on the limb back
to the orientation the model was trained on.

A phone in an arm band, or a watch, can be put on turned: upside down, or a quarter turn round the arm.
The model then sees every exercise turned and is confidently wrong (exermote's person 1: two of four
sessions). What the device does gives its orientation away: per window, the direction of gravity (the
mean specific force) and the axis it mostly turns about (the principal axis of the gyroscope's
readings). Training stores a sample of both from its data (``Reference``); a device's first windows
are compared with it under every candidate turn, and when one turn explains them much better than none
(``margin`` nats per window), the device is served through that turn from then on.

Only for models that read the gyroscope: gravity alone leaves a turn about itself unseen (an arm
hanging at rest looks the same however the band is turned), and a guessed turn would do harm.

The score of a turn R is the mean, over the device's windows i, of
``log mean_j exp(kg (R g_i . g_j - 1) + ka ((R a_i . a_j)^2 - 1))`` over reference windows j (a
von Mises-Fisher kernel on gravity, a Watson kernel on the sign-less rotation axis, the latter only
where both windows turn at all).

>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> g = rng.normal([0, 0, 1], 0.1, (200, 3)); a = rng.normal([1, 0, 0], 0.1, (200, 3))
>>> ref = Reference.from_features(g, a, np.ones(200))
>>> upside_down = np.diag([1.0, -1.0, -1.0])
>>> R, gain = ref.fit(g[:20] @ upside_down.T, a[:20] @ upside_down.T, np.ones(20))
>>> bool(gain > 1.0), bool(np.allclose(R @ upside_down, np.eye(3), atol=0.2))
(True, True)
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from scipy.spatial.transform import Rotation

__all__ = ["OrientationConfig", "Reference", "Orienter", "turn_sensors", "window_features"]


@dataclass
class OrientationConfig:
    # (windows, margin): after this many of a device's windows, turn it if the best turn explains them
    # better than none by at least margin nats per window; the last stage decides for good. A sensor
    # upside down shows within 5 windows (10 s), a quarter turn about the arm needs about 15 (exermote);
    # the fits at 30 and 45, on all the windows so far, mend a turn chosen wrongly on 15 windows that
    # held one exercise only. Each stage scores only the windows added since the last one (the sums are
    # kept per device, Reference.fit): about 45 ms of one core per device in all (docs/orientation.md)
    stages: tuple[tuple[int, float], ...] = ((5, 3.0), (15, 1.0), (30, 1.0), (45, 1.0))
    kg: float = 20.0  # concentration of the kernel on gravity directions
    ka: float = 8.0  # concentration of the kernel on rotation axes
    min_energy: float = 0.05  # (rad/s)^2: a window that turns less has no rotation axis to speak of
    grid: int = 400  # random turns tried besides the 24 axis-aligned ones (then refined near the best)
    reference: int = 600  # reference windows kept from the training data (in the checkpoint)
    seed: int = 0  # of the candidate turns; the checkpoint keeps no config, so leave it (and the rest) be

    def __post_init__(self) -> None:
        self.stages = tuple((int(n), float(m)) for n, m in self.stages)
        counts = [n for n, _ in self.stages]
        if not counts or counts[0] < 1 or counts != sorted(set(counts)):
            raise ValueError("'stages' must be (windows, margin) pairs with windows >= 1, increasing")
        if any(m < 0 for _, m in self.stages) or self.kg <= 0 or self.ka < 0:
            raise ValueError("every margin must be >= 0, 'kg' > 0 and 'ka' >= 0")

    @property
    def windows(self) -> int:
        """A device's windows before its orientation is settled."""
        return self.stages[-1][0]


def turn_sensors(windows: np.ndarray, Rt: np.ndarray) -> np.ndarray:
    """Windows (..., T, 6) with both sensors turned: each three-axis sample times ``Rt`` (R transposed)."""
    Rt = Rt.astype(windows.dtype)
    return np.concatenate([windows[..., :3] @ Rt, windows[..., 3:] @ Rt], axis=-1)


def window_features(windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Windows (B, T, 6) (accelerometer, then gyroscope) → gravity direction (B, 3), the gyroscope's
    principal axis (B, 3, sign-less) and its mean square along that axis (B,) in (rad/s)^2."""
    windows = np.asarray(windows, dtype=np.float64)
    if windows.ndim != 3 or windows.shape[2] != 6:
        raise ValueError(f"expected windows (B, T, 6), got {windows.shape}")
    g = _unit(windows[:, :, :3].mean(axis=1))
    w = windows[:, :, 3:]
    lam, vec = np.linalg.eigh(np.einsum("bti,btj->bij", w, w) / w.shape[1])
    return g, vec[:, :, -1], lam[:, -1]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v, axis=-1, keepdims=True) + 1e-9)


def _turns(n: int, seed: int) -> np.ndarray:
    cube = Rotation.create_group("O").as_matrix()
    cube = cube[np.argsort([np.abs(m - np.eye(3)).sum() for m in cube], kind="stable")]  # identity first
    return np.concatenate([cube, Rotation.random(n, random_state=seed).as_matrix()]) if n else cube


class Reference:
    """Window features of the training data, and the turn that best brings a device's windows to them."""

    def __init__(self, g: np.ndarray, a: np.ndarray, e: np.ndarray, config: OrientationConfig | None = None):
        self.config = config or OrientationConfig()
        self.g = _unit(np.asarray(g, dtype=np.float64).reshape(-1, 3))
        self.a = _unit(np.asarray(a, dtype=np.float64).reshape(-1, 3))
        self.e = np.asarray(e, dtype=np.float64).reshape(-1)
        if not (len(self.g) == len(self.a) == len(self.e)) or len(self.g) == 0:
            raise ValueError("a reference needs the same, non-zero number of g, a and e rows")
        self._turns = _turns(self.config.grid, self.config.seed)
        # what every scoring reads of the reference, in the form it reads it (see _sums)
        self._rg = (self.g * self.config.kg).astype(np.float32).T.copy()
        self._ra = self.a.astype(np.float32).T.copy()
        self._moving = self.e > self.config.min_energy
        rng = np.random.default_rng(self.config.seed + 1)  # the small turns tried round the best, per round
        self._near = [Rotation.from_rotvec(rng.normal(0.0, scale, (100, 3))).as_matrix()
                      for scale in (0.25, 0.1)]

    @classmethod
    def from_features(cls, g, a, e, config: OrientationConfig | None = None, seed: int = 0) -> Reference:
        """Keep at most ``config.reference`` windows, drawn at random (``seed``)."""
        config = config or OrientationConfig()
        g, a, e = (np.asarray(v) for v in (g, a, e))
        if len(g) > config.reference:
            keep = np.sort(np.random.default_rng(seed).choice(len(g), config.reference, replace=False))
            g, a, e = g[keep], a[keep], e[keep]
        return cls(g, a, e, config)

    @classmethod
    def from_windows(cls, windows: np.ndarray, config: OrientationConfig | None = None,
                     seed: int = 0) -> Reference:
        return cls.from_features(*window_features(windows), config, seed)

    def to_dict(self) -> dict:
        """The features as float32 arrays (the checkpoint stores them as tensors)."""
        return {k: v.astype(np.float32) for k, v in (("g", self.g), ("a", self.a), ("e", self.e))}

    @classmethod
    def from_dict(cls, blob: dict, config: OrientationConfig | None = None) -> Reference:
        try:
            return cls(blob["g"], blob["a"], blob["e"], config)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not an orientation reference: {exc}") from None

    def _sums(self, turns: np.ndarray, g: np.ndarray, a: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Sum over the device's windows of each turn's log-likelihood per window (n,), float64."""
        cfg = self.config
        turns = np.asarray(turns, dtype=np.float32)
        n, m = len(g), len(self.g)
        out = np.zeros(len(turns))
        if n == 0:
            return out
        g = _unit(np.asarray(g, dtype=np.float64).reshape(-1, 3)).astype(np.float32)  # the bound below needs
        a = _unit(np.asarray(a, dtype=np.float64).reshape(-1, 3)).astype(np.float32)  # unit directions
        # kg (R g_i . g_j - 1) + ka b_ij ((R a_i . a_j)^2 - 1), computed as
        # (kg g_j) . R g_i + wa_ij (R a_i . a_j)^2 - off_ij, with wa_ij = ka b_ij, off_ij = kg + wa_ij
        both = (np.asarray(e) > cfg.min_energy)[:, None] & self._moving[None, :]
        wa = both.astype(np.float32) * np.float32(cfg.ka)
        off = wa + np.float32(cfg.kg)
        rg, ra = self._rg, self._ra
        tg = np.einsum("rij,nj->rni", turns, g).reshape(-1, 3)  # every turned window, one matrix product each
        ta = np.einsum("rij,nj->rni", turns, a).reshape(-1, 3) if cfg.ka else None
        # every term lies in [-(2 kg + ka), 0]: exp() of it needs no shift by the maximum unless that
        # bound comes near float32's smallest number (e^-87)
        shift = 2 * cfg.kg + cfg.ka > 80.0
        chunk = 4  # turns at a time: (4, n, m) float32 stays in the cache
        for start in range(0, len(turns), chunk):
            rows = slice(start * n, min(start + chunk, len(turns)) * n)
            s = (tg[rows] @ rg).reshape(-1, n, m)
            if ta is not None:
                c = (ta[rows] @ ra).reshape(-1, n, m)
                c *= c
                c *= wa
                s += c
            s -= off
            if shift:
                top = s.max(axis=2, keepdims=True)
                s -= top
            np.exp(s, out=s)
            ll = np.log(s.mean(axis=2))
            if shift:
                ll += top[..., 0]
            out[start:start + chunk] = ll.sum(axis=1, dtype=np.float64)
        return out

    def scores(self, turns: np.ndarray, g: np.ndarray, a: np.ndarray, e: np.ndarray) -> np.ndarray:
        """Mean log-likelihood per window of the device's windows under each turn (n,)."""
        if len(g) == 0:
            return np.full(len(turns), np.nan)  # no windows: no score
        return self._sums(turns, g, a, e) / len(g)

    def fit(self, g: np.ndarray, a: np.ndarray, e: np.ndarray,
            cache: dict | None = None) -> tuple[np.ndarray, float]:
        """(the best turn R (3, 3), how much better it explains the windows than none, nats per window).

        A coarse search over the axis-aligned turns and random ones, then two rounds of small turns
        round the best. ``cache`` (a dict kept by the caller between fits of one device whose windows
        only grow) holds each round's sums of scores so far: a later fit scores only the windows added
        since, except in a round whose candidates moved (a new best turn to refine round)."""
        n = len(g)

        def mean_scores(name: str, base: np.ndarray, turns: np.ndarray) -> np.ndarray:
            done, total = 0, 0.0
            if cache is not None and name in cache:
                kept, count, sums = cache[name]
                if count <= n and np.array_equal(kept, base):
                    done, total = count, sums
            total = total + self._sums(turns, g[done:], a[done:], e[done:])
            if cache is not None:
                cache[name] = (base.copy(), n, total)  # a copy: not a view keeping the candidates alive
            return total / n

        scores = mean_scores("grid", self._turns[0], self._turns)
        best = int(scores.argmax())
        R, score = self._turns[best], float(scores[best])
        for k, near in enumerate(self._near):
            candidates = near @ R
            s = mean_scores(f"near{k}", R, candidates)
            if s.max() > score:
                R, score = candidates[int(s.argmax())], float(s.max())
        return R, score - float(scores[0])


class Orienter:
    """Per device: keep the features of its first windows (as they came) and fit a turn to all of them
    at each of ``config.stages``; from the first stage that fires, every window of that device is turned
    before the model sees it; the last stage settles the turn (or none) for good.

    ``budget`` (seconds per ``apply``, None: no limit) bounds the fitting done in one call: at least one
    fit runs, then more while time is left; devices whose stage is due wait, first come first served,
    keeping their current turn, and are fitted on every window they have by then. ``evaluate`` runs
    without a limit; the consumer with one, so that thousands of devices starting together do not stall
    serving. ``changed`` lists the devices of the last ``apply`` whose turn changed since their previous
    windows (what was learnt of their orientation before, e.g. by the drift detectors, no longer holds): a
    device fitted in a call that held none of its windows (it waited for the budget) is listed in the
    next call that holds one.
    """

    MAX_PARKED = 100_000  # settled devices kept after eviction (the consumer keeps as many states)
    CHANGE_DEG = 10.0  # a new fit that moves the turn less than this is taken, but not reported as a change

    def __init__(self, reference: Reference, budget: float | None = None) -> None:
        self.reference = reference
        self.config = reference.config
        self.budget = budget
        self.turns: dict[str, np.ndarray] = {}  # device -> R (3, 3), only for turned devices
        self.decided: set[str] = set()  # devices whose orientation is settled (turned or not)
        self.gains: dict[str, float] = {}  # device -> the last fit's gain
        self.changed: list[str] = []
        self._unreported: set[str] = set()  # turn changed, not yet listed in ``changed`` (no window since)
        # device -> [(windows, 7) array of (g, a, e) per window, count, the fits' sums so far (Reference.fit)]
        self._pending: dict[str, list] = {}
        self._due: dict[str, None] = {}  # devices with a stage to fit, in order
        self._parked: OrderedDict[str, np.ndarray | None] = OrderedDict()  # evicted settled devices
        self._stage_counts = {n for n, _ in self.config.stages}
        # on_turn(device, Q): the device's windows are turned by Q (3, 3) more from its next window on (every
        # change of its turn, however small; also an unsettled device's turn dropped on eviction, and a settled
        # one's dropped from the evicted ones kept, beyond MAX_PARKED): what was fitted to its windows as they
        # came before (its device adapter, models.personal) is re-expressed
        self._on_turn = None
        # turns dropped beyond MAX_PARKED by a ``restore`` before on_turn was set (the consumer restores before
        # its adapters are loaded): reported to on_turn when it is set
        self._dropped: dict[str, np.ndarray] = {}
        self._restoring = False
        self.calls = 0  # calls of ``apply``: a caller with several rounds in one pass tells which an on_turn came in

    @property
    def on_turn(self):
        return self._on_turn

    @on_turn.setter
    def on_turn(self, on_turn) -> None:
        self._on_turn = on_turn
        if on_turn is not None:
            dropped, self._dropped = self._dropped, {}
            for device, R in dropped.items():
                on_turn(device, R.T)

    def apply(self, devices: list[str], windows: np.ndarray) -> np.ndarray:
        """Windows (B, T, 6) of distinct devices, as the model must see them: turned where a turn was
        chosen (a copy then; else ``windows`` itself)."""
        self.changed = []
        self.calls += 1
        last = self.config.windows
        new = []
        for i, device in enumerate(devices):
            if device in self.decided:
                continue
            if device in self._parked:  # settled before it was evicted
                self._unpark(device)
                continue
            new.append(i)
        if new:
            g, a, e = window_features(windows[new])
            for j, i in enumerate(new):
                pending = self._pending.get(devices[i])
                if pending is None:
                    pending = self._pending[devices[i]] = [np.empty((last, 7)), 0, {}]
                features, n, _ = pending
                if n < last:
                    features[n, :3], features[n, 3:6], features[n, 6] = g[j], a[j], e[j]
                    pending[1] = n = n + 1
                    if n in self._stage_counts:
                        self._due[devices[i]] = None
        if self._due:
            self._fit_due()
        if self._unreported:
            self.changed = [d for d in devices if d in self._unreported]
            self._unreported.difference_update(self.changed)
        turned = [(i, self.turns[d]) for i, d in enumerate(devices) if d in self.turns] if self.turns else []
        if not turned:
            return windows
        out = np.array(windows)
        for i, R in turned:
            out[i] = turn_sensors(windows[i], R.T)
        return out

    def _fit_due(self) -> None:
        started = time.perf_counter()
        while self._due:
            device = next(iter(self._due))
            del self._due[device]
            features, n, cache = self._pending[device]
            features = features[:n]
            count, margin = max(st for st in self.config.stages if st[0] <= len(features))
            self._decide(device, features, margin, count == self.config.windows, cache)
            if self.budget is not None and time.perf_counter() - started >= self.budget:
                break

    def _decide(self, device: str, features: np.ndarray, margin: float, last: bool, cache: dict) -> None:
        R, gain = self.reference.fit(features[:, :3], features[:, 3:6], features[:, 6], cache)
        self.gains[device] = gain
        before = self.turns.get(device)
        if gain >= margin:
            self.turns[device] = R  # a later stage, with more windows, may turn it better (or back)
        elif last:
            self.turns.pop(device, None)
        if last:
            del self._pending[device]
            self.decided.add(device)
        after = self.turns.get(device)
        if after is not before and self.on_turn is not None:
            eye = np.eye(3)
            self.on_turn(device, (eye if after is None else after) @ (eye if before is None else before).T)
        if before is None or after is None:
            moved = before is not after
        else:
            moved = np.degrees(Rotation.from_matrix(before.T @ after).magnitude()) > self.CHANGE_DEG
        if moved:
            self._unreported.add(device)

    def snapshot(self) -> dict:
        """What a restarted consumer needs: every settled device (evicted ones too) and the turn of each
        turned one. Devices still undecided start collecting again, keeping the turn they have so far."""
        turns = {d: R for d, R in self._parked.items() if R is not None}
        turns.update(self.turns)
        # evicted ones least recently parked first, then those in use: a restore parks them in this order and
        # drops the first beyond MAX_PARKED (sorted by name, a device in use could lose its turn)
        return {"decided": [*self._parked, *sorted(self.decided)],
                "turns": {d: R.reshape(-1).tolist() for d, R in turns.items()}}

    def restore(self, snapshot: dict) -> None:
        """Take back a ``snapshot``; ValueError (and nothing taken) if it is not one.

        As ``torch.load(weights_only=True)`` reads it from the consumer's checkpoint: a turn may come as a
        tensor, or as numbers that are tensors, of any kind that reads (sparse, meta, needing grad, negative
        bit): each is taken as a plain float64 array or refused (``stream.persist.plain_tensor``); before,
        ``numpy()`` of one needing grad raised RuntimeError and the consumer did not start."""
        from stream.persist import plain_tensor

        def turn(d, v) -> np.ndarray:
            if isinstance(v, torch.Tensor):
                v = plain_tensor(v, f"the turn of {d}", torch.float64).numpy()
            elif isinstance(v, (list, tuple)):
                v = [float(x.detach()) if isinstance(x, torch.Tensor) else float(x) for x in v]  # meta: RuntimeError
            else:
                raise TypeError(f"the turn of {d}: a list of 9 numbers expected, not {type(v).__name__}")
            return np.asarray(v, dtype=np.float64).reshape(3, 3)

        def device(d) -> str:
            if not isinstance(d, str):  # str() of anything else named a device that never sends
                raise TypeError(f"a device id expected, not {type(d).__name__}")
            return d

        try:
            decided = [device(d) for d in snapshot.get("decided", ())]
            turns = {device(d): turn(d, v) for d, v in dict(snapshot.get("turns", {})).items()}
        # RuntimeError (NotImplementedError too): torch's, of a tensor where a number belongs
        except (AttributeError, TypeError, ValueError, RuntimeError, OverflowError) as exc:
            raise ValueError(f"not an orientation snapshot: {exc}") from None
        for d, R in turns.items():
            if not (np.isfinite(R).all() and np.allclose(R @ R.T, np.eye(3), atol=1e-4)
                    and np.linalg.det(R) > 0):
                raise ValueError(f"not an orientation snapshot: the turn of {d} is not a rotation")
        self._restoring = True
        try:
            for device in decided:  # settled: parked until it sends again, as an evicted one (MAX_PARKED)
                self.decided.discard(device)
                self._pending.pop(device, None)
                self._due.pop(device, None)
                self.turns.pop(device, None)
                self._park(device, turns.pop(device, None))
        finally:
            self._restoring = False
        self.turns.update(turns)  # the turn so far of devices not yet settled

    def evict(self, device: str) -> None:
        """Forget a device; a settled one's turn is kept (up to ``MAX_PARKED``) for when it returns."""
        if device in self.decided:
            self._park(device, self.turns.get(device))
        elif device in self.turns and self.on_turn is not None:  # it comes back unturned, collecting again
            self.on_turn(device, self.turns[device].T)
        for table in (self.turns, self.gains, self._pending, self._due):
            table.pop(device, None)
        self.decided.discard(device)
        self._unreported.discard(device)

    def _park(self, device: str, R: np.ndarray | None) -> None:
        """Keep a settled device's turn (None: unturned) for when it sends again, up to MAX_PARKED devices:
        beyond, the least recently parked is dropped and comes back as a new device, unturned (on_turn)."""
        self._parked[device] = R
        self._parked.move_to_end(device)
        while len(self._parked) > self.MAX_PARKED:
            gone, turn = self._parked.popitem(last=False)
            if turn is not None and self.on_turn is not None:
                self.on_turn(gone, turn.T)
            elif turn is not None and self._restoring:  # told when on_turn is set
                self._dropped[gone] = turn

    def _unpark(self, device: str) -> None:
        R = self._parked.pop(device)
        self.decided.add(device)
        if R is not None:
            self.turns[device] = R
