"""Per-device sample buffers: put samples in order, resample onto the model's clock, cut windows.

Each device's samples are linearly interpolated onto a regular grid at the model's rate, computed
from the device's own timestamps (its clock offset does not matter, only its spacing). A gap longer
than ``max_gap`` seconds restarts the grid and drops the partial window, so no window ever spans a
hole in the data.

Phones deliver irregular timestamps, sometimes out of order, sometimes twice. A buffer with
``reorder > 0`` holds the newest ``reorder`` seconds of samples back before committing them to the
grid, so a batch that arrives late but within that bound is merged in time order. A sample is
committed once it is ``reorder`` seconds older than the newest sample seen (device time), or once
it has waited ``reorder`` seconds since it arrived (``release(now)``, for a device that goes quiet).
Samples at or before the last committed one are counted in ``late_samples`` and dropped; a repeated
timestamp among the held samples is counted in ``duplicates`` and dropped. Holding back adds up to
``reorder`` seconds of latency, so keep it small; 0 commits every sample at once.

With ``reorder = 0`` a batch that simply follows the last one (the usual live message) is not
interpolated at once: it is kept as it came until the batch that completes the pending window
arrives, and then all of them are interpolated in one go. The windows, their values and the arrival
they carry are those of interpolating every batch as it comes (the same piecewise-linear function,
the same grid); a message costs a few scalar operations instead of a dozen small numpy calls.
``settle()`` interpolates what is kept (for a snapshot of the buffer's state). At most ``MAX_KEPT``
samples are kept: past it they are interpolated at once, as the batch completing the window would
have them (same windows), so a device whose timestamps crawl (a clock in the wrong unit, a stuck
clock) and never reaches the window's end does not pile its messages up in memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["DEFAULT_REORDER", "DeviceBuffer", "Window", "resample"]

DEFAULT_REORDER = 0.2  # seconds; suggested for live phone streams (QoS 0, several connections)
MAX_HELD = 10_000  # samples held at most, whatever the timestamps claim (bounds memory per device)
MAX_KEPT = 10_000  # samples kept for one interpolation at most with reorder 0 (bounds memory per device)
_NO_T = np.empty(0, dtype=np.float64)  # never written to: held arrays are only ever replaced
_NO_ACC = np.empty((0, 3), dtype=np.float64)


@dataclass
class Window:
    """A complete window of one device, on the model's clock."""

    device: str
    t_end: float  # device time of the window's last grid sample
    samples: np.ndarray  # (window, channels) float32: m/s², then rad/s for a model that reads the gyroscope
    arrival: float  # monotonic time the sample completing it was received
    # the first window of a new session (DeviceBuffer.clock_resets: its clock went back, or the device said so):
    # what is kept per session downstream (labels, the drift monitor's timings) starts afresh with it
    new_session: bool = False


