"""Recording files → labelled streams on the model's clock, for training and validation."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from stream.buffers import resample
from stream.decode import MAX_ACC, MAX_GYRO
from stream.recording import Recording

__all__ = ["LabelledStream", "labelled_streams", "window_labels", "IGNORE"]

IGNORE = -1  # class index of samples with no usable label

log = logging.getLogger(__name__)


@dataclass
class LabelledStream:
    """One gap-free run of one device, resampled onto the model's rate."""

    device: str
    subject: str
    x: np.ndarray  # (N, 3) float32 m/s²; (N, 6) with the gyroscope after it, rad/s
    y: np.ndarray  # (N,) int64 class index, IGNORE where unknown or not a model class


def labelled_streams(rec: Recording, classes: list[str], rate: float, max_gap: float = 1.0,
                     min_samples: int = 1, gyro: bool = False) -> list[LabelledStream]:
    """Each device's gap-free runs resampled onto ``rate``, with the accelerometer, or with ``gyro``
    the accelerometer and then the gyroscope (as ``Pipeline`` feeds a model that reads both)."""
    if gyro and rec.gyro is None:
        raise ValueError("the recording has no gyroscope (gx, gy, gz columns) for a model that reads it")
    values = np.concatenate([rec.acc, rec.gyro], axis=1) if gyro else rec.acc
    # a sample no body-worn sensor reads is left out, as the consumer rejects it (out_of_range): kept, it
    # would make the input normalisation inf and NaN (the gap it leaves is resampled as any other)
    keep = np.abs(rec.acc).max(axis=1, initial=0.0) <= MAX_ACC
    if gyro:
        keep &= np.abs(rec.gyro).max(axis=1, initial=0.0) <= MAX_GYRO
    if not keep.all():
        limits = f"|acc| > {MAX_ACC:g} m/s²" + (f" or |gyro| > {MAX_GYRO:g} rad/s" if gyro else "")
        log.warning("%d samples beyond what a body-worn sensor reads (%s) left out, as the consumer rejects "
                    "them (out_of_range)", int((~keep).sum()), limits)
    index = {c: i for i, c in enumerate(classes)}
    subjects = rec.subjects()
    out = []
    for device, rows in rec.segments():
        subject = str(subjects[rows.start])
        ok = keep[rows]
        if not ok.any():
            continue
        t, acc, labels = rec.t[rows][ok], values[rows][ok], rec.label[rows][ok]
        codes = np.array([index.get(str(lab), IGNORE) for lab in labels], dtype=np.int64)
        for grid, x in resample(t, acc.astype(np.float64), rate, max_gap):
            if len(grid) < min_samples:
                continue
            nearest = np.clip(np.searchsorted(t, grid, side="right") - 1, 0, len(t) - 1)
            out.append(LabelledStream(device, subject, x, codes[nearest]))
    return out


def window_labels(y: np.ndarray, window: int, agree: float = 0.6) -> np.ndarray:
    """Per-window label (..., L*window) → (..., L): the majority class where at least ``agree`` of the
    window holds it, else IGNORE (transitions, unknown stretches)."""
    shape = y.shape[:-1] + (y.shape[-1] // window, window)
    w = y[..., : shape[-2] * window].reshape(shape)
    k = int(max(w.max(initial=0), 0)) + 1
    counts = np.stack([(w == c).sum(axis=-1) for c in range(k)], axis=-1)  # (..., L, k)
    best = counts.argmax(axis=-1)
    ok = counts.max(axis=-1) >= agree * window
    return np.where(ok, best, IGNORE)
