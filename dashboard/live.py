"""The dashboard's live state: one MQTT subscriber per server process feeding a bounded in-memory store.

``LiveStore`` parses every message the consumer, the devices and people publish (DESIGN.md, "MQTT
contract") and keeps a bounded history per device and per consumer. ``LiveFeed`` owns the one paho
client that subscribes to all of it and publishes what the dashboard sends (labels, model commands).
Neither needs Streamlit: the app wraps one ``LiveFeed`` in ``st.cache_resource``.

Memory is bounded by construction: at most ``max_devices`` devices and ``max_consumers`` consumers
are tracked (messages of others are dropped and counted), and every per-device and per-consumer
history is a ring buffer. With the defaults a device streaming at 50 Hz takes about 40 to 90 kB (10 s
of samples at ~50 B each, 200 predictions at ~300 B each): 1000 devices, some 40 to 90 MB. A device
silent for ``forget_after`` seconds (10 minutes; ``HARSTREAM_DASHBOARD_FORGET_AFTER``) is forgotten, so
memory follows the devices streaming now, not every device id ever seen; an "offline" status alone (a
device's retained last will, on subscribing) makes no device.

paho's network thread only parses and appends under a lock; readers take copies under the same lock
and do the heavy work (concatenation, frames) outside it.

Examples
--------
>>> store = LiveStore(max_predictions=2)
>>> for k in range(3):
...     store.handle("har/watch-1/prediction", orjson.dumps(
...         {"t": 10.0 + k, "label": "squat", "confidence": 0.9, "probs": {"squat": 0.9, "rest": 0.1}}))
>>> [p.t for p in store.device("watch-1").predictions]
[11.0, 12.0]
>>> store.handle("har/watch-1/prediction", b"{oops")
>>> store.counters()["malformed"]
{'prediction/bad_json': 1}
"""

from __future__ import annotations

import itertools
import logging
import operator
import os
import sys
import threading
import time
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import orjson

from stream.decode import Rejected, decode_imu, valid_device
from stream.mqtt import BrokerURL, connect

__all__ = [
    "ALL_DEVICES",
    "CONSUMER",
    "ConsumerView",
    "DeviceRow",
    "DeviceView",
    "DevicesOverview",
    "ENV_FORGET_AFTER",
    "FORGET_AFTER",
    "Drift",
    "Label",
    "LiveFeed",
    "LiveStore",
    "Malformed",
    "Prediction",
    "TrainingStep",
]

log = logging.getLogger(__name__)

CONSUMER = "_consumer"  # <prefix>/_consumer/<id>/<kind>; cannot be a device id
ALL_DEVICES = "(all devices)"  # the device named for a consumer's overall drift detectors
MAX_NAME = 64  # longest label, detector, signal or model version kept
KINDS = frozenset(("imu", "prediction", "label", "drift", "status", "metrics", "model", "training", "command"))
ANSWERS_KEPT = 32  # model messages answering a command with an id, kept per consumer (ConsumerView.answers)
_ORDER = operator.itemgetter(0, 1, 2)  # LiveStore.overview's order of rows
FORGET_AFTER = 600.0  # s: a device silent this long is forgotten (LiveStore.forget_after)
ENV_FORGET_AFTER = "HARSTREAM_DASHBOARD_FORGET_AFTER"  # seconds; sets the default of forget_after


def default_forget_after() -> float:
    """``HARSTREAM_DASHBOARD_FORGET_AFTER`` (seconds, positive) when set and valid, else FORGET_AFTER."""
    raw = os.environ.get(ENV_FORGET_AFTER, "").strip()
    if raw:
        try:
            value = float(raw)
        except ValueError:
            value = float("nan")
        if 0 < value < float("inf"):
            return value
        log.warning("ignoring %s=%r: not a positive number of seconds; devices are forgotten after %.0f s of "
                    "silence", ENV_FORGET_AFTER, raw, FORGET_AFTER)
    return FORGET_AFTER


