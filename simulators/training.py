"""Simulated recordings for training: people spread over sensor placements."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from simulators.workout import simulate_recording
from stream.recording import Recording, concat_recordings

__all__ = ["simulated_training_data"]


def simulated_training_data(n_devices: int, duration: float, seed: int = 0,
                            placements: Sequence[str] = ("wrist",), exercises: Sequence[str] | None = None,
                            rate: float = 50.0) -> Recording:
    """``n_devices`` simulated people split over ``placements``; device and subject ids name the placement."""
    if n_devices < 1:
        raise ValueError(f"'n_devices' must be at least 1 (got {n_devices})")
    parts = []
    for i, placement in enumerate(placements):
        n = n_devices // len(placements) + (i < n_devices % len(placements))
        if n == 0:
            continue
        rec = simulate_recording(n, duration, seed=seed + 1000 * i, rate=rate, placement=placement,
                                 exercises=exercises)
        if len(placements) > 1:
            rec.device = np.char.add(f"{placement}-", rec.device.astype(str))
            rec.subject = rec.device.copy()
        parts.append(rec)
    return concat_recordings(parts)
