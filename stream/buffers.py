"""Per-device sample buffers: resample onto the model's clock, cut windows.

Each device's samples are linearly interpolated onto a regular grid at the model's rate, computed
from the device's own timestamps (its clock offset does not matter, only its spacing). A gap longer
than ``max_gap`` seconds restarts the grid and drops the partial window, so no window ever spans a
hole in the data.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["DeviceBuffer", "Window", "resample"]


@dataclass
class Window:
    """A complete window of one device, on the model's clock."""

    device: str
    t_end: float  # device time of the window's last grid sample
    samples: np.ndarray  # (window, 3) float32 m/s²
    arrival: float  # monotonic time the sample completing it was received


def resample(t: np.ndarray, values: np.ndarray, rate: float, max_gap: float = 1.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Offline twin of ``DeviceBuffer``: (grid times, values on the grid) for each run without gaps.

    Uses the same grid (origin at the run's first sample, spacing 1/rate) and the same linear
    interpolation, so cutting the result into windows gives the windows ``DeviceBuffer`` emits.
    """
    keep = np.concatenate([[True], np.diff(t) > 0])  # drop duplicate timestamps as the buffer does
    t, values = t[keep], values[keep]
    breaks = np.flatnonzero(np.diff(t) > max_gap) + 1
    out = []
    for a, b in zip(np.concatenate([[0], breaks]), np.concatenate([breaks, [len(t)]])):
        ts = t[a:b]
        n = int(np.floor((ts[-1] - ts[0]) * rate + 1e-9)) + 1
        grid = ts[0] + np.arange(n) / rate
        cols = [np.interp(grid, ts, values[a:b, i]) for i in range(values.shape[1])]
        out.append((grid, np.stack(cols, axis=1).astype(np.float32)))
    return out


class DeviceBuffer:
    """Resampling window cutter for one device."""

    def __init__(self, device: str, rate: float, window: int, max_gap: float = 1.0) -> None:
        if rate <= 0 or window <= 0:
            raise ValueError("rate and window must be positive")
        self.device = device
        self.rate = rate
        self.window = window
        self.max_gap = max_gap
        self.late_samples = 0  # at or before the last sample already used (duplicates, reordering)
        self.gaps = 0  # grid restarts after a silence longer than max_gap
        self._last_t: float | None = None
        self._last_acc = np.zeros(3, dtype=np.float64)
        self._origin = 0.0  # grid time k is origin + k / rate
        self._k = 0  # index of the next grid sample
        self._pending = np.empty((window, 3), dtype=np.float32)
        self._fill = 0

    @property
    def last_t(self) -> float | None:
        return self._last_t

    def push(self, t: np.ndarray, acc: np.ndarray, arrival: float) -> list[Window]:
        """Add samples (t increasing, acc in m/s²); returns the windows they complete."""
        if self._last_t is not None:
            keep = t > self._last_t
            if not keep.all():
                self.late_samples += int((~keep).sum())
                t, acc = t[keep], acc[keep]
        if len(t) == 0:
            return []
        out: list[Window] = []
        # split at silences longer than max_gap (including the one before this batch)
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
        return out

    def _restart(self, t0: float, acc0: np.ndarray, count: bool) -> None:
        self.gaps += int(count)
        self._origin = float(t0)
        self._k = 0
        self._fill = 0
        self._last_t = None
        self._last_acc = np.asarray(acc0, dtype=np.float64)

    def _interpolate(self, t: np.ndarray, acc: np.ndarray, arrival: float, out: list[Window]) -> None:
        if self._last_t is None:  # first samples after a (re)start: the grid begins at t[0]
            ts, xs = t, acc
        else:
            ts = np.concatenate([[self._last_t], t])
            xs = np.concatenate([self._last_acc[None, :], acc], axis=0)
        self._last_t = float(t[-1])
        self._last_acc = np.asarray(acc[-1], dtype=np.float64)
        k_last = int(np.floor((ts[-1] - self._origin) * self.rate + 1e-9))
        if k_last < self._k:
            return
        grid = self._origin + np.arange(self._k, k_last + 1) / self.rate
        self._k = k_last + 1
        resampled = np.empty((len(grid), 3), dtype=np.float32)
        for axis in range(3):
            resampled[:, axis] = np.interp(grid, ts, xs[:, axis])
        i = 0
        while i < len(grid):
            take = min(self.window - self._fill, len(grid) - i)
            self._pending[self._fill : self._fill + take] = resampled[i : i + take]
            self._fill += take
            i += take
            if self._fill == self.window:
                out.append(Window(self.device, float(grid[i - 1]), self._pending.copy(), arrival))
                self._fill = 0