class Malformed(Exception):
    """A payload the dashboard cannot use; ``reason`` is short and machine-readable."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Prediction(NamedTuple):
    t: float  # device clock, end of the window, s
    label: str
    confidence: float
    classes: tuple[str, ...]  # shared between predictions of the same model
    packed_probs: bytes  # float32 per class: a third of the memory of a small numpy array
    model: str | None
    latency_ms: float | None
    received: float  # wall clock (time.time()) at arrival

    @property
    def probs(self) -> np.ndarray:
        """(len(classes),) float32, read-only."""
        return np.frombuffer(self.packed_probs, dtype=np.float32)


class Label(NamedTuple):
    start: float  # device clock, s
    end: float | None  # None: holds until the next label
    label: str
    received: float


class Drift(NamedTuple):
    t: float  # device clock, s
    detector: str
    signal: str  # what the detector watched
    value: float | None
    needs_labels: bool  # seen where no labels arrive: only labels can tell whether accuracy suffers
    received: float


class TrainingStep(NamedTuple):
    t: float
    version: str | None
    loss: float | None
    grad_norm: float | None
    clipped: bool
    skipped: bool
    received: float


@dataclass(frozen=True)
class DeviceRow:
    """One line of the overview."""

    device: str
    status: str | None  # retained "online" / "offline", None when never published
    label: str | None  # latest prediction
    confidence: float | None
    model: str | None
    truth: str | None  # latest true label received
    drift_recent: int  # detections received within the store's drift_recent_seconds
    last_drift: str | None  # "detector/signal" of the latest detection
    last_seen: float | None  # wall clock of the latest message from or about the device
    predictions: int  # predictions kept
    predicted_at: float | None = None  # wall clock at the arrival of the latest prediction
    hop: float | None = None  # device seconds between its latest predictions (a window's step); None: one or none


@dataclass(frozen=True)
class DevicesOverview:
    """What the overview shows of the devices (``LiveStore.overview``): counts over every device tracked, and
    the rows of the most recently heard from among those whose id matches."""

    total: int  # devices tracked
    online: int  # status "online" and heard from within heard_within
    streaming: int  # heard from within active_within
    drifting: int  # with a detection received within the store's drift_recent_seconds
    matching: int  # devices whose id contains the filter (all of them without one)
    rows: list[DeviceRow]  # at most ``limit`` of the matching ones, most recently heard from first


@dataclass(frozen=True)
class DeviceView:
    """Copies of everything kept about one device."""

    device: str
    status: str | None
    last_seen: float | None
    trace_t: np.ndarray  # (n,) device clock, s
    trace_acc: np.ndarray  # (n, 3) specific force, m/s²
    predictions: list[Prediction]
    labels: list[Label]
    drift: list[Drift]
    device_time: float | None  # latest sample or prediction time, device clock

    @property
    def hop(self) -> float | None:
        """Device seconds between its latest predictions (a window's step), None below two."""
        return _hop([p.t for p in self.predictions[-5:]])

    def truth_at(self, t: float) -> str | None:
        """The true label at device time ``t``, from the labels received (None when unknown), as the consumer
        reads them (stream.labels.LabelBook): the latest span received that covers ``t`` wins over the label
        that holds then (the one that began last)."""
        span = held = None
        for lab in self.labels:  # in order of arrival
            if lab.end is not None:
                if lab.start <= t <= lab.end:
                    span = lab
            elif lab.start <= t and (held is None or lab.start >= held.start):
                held = lab
        best = span or held
        return best.label if best else None


@dataclass(frozen=True)
class ConsumerView:
    consumer: str
    status: str | None
    metrics: dict | None  # latest metrics message
    metrics_received: float | None
    history: list[tuple[float, dict]]  # (wall clock at arrival, metrics)
    model: dict | None  # latest retained model message
    training: list[TrainingStep]
    commands: list[tuple[float, dict]] = field(default_factory=list)  # commands seen on the broker
    # the latest model messages that answer a command with an id (their ``answers``, ``serving`` and
    # ``refused``), oldest first: a later one (an automatic promotion) replaces the retained ``model``, and
    # with it the answer a page waits for
    answers: list[dict] = field(default_factory=list)

    @property
    def metrics_time(self) -> float | None:
        """Wall clock of the latest metrics: their own ``t`` (a retained message can be old), else arrival."""
        t = (self.metrics or {}).get("t")
        if isinstance(t, (int, float)) and not isinstance(t, bool):
            return float(t)
        return self.metrics_received


def _hop(times: list[float]) -> float | None:
    """The median positive step between prediction times (any order); None without one."""
    steps = sorted(abs(b - a) for a, b in itertools.pairwise(times) if b != a)
    return steps[len(steps) // 2] if steps else None


class _DeviceState:
    __slots__ = ("trace", "trace_samples", "last_t", "last_t_received", "predictions", "labels", "drift",
                 "status", "last_seen", "touched")

    def __init__(self, store: LiveStore, now: float) -> None:
        self.trace: deque[tuple[np.ndarray, np.ndarray]] = deque()
        self.trace_samples = 0
        self.last_t: float | None = None  # latest sample or prediction time, device clock
        self.last_t_received: float | None = None  # wall clock when last_t arrived
        self.predictions: deque[Prediction] = deque(maxlen=store.max_predictions)
        self.labels: deque[Label] = deque(maxlen=store.max_labels)
        self.drift: deque[Drift] = deque(maxlen=store.max_drift)
        self.status: str | None = None
        self.last_seen: float | None = None
        # wall clock of the latest message about the device that is not a retained copy (else of its first):
        # silent for the store's forget_after since, it is forgotten
        self.touched = now

    def saw(self, t: float | None, now: float) -> None:
        self.last_seen = now
        if t is not None and (self.last_t is None or t >= self.last_t):
            self.last_t, self.last_t_received = t, now


class _ConsumerState:
    __slots__ = ("status", "metrics", "metrics_received", "history", "model", "training", "drift", "commands",
                 "answers")

    def __init__(self, store: LiveStore) -> None:
        self.status: str | None = None
        self.metrics: dict | None = None
        self.metrics_received: float | None = None
        self.history: deque[tuple[float, dict]] = deque(maxlen=store.max_metrics)
        self.model: dict | None = None
        self.training: deque[TrainingStep] = deque(maxlen=store.max_training)
        self.drift: deque[Drift] = deque(maxlen=store.max_drift)  # the consumer's overall detectors
        self.commands: deque[tuple[float, dict]] = deque(maxlen=50)
        self.answers: deque[dict] = deque(maxlen=ANSWERS_KEPT)


# -- payload parsing (pure) -----------------------------------------------------------------------
def _object(payload: bytes) -> dict:
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError:
        raise Malformed("bad_json") from None
    if not isinstance(body, dict):
        raise Malformed("not_object")
    return body


def _number(value: object, reason: str, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
        raise Malformed(reason)
    return float(value)


def _name(value: object, reason: str, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_NAME:
        raise Malformed(reason)
    return value


def _drift(body: dict, now: float) -> Drift:
    return Drift(t=_number(body.get("t"), "bad_t"),
                 detector=_name(body.get("detector"), "bad_detector"),
                 signal=_name(body.get("signal"), "bad_signal"),
                 value=_number(body.get("value"), "bad_value", optional=True),
                 needs_labels=body.get("needs_labels") is True,
                 received=now)


# -- shapes of the consumer's messages: what the pages read, and of which type ---------------------------
# A retained message of another shape (an older or foreign consumer) would break a page: a field of the
# wrong type is dropped where the message is taken in (counted, ``<kind>/bad_field``), as if absent.
def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _is_scalar(value: object) -> bool:
    return value is None or isinstance(value, (str, bool)) or _is_number(value)


def _is_counts(value: object) -> bool:
    return isinstance(value, dict) and all(_is_number(v) for v in value.values())


def _is_confusion(value: object) -> bool:
    if not isinstance(value, dict):
        return False
    labels, matrix = value.get("labels"), value.get("matrix")
    if labels is None and matrix is None:
        return True
    return (isinstance(labels, list) and all(isinstance(x, str) for x in labels) and isinstance(matrix, list)
            and len(matrix) == len(labels)
            and all(isinstance(row, list) and all(_is_number(c) for c in row) for row in matrix))


def _is_created(value: object) -> bool:  # epoch seconds (shown as a date), or text shown as it is
    return value is None or isinstance(value, str) or (_is_number(value) and 0 <= value < 4e9)


_NUMBERS = dict.fromkeys
_LEARNER = {**_NUMBERS(("updates", "adapter_updates", "dropped", "skipped", "windows", "serving_accuracy",
                        "challenger_accuracy", "restarts", "lost_sequences"), _is_number),
            **_NUMBERS(("alive", "restarting"), lambda v: isinstance(v, bool)),
            "adapt": lambda v: v in ("device", "shared", "both")}
_METRICS = {
    **_NUMBERS(("t", "samples_per_s", "windows_per_s", "devices", "lost_samples", "messages", "windows",
                "late_samples", "dropped", "queue"), _is_number),
    "model": _is_scalar,
    "latency_ms": _NUMBERS(("p50", "p95", "p99", "max"), _is_number),
    "rejected": _is_counts,
    "online": {**_NUMBERS(("accuracy", "rolling_accuracy", "kappa", "estimated_accuracy", "labelled_windows",
                           "devices_needing_labels"), _is_number),
               "needs_labels": _is_scalar,
               "needing_labels": lambda v: isinstance(v, list) and all(_is_scalar(x) for x in v),
               "per_class_recall": _is_counts, "confusion": _is_confusion},
    "learner": _LEARNER,
}
_VERSION = {**_NUMBERS(("version", "parent", "path"), _is_scalar), "created": _is_created, "metrics": dict}
_MODEL = {"serving": _is_scalar, "updates": _is_number, "skipped": _is_number,
          "answers": lambda v: isinstance(v, str | int) and not isinstance(v, bool),
          "comparison": _LEARNER, "versions": [_VERSION],
          "refused": {**_NUMBERS(("action", "version", "reason"), _is_scalar), "t": _is_number}}


def _shaped(value: object, shape, dropped: list[int]) -> object:
    """``value`` with what does not fit ``shape`` taken out: a dict (known keys checked, others kept), a
    one-item list (every item of that shape; others left out), a type, or a predicate. None fits any."""
    if value is None:
        return None
    if isinstance(shape, dict):
        if not isinstance(value, dict):
            raise _Misfit
        out = {}
        for key, item in value.items():
            if key not in shape:
                out[key] = item
                continue
            try:
                out[key] = _shaped(item, shape[key], dropped)
            except _Misfit:
                dropped[0] += 1
        return out
    if isinstance(shape, list):
        if not isinstance(value, list):
            raise _Misfit
        out = []
        for item in value:
            try:
                out.append(_shaped(item, shape[0], dropped))
            except _Misfit:
                dropped[0] += 1
        return out
    if isinstance(shape, type):
        if not isinstance(value, shape):
            raise _Misfit
        return value
    if not shape(value):
        raise _Misfit
    return value


class _Misfit(Exception):
    pass


def _repeats(metrics: dict, held: dict) -> bool:
    """Whether a retained metrics message says nothing new beside the latest held: by the consumer's own time
    ``t`` (wall clock of publication, in every metrics message of stream/consumer.py), not later than the held
    one's; where either lacks ``t`` (a foreign consumer), by being the same message."""
    t, held_t = metrics.get("t"), held.get("t")
    if _is_number(t) and _is_number(held_t):
        return t <= held_t
    return metrics == held


def _status(payload: bytes) -> str:
    status = payload.strip().decode("ascii", "replace").lower()
    if status not in ("online", "offline"):
        raise Malformed("bad_status")
    return status


class LiveStore:
    """Thread-safe, bounded history of everything published under one prefix.

    Parameters
    ----------
    prefix
        Topic prefix (``har``).
    max_devices, max_consumers
        Devices and consumers tracked; messages about further ones are dropped and counted.
    trace_seconds, max_trace_samples
        The raw accelerometer tail kept per device: the last ``trace_seconds`` of device time, at
        most ``max_trace_samples`` samples.
    max_predictions, max_labels, max_drift
        Ring buffer sizes per device.
    max_metrics, max_training
        Ring buffer sizes per consumer (metrics messages, fine-tuning updates).
    max_payload
        Larger payloads are dropped unread.
    drift_recent_seconds
        A device's drift flag counts detections received within this many seconds.
    evict_after
        When ``max_devices`` are tracked, a new device replaces the one silent the longest if that one
        has been silent this many seconds; otherwise the new device's messages are dropped.
    forget_after
        A device no message has come about for this many seconds (retained copies do not count) is
        forgotten, everything kept of it with it but an "online" status (the broker sends that once, retained,
        and a device that resumes publishes it no more; ``max_devices`` of them at most); it comes back with
        its next message. Time is the arrival time of the devices' messages the store takes (``now``), so a
        store fed the past (``load_history``) keeps what was recent then, and one no device message reaches
        (every device stopped) keeps the last ones. Default: ``HARSTREAM_DASHBOARD_FORGET_AFTER``, else 600 s.
    """

    def __init__(
        self,
        prefix: str = "har",
        *,
        max_devices: int = 10_000,
        max_consumers: int = 64,
        trace_seconds: float = 10.0,
        max_trace_samples: int = 1000,
        max_predictions: int = 200,
        max_labels: int = 200,
        max_drift: int = 200,
        max_metrics: int = 720,
        max_training: int = 2000,
        max_payload: int = 256 * 1024,
        drift_recent_seconds: float = 300.0,
        evict_after: float = 60.0,
        forget_after: float | None = None,
    ) -> None:
        if not prefix or "+" in prefix or "#" in prefix:
            raise ValueError(f"Invalid 'prefix' {prefix!r}: a non-empty topic without wildcards")
        sizes = dict(max_devices=max_devices, max_consumers=max_consumers,
                     max_trace_samples=max_trace_samples, max_predictions=max_predictions,
                     max_labels=max_labels, max_drift=max_drift, max_metrics=max_metrics,
                     max_training=max_training, max_payload=max_payload)
        for name, value in sizes.items():
            if value < 1:
                raise ValueError(f"Invalid {name!r}: {value}; must be at least 1")
        if trace_seconds <= 0:
            raise ValueError(f"Invalid 'trace_seconds': {trace_seconds}; must be positive")
        forget_after = default_forget_after() if forget_after is None else forget_after
        if not 0 < forget_after < float("inf"):
            raise ValueError(f"Invalid 'forget_after': {forget_after}; must be a positive number of seconds")
        self.prefix = prefix
        self.max_devices = max_devices
        self.max_consumers = max_consumers
        self.trace_seconds = trace_seconds
        self.max_trace_samples = max_trace_samples
        self.max_predictions = max_predictions
        self.max_labels = max_labels
        self.max_drift = max_drift
        self.max_metrics = max_metrics
        self.max_training = max_training
        self.max_payload = max_payload
        self.drift_recent_seconds = drift_recent_seconds
        self.evict_after = evict_after
        self.forget_after = float(forget_after)
        self._reset()

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._devices: OrderedDict[str, _DeviceState] = OrderedDict()  # least recently heard from first
        self._evicted = 0
        self._forgotten = 0
        # devices forgotten (or evicted) while "online": a device that resumes streaming does not publish its
        # status again, and came back "? unknown", left out of the overview's online count; an id each, at most
        # max_devices, dropped at its "offline" (nothing is made of that alone) or when it comes back
        self._online_left: OrderedDict[str, None] = OrderedDict()
        # the latest arrival time of a device's message (not a retained copy): silences are measured in it
        self._clock = float("-inf")
        self._next_sweep = float("-inf")
        self._consumers: dict[str, _ConsumerState] = {}
        self._history_drift: deque[Drift] = deque(maxlen=self.max_drift)  # overall detectors, of no known consumer
        self._classes: dict[tuple[str, ...], tuple[str, ...]] = {}  # interned class lists
        self._received: Counter[str] = Counter()
        self._malformed: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()

    # -- writing (paho's thread) ---------------------------------------------------------------
    def handle(self, topic: str, payload: bytes, now: float | None = None, retained: bool = False) -> None:
        """Take one message; a bad one is counted, never raised.

        ``retained``: the broker's stored copy, sent on subscribing; it says nothing about when the device
        was last heard from.
        """
        now = time.time() if now is None else now
        parts = topic[len(self.prefix) + 1:].split("/") if topic.startswith(self.prefix + "/") else []
        kind = parts[-1] if parts and parts[-1] in KINDS else "other"  # counters keyed on a fixed set
        if not payload:
            return  # an empty message clears a retained one: nothing to show
        try:
            if len(payload) > self.max_payload:
                self._count(self._dropped, "oversize")
                return
            if len(parts) == 3 and parts[0] == CONSUMER:
                self._handle_consumer(parts[1], kind, payload, now, retained)
            elif len(parts) == 2 and parts[0] != CONSUMER:
                if now > self._clock and not retained:
                    self._forget_silent(now)
                self._handle_device(parts[0], kind, payload, now, retained)
            else:
                raise Malformed("bad_topic")
        except Malformed as exc:
            self._count(self._malformed, f"{kind}/{exc.reason}")
            log.debug("ignored %s: %s (payload %r)", topic[:80], exc.reason, payload[:60])
        except Exception:  # never let one message stop paho's loop
            self._count(self._malformed, f"{kind}/error")
            log.warning("error handling %s (payload %r)", topic[:80], payload[:60], exc_info=True)

    def handle_history_drift(self, payload: bytes, now: float) -> None:
        """A detection of a consumer's overall detectors (device ``_all``) from its event store: kept beside
        the consumers' own (shown as ALL_DEVICES) without making up a consumer to hold it."""
        try:
            record = _drift(_object(payload), now)
        except Malformed as exc:
            self._count(self._malformed, f"drift/{exc.reason}")
            return
        with self._lock:
            self._received["drift"] += 1
            self._history_drift.append(record)

    def _count(self, counter: Counter, key: str) -> None:
        with self._lock:
            counter[key] += 1

    def _forget_silent(self, now: float) -> None:
        """Move the store's clock to ``now`` and, at most every tenth of ``forget_after`` (10 s at most),
        forget the devices no message has come about for ``forget_after`` seconds."""
        with self._lock:
            if now <= self._clock:
                return
            self._clock = now
            if now < self._next_sweep:
                return
            self._next_sweep = now + min(self.forget_after / 10, 10.0)
            horizon = now - self.forget_after
            # the devices are in the order of their latest message, near enough (one from the event store's
            # history can be older than a live one): a whole pass, a millisecond or two at 10,000 devices
            silent = [device for device, s in self._devices.items() if s.touched < horizon]
            for device in silent:
                self._left(device, self._devices.pop(device))
            self._forgotten += len(silent)

    def _left(self, device: str, state: _DeviceState) -> None:
        """``device`` (``state``) is no longer tracked: its "online" is kept for its return (call with the lock)."""
        if state.status == "online":
            self._online_left[device] = None
            self._online_left.move_to_end(device)
            while len(self._online_left) > self.max_devices:
                self._online_left.popitem(last=False)

    def _device(self, device: str, now: float) -> _DeviceState | None:
        """The device's state, created if there is room (call with the lock held).

        Devices are kept in the order of their latest message: when the store is full, the one silent
        the longest makes room if it has been silent ``evict_after`` seconds; else the new one is dropped.
        """
        state = self._devices.get(device)
        if state is not None:
            self._devices.move_to_end(device)
            return state
        if now < self._clock - self.forget_after:
            self._dropped["too_old"] += 1  # from the event store's history: a device forgotten by now
            return None
        if len(self._devices) >= self.max_devices:
            oldest = self._devices[next(iter(self._devices))]
            if oldest.last_seen is not None and now - oldest.last_seen < self.evict_after:
                self._dropped["too_many_devices"] += 1
                return None
            self._left(*self._devices.popitem(last=False))
            self._evicted += 1
        state = self._devices[device] = _DeviceState(self, now)
        if self._online_left and device in self._online_left:  # back: its status as the broker last said
            del self._online_left[device]
            state.status = "online"
        return state

    def _handle_device(self, device: str, kind: str, payload: bytes, now: float, retained: bool) -> None:
        if not valid_device(device):
            raise Malformed("bad_device")
        # parse outside the lock; only appends happen under it
        if kind == "imu":
            try:
                batch = decode_imu(payload, device, self.max_payload)
            except Rejected as exc:
                raise Malformed(exc.reason) from None
            record = (batch.t, batch.acc)
        elif kind == "prediction":
            record = self._parse_prediction(_object(payload), now)
        elif kind == "label":
            record = self._parse_label(_object(payload), now)
        elif kind == "drift":
            record = _drift(_object(payload), now)
        elif kind == "status":
            record = _status(payload)
        else:
            raise Malformed("unknown_kind")
        with self._lock:
            self._received[kind] += 1
            if kind == "status" and record == "offline" and device not in self._devices:
                # a device's last will, or a stop long ago, kept retained by the broker for good: nothing
                # to show of a device not otherwise heard from (each id ever seen would stay a ghost)
                self._dropped["offline_unknown_device"] += 1
                self._online_left.pop(device, None)  # one forgotten "online" has stopped since
                return
            state = self._device(device, now)
            if state is None:
                return
            if not retained and now > state.touched:
                state.touched = now
            if kind == "imu":
                if state.last_t is not None and record[0][-1] < state.last_t - self.trace_seconds:
                    self._new_clock(state)  # the device clock went back (a restart, a replay from its start)
                self._append_trace(state, *record)
                state.saw(float(record[0][-1]), now)
            elif kind == "prediction":
                if state.predictions and record.t < state.predictions[-1].t - self.trace_seconds:
                    # the consumer's windows go back only when the device's clock restarted: the last
                    # session's predictions are on another clock, and so is the device clock where no
                    # samples of the device reach the dashboard (a phone served through an adapter)
                    state.predictions.clear()
                    if state.last_t is not None and record.t < state.last_t - self.trace_seconds:
                        self._new_clock(state)
                # one point per window: a consumer journals a cycle before publishing it, so it never
                # classifies a window twice, but a replica without a state directory (no journal) or
                # a replayed store can repeat one
                recent = list(itertools.islice(reversed(state.predictions), 4))
                if any(p.t == record.t for p in recent):
                    self._received["duplicate_prediction"] += 1
                    return
                state.predictions.append(record)
                state.saw(record.t, now)
            elif kind == "label":
                state.labels.append(record)
            elif kind == "drift":
                state.drift.append(record)
            else:
                state.status = record
                if not retained:
                    state.last_seen = now

    @staticmethod
    def _new_clock(state: _DeviceState) -> None:
        """The device clock went back: what was kept on the old one (its samples, its time) begins anew."""
        state.trace.clear()
        state.trace_samples = 0
        state.last_t = None

    def _append_trace(self, state: _DeviceState, t: np.ndarray, acc: np.ndarray) -> None:
        if len(t) > self.max_trace_samples:
            t, acc = t[-self.max_trace_samples:], acc[-self.max_trace_samples:]
        state.trace.append((t, acc))
        state.trace_samples += len(t)
        newest = max(float(t[-1]), state.last_t if state.last_t is not None else float("-inf"))
        while state.trace and (state.trace_samples > self.max_trace_samples
                               or state.trace[0][0][-1] < newest - self.trace_seconds):
            old = state.trace.popleft()
            state.trace_samples -= len(old[0])

    def _parse_prediction(self, body: dict, now: float) -> Prediction:
        probs = body.get("probs") or {}
        if not isinstance(probs, dict) or len(probs) > 256:
            raise Malformed("bad_probs")
        classes = tuple(probs)
        if not all(isinstance(c, str) and 0 < len(c) <= MAX_NAME for c in classes):
            raise Malformed("bad_probs")
        try:
            values = np.asarray(list(probs.values()), dtype=np.float32)
        except (TypeError, ValueError):
            raise Malformed("bad_probs") from None
        if not np.isfinite(values).all():
            raise Malformed("bad_probs")
        confidence = _number(body.get("confidence"), "bad_confidence")
        if not 0.0 <= confidence <= 1.0:
            raise Malformed("bad_confidence")
        with self._lock:
            if len(self._classes) < 64:
                classes = self._classes.setdefault(classes, classes)
        model = body.get("model")
        return Prediction(
            t=_number(body.get("t"), "bad_t"),
            label=sys.intern(_name(body.get("label"), "bad_label")),  # one copy per name, not per message
            confidence=confidence,
            classes=classes,
            packed_probs=values.tobytes(),
            model=sys.intern(str(model)[:MAX_NAME]) if model is not None else None,
            latency_ms=_number(body.get("latency_ms"), "bad_latency", optional=True),
            received=now,
        )

    @staticmethod
    def _parse_label(body: dict, now: float) -> Label:
        # as the consumer takes them (stream.labels.decode_label): "t", or "start" before "end"
        label = _name(body.get("label"), "bad_label")
        if body.get("t") is not None:
            return Label(_number(body["t"], "bad_t"), None, label, now)
        start = _number(body.get("start"), "bad_t")
        end = _number(body.get("end"), "bad_t")
        if not end > start:
            raise Malformed("bad_t")
        return Label(start, end, label, now)

    def _handle_consumer(self, consumer: str, kind: str, payload: bytes, now: float, retained: bool) -> None:
        if not consumer or len(consumer) > 128:
            raise Malformed("bad_consumer")
        if kind == "status":
            record = _status(payload)
        elif kind in ("metrics", "model", "command"):
            record = _object(payload)
            if kind == "model" and not isinstance(record.get("versions", []), list):
                raise Malformed("bad_versions")
            if kind != "command":
                dropped = [0]
                record = _shaped(record, _METRICS if kind == "metrics" else _MODEL, dropped)
                if dropped[0]:
                    self._count(self._malformed, f"{kind}/bad_field")
        elif kind == "drift":
            record = _drift(_object(payload), now)
        elif kind == "training":
            body = _object(payload)
            version = body.get("version")
            record = TrainingStep(
                t=_number(body.get("t", now), "bad_t"),
                version=str(version)[:MAX_NAME] if version is not None else None,
                loss=_number(body.get("loss"), "bad_loss", optional=True),
                grad_norm=_number(body.get("grad_norm"), "bad_grad_norm", optional=True),
                clipped=bool(body.get("clipped", False)),
                skipped=bool(body.get("skipped", False)),
                received=now,
            )
        else:
            raise Malformed("unknown_kind")
        with self._lock:
            self._received[f"consumer/{kind}"] += 1
            state = self._consumers.get(consumer)
            if state is None:
                if len(self._consumers) >= self.max_consumers:
                    # the oldest heard of that went offline makes room: a killed consumer's last will stays
                    # retained on the broker for good, and max_consumers of them hid every new one
                    gone = next((c for c, st in self._consumers.items() if st.status == "offline"), None)
                    if gone is None:
                        self._dropped["too_many_consumers"] += 1
                        return
                    del self._consumers[gone]
                    self._dropped["offline_consumers_forgotten"] += 1
                state = self._consumers[consumer] = _ConsumerState(self)
            if kind == "status":
                state.status = record
            elif kind == "metrics":
                if retained and state.metrics is not None and _repeats(record, state.metrics):
                    # the broker's copy of metrics already held, sent again on every (re)subscription: no
                    # new point (nor a new arrival time: it says nothing of when the consumer was heard from)
                    self._received["consumer/metrics_repeated"] += 1
                    return
                state.metrics, state.metrics_received = record, now
                state.history.append((now, record))
            elif kind == "model":
                state.model = record
                if record.get("answers") is not None:  # what it says of the command, not its versions
                    state.answers.append({k: record[k] for k in ("answers", "serving", "refused") if k in record})
            elif kind == "training":
                state.training.append(record)
            elif kind == "drift":
                state.drift.append(record)
            else:
                state.commands.append((now, record))

    # -- reading (any thread) ------------------------------------------------------------------
    def device_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._devices)

    def devices(self, now: float | None = None) -> list[DeviceRow]:
        """One row per device, sorted by id."""
        now = time.time() if now is None else now
        with self._lock:
            rows = [self._row(device, s, now) for device, s in self._devices.items()]
        rows.sort(key=lambda r: r.device)
        return rows

    def overview(self, now: float | None = None, *, limit: int = 200, contains: str = "",
                 heard_within: float = 30.0, active_within: float = 10.0) -> DevicesOverview:
        """Counts over every device, and rows of at most ``limit`` of those whose id contains ``contains``
        (any case), the most recently heard from first: those heard from within ``active_within`` by id (a
        table refreshed every second keeps its order while they stream), then the others by how long they
        have been silent, then those only the broker's retained status named, by id. Rows are made for those
        shown only: a page refreshed every second stays cheap at thousands of devices."""
        now = time.time() if now is None else now
        needle = contains.strip().lower()
        online = streaming = drifting = 0
        matching = []
        with self._lock:
            for device, s in self._devices.items():
                seen = s.last_seen
                if seen is not None:
                    online += s.status == "online" and now - seen <= heard_within
                    streaming += now - seen < active_within
                # detections are kept in the order they arrived: the last tells whether any is recent
                drifting += bool(s.drift) and now - s.drift[-1].received <= self.drift_recent_seconds
                if not needle or needle in device.lower():
                    if seen is None:
                        matching.append((2, 0.0, device, s))
                    elif now - seen < active_within:
                        matching.append((0, 0.0, device, s))
                    else:
                        matching.append((1, -seen, device, s))
            total = len(self._devices)
            matching.sort(key=_ORDER)  # (a device id is never twice)
            rows = [self._row(device, s, now) for _, _, device, s in matching[:limit]]
        return DevicesOverview(total=total, online=online, streaming=streaming, drifting=drifting,
                               matching=len(matching), rows=rows)

    def _row(self, device: str, s: _DeviceState, now: float) -> DeviceRow:
        last = s.predictions[-1] if s.predictions else None
        recent = sum(now - d.received <= self.drift_recent_seconds for d in s.drift)
        return DeviceRow(
            device=device,
            status=s.status,
            label=last.label if last else None,
            confidence=last.confidence if last else None,
            model=last.model if last else None,
            truth=s.labels[-1].label if s.labels else None,
            drift_recent=recent,
            last_drift=f"{s.drift[-1].detector}/{s.drift[-1].signal}" if s.drift else None,
            last_seen=s.last_seen,
            predictions=len(s.predictions),
            predicted_at=last.received if last else None,
            hop=_hop([p.t for p in itertools.islice(reversed(s.predictions), 5)]),
        )

    def device(self, device: str) -> DeviceView | None:
        with self._lock:
            s = self._devices.get(device)
            if s is None:
                return None
            trace = list(s.trace)
            view = dict(device=device, status=s.status, last_seen=s.last_seen,
                        predictions=list(s.predictions), labels=list(s.labels), drift=list(s.drift),
                        device_time=s.last_t)
        if trace:
            t = np.concatenate([b[0] for b in trace])
            acc = np.concatenate([b[1] for b in trace])
        else:
            t, acc = np.empty(0), np.empty((0, 3), np.float32)
        return DeviceView(trace_t=t, trace_acc=acc, **view)

    def device_now(self, device: str, now: float | None = None) -> float | None:
        """The device clock now: its latest sample or prediction time plus the wall time since then."""
        now = time.time() if now is None else now
        with self._lock:
            s = self._devices.get(device)
            if s is None or s.last_t is None:
                return None
            return s.last_t + max(0.0, now - s.last_t_received)

    def classes(self, device: str | None = None) -> tuple[str, ...]:
        """Class names from the latest prediction (of ``device``, else of any device); () when none.

        A prediction from the event store's history names its top class only (``load_history``): it says
        nothing of the model's classes."""
        with self._lock:
            own = self._devices.get(device)
            for states in ([own] if own is not None else [], self._devices.values()):
                latest = max((s.predictions[-1] for s in states
                              if s.predictions and len(s.predictions[-1].classes) > 1),
                             key=lambda p: p.received, default=None)
                if latest is not None:
                    return latest.classes
        return ()

    def drift(self) -> list[tuple[str, Drift]]:
        """Every detection kept, oldest first by arrival: (device, detection), and (ALL_DEVICES, detection)
        for the consumers' detectors that watch all devices together."""
        with self._lock:
            events = [(device, d) for device, s in self._devices.items() for d in s.drift]
            events += [(ALL_DEVICES, d) for s in self._consumers.values() for d in s.drift]
            events += [(ALL_DEVICES, d) for d in self._history_drift]
        events.sort(key=lambda e: e[1].received)
        return events

    def consumers(self) -> list[ConsumerView]:
        """Every consumer heard of: online (or unknown) ones first, then offline ones; by id within each."""
        with self._lock:
            views = [ConsumerView(consumer=c, status=s.status, metrics=s.metrics,
                                  metrics_received=s.metrics_received, history=list(s.history), model=s.model,
                                  training=list(s.training), commands=list(s.commands),
                                  answers=list(s.answers))
                     for c, s in self._consumers.items()]
        return sorted(views, key=lambda v: (v.status == "offline", v.consumer))

    def counters(self) -> dict:
        """Messages taken by kind, malformed by kind/reason, dropped by reason, and what is tracked."""
        with self._lock:
            return {
                "received": dict(self._received),
                "malformed": dict(self._malformed),
                "dropped": dict(self._dropped),
                "devices": len(self._devices),
                "evicted_devices": self._evicted,
                "forgotten_devices": self._forgotten,
                "consumers": len(self._consumers),
                "trace_samples": sum(s.trace_samples for s in self._devices.values()),
            }


def load_history(store: LiveStore, db_path: str, per_device: int = 200, max_rows: int = 200_000) -> int:
    """Fill ``store`` with the consumer's event store (SQLite, stream/store.py): the history from before
    this dashboard started. Predictions keep only their top class's probability there. Returns rows."""
    import sqlite3

    import orjson

    from stream.store import read_only_uri  # the path quoted: '#', '?' or '%' in it are its own

    try:
        db = sqlite3.connect(read_only_uri(db_path), uri=True, timeout=5)
    except sqlite3.Error:
        return 0
    rows = 0
    p = store.prefix
    # arrival times are the consumer's clock: one ahead of this one (another host's) is taken as now, else the
    # store's clock ran ahead with it and every live device it had not seen was dropped as from before the
    # forget horizon ("too_old") until this clock caught up (for good with one far ahead)
    wall = time.time()
    try:
        # In the order the consumer published them (``received``: when its cycle ran), not of row ids: a
        # prediction the store dropped (its queue full) is put in again from the consumer's journal at a later
        # checkpoint, after newer ones, and taken in that order it looked like a device clock gone back
        # (``_handle_device``: the predictions before it forgotten). The newest ``per_device`` of each device,
        # and the newest ``max_rows`` in all.
        queries = (
            ("prediction", _newest("predictions", "received, device, t, label, confidence, model, latency_ms",
                                   "received, t, id")),
            ("label", _newest("labels", "received, device, label, start, end_", "received, id")),
            ("drift", _newest("drift", "received, device, detector, signal, t, value, needs_labels",
                              "received, t, id")),
        )
        for kind, sql in queries:
            for row in db.execute(sql, (per_device, max_rows)):
                received, device = min(row[0], wall), row[1]
                if kind == "prediction":
                    body = {"device": device, "t": row[2], "label": row[3], "confidence": row[4],
                            "probs": {row[3]: row[4]}, "model": row[5], "latency_ms": row[6]}
                elif kind == "label":
                    body = {"label": row[2], "start": row[3], "end": row[4]} if row[4] is not None else \
                        {"label": row[2], "t": row[3]}
                else:
                    body = {"detector": row[2], "signal": row[3], "t": row[4], "value": row[5],
                            "needs_labels": bool(row[6])}
                if device == "_all":  # the overall detectors: not a device, and no consumer to make up
                    store.handle_history_drift(orjson.dumps(body), now=received)
                else:
                    store.handle(f"{p}/{device}/{kind}", orjson.dumps(body), now=received)
                rows += 1
    except sqlite3.Error as exc:  # no such table yet, a locked or foreign file: live data only
        log.warning("not loading history from %s: %s", db_path, exc)
    finally:
        db.close()
    return rows


def _newest(table: str, columns: str, order: str) -> str:
    """SQL: ``columns`` of the newest rows by ``order`` (ascending columns), at most ``?`` per device and ``?``
    in all, oldest first."""
    desc = ", ".join(f"{c} DESC" for c in order.split(", "))
    return (f"SELECT {columns} FROM (SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY device ORDER BY "
            f"{desc}) AS k FROM {table}) WHERE k <= ? ORDER BY {desc} LIMIT ?) ORDER BY {order}")


class LiveFeed:
    """The one MQTT client of a dashboard process: subscribes everything into a ``LiveStore``.

    ``start()`` never raises: a broker that does not answer is retried by ``ensure()`` at most every
    ``retry_seconds``; once connected, paho reconnects and resubscribes by itself.
    """

    def __init__(self, broker: BrokerURL, prefix: str = "har", store: LiveStore | None = None,
                 retry_seconds: float = 5.0) -> None:
        self.broker = broker
        self.prefix = prefix
        self.store = store or LiveStore(prefix)
        self.retry_seconds = retry_seconds
        if self.store.prefix != prefix:
            raise ValueError(f"Invalid 'store': its prefix {self.store.prefix!r} is not {prefix!r}")
        self._client = None
        self._error: str | None = None
        self._tried = float("-inf")
        self._connect_lock = threading.Lock()

    @property
    def subscriptions(self) -> list[tuple[str, int]]:
        # Devices' status at QoS 0: the broker sends every retained status on subscribing, and stock Mosquitto
        # (max_queued_messages 1000) sends a QoS 1 subscriber only about 1,020 of them, dropping the rest (with
        # 3,000 retained: 1,020 at QoS 1, all 3,000 at QoS 0; tests/test_s15_ghosts.py); one per device id ever
        # given a last will, so the live devices' "online" could be among those dropped
        p = self.prefix
        return [(f"{p}/+/imu", 0), (f"{p}/+/prediction", 0), (f"{p}/+/drift", 0), (f"{p}/+/label", 1),
                (f"{p}/+/status", 0), (f"{p}/{CONSUMER}/+/+", 1)]

    def start(self) -> LiveFeed:
        with self._connect_lock:
            if self._client is not None:
                return self
            self._tried = time.monotonic()
            try:
                self._client = connect(self.broker, "dashboard", subscriptions=self.subscriptions,
                                       on_message=self._on_message, timeout=5.0)
                self._error = None
                log.info("dashboard subscribed to %s/# on %s", self.prefix, self.broker)
            except ConnectionError as exc:
                self._error = str(exc)
                log.warning("dashboard: %s; retrying every %.0f s", exc, self.retry_seconds)
        return self

    def ensure(self) -> None:
        """Retry a failed first connection, at most every ``retry_seconds``."""
        if self._client is None and time.monotonic() - self._tried >= self.retry_seconds:
            self.start()

    @property
    def connected(self) -> bool:
        return self._client is not None and self._client.is_connected()

    @property
    def error(self) -> str | None:
        if self._client is not None and not self._client.is_connected():
            return f"connection to {self.broker} lost; reconnecting"
        return self._error

    def _on_message(self, client, userdata, message) -> None:
        self.store.handle(message.topic, message.payload, retained=message.retain)

    def _publish(self, topic: str, body: dict, timeout: float) -> None:
        if not self.connected:
            raise ConnectionError(self.error or f"not connected to {self.broker}")
        info = self._client.publish(topic, orjson.dumps(body), qos=1)
        try:
            info.wait_for_publish(timeout)
        except ValueError as exc:  # paho's queue full: not queued
            raise ConnectionError(f"not sent to the broker at {self.broker} ({exc})") from None
        except RuntimeError as exc:  # the connection went between the check above and the publish
            raise ConnectionError(f"not sent to the broker at {self.broker} ({exc}); it may go out once "
                                  "reconnected") from None
        if not info.is_published():
            raise ConnectionError(f"the broker at {self.broker} did not acknowledge within {timeout:.0f} s")

    def publish_label(self, device: str, label: str, t: float | None = None, timeout: float = 3.0) -> dict:
        """Publish ``{"label", "t"}`` on ``<prefix>/<device>/label`` (QoS 1) and return it.

        ``t`` defaults to the device clock now (``LiveStore.device_now``), else the wall clock.
        """
        if not valid_device(device):
            raise ValueError(f"Invalid device id {device!r}")
        if not isinstance(label, str) or not 0 < len(label) <= MAX_NAME:
            raise ValueError(f"Invalid label {label!r}")
        if t is None:
            t = self.store.device_now(device)
        body = {"label": label, "t": round(time.time() if t is None else t, 3)}
        self._publish(f"{self.prefix}/{device}/label", body, timeout)
        return body

    def send_command(self, consumer: str, action: str, version: str | None = None,
                     timeout: float = 3.0, command_id: str | None = None) -> dict:
        """Publish a command on ``<prefix>/_consumer/<id>/command`` (QoS 1) and return it.

        ``{"action": "rollback", "version": v}`` serves an earlier version again; ``{"action": "promote"}``
        serves the challenger being fine-tuned now, without waiting for it to win on recent labels. With
        ``command_id`` the command carries it (``id``), and the consumer's model message answering it names it
        (``answers``; ``ConsumerView.answers`` keeps the latest of them).
        """
        if action not in ("promote", "rollback"):
            raise ValueError(f"Invalid 'action' {action!r}. Valid values are: promote, rollback")
        if not consumer or "/" in consumer or "+" in consumer or "#" in consumer:
            raise ValueError(f"Invalid consumer id {consumer!r}")
        if action == "rollback" and not version:
            raise ValueError("a rollback needs the 'version' to return to")
        body = {"action": action} if version is None else {"action": action, "version": str(version)}
        if command_id is not None:
            body["id"] = command_id
        self._publish(f"{self.prefix}/{CONSUMER}/{consumer}/command", body, timeout)
        return body

    def close(self) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()
            self._client = None
