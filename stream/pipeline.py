"""Samples in, predictions out: per-device buffers feeding the batched stateful classifier.

The consumer, ``harstream evaluate`` and the benchmarks all go through ``Pipeline``; only the source
of the samples differs.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

import numpy as np

from models.state import StatefulClassifier
from stream.buffers import DeviceBuffer, Window
from stream.decode import Rejected, SampleBatch, check_span

__all__ = ["Pipeline", "Prediction"]

log = logging.getLogger(__name__)

MAX_WARNED = 1000  # devices named in a "sends no gyroscope" warning; beyond, the count alone tells


@dataclass
class Prediction:
    device: str
    t_end: float  # device time of the window's last sample
    label: str
    confidence: float
    probs: np.ndarray  # (K,)
    arrival: float  # monotonic time the window's last sample was received
    window: np.ndarray  # (window, C) the samples classified (C = the model's input channels), for fine-tuning
    batch_state: tuple | None = None  # the batch's state before the window, each (layers, B, hidden)
    batch_index: int = 0  # this window's row in batch_state
    magnitude: float = 0.0  # mean |specific force| over the window (m/s²), for the drift detectors
    mean_acc: np.ndarray | None = None  # (3,) mean specific force over the window (for the drift detectors)
    reoriented: bool = False  # the device's windows are turned anew from this one on (models.orientation)
    motion: float = 0.0  # how much the window moves (stream.monitor.window_motion), for the drift detectors
    new_session: bool = False  # the first window of a new session of its device (``Window.new_session``)

    def state_before(self) -> tuple:
        """This device's state before the window, each (layers, hidden), as a copy."""
        return tuple(s[:, self.batch_index].clone() for s in self.batch_state)