def resample(t: np.ndarray, values: np.ndarray, rate: float,
             max_gap: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Offline twin of ``DeviceBuffer``: (grid times, values on the grid) for each run without gaps.

    Uses the same grid (origin at the run's first sample, spacing 1/rate) and the same linear
    interpolation, so cutting the result into windows gives the windows ``DeviceBuffer`` emits.
    """
    keep = np.concatenate([[True], np.diff(t) > 0])  # drop duplicate timestamps as the buffer does
    t, values = t[keep], values[keep]
    breaks = np.flatnonzero(np.diff(t) > max_gap) + 1
    out = []
    for a, b in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(t)]]), strict=True):
        ts = t[a:b]
        n = int(np.floor((ts[-1] - ts[0]) * rate + 1e-9)) + 1
        grid = ts[0] + np.arange(n) / rate
        cols = [np.interp(grid, ts, values[a:b, i]) for i in range(values.shape[1])]
        out.append((grid, np.stack(cols, axis=1).astype(np.float32)))
    return out


class DeviceBuffer:
    """Resampling window cutter for one device.

    Parameters
    ----------
    device
        The device id, copied into every window.
    rate
        The model's sample rate (Hz): the grid spacing is ``1 / rate``.
    window
        Grid samples per window.
    max_gap
        Seconds of silence after which the grid restarts (the partial window is dropped).
    reorder
        Seconds of device time held back to merge batches that arrive out of order (0: none).
    clock_reset
        A batch that lies wholly more than this many seconds before the newest sample means the
        device's clock restarted (a reboot, a new session): the grid restarts on the new clock
        instead of dropping everything as late until the clock catches up.
    channels
        Values per sample: 3 (the accelerometer), or 6 (then the gyroscope, for a model that reads it);
        all are interpolated alike.

    Examples
    --------
    >>> import numpy as np
    >>> t = 100.0 + np.arange(100) / 50  # 2 s at 50 Hz
    >>> acc = np.tile([0.0, 0.0, 9.81], (100, 1))
    >>> buf = DeviceBuffer("d", rate=25.0, window=25, reorder=0.2)
    >>> buf.push(t[10:20], acc[10:20], arrival=0.0)  # 0.2 s of samples, before the ones they follow
    []
    >>> buf.push(t[:10], acc[:10], 0.0), buf.late_samples  # late, but within the bound: merged in order
    ([], 0)
    >>> len(buf.push(t[20:], acc[20:], 0.0)), buf.held  # the last 0.2 s stays held
    (1, 10)
    >>> len(buf.flush()), buf.held
    (1, 0)
    """

    # one per device: slots instead of an attribute dict (about 700 bytes less per device)
    __slots__ = ("device", "rate", "window", "max_gap", "reorder", "clock_reset", "late_samples", "duplicates",
                 "gaps", "clock_resets", "_new_session", "_last_t", "_last_acc", "_origin", "_k", "_pending", "_fill",
                 "_held_t", "_held_acc", "_held_arrival", "_kept", "_kept_n", "_kept_from")

    def __init__(self, device: str, rate: float, window: int, max_gap: float = 1.0, reorder: float = 0.0,
                 clock_reset: float = 30.0, channels: int = 3) -> None:
        if rate <= 0 or window <= 0:
            raise ValueError("rate and window must be positive")
        if max_gap <= 0 or reorder < 0:
            raise ValueError("max_gap must be positive and reorder not negative")
        if clock_reset <= max(max_gap, reorder):
            raise ValueError("clock_reset must be longer than max_gap and reorder")
        self.device = device
        self.rate = rate
        self.window = window
        self.max_gap = max_gap
        self.reorder = reorder
        self.clock_reset = clock_reset
        self.late_samples = 0  # at or before the last sample already used (beyond the reorder bound)
        self.duplicates = 0  # same timestamp as a sample not yet used
        self.gaps = 0  # grid restarts after a silence longer than max_gap
        self.clock_resets = 0  # grid restarts because the device clock went back
        self._new_session = False  # the next window is a new session's first (clock_resets)
        self._last_t: float | None = None  # last committed sample
        self._last_acc = np.zeros(channels, dtype=np.float64)
        self._origin = 0.0  # grid time k is origin + k / rate
        self._k = 0  # index of the next grid sample
        self._pending = np.empty((window, channels), dtype=np.float32)  # the partial window; its width is
        # the channel count (no slot of its own: memory per device)
        self._fill = 0
        self._held_t = _NO_T  # held samples, sorted, unique times (shared empty arrays until there are some)
        self._held_acc = _NO_ACC if channels == 3 else np.empty((0, channels))
        self._held_arrival = _NO_T
        self._kept: list[tuple[np.ndarray, np.ndarray, float]] = []  # batches not interpolated yet
        self._kept_n = 0  # samples in them
        self._kept_from: float | None = None  # _last_t before the first kept batch

    @property
    def last_t(self) -> float | None:
        """Device time of the last sample committed to the grid (interpolated or kept for it)."""
        return self._last_t

    @property
    def newest(self) -> float | None:
        """Device time of the newest sample taken: held for reordering or committed to the grid."""
        return self._newest()

    @property
    def held(self) -> int:
        """Samples held back, waiting for the reorder bound."""
        return len(self._held_t)

    def push(self, t: np.ndarray, acc: np.ndarray, arrival: float, new_clock: bool = False) -> list[Window]:
        """Add samples (any order, acc in m/s²); returns the windows they complete.

        ``new_clock``: the device says these samples start a new session (its ``seq`` 0 after a higher one,
        not a copy): what is held is committed, the partial window is dropped and the grid starts again at
        their first sample, wherever its clock went, as for a clock gone back more than ``clock_reset``
        (counted in ``clock_resets``); a recording replayed again at once is not dropped as late.
        """
        t = np.asarray(t, dtype=np.float64)
        if len(t) == 0:
            return []
        if new_clock and self._newest() is not None:
            out = self._restart_clock()
            return out + self._push(t, np.asarray(acc, dtype=np.float64), arrival)
        last_t = self._last_t
        if self.reorder == 0 and last_t is not None:
            t_last = float(t[-1]) if len(t) == 1 else float(t.max())  # the newest, in any order
            # gaps measured as everywhere else (t - previous > max_gap), so that a silence of exactly
            # max_gap is judged alike here and on the general path
            if last_t < t[0] and float(t[0]) - last_t <= self.max_gap and (
                    t_last - last_t <= self.max_gap or float((t[1:] - t[:-1]).max()) <= self.max_gap):
                # the usual message: after the last sample, no silence longer than max_gap before or
                # inside it (a message spanning less cannot hold one): kept until the pending window's
                # last grid point; anything unusual inside (repeats, disorder) is left to _settle,
                # which then takes the kept batches one by one as _push would
                if not self._kept:
                    self._kept_from = last_t
                self._kept.append((t, acc, arrival))
                self._kept_n += len(t)
                self._last_t = t_last
                k_end = self._k + self.window - self._fill - 1  # the pending window's last grid point
                if math.floor((t_last - self._origin) * self.rate + 1e-9) < k_end and self._kept_n <= MAX_KEPT:
                    return []
                out: list[Window] = []
                self._settle(out)  # the window is complete, or too much is kept: onto the grid
                return out
        out = []
        if self._kept:
            self._settle(out)
        return out + self._push(t, np.asarray(acc, dtype=np.float64), arrival)

    def settle(self) -> None:
        """Interpolate the kept batches now (they complete no window: the one that does settles them)."""
        if self._kept:
            out: list[Window] = []
            self._settle(out)
            assert not out, "a kept batch completed a window"

    def _settle(self, out: list[Window]) -> None:
        """Interpolate the kept batches, as one when their times increase strictly, else one by one as
        ``_push`` takes them (repeated times); windows carry the last batch's arrival, which is the
        one that completed them."""
        kept, self._kept, self._kept_n = self._kept, [], 0
        self._last_t = self._kept_from
        if len(kept) == 1:
            t, acc = kept[0][0], kept[0][1]
        else:
            t = np.concatenate([k[0] for k in kept])
            acc = np.concatenate([k[1] for k in kept])
        ts = np.concatenate(([self._last_t], t))
        if (ts[1:] > ts[:-1]).all():
            self._interpolate(t, np.asarray(acc, dtype=np.float64), kept[-1][2], out, ts)
            return
        for t, acc, arrival in kept:
            out += self._push(t, np.asarray(acc, dtype=np.float64), arrival)

    def _push(self, t: np.ndarray, acc: np.ndarray, arrival: float) -> list[Window]:
        """``push`` without keeping (the general path): t float64, acc (n, channels) float64. With
        ``reorder`` 0 a message that follows the last one does not come here: ``push`` keeps it."""
        out: list[Window] = []
        newest = self._newest()
        if newest is not None and t[-1] < newest - self.clock_reset and t.max() < newest - self.clock_reset:
            out += self._restart_clock()
        if self._last_t is not None:
            keep = t > self._last_t
            if not keep.all():
                self.late_samples += int((~keep).sum())
                t, acc = t[keep], acc[keep]
            if len(t) == 0:
                return out
        if self.reorder == 0 and (len(t) == 1 or (t[1:] > t[:-1]).all()):
            self._commit(t, acc, arrival, out)  # nothing to hold: straight onto the grid
            return out
        self._hold(t, acc, arrival)
        cut = self._held_t[-1] - self.reorder
        waited = self._held_arrival <= arrival - self.reorder
        if waited.any():
            cut = max(cut, self._held_t[waited].max())
        if len(self._held_t) > MAX_HELD:
            cut = max(cut, self._held_t[-MAX_HELD - 1])
        out += self._commit_until(cut)
        return out

    def _restart_clock(self) -> list[Window]:
        """A new session (the clock went back more than ``clock_reset``, or ``push``'s ``new_clock``): what is
        held is committed (the windows it completes, returned, are the session before's), the partial window is
        dropped, the next commit starts a new grid at its first sample, and the first window on it says it is a
        new session's (``Window.new_session``), however far the clock went back."""
        out = self.flush()
        self._last_t = None
        self.clock_resets += 1
        self._new_session = True
        return out

    def release(self, now: float) -> list[Window]:
        """Commit the samples that have waited ``reorder`` seconds since they arrived.

        Call it now and then (``now`` on the same clock as ``arrival``) so a device that stops
        sending does not keep its last samples, and the window they complete, held for ever.
        """
        waited = self._held_arrival <= now - self.reorder
        if not waited.any():
            return []
        return self._commit_until(self._held_t[waited].max())

    def flush(self) -> list[Window]:
        """Commit every held sample (the end of a recording, a device leaving)."""
        self.settle()
        return self._commit_until(np.inf)

    def _newest(self) -> float | None:
        if len(self._held_t):
            return float(self._held_t[-1])
        return self._last_t

    def _hold(self, t: np.ndarray, acc: np.ndarray, arrival: float) -> None:
        """Merge samples into the held ones: sorted by time, the first of equal times kept."""
        arrivals = np.full(len(t), arrival)
        in_order = ((len(t) == 1 or (t[1:] > t[:-1]).all())
                    and (not len(self._held_t) or t[0] > self._held_t[-1]))
        if len(self._held_t):
            all_t = np.concatenate([self._held_t, t])
            all_acc = np.concatenate([self._held_acc, acc])
            all_arrival = np.concatenate([self._held_arrival, arrivals])
        else:
            all_t, all_acc, all_arrival = t, acc, arrivals
        if not in_order:  # the usual case needs neither sorting nor looking for repeats
            order = np.argsort(all_t, kind="stable")  # held samples first among equal times
            all_t, all_acc, all_arrival = all_t[order], all_acc[order], all_arrival[order]
            unique = np.concatenate([[True], np.diff(all_t) > 0])
            if not unique.all():
                self.duplicates += int((~unique).sum())
                all_t, all_acc, all_arrival = all_t[unique], all_acc[unique], all_arrival[unique]
        self._held_t, self._held_acc, self._held_arrival = all_t, all_acc, all_arrival

    def _commit_until(self, cut: float) -> list[Window]:
        """Commit the held samples at or before ``cut`` to the grid, in runs of equal arrival."""
        n = int(np.searchsorted(self._held_t, cut, side="right"))
        if n == 0:
            return []
        t, acc, arrival = self._held_t[:n], self._held_acc[:n], self._held_arrival[:n]
        self._held_t, self._held_acc = self._held_t[n:], self._held_acc[n:]
        self._held_arrival = self._held_arrival[n:]
        out: list[Window] = []
        if arrival[0] == arrival.min() == arrival.max():  # the usual case: one push
            self._commit(t, acc, float(arrival[0]), out)
            return out
        runs = np.flatnonzero(np.diff(arrival) != 0) + 1
        for a, b in zip(np.concatenate([[0], runs]), np.concatenate([runs, [n]]), strict=True):
            self._commit(t[a:b], acc[a:b], float(arrival[a]), out)
        return out

    def _commit(self, t: np.ndarray, acc: np.ndarray, arrival: float, out: list[Window]) -> None:
        """Put samples (in order, after the last committed one) on the grid."""
        # split at silences longer than max_gap (including the one before these samples)
        prev = np.concatenate([[self._last_t if self._last_t is not None else -np.inf], t[:-1]])
        breaks = np.flatnonzero(t - prev > self.max_gap)
        bounds = list(breaks) + [len(t)]
        start = 0
        for b in bounds:
            if b > start:
                self._interpolate(t[start:b], acc[start:b], arrival, out)
            if b < len(t):
                self._restart(t[b], acc[b], count=self._last_t is not None)
                start = b

    def _restart(self, t0: float, acc0: np.ndarray, count: bool) -> None:
        self.gaps += int(count)
        self._origin = float(t0)
        self._k = 0
        self._fill = 0
        self._last_t = None
        self._last_acc = np.asarray(acc0, dtype=np.float64)

    def _interpolate(self, t: np.ndarray, acc: np.ndarray, arrival: float, out: list[Window],
                     ts: np.ndarray | None = None) -> None:
        if self._last_t is None:  # first samples after a (re)start: the grid begins at t[0]
            ts, xs = t, acc
        else:
            if ts is None:
                ts = np.concatenate(([self._last_t], t))
            xs = np.concatenate((self._last_acc[None], acc))
        self._last_t = float(t[-1])
        self._last_acc = acc[-1].astype(np.float64)  # a copy: the batch itself is not kept
        k_last = math.floor((float(ts[-1]) - self._origin) * self.rate + 1e-9)
        if k_last < self._k:
            return
        grid = self._origin + np.arange(self._k, k_last + 1) / self.rate
        self._k = k_last + 1
        m = len(grid)
        fill = self._fill
        pending = self._pending
        i = 0
        while i < m:
            take = min(self.window - fill, m - i)
            g = grid[i : i + take]
            for axis in range(pending.shape[1]):  # straight into the partial window
                pending[fill : fill + take, axis] = np.interp(g, ts, xs[:, axis])
            fill += take
            i += take
            if fill == self.window:
                out.append(Window(self.device, float(grid[i - 1]), pending, arrival,  # handed out whole
                                  self._new_session))
                self._new_session = False
                fill = 0
                pending = self._pending = np.empty((self.window, pending.shape[1]), dtype=np.float32)
        self._fill = fill
