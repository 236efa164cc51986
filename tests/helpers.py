"""Helpers shared by the tests that talk to a broker."""

from __future__ import annotations

import time

import numpy as np
import orjson


def wait(predicate, timeout: float = 20.0) -> bool:
    """Poll ``predicate`` every 50 ms until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def imu(seq: int, t0: float, n: int = 10, rate: float = 50.0) -> bytes:
    """A valid ``imu`` payload: ``n`` samples from device time ``t0`` at ``rate`` Hz, gravity on z."""
    t = t0 + np.arange(n) / rate
    acc = np.stack([np.sin(7 * t), np.cos(5 * t), 9.81 + np.sin(3 * t)], axis=1)
    return orjson.dumps({"seq": seq, "t": t.round(4).tolist(), "acc": acc.round(4).tolist()})
