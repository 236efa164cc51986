"""Samples in, predictions out: per-device buffers feeding the batched stateful classifier.

The consumer, ``harstream evaluate`` and the benchmarks all go through ``Pipeline``; only the source
of the samples differs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models.state import StatefulClassifier
from stream.buffers import DeviceBuffer, Window
from stream.decode import SampleBatch

__all__ = ["Pipeline", "Prediction"]


@dataclass
class Prediction:
    device: str
    t_end: float  # device time of the window's last sample
    label: str
    confidence: float
    probs: np.ndarray  # (K,)
    arrival: float  # monotonic time the window's last sample was received
    window: np.ndarray  # (window, 3) the samples classified, for fine-tuning and drift
    batch_state: tuple | None = None  # the batch's state before the window, each (layers, B, hidden)
    batch_index: int = 0  # this window's row in batch_state
    magnitude: float = 0.0  # mean |specific force| over the window (m/s²), for the drift detectors
    mean_acc: np.ndarray | None = None  # (3,) mean specific force over the window

    def state_before(self) -> tuple:
        """This device's state before the window, each (layers, hidden), as a copy."""
        return tuple(s[:, self.batch_index].clone() for s in self.batch_state)


class Pipeline:
    """Per-device buffers and ONE batched forward pass for all devices whose window is ready."""

    def __init__(self, classifier: StatefulClassifier, max_gap: float = 1.0, reorder: float = 0.0) -> None:
        self.classifier = classifier
        self.max_gap = max_gap
        self.reorder = reorder  # seconds each buffer holds samples back to merge out-of-order batches
        self.buffers: dict[str, DeviceBuffer] = {}
        self._ready: list[Window] = []

    @property
    def config(self):
        return self.classifier.model.config

    @property
    def pending(self) -> int:
        """Windows waiting for ``classify_ready``."""
        return len(self._ready)

    def add(self, batch: SampleBatch, arrival: float) -> int:
        """Buffer ``batch``; returns how many windows it completed."""
        buffer = self.buffers.get(batch.device)
        if buffer is None:
            cfg = self.config
            buffer = DeviceBuffer(batch.device, cfg.rate, cfg.window, self.max_gap, reorder=self.reorder)
            self.buffers[batch.device] = buffer
        windows = buffer.push(batch.t, batch.acc, arrival)
        self._ready.extend(windows)
        return len(windows)

    def release(self, now: float) -> int:
        """Commit samples held for reordering that have waited long enough; returns windows completed."""
        if self.reorder <= 0:
            return 0
        before = len(self._ready)
        for buffer in self.buffers.values():
            if buffer.held:
                self._ready.extend(buffer.release(now))
        return len(self._ready) - before

    def classify_ready(self) -> list[Prediction]:
        """Classify every ready window, in as few batched passes as possible.

        A device with several ready windows needs them in order, so pass r holds each device's
        r-th window; usually there is one pass.
        """
        ready, self._ready = self._ready, []
        rounds: list[list[Window]] = []
        depth: dict[str, int] = {}
        for w in ready:
            r = depth.get(w.device, 0)
            depth[w.device] = r + 1
            if r == len(rounds):
                rounds.append([])
            rounds[r].append(w)
        classes = self.classifier.classes
        out: list[Prediction] = []
        for group in rounds:
            windows = np.stack([w.samples for w in group])
            probs, state = self.classifier.classify_with_state([w.device for w in group], windows)
            best = probs.argmax(axis=1)
            # what the drift detectors watch, for the whole batch at once
            magnitudes = np.sqrt((windows * windows).sum(axis=2)).mean(axis=1).tolist()
            means = windows.mean(axis=1)
            confidence = probs[np.arange(len(group)), best].tolist()
            for i, (w, p, k) in enumerate(zip(group, probs, best.tolist(), strict=True)):
                out.append(Prediction(w.device, w.t_end, classes[k], confidence[i], p, w.arrival, w.samples,
                                      state, i, magnitudes[i], means[i]))
        return out

    def evict(self, device: str) -> None:
        self.buffers.pop(device, None)
        self.classifier.bank.evict(device)
