"""The consumer service: MQTT in, batched stateful classification, predictions and metrics out.

paho's network thread only enqueues (topic, payload, arrival) into a bounded queue and returns; the
service thread decodes, buffers, classifies all ready windows in one batched pass and publishes.

Topics (prefix ``har``):
- in: ``har/+/imu`` (samples), ``har/+/label`` (truth, for fine-tuning and live metrics),
  ``har/_consumer/<id>/command`` (``{"action": "rollback", "version": v}`` or ``{"action": "promote"}``)
- out: ``har/<device>/prediction``, ``har/<device>/drift``; ``har/_consumer/<id>/status`` (retained, last
  will ``offline``); ``har/_consumer/<id>/metrics`` every ``metrics_interval`` seconds (retained);
  ``har/_consumer/<id>/model`` (retained: serving version and every version);
  ``har/_consumer/<id>/training`` (one message per fine-tuning update); ``har/_consumer/<id>/drift``
  (the overall detectors). ``_consumer`` cannot be a
  device id (ids start with a letter or digit), so the two never collide.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass

import numpy as np
import orjson

import torch

from models.finetune import LearnerConfig, OnlineLearner, Sequence
from models.state import StatefulClassifier
from stream.decode import MAX_PAYLOAD_BYTES, Rejected, SequenceCheck, decode_imu, parse_topic
from stream.labels import LabelBook, LabelledWindow, WindowHistory, decode_label
from stream.monitor import DriftEvent, Monitor
from stream.mqtt import BrokerURL, connect
from stream.pipeline import Pipeline, Prediction

__all__ = ["Consumer", "ConsumerConfig", "consumer_topic"]

log = logging.getLogger(__name__)


def consumer_topic(prefix: str, consumer_id: str, kind: str) -> str:
    return f"{prefix}/_consumer/{consumer_id}/{kind}"


@dataclass
class ConsumerConfig:
    broker: BrokerURL
    prefix: str = "har"  # topic prefix
    consumer_id: str = ""  # MQTT client id and status topic; random when empty
    queue_size: int = 200_000  # messages buffered between paho's thread and the service thread
    max_wait: float = 0.02  # seconds a ready window may wait for others to share its batch
    metrics_interval: float = 5.0  # seconds between metrics messages
    max_payload: int = MAX_PAYLOAD_BYTES
    qos: int = 0  # subscription QoS for samples
    learn: bool = True  # fine-tune online from labels
    learner: LearnerConfig | None = None  # fine-tuning settings (defaults when None)
    label_lateness: float = 4.0  # seconds of device time a window waits for a late label
    torch_threads: int = 1  # intra-op threads; one is fastest for serving batches on a shared machine

    def __post_init__(self) -> None:
        if not self.consumer_id:
            self.consumer_id = f"harstream-consumer-{uuid.uuid4().hex[:6]}"


class _Stats:
    """Counters and latencies since the start and over the current metrics interval."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.rejected: Counter[str] = Counter()
        self.samples = 0
        self.windows = 0
        self.messages = 0
        self.dropped = 0  # queue full
        self._interval_start = self.started
        self._interval_samples = 0
        self._interval_windows = 0
        self._latencies: list[float] = []

    def interval(self) -> tuple[float, int, int, np.ndarray]:
        now = time.monotonic()
        out = (now - self._interval_start, self._interval_samples, self._interval_windows,
               np.asarray(self._latencies))
        self._interval_start, self._interval_samples, self._interval_windows = now, 0, 0
        self._latencies = []
        return out


