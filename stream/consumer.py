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

Scale-out: with ``shared_group`` the samples come through the shared subscription
``$share/<group>/har/+/imu``, so replicas of the same group split the devices' messages between them;
with ``state_store`` (Redis) each device's state lives in the store and any replica can apply any
device's next message, in order and once (``stream.shared_state``). Labels and commands stay plain
subscriptions: every replica sees every label.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import uuid
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.finetune import LearnerConfig, OnlineLearner, Sequence
from models.state import StatefulClassifier
from stream.adapters import AdapterRouter
from stream.decode import MAX_PAYLOAD_BYTES, Rejected, SequenceCheck, decode_imu, parse_topic
from stream.labels import LabelBook, LabelledWindow, WindowHistory, decode_label
from stream.monitor import DriftEvent, Monitor
from stream.mqtt import BrokerURL, connect
from stream.persist import SERVING_MODEL, load_state, save_state
from stream.pipeline import Pipeline, Prediction
from stream.shared_state import SharedDevices, open_store
from stream.store import EventStore

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
    qos: int = 1  # subscription QoS for samples; 1 with a persistent session loses nothing on restart
    persistent: bool | None = None  # persistent session, so the broker keeps QoS 1 messages while we are
    # away; default: on when the id is stable (given, or kept in state_dir)
    learn: bool = True  # fine-tune online from labels
    learner: LearnerConfig | None = None  # fine-tuning settings (defaults when None)
    label_lateness: float = 4.0  # seconds of device time a window waits for a late label
    torch_threads: int = 1  # intra-op threads; one is fastest for serving batches on a shared machine
    state_dir: Path | None = None  # checkpoints, model versions and the event store; None keeps nothing
    checkpoint_interval: float = 30.0  # seconds between checkpoints of per-device state
    idle_timeout: float = 300.0  # seconds without samples before a device is evicted (state kept)
    max_evicted: int = 100_000  # evicted device states kept, least recently seen dropped first
    shared_group: str = ""  # subscribe to samples through $share/<group>/...: replicas split the devices
    state_store: str | None = None  # redis://host:port/db: per-device state shared by the replicas
    reorder_wait: float = 5.0  # seconds a message waits for its device's earlier ones (state_store only):
    # more than a replica's queueing delay, or a late message is taken for lost
    state_ttl: float = 7 * 86400.0  # seconds a device's shared state outlives its last message
    health_file: Path | None = None  # the latest metrics, rewritten every metrics_interval (health checks)
    adapters: tuple[str, ...] = ()  # phone formats by topic: "PATTERN = NAME[@DEVICE]" (stream.adapters)
    reorder: float = 0.0  # seconds each device's samples are held to merge out-of-order batches; MQTT keeps
    # one publisher's messages in order, so only phones that batch irregularly need it (it adds latency)

    def __post_init__(self) -> None:
        if self.shared_group and ("/" in self.shared_group or "+" in self.shared_group
                                  or "#" in self.shared_group):
            raise ValueError(f"Invalid 'shared_group' {self.shared_group!r}: no '/', '+' or '#'")
        if self.persistent is None:
            # a persistent session in a shared group would have the broker keep a share of the
            # messages for a replica that may never come back; the others should get them instead
            self.persistent = (bool(self.consumer_id) or self.state_dir is not None) and not self.shared_group
        if self.learn and self.shared_group:
            # each replica would fine-tune its own copy from its share of the labels and serve it
            log.info("online fine-tuning is off in a shared group: the replicas' models would diverge")
            self.learn = False
        if not self.consumer_id:
            # a stable id where state is kept: the broker's persistent session follows the id
            id_file = self.state_dir / "consumer-id" if self.state_dir else None
            if id_file is not None and id_file.exists():
                self.consumer_id = id_file.read_text().strip()
            else:
                self.consumer_id = f"harstream-consumer-{uuid.uuid4().hex[:6]}"
                if id_file is not None:
                    id_file.parent.mkdir(parents=True, exist_ok=True)
                    id_file.write_text(self.consumer_id)


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
        # the shared store keeps buffers itself and commits in seq order: no hold there
        self.pipeline = Pipeline(classifier, reorder=0.0 if config.state_store else config.reorder)
        self.router = AdapterRouter.from_spec(list(config.adapters), config.prefix, config.max_payload)
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
        self._evicted: OrderedDict[str, tuple] = OrderedDict()  # device -> state, seq
        self._last_seen: dict[str, float] = {}
        self.store: EventStore | None = None
        self.shared: SharedDevices | None = None
        if config.state_store:
            store = open_store(config.state_store, f"harstream:{config.prefix}", config.state_ttl)
            self.shared = SharedDevices(store, self.pipeline, self.sequence, config.reorder_wait,
                                        max_held=config.queue_size)
        if config.shared_group and self.shared is None:
            log.warning("shared group %r without a state store: a device's state stays on the replica that "
                        "had it; fine only if the broker dispatches each device to one replica (EMQX "
                        "hash_topic)", config.shared_group)
        if config.state_dir is not None:
            self._restore(classifier)
            self.store = EventStore(config.state_dir / "events.db")
        self.learner: OnlineLearner | None = None
        if config.learn:
            lc = config.learner or LearnerConfig()
            if config.state_dir is not None and lc.versions_dir is None:
                lc.versions_dir = config.state_dir / "models"
            lc.serving_version = self.pipeline.classifier.version
            self.learner = OnlineLearner(self.pipeline.classifier.model, lc, on_promote=self._on_promote,
                                         on_update=self._on_update)

    # -- checkpoints ---------------------------------------------------------------------------
    def _restore(self, classifier: StatefulClassifier) -> None:
        """Resume the fine-tuned model and every device's state from the state directory."""
        directory = self.config.state_dir
        serving = directory / SERVING_MODEL
        if serving.exists():
            try:
                model, info = load_checkpoint(serving)
                classifier.set_model(model, info["version"])
                log.info("restored fine-tuned model %s from %s", info["version"], serving)
            except (CheckpointError, ValueError) as exc:
                log.warning("not restoring %s: %s", serving, exc)
        if self.shared is not None:
            return  # device state lives in the shared store
        try:
            state = load_state(directory)
        except (ValueError, RuntimeError, OSError) as exc:
            log.warning("not restoring device state from %s: %s", directory, exc)
            return
        if state is None:
            return
        for device, tensors in state["devices"].items():
            classifier.bank.set(device, tuple(t.unsqueeze(1) for t in tensors))
        self._evicted.update(state["evicted"])
        self.sequence.restore(state["sequences"])
        log.info("restored the state of %d devices (%d evicted) saved %.0f s ago", len(state["devices"]),
                 len(state["evicted"]), time.time() - state["saved_at"])

    def checkpoint(self) -> None:
        """Save per-device state (and the serving model if it changed) to the state directory."""
        directory = self.config.state_dir
        if directory is None:
            return
        classifier = self.pipeline.classifier
        serving = directory / SERVING_MODEL
        if getattr(self, "_saved_version", None) != classifier.version:
            save_checkpoint(serving, classifier.model, {"online": True})
            self._saved_version = classifier.version
        if self.shared is not None:
            return  # device state lives in the shared store, written every cycle
        bank = classifier.bank
        devices = {d: tuple(t[:, 0] for t in bank.get(d)) for d in bank.devices()}
        save_state(directory, classifier.version, devices, self.sequence.snapshot(), dict(self._evicted))

    def _evict_idle(self) -> None:
        """Devices silent for idle_timeout leave memory; their state is kept for when they return."""
        cutoff = time.monotonic() - self.config.idle_timeout
        for device in [d for d, seen in self._last_seen.items() if seen < cutoff]:
            bank = self.pipeline.classifier.bank
            if self.shared is not None:
                self.shared.forget(device)
            elif device in bank:
                self._evicted[device] = tuple(t[:, 0] for t in bank.get(device))
                while len(self._evicted) > self.config.max_evicted:
                    self._evicted.popitem(last=False)
            self.pipeline.evict(device)
            self.monitor.forget(device)
            self.history.forget(device)
            self.labels.forget(device)
            self._pending_sequences.pop(device, None)
            del self._last_seen[device]

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
            subscriptions=[(self.imu_subscription, cfg.qos), (f"{cfg.prefix}/+/label", 1),
                           (consumer_topic(cfg.prefix, cfg.consumer_id, "command"), 1),
                           *[(self._shared_topic(t), cfg.qos) for t in self.router.subscriptions()
                             if t != f"{cfg.prefix}/+/imu"]],
            on_message=self._on_message,
            clean_session=not cfg.persistent,
        )
        self._client.publish(status, b"online", qos=1, retain=True)
        log.info("consumer %s on %s (%s), model %s (%d classes, window %.2f s)", cfg.consumer_id, cfg.broker,
                 self.imu_subscription, self.pipeline.classifier.version,
                 len(self.pipeline.classifier.classes), self.pipeline.config.window_seconds)
        if self.learner is not None:
            self.learner.start()
        self._publish_model()
        next_metrics = time.monotonic() + cfg.metrics_interval
        next_checkpoint = time.monotonic() + cfg.checkpoint_interval
        try:
            while not self._stop.is_set():
                self._drain(timeout=0.05)
                self.pipeline.release(time.monotonic())
                self._apply_swap()
                self._classify()
                if time.monotonic() >= next_metrics:
                    self._publish_metrics()
                    self._evict_idle()
                    next_metrics += cfg.metrics_interval
                if time.monotonic() >= next_checkpoint:
                    self.checkpoint()
                    next_checkpoint = time.monotonic() + cfg.checkpoint_interval
        finally:
            if self.learner is not None:
                self.learner.stop()
            self._apply_swap()
            self.checkpoint()
            if self.store is not None:
                self.store.close()
            if self.shared is not None:
                self.shared.store.close()
            self._publish_metrics()
            self._client.publish(status, b"offline", qos=1, retain=True).wait_for_publish(5)
            self._client.disconnect()
            self._client.loop_stop()
            log.info("consumer stopped: %d windows classified, rejected %s", self.stats.windows,
                     dict(self.stats.rejected) or "none")

    @property
    def imu_subscription(self) -> str:
        return self._shared_topic(f"{self.config.prefix}/+/imu")

    def _shared_topic(self, topic: str) -> str:
        return f"$share/{self.config.shared_group}/{topic}" if self.config.shared_group else topic

    def _classify(self) -> None:
        """Classify every ready window in one batched pass and publish the predictions.

        With a shared store, the held messages that are their device's next are applied first, and
        only the predictions of devices whose state was then written back are published.
        """
        shared = self.shared
        if shared is not None and shared.held:
            samples, rejected = shared.apply()
            self.stats.samples += samples
            self.stats._interval_samples += samples
            for exc in rejected:
                self.stats.rejected[exc.reason] += 1
        if shared is not None and shared.touched:
            predictions = shared.commit(self.pipeline.classify_ready())
        elif self.pipeline.pending:
            predictions = self.pipeline.classify_ready()
        else:
            return
        self._publish(predictions)
        self._after_predictions(predictions)

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
            if deadline is None and (self.pipeline.pending or (self.shared is not None and self.shared.held)):
                # from now, not from the message's arrival: behind a backlog, arrival + max_wait has
                # long passed, every window would go through the network alone and the backlog grow
                deadline = time.monotonic() + self.config.max_wait
            if deadline is not None and time.monotonic() >= deadline:
                return

    def handle(self, topic: str, payload: bytes, arrival: float) -> None:
        """Decode and buffer one message; a bad one is counted and logged, never raised."""
        self.stats.messages += 1
        try:
            if topic == consumer_topic(self.config.prefix, self.config.consumer_id, "command"):
                self._command(payload)
                return
            if not topic.startswith(self._native_head) and self.router.matches(topic):
                for batch in self.router.decode(topic, payload):  # phone formats: no seq
                    self._take(batch, arrival)
                return
            device, kind = parse_topic(topic, self.config.prefix)
            if kind == "imu":
                batch = decode_imu(payload, device, self.config.max_payload)
                if self.shared is not None:  # applied in seq order, against the shared state
                    self._last_seen[device] = arrival
                    self.shared.hold(batch, arrival)
                    return
                self.sequence.check(batch)
                self._take(batch, arrival)
            elif kind == "label":
                label, start, end = decode_label(payload)
                self.labels.add(device, label, start, end)
                if self.store is not None:
                    self.store.label(device, label, start, end)
                self.history.track(device)
        except Rejected as exc:
            self.stats.rejected[exc.reason] += 1
            log.debug("rejected %s: %s (payload %r)", topic[:80], exc, payload[:60])

    @property
    def _native_head(self) -> str:
        return f"{self.config.prefix}/"

    def _take(self, batch, arrival: float) -> None:
        """Buffer a decoded batch, bringing an evicted device's state back first."""
        device = batch.device
        if device not in self._last_seen and device in self._evicted:
            state = tuple(t.unsqueeze(1) for t in self._evicted.pop(device))
            self.pipeline.classifier.bank.set(device, state)
        self._last_seen[device] = arrival
        self.stats.samples += len(batch)
        self.stats._interval_samples += len(batch)
        self.pipeline.add(batch, arrival)

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
            if self.store is not None:
                self.store.prediction(p.device, p.t_end, p.label, body["confidence"], version, body["latency_ms"])
        self.stats.windows += len(predictions)
        self.stats._interval_windows += len(predictions)

    # -- online learning, drift, live metrics -------------------------------------------------
    def _after_predictions(self, predictions: list[Prediction]) -> None:
        cfg = self.config
        events: list[DriftEvent] = []
        for p in predictions:
            magnitude = float(np.linalg.norm(p.window, axis=1).mean())
            events += self.monitor.observe(p.device, p.t_end, magnitude, p.confidence, p.window.mean(axis=0), p.label)
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
            if self.store is not None:
                self.store.drift(e.to_dict())
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
            if self.store is not None:
                self.store.model_event(swap[1], "serving", self.learner.comparison() if self.learner else {})
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
            "evicted": len(self._evicted),
            "store": None if self.store is None else {"written": self.store.written, "dropped": self.store.dropped},
            "model": self.pipeline.classifier.version,
            "shared": None if self.shared is None else {"group": self.config.shared_group or None,
                                                        **self.shared.summary()},
            "online": self.monitor.summary(),
            "learner": None if self.learner is None else {
                "updates": self.learner.updates, "skipped": self.learner.skipped, "dropped": self.learner.dropped,
                **self.learner.comparison()},
        }
        self.last_metrics = metrics
        if self.config.health_file is not None:
            self._write_health(metrics)
        if self._client is not None:
            self._client.publish(consumer_topic(self.config.prefix, self.config.consumer_id, "metrics"),
                                 orjson.dumps(metrics), qos=0, retain=True)

    def _write_health(self, metrics: dict) -> None:
        """The latest metrics as a file, written whole (temporary file, then rename)."""
        path = self.config.health_file
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            tmp.write_bytes(orjson.dumps(metrics))
            tmp.replace(path)
        except OSError as exc:
            log.warning("cannot write the health file %s: %s", path, exc)