class Pipeline:
    """Per-device buffers and ONE batched forward pass for all devices whose window is ready.

    A model that reads the gyroscope gets each sample's accelerometer and gyroscope side by side
    (resampled together); a batch without the gyroscope is then refused (``Rejected("no_gyro")``),
    since zeros in its place would be confidently wrong predictions.
    """

    def __init__(self, classifier: StatefulClassifier, max_gap: float = 1.0, reorder: float = 0.0) -> None:
        self.classifier = classifier
        self.max_gap = max_gap
        self.reorder = reorder  # seconds each buffer holds samples back to merge out-of-order batches
        self.buffers: dict[str, DeviceBuffer] = {}
        self._ready: list[Window] = []
        self._warned: set[str] = set()  # devices already named in a "sends no gyroscope" warning
        self._evicted_late = self._evicted_duplicates = 0  # the counts of buffers evicted since
        # samples of each device dropped as late, counted as they are dropped (in ``add``; a shared state
        # store's record brings its buffer's count back, which is not moved here), and by callers that drop
        # a message as too late for its buffer (the consumer's gap fills): named in the consumer's warning;
        # only devices with some are kept
        self.late_by_device: Counter[str] = Counter()
        self.clock_resets = 0  # grid restarts of any buffer (``DeviceBuffer.clock_resets``), counted alike

    @property
    def late_samples(self) -> int:
        """Samples dropped as late (``DeviceBuffer.late_samples``) by every buffer, evicted ones too."""
        return self._evicted_late + sum(b.late_samples for b in self.buffers.values())

    @property
    def duplicates(self) -> int:
        """Samples dropped as repeated timestamps (``DeviceBuffer.duplicates``), evicted buffers too."""
        return self._evicted_duplicates + sum(b.duplicates for b in self.buffers.values())

    @property
    def config(self):
        return self.classifier.model.config

    @property
    def pending(self) -> int:
        """Windows waiting for ``classify_ready``."""
        return len(self._ready)

    def check(self, batch: SampleBatch) -> None:
        """Raise ``Rejected("no_gyro")`` for a batch without the gyroscope the model reads (logged once
        per device), ``Rejected("bad_span")`` for one whose samples cover more device time than a sensor batch
        (``stream.decode.check_span``: native payloads are refused so when decoded, the phone formats' batches
        here); the consumer checks every batch before ``add``. ``add`` checks the gyroscope only: ``harstream
        evaluate`` feeds a recording in chunks of its own length."""
        self._check_gyro(batch)
        if len(batch.t) > 1:
            check_span(batch.t)

    def _check_gyro(self, batch: SampleBatch) -> None:
        if batch.gyro is None and self.config.input_channels == 6:
            if batch.device not in self._warned and len(self._warned) < MAX_WARNED:
                self._warned.add(batch.device)
                log.warning("device %s sends samples without the gyroscope, but model %s reads it: they are "
                            "refused (counted as rejected 'no_gyro'; a phone's gyroscope that starts late or "
                            "pauses leaves only those samples out); serve a device without one with a model "
                            "trained with --no-gyro",
                            batch.device, self.classifier.version)
            raise Rejected("no_gyro", f"{batch.device}: the model reads the gyroscope, the batch has none")

    def add(self, batch: SampleBatch, arrival: float, new_clock: bool = False) -> int:
        """Buffer ``batch``; returns how many windows it completed. ``new_clock``: it starts a new session
        of its device (``DeviceBuffer.push``)."""
        self._check_gyro(batch)
        cfg = self.config
        buffer = self.buffers.get(batch.device)
        if buffer is None:
            buffer = DeviceBuffer(batch.device, cfg.rate, cfg.window, self.max_gap, reorder=self.reorder,
                                  channels=cfg.input_channels)
            self.buffers[batch.device] = buffer
        values = batch.acc if cfg.input_channels == 3 else np.concatenate([batch.acc, batch.gyro], axis=1)
        late, resets = buffer.late_samples, buffer.clock_resets
        windows = buffer.push(batch.t, values, arrival, new_clock)
        if buffer.late_samples > late:
            self.late_by_device[batch.device] += buffer.late_samples - late
        self.clock_resets += buffer.clock_resets - resets
        self._ready.extend(windows)
        return len(windows)

    def newest(self, device: str) -> float | None:
        """Device time of the newest sample buffered for ``device`` (None: none, or no buffer)."""
        buffer = self.buffers.get(device)
        return None if buffer is None else buffer.newest

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
        orienter = self.classifier.orienter
        for group in rounds:
            windows = np.stack([w.samples for w in group])
            devices = [w.device for w in group]
            seen = [w.samples for w in group]  # what the model sees of each window, kept for fine-tuning
            changed: set[str] = set()
            if orienter is not None:  # a device worn turned is served turned back (models.orientation)
                stacked, windows = windows, orienter.apply(devices, windows)
                changed = set(orienter.changed)
                if windows is not stacked:  # own copies: a view would keep the whole batch alive
                    seen = [windows[i].copy() if d in orienter.turns else seen[i] for i, d in enumerate(devices)]
            probs, state = self.classifier.classify_with_state(devices, windows)
            best = probs.argmax(axis=1)
            # what the drift detectors watch, for the whole batch at once: the accelerometer's
            acc = windows[:, :, :3]
            squares = acc * acc
            magnitudes = np.sqrt(squares.sum(axis=2)).mean(axis=1).tolist()
            means = acc.mean(axis=1)
            # window_motion from the same squares: E[a²] - E[a]² (float32: within 1e-5 m/s² of it)
            motions = np.sqrt(np.maximum(squares.mean(axis=1).sum(axis=1) - (means * means).sum(axis=1),
                                         0.0)).tolist()
            confidence = probs[np.arange(len(group)), best].tolist()
            for i, (w, p, k) in enumerate(zip(group, probs, best.tolist(), strict=True)):
                out.append(Prediction(w.device, w.t_end, classes[k], confidence[i], p, w.arrival, seen[i],
                                      state, i, magnitudes[i], means[i], w.device in changed, motions[i],
                                      w.new_session))
        return out

    def adopt(self, device: str, buffer: DeviceBuffer) -> None:
        """Take ``device``'s buffer as a shared state store's record brings it (``stream.shared_state``): the
        counts it carries were counted where they were dropped (by this replica or another), so they are not
        counted again here; this replica's own buffer it replaces keeps its counts in the totals, as at
        ``evict``. Before, every load of a record added the device's counts again (an ops probe: 100 samples
        dropped as late, 750 and 800 in two replicas' metrics)."""
        old = self.buffers.get(device)
        if old is not None:
            self._evicted_late += old.late_samples
            self._evicted_duplicates += old.duplicates
        self._evicted_late -= buffer.late_samples
        self._evicted_duplicates -= buffer.duplicates
        self.buffers[device] = buffer

    def evict(self, device: str) -> None:
        buffer = self.buffers.pop(device, None)
        if buffer is not None:  # its counts stay in the totals: metrics are counters, never falling
            self._evicted_late += buffer.late_samples
            self._evicted_duplicates += buffer.duplicates
        self._warned.discard(device)
        self.late_by_device.pop(device, None)  # in late_samples still; kept, it grew with every device ever late
        self.classifier.bank.evict(device)
        if self.classifier.orienter is not None:
            self.classifier.orienter.evict(device)