class Consumer:
    """Runs until ``stop()``; one instance per process."""

    def __init__(self, config: ConsumerConfig, classifier: StatefulClassifier) -> None:
        self.config = config
        self.pipeline = Pipeline(classifier)
        self.sequence = SequenceCheck()
        self.stats = _Stats()
        self._queue: queue.Queue[tuple[str, bytes, float]] = queue.Queue(config.queue_size)
        self._stop = threading.Event()
        self._client = None
        self.last_metrics: dict = {}
        self.labels = LabelBook()
        window_seconds = self.pipeline.config.window_seconds
        self.history = WindowHistory(window_seconds, config.label_lateness)
        self.monitor = Monitor()
        self._pending_sequences: dict[str, list[LabelledWindow]] = {}
        self._swap: tuple | None = None  # (model, version) handed over by the learner
        self._swap_lock = threading.Lock()
        self.learner: OnlineLearner | None = None
        if config.learn:
            lc = config.learner or LearnerConfig()
            lc.serving_version = classifier.version
            self.learner = OnlineLearner(classifier.model, lc, on_promote=self._on_promote,
                                         on_update=self._on_update)

    # -- paho thread: never block, never raise ------------------------------------------------
    def _on_message(self, client, userdata, message) -> None:
        try:
            self._queue.put_nowait((message.topic, message.payload, time.monotonic()))
        except queue.Full:
            self.stats.dropped += 1

    # -- service thread ------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        cfg = self.config
        # OpenMP threads that wait for a busy core turn a 3 ms batch into 300 ms: measured, see bench
        torch.set_num_threads(cfg.torch_threads)
        status = consumer_topic(cfg.prefix, cfg.consumer_id, "status")
        self._client = connect(
            cfg.broker,
            "consumer",
            client_id=cfg.consumer_id,
            will=(status, b"offline"),
            subscriptions=[(f"{cfg.prefix}/+/imu", cfg.qos), (f"{cfg.prefix}/+/label", 1),
                           (consumer_topic(cfg.prefix, cfg.consumer_id, "command"), 1)],
            on_message=self._on_message,
        )
        self._client.publish(status, b"online", qos=1, retain=True)
        log.info("consumer %s on %s, model %s (%d classes, window %.2f s)", cfg.consumer_id, cfg.broker,
                 self.pipeline.classifier.version, len(self.pipeline.classifier.classes),
                 self.pipeline.config.window_seconds)
        if self.learner is not None:
            self.learner.start()
        self._publish_model()
        next_metrics = time.monotonic() + cfg.metrics_interval
        try:
            while not self._stop.is_set():
                self._drain(timeout=0.05)
                self._apply_swap()
                if self.pipeline.pending:
                    predictions = self.pipeline.classify_ready()
                    self._publish(predictions)
                    self._after_predictions(predictions)
                if time.monotonic() >= next_metrics:
                    self._publish_metrics()
                    next_metrics += cfg.metrics_interval
        finally:
            if self.learner is not None:
                self.learner.stop()
            self._publish_metrics()
            self._client.publish(status, b"offline", qos=1, retain=True).wait_for_publish(5)
            self._client.disconnect()
            self._client.loop_stop()
            log.info("consumer stopped: %d windows classified, rejected %s", self.stats.windows,
                     dict(self.stats.rejected) or "none")

    def _drain(self, timeout: float) -> None:
        """Take messages until the queue is empty and a window has waited ``max_wait``."""
        deadline = None
        while True:
            try:
                topic, payload, arrival = self._queue.get(timeout=timeout if deadline is None else 0.001)
            except queue.Empty:
                if deadline is None or time.monotonic() >= deadline:
                    return
                continue
            self.handle(topic, payload, arrival)
            if self.pipeline.pending and deadline is None:
                deadline = arrival + self.config.max_wait
            if deadline is not None and time.monotonic() >= deadline:
                return

    def handle(self, topic: str, payload: bytes, arrival: float) -> None:
        """Decode and buffer one message; a bad one is counted and logged, never raised."""
        self.stats.messages += 1
        try:
            if topic == consumer_topic(self.config.prefix, self.config.consumer_id, "command"):
                self._command(payload)
                return
            device, kind = parse_topic(topic, self.config.prefix)
            if kind == "imu":
                batch = decode_imu(payload, device, self.config.max_payload)
                self.sequence.check(batch)
                self.stats.samples += len(batch)
                self.stats._interval_samples += len(batch)
                self.pipeline.add(batch, arrival)
            elif kind == "label":
                label, start, end = decode_label(payload)
                self.labels.add(device, label, start, end)
                self.history.track(device)
        except Rejected as exc:
            self.stats.rejected[exc.reason] += 1
            log.debug("rejected %s: %s (payload %r)", topic[:80], exc, payload[:60])

    def _publish(self, predictions: list[Prediction]) -> None:
        cfg = self.config
        classes = self.pipeline.classifier.classes
        version = self.pipeline.classifier.version
        for p in predictions:
            latency = (time.monotonic() - p.arrival) * 1000.0
            self.stats._latencies.append(latency)
            body = {
                "device": p.device,
                "t": p.t_end,
                "label": p.label,
                "confidence": round(p.confidence, 4),
                "probs": {c: round(float(v), 4) for c, v in zip(classes, p.probs)},
                "model": version,
                "latency_ms": round(latency, 2),
            }
            self._client.publish(f"{cfg.prefix}/{p.device}/prediction", orjson.dumps(body))
        self.stats.windows += len(predictions)
        self.stats._interval_windows += len(predictions)

    # -- online learning, drift, live metrics -------------------------------------------------
    def _after_predictions(self, predictions: list[Prediction]) -> None:
        cfg = self.config
        events: list[DriftEvent] = []
        for p in predictions:
            magnitude = float(np.linalg.norm(p.window, axis=1).mean())
            events += self.monitor.observe(p.device, p.t_end, magnitude, p.confidence)
            if p.device in self.history:
                self.history.add(LabelledWindow(p.device, p.t_end, p.window, p.state_before(), p.label,
                                                p.confidence))
        for w in self.history.resolve(self.labels):
            if w.label is not None:
                events += self.monitor.labelled(w.device, w.t_end, w.label, w.predicted)
            self._collect(w)
        for e in events:
            target = (consumer_topic(cfg.prefix, cfg.consumer_id, "drift") if e.device == "_all"
                      else f"{cfg.prefix}/{e.device}/drift")
            self._client.publish(target, orjson.dumps(e.to_dict()), qos=1)
            if e.signal == "error" and self.learner is not None:
                log.info("drift on %s's errors: adapting", e.device)

    def _collect(self, w: LabelledWindow) -> None:
        """Group resolved windows into sequences of k1 windows for the learner."""
        if self.learner is None:
            return
        pending = self._pending_sequences.setdefault(w.device, [])
        if pending and w.t_end - pending[-1].t_end > 1.5 * self.pipeline.config.window_seconds:
            pending.clear()  # not consecutive: a sequence must not span a gap
        pending.append(w)
        k = self.learner.config.k1
        if len(pending) < k:
            return
        index = {c: i for i, c in enumerate(self.pipeline.classifier.classes)}
        targets = torch.tensor([index.get(x.label, -1) if x.label else -1 for x in pending])
        if (targets >= 0).any():
            self.learner.submit(Sequence(
                device=w.device,
                windows=torch.from_numpy(np.stack([x.samples for x in pending])),
                targets=targets,
                state=pending[0].state,
            ))
        pending.clear()

    def _on_promote(self, model, version: str) -> None:  # learner thread
        with self._swap_lock:
            self._swap = (model, version)

    def _apply_swap(self) -> None:
        with self._swap_lock:
            swap, self._swap = self._swap, None
        if swap is not None:
            self.pipeline.classifier.set_model(*swap)
            log.info("serving model %s", swap[1])
            self._publish_model()

    def _on_update(self, report) -> None:  # learner thread; paho's publish is thread-safe
        if self._client is not None:
            self._client.publish(consumer_topic(self.config.prefix, self.config.consumer_id, "training"),
                                 orjson.dumps(report.to_dict()))

    def _publish_model(self) -> None:
        body = {"serving": self.pipeline.classifier.version, "versions": [], "updates": 0, "skipped": 0}
        if self.learner is not None:
            body.update(versions=[v.to_dict() for v in self.learner.versions], updates=self.learner.updates,
                        skipped=self.learner.skipped, comparison=self.learner.comparison())
        self._client.publish(consumer_topic(self.config.prefix, self.config.consumer_id, "model"),
                             orjson.dumps(body), qos=1, retain=True)

    def _command(self, payload: bytes) -> None:
        try:
            body = orjson.loads(payload)
            action = body.get("action") if isinstance(body, dict) else None
        except orjson.JSONDecodeError:
            action = None
        if self.learner is None or action not in ("rollback", "promote"):
            raise Rejected("bad_command", repr(payload[:60]))
        try:
            if action == "rollback":
                self.learner.rollback(str(body.get("version")))
            else:
                self.learner.promote({"forced": True, **self.learner.comparison()})
        except ValueError as exc:
            raise Rejected("bad_command", str(exc)) from None

    def _publish_metrics(self) -> None:
        elapsed, samples, windows, lat = self.stats.interval()
        pct = np.percentile(lat, [50, 95, 99]).round(2).tolist() if len(lat) else [None] * 3
        metrics = {
            "t": time.time(),
            "consumer": self.config.consumer_id,
            "uptime_s": round(time.monotonic() - self.stats.started, 1),
            "samples_per_s": round(samples / max(elapsed, 1e-9), 1),
            "windows_per_s": round(windows / max(elapsed, 1e-9), 2),
            "devices": len(self.pipeline.buffers),
            "latency_ms": {"p50": pct[0], "p95": pct[1], "p99": pct[2],
                           "max": round(float(lat.max()), 2) if len(lat) else None},
            "messages": self.stats.messages,
            "windows": self.stats.windows,
            "rejected": dict(self.stats.rejected),
            "dropped": self.stats.dropped,
            "lost_samples": self.sequence.lost_samples,
            "late_samples": sum(b.late_samples for b in self.pipeline.buffers.values()),
            "queue": self._queue.qsize(),
            "model": self.pipeline.classifier.version,
            "online": self.monitor.summary(),
            "learner": None if self.learner is None else {
                "updates": self.learner.updates, "skipped": self.learner.skipped, "dropped": self.learner.dropped,
                **self.learner.comparison()},
        }
        self.last_metrics = metrics
        if self._client is not None:
            self._client.publish(consumer_topic(self.config.prefix, self.config.consumer_id, "metrics"),
                                 orjson.dumps(metrics), qos=0, retain=True)
