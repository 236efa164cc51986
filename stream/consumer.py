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

Acknowledgements (``ack``): with a persistent session and QoS 1, the consumer acknowledges an imu
message only once every sample of it lies in a published window (``after-window``), so the broker
keeps for the next life whatever a dead one had not finished: its queue and its partial windows.
Labels, commands and refused payloads are acknowledged at once; messages that are dropped on purpose
(full queue, idle device, device clock reset) are acknowledged and counted. Before the queue is full,
paho's thread stops reading (``_queue_high``, back-pressure through stream.mqtt.BufferedClient), so
the broker keeps a backlog rather than the consumer dropping it. The broker sends at
most so many unacknowledged messages (MQTT 5 Receive Maximum = ``max_unacked``; Mosquitto's
``max_inflight_messages`` for 3.1.1 clients), so when ``max_unacked`` are held the oldest is
acknowledged (``acks.forced``: at most once for those), and when nothing arrives for ``ack_stall``
seconds while messages are held, all are (a broker limit below what the open windows hold). The
metrics' ``acks`` count each way. ``on-receipt`` is paho's default: acknowledged when queued; a clean
stop then takes nothing more and works off what it took before its final checkpoint (``_hand_over``).

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
import sqlite3
import threading
import time
import uuid
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, sync_directory
from models.finetune import LearnerConfig, Sequence
from models.learner_process import LearnerProcess
from models.state import StatefulClassifier
from stream.adapters import AdapterRouter
from stream.decode import (
    MAX_PAYLOAD_BYTES,
    Rejected,
    SampleBatch,
    SequenceCheck,
    decode_imu,
    decode_imu_many,
    parse_topic,
)
from stream.labels import LabelBook, LabelledWindow, WindowHistory, decode_label
from stream.monitor import COOLDOWN, DriftEvent, Monitor, window_motion
from stream.mqtt import PROTOCOLS, BrokerURL, batched_writes, connect, speaks_mqtt5
from stream.persist import (
    ADAPTERS_FILE,
    SERVING_MODEL,
    STATE_FILE,
    AckJournal,
    EvictedSegments,
    StateRefused,
    journal_generations,
    journal_predictions,
    kept_id,
    load_state,
    lock_state_dir,
    read_journal,
    save_state,
    set_aside,
)
from stream.pipeline import Pipeline, Prediction
from stream.shared_state import SharedDevices, open_store
from stream.store import EventStore

__all__ = ["Consumer", "ConsumerConfig", "consumer_topic"]

log = logging.getLogger(__name__)


ACK_MODES = ("auto", "after-window", "on-receipt")
CONFIRM_TIMEOUT = 5.0  # s: a QoS 0 prediction not sent by then was lost to a disconnection
CLOCK_RESET = 30.0  # s: a batch this far behind a device's held ones is a new clock (as DeviceBuffer)
LABELS_RELOADED = 64  # labels per device put back from the event store at start-up
# Label names outside the model's classes taken (each is a row and a column of the confusion matrices, which
# never shrink, and costs the metrics message time in its square); more such names are refused, bad_label
MAX_OTHER_LABELS = 32


def consumer_topic(prefix: str, consumer_id: str, kind: str) -> str:
    return f"{prefix}/_consumer/{consumer_id}/{kind}"


# what a queued message costs beyond its payload (the queue's tuple, the topic string, the bytes object):
# benchmarks/faults.py measured 1.7 kB of resident memory per queued 578-byte message
QUEUED_OVERHEAD = 1024
HIGH_WATER = 0.75  # share of the queue bounds beyond which paho's thread stops reading (back-pressure)
DRAIN_CHUNK = 256  # messages taken off the queue at once: their imu payloads are decoded together
CHECKPOINT_WARN_EVERY = 60.0  # s between warnings while checkpoints cannot be written
CHECKPOINT_RETRY = 5.0  # s before a checkpoint that had to wait (the event store behind) is tried again
LOST_WARNING_INTERVAL = 60.0  # s at least between two warnings of samples that never came
LATE_WARNING_INTERVAL = 60.0  # s at least between two warnings of samples dropped as late
FORCED_WARNING_INTERVAL = 60.0  # s at least between two warnings of messages acknowledged by force
COMMAND_WARNING_INTERVAL = 60.0  # s at least between two warnings of refused commands (the first said at once)
COMMAND_ANSWERS = 10  # refused commands answered (a retained model message each) per second at most
REJECTION_WARNING_INTERVAL = 60.0  # s: at most REJECTION_WARNINGS first rejections named at WARNING per this
REJECTION_WARNINGS = 10
REJECTION_PAIRS = 4096  # (device, reason) pairs remembered as named (the least recently rejected forgotten first)
# reasons warned of elsewhere: a refused command (_warn_refused), no_gyro (once per device, Pipeline.check)
OWN_WARNINGS = ("bad_command", "no_gyro")
STOCK_MAX_QUEUED = 1000  # Mosquitto's default max_queued_messages: what it keeps for an offline session
REPUT_BUDGET = 2.0  # s a checkpoint waits for room in the event store's queue to put a kept journal in again
JOURNAL_REPLAY_WAIT = 60.0  # s a start-up waits for a failing event store to take the last life's journal
LISTED_VERSIONS = 100  # newest model versions listed in the retained model message (all are kept, and listed in
# models/ of the state directory)
COMMAND_ID = 64  # characters at most of a command's id, named by the model message answering it
ORIENT_BUDGET = 0.01  # s of fitting how devices are worn per cycle (models.orientation.Orienter.budget)
# A stop acknowledging on receipt works off what it took (Consumer._hand_over) for at most this long; in a shared
# group at most the reorder wait + 1 s if longer (what it holds waits for messages on other replicas that long)
STOP_WORK = 5.0
UNSUBACK_WAIT = 2.0  # s a stopping replica waits for the broker to confirm it left the shared subscription
READ_STOP_WAIT = 0.1  # s a stop waits for paho's thread to be past a read begun before (none comes while it is idle)

@dataclass
class ConsumerConfig:
    broker: BrokerURL
    prefix: str = "har"  # topic prefix
    consumer_id: str = ""  # MQTT client id and status topic; random when empty
    # set when consumer_id was drawn at random (none given, no state_dir to keep it): on a clean stop such a
    # consumer clears its retained messages, which would otherwise stay on the broker for good (every demo run
    # added an offline consumer to the dashboard, up to its 64, and to `harstream versions`)
    id_is_random: bool = field(default=False, init=False)
    queue_size: int = 200_000  # messages buffered between paho's thread and the service thread
    max_wait: float = 0.02  # seconds a ready window may wait for others to share its batch
    metrics_interval: float = 5.0  # seconds between metrics messages
    progress_interval: float = 60.0  # seconds between progress lines in the log (0: none), for a terminal
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
    ack: str = "auto"  # "after-window", "on-receipt" or "auto": after-window with a persistent QoS 1 session
    # (and no state store) when the broker speaks MQTT 5, else on-receipt
    mqtt_protocol: str = "auto"  # "5", "3.1.1" or "auto" (5 when acknowledging after the window, else 3.1.1)
    max_unacked: int = 20_000  # QoS 1 messages held unacknowledged at most (MQTT 5 Receive Maximum,
    # <= 65535); about devices x messages per window are held in steady state
    ack_stall: float = 2.0  # seconds without any message while some are held unacknowledged: acknowledge them
    # memory the queue between paho's thread and the service may take: payloads plus QUEUED_OVERHEAD each
    max_queue_bytes: int = 32 * 1024 * 1024
    # thread; beyond (or beyond queue_size) a message is dropped, acknowledged and counted (dropped)

    def __post_init__(self) -> None:
        if self.ack not in ACK_MODES:
            raise ValueError(f"Invalid 'ack' {self.ack!r}: one of {', '.join(ACK_MODES)}")
        if self.mqtt_protocol not in PROTOCOLS:
            raise ValueError(f"Invalid 'mqtt_protocol' {self.mqtt_protocol!r}: one of {', '.join(PROTOCOLS)}")
        if not 1 <= self.max_unacked <= 65_535:
            raise ValueError(f"Invalid 'max_unacked' {self.max_unacked}: 1 to 65535 (MQTT's Receive Maximum)")
        if self.ack == "after-window" and self.state_store:
            raise ValueError("'ack' after-window is not available with a state store (on-receipt there)")
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
            # (an empty or blank file, which a kill could leave before the id was written atomically, is none)
            new = f"harstream-consumer-{uuid.uuid4().hex[:6]}"
            if self.state_dir is None:
                self.consumer_id, self.id_is_random = new, True  # no later run comes back under it
            else:  # the first consumer ever started on the directory writes it; the others read it
                self.consumer_id = kept_id(self.state_dir / "consumer-id", new)


class _Throttle:
    """At most ``burst`` log lines every ``interval`` seconds about what can come in a flood, the first at once
    (the pattern of the consumer's once-a-minute warnings: lost, late, forced): ``allow()`` says whether one more
    may be said now. What is not said, the caller counts and says when ``allow`` next lets it."""

    def __init__(self, interval: float, burst: int = 1) -> None:
        self.interval, self.burst = interval, burst
        self._since, self._used = -float("inf"), 0

    def allow(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if now - self._since >= self.interval:
            self._since, self._used = now, 0
        if self._used >= self.burst:
            return False
        self._used += 1
        return True

    def reset(self) -> None:
        """As if the interval were over: the next ``allow`` lets one be said."""
        self._since = -float("inf")


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


class _Acks:
    """QoS 1 messages taken from the broker and not yet acknowledged (service thread only).

    Each buffered batch is held as (time of its last sample, seq, mid) under its device; a window of
    that device published with its end at or after that time releases it, and a message is
    acknowledged once all its batches are released. ``client.ack`` is thread-safe (paho queues the
    PUBACK like a publish). MQTT gives a message in flight a packet id (mid) no other has until it
    is acknowledged, and re-sends it with the same mid: a mid already held is a copy.
    """

    def __init__(self, limit: int) -> None:
        self.client = None
        self.limit = limit  # held at most; the oldest is acknowledged beyond
        self.held: OrderedDict[int, list] = OrderedDict()  # mid -> [batches not yet released, qos, devices]
        self.by_device: dict[str, list[tuple[float, int | None, int]]] = {}
        self.counts: Counter[str] = Counter()
        self.deferred: list[tuple[int, int, str]] | None = None  # while set, acknowledgements wait here

    def __len__(self) -> int:
        return len(self.held)

    def ack(self, mid: int, qos: int, why: str) -> None:
        if not qos:
            return
        if self.deferred is not None:
            self.deferred.append((mid, qos, why))
            return
        self.client.ack(mid, qos)
        self.counts[why] += 1

    def hold(self, mid: int, qos: int, device: str, t_last: float, seq: int | None,
             last: np.ndarray | None = None) -> None:
        entry = self.held.get(mid)
        if entry is None:
            entry = self.held[mid] = [0, qos, []]
        entry[0] += 1
        entry[2].append(device)
        self.by_device.setdefault(device, []).append((t_last, seq, mid, last))

    def enforce_limit(self, limit: int | None = None) -> int:
        """Acknowledge the oldest until fewer than ``limit`` are held; returns how many."""
        limit = self.limit if limit is None else limit
        n = 0
        while self.held and len(self.held) >= limit:
            mid, (_, qos, devices) = self.held.popitem(last=False)
            for device in set(devices):
                entries = [e for e in self.by_device.get(device, ()) if e[2] != mid]
                self._set(device, entries)
            self.ack(mid, qos, "forced")
            n += 1
        return n

    def _set(self, device: str, entries: list) -> None:
        if entries:
            self.by_device[device] = entries
        else:
            self.by_device.pop(device, None)

    def _release(self, mid: int, why: str) -> None:
        entry = self.held.get(mid)
        if entry is None:
            return
        entry[0] -= 1
        if entry[0] <= 0:
            del self.held[mid]
            self.ack(mid, entry[1], why)

    def covered(self, device: str, t_end: float) -> tuple | None:
        """A window of ``device`` ending at ``t_end`` was published: release what it covers. Returns
        the last sample released, (t, acc), for the next life to interpolate the grid's next point."""
        entries = self.by_device.get(device)
        if not entries:
            return None
        keep, anchor = [], None
        for e in entries:
            if e[0] <= t_end + 1e-9:
                self._release(e[2], "after_window")
                if e[3] is not None and (anchor is None or e[0] > anchor[0]):
                    anchor = (e[0], e[3])
            else:
                keep.append(e)
        self._set(device, keep)
        return anchor

    def drop_device(self, device: str, why: str = "dropped", before: float | None = None) -> None:
        """Release what ``device`` holds (all, or what ends before ``before``): its samples are dropped."""
        entries = self.by_device.get(device)
        if not entries:
            return
        keep = []
        for e in entries:
            if before is None or e[0] < before:
                self._release(e[2], why)
            else:
                keep.append(e)
        self._set(device, keep)

    def newest(self, device: str) -> float | None:
        entries = self.by_device.get(device)
        return max(e[0] for e in entries) if entries else None

    def safe_seq(self, device: str, last: int | None) -> int | None:
        """The seq before ``device``'s first message still held (all up to it are acknowledged)."""
        seqs = [e[1] for e in self.by_device.get(device, ()) if e[1] is not None]
        return min(seqs) - 1 if seqs else last


def _kept(path: Path, why) -> str:
    """A file of the state directory that cannot be read (``why``) renamed aside (``set_aside``) before what would
    be written in its place destroys it (a downgraded harstream, a damaged file): what the warning says of it.
    ``StateRefused`` when it cannot be renamed (a read-only or full file system, an immutable file): a later
    write could overwrite it."""
    try:
        aside = set_aside(path)
    except OSError as err:
        raise StateRefused(f"{why}; it could not be renamed aside ({err}), and starting afresh would overwrite it: "
                           f"move it away, or fix what failed") from None
    return f"; the file is kept as {aside.name}" if aside is not None else ""


class Consumer:
    """Runs until ``stop()``; one instance per process."""

    def __init__(self, config: ConsumerConfig, classifier: StatefulClassifier) -> None:
        self.config = config
        # the shared store keeps buffers itself and commits in seq order: no hold there
        self.pipeline = Pipeline(classifier, reorder=0.0 if config.state_store else config.reorder)
        if classifier.orienter is not None:  # how devices are worn: fits start while a cycle spent < 10 ms
            classifier.orienter.budget = ORIENT_BUDGET
        self.router = AdapterRouter.from_spec(list(config.adapters), config.prefix, config.max_payload)
        # a late message that fills a counted gap is taken; the shared store applies messages in seq order
        self.sequence = SequenceCheck(fill_gaps=not config.state_store)
        self.stats = _Stats()
        # (topic, payload, arrival, mid, qos)
        self._queue: queue.Queue[tuple] = queue.Queue(config.queue_size)
        self._bytes_in = 0  # payload bytes queued (paho's thread writes it) ...
        self._bytes_out = 0  # ... and taken (the service thread writes it)
        self._oversize = 0  # payloads refused in paho's thread, counted as rejected "oversize"
        self._paho_acks: Counter[str] = Counter()  # acknowledgements sent from paho's thread
        self._last_arrival = time.monotonic()
        self._connected_at = time.monotonic()
        self._connections = 0  # (re)connections so far (paho's thread): at each, run() says its model and 'online'
        self._late_fills = 0  # samples of gap-filling messages that came after the buffer moved on
        self.acks = _Acks(config.max_unacked)
        self.after_window = False  # acknowledging after the window (decided when connecting)
        self.protocol = ""  # MQTT protocol in use
        self._watermarks: dict[str, float] = {}  # device -> end of its last published window
        self._resume: dict[str, float] = {}  # the same, restored: the next life skips samples up to it
        self._resume_prev: dict[str, tuple[float, np.ndarray]] = {}  # last sample before the resume point
        self._anchors: dict[str, tuple[float, list[float]]] = {}  # device -> last sample acknowledged
        self.journal: AckJournal | None = None
        self._journal_generation = 0
        self._journalled: list[tuple] = []  # predictions read back from the journal at start
        self._stall_warned = False
        self._confirm: deque[list] = deque()  # [last prediction's info, when, acks due]
        self._unjournalled: list[tuple] = []  # acks due whose windows the journal could not record yet: held
        self._confirm_lock = threading.Lock()
        self._confirm_mids: dict[int, list] = {}  # mid of a confirmation's last prediction -> it
        self._stop = threading.Event()
        self._client = None
        # stopping (_hand_over): paho's thread reads nothing more (_queue_high), and says it saw it
        self._closing = False
        self._read_closed = threading.Event()
        self._sealed = False  # stopped handing over: what arrives is neither taken nor acknowledged (_seal)
        self._unsubacks: set[int] = set()  # mids of the UNSUBACKs received
        self._subscriptions: list[tuple[str, int]] = []  # what connect() subscribes at every (re)connection
        self._unread_at_stop = 0  # QoS 1 messages that arrived sealed: not acknowledged, not taken (_seal)
        self.last_metrics: dict = {}
        self._progress = (time.monotonic(), 0)  # when the log last said how it goes, and the windows then
        self._lost_said = 0  # lost samples last warned of; no warning before
        self._lost_warnings = _Throttle(LOST_WARNING_INTERVAL)
        self._late_said: dict[str, int] = {}  # pipeline.late_by_device when last warned of; no warning before
        self._late_warnings = _Throttle(LATE_WARNING_INTERVAL)
        self._lost_qos1 = 0  # samples that never came whose gap a QoS 1 message showed (_warn_lost)
        self._lost_qos1_said = 0
        # messages acknowledged by force, by why (stall, limit, journal), and when last warned of (_warn_forced)
        self._forced: Counter[str] = Counter()
        self._forced_said: Counter[str] = Counter()
        self._forced_warnings = _Throttle(FORCED_WARNING_INTERVAL)
        self._checkpoint_warnings = _Throttle(CHECKPOINT_WARN_EVERY)  # while checkpoints fail (_not_saved)
        # refused commands: warned of at most once a COMMAND_WARNING_INTERVAL (_warn_refused), answered at most
        # COMMAND_ANSWERS a second; rejected messages: the first of each (device, reason) named (_say_rejected)
        self._refusal_warnings = _Throttle(COMMAND_WARNING_INTERVAL)
        self._refused_unsaid, self._refused_last, self._refused_since = 0, "", time.monotonic()
        self._refusal_answers = _Throttle(1.0, COMMAND_ANSWERS)
        self._unanswered = 0  # refused commands not answered since the last warning (beyond COMMAND_ANSWERS)
        self._rejections_named: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._naming = _Throttle(REJECTION_WARNING_INTERVAL, REJECTION_WARNINGS)
        self._unnamed: Counter[str] = Counter()  # rejected messages of pairs not named (the throttle), by reason
        self._unnamed_warnings = _Throttle(REJECTION_WARNING_INTERVAL)
        self.labels = LabelBook()
        self._reloaded = 0  # labels.taken after the last life's labels were put back: those before are its
        self._saved_version: str | None = None  # the version last written to serving.pt
        model_config = self.pipeline.config
        # a window's t_end is its LAST sample's time: its first sample is (window - 1) samples before
        self.history = WindowHistory((model_config.window - 1) / model_config.rate, config.label_lateness)
        self.monitor = Monitor()
        # the checkpoint's saved_at, its monitor restored (else None), and the devices restored: the last life's
        # drift events after it are taken up at start-up (_take_up_drift)
        self._monitor_saved_at: float | None = None
        self._monitor_devices: frozenset[str] = frozenset()
        self._pending_sequences: dict[str, list[LabelledWindow]] = {}
        self._pass_start: int | None = None  # Orienter.calls before the pass classifying now (_on_turn)
        self._turned_in_pass: list[tuple[str, np.ndarray, int]] = []  # (device, Q^T, rounds before the turn)
        self._swap: tuple | None = None  # (model, version, id of the command it answers) from the learner
        self._swap_lock = threading.Lock()
        self._evicted: OrderedDict[str, tuple] = OrderedDict()  # device -> state, seq
        self._segments: EvictedSegments | None = None  # where their states are on disk (checkpoint())
        self._last_seen: dict[str, float] = {}
        self._label_only: dict[str, float] = {}  # devices with labels and no samples yet -> last label's arrival
        self._other_labels: set[str] = set()  # label names taken that the model has no class for
        self.store: EventStore | None = None
        self._dropped_mark = 0  # the store's ``dropped_predictions`` when the journal's generation began
        self._reput: int | None = None  # byte of the kept journal to put into the store again from (checkpoint())
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
            lock_state_dir(config.state_dir)  # one consumer per state directory: a second is refused
            self._turns_lost = False  # set by _restore: how devices were worn could not be taken up
            self._restore(classifier)
            self.store = EventStore(config.state_dir / "events.db")
            # checkpoint(): the journal is rotated only if the store dropped nothing since this mark
            self._dropped_mark = self.store.dropped_predictions
            deadline = time.monotonic() + JOURNAL_REPLAY_WAIT
            for row in self._journalled:  # what a killed life classified: the store ignores what it has
                # more than its queue holds are waited for, not dropped; a store that cannot take them in
                # JOURNAL_REPLAY_WAIT s drops the rest, and the journal, kept, puts them in again later
                self.store.prediction(*row, block=True, timeout=max(0.0, deadline - time.monotonic()))
            if self._journalled:
                log.info("%d predictions of the last life put into the event store from the journal",
                         len(self._journalled))
            if self.store.dropped_predictions > self._dropped_mark:
                log.warning("the event store took only %d of the journal's %d predictions within %.0f s; the "
                            "journal is kept and they are put in again at a later checkpoint",
                            len(self._journalled) - (self.store.dropped_predictions - self._dropped_mark),
                            len(self._journalled), JOURNAL_REPLAY_WAIT)
            self._journalled = []
            self._reload_labels()
            self._take_up_drift()
        self.learner: LearnerProcess | None = None  # the online learner, in a process of its own from run()
        if config.learn:
            lc = config.learner or LearnerConfig()
            if config.state_dir is not None and lc.versions_dir is None:
                lc.versions_dir = config.state_dir / "models"
            lc.serving_version = self.pipeline.classifier.version
            self.learner = LearnerProcess(self.pipeline.classifier.model, lc, on_promote=self._on_promote,
                                          on_update=self._on_update)
            if self.learner.adapters is not None:  # per-device adapters, applied in the batched pass
                self.pipeline.classifier.adapters = self.learner.adapters
                if config.state_dir is not None and self._turns_lost and (config.state_dir / ADAPTERS_FILE).exists():
                    # fitted to windows turned as the lost part said, they would serve those devices turned
                    # wrongly (and be turned again by a turn chosen anew); they are learnt again from labels
                    log.warning("not loading the per-device adapters of %s: they were fitted to devices served "
                                "turned as the checkpoint's orientation part said, which could not be restored "
                                "(they start afresh)", config.state_dir)
                elif config.state_dir is not None:  # one unreadable is kept aside: the first save would overwrite it
                    self.learner.adapters.load(config.state_dir / ADAPTERS_FILE, keep=_kept)
                if self.pipeline.classifier.orienter is not None:  # adapters follow a device turned anew
                    self.pipeline.classifier.orienter.on_turn = self._on_turn

    def _reload_labels(self) -> None:
        """The last life's labels (``events.db``), each device's LABELS_RELOADED most recent: a label that
        holds until the next goes on naming a returning device's windows after a restart. A device that
        sends nothing within ``idle_timeout`` is forgotten again, as a device that got labels only."""
        try:
            rows = self.store.query(
                "SELECT device, label, start, end_ FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY device ORDER "
                "BY id DESC) AS k FROM labels) WHERE k <= ? ORDER BY id", (LABELS_RELOADED,))
        except sqlite3.Error as exc:  # a full disk (no room for its -shm file): this ended the start
            log.warning("the last life's labels are not put back: the event store cannot be read (%s)", exc)
            return
        now = time.monotonic()
        for device, label, start, end in rows:
            if not self._takes_label(label):
                continue
            self.labels.add(device, label, start, end)
            self.history.track(device)
            self._label_only[device] = now
        self._reloaded = self.labels.taken
        if rows:
            log.info("%d labels of %d devices put back from the event store", len(rows), len(self._label_only))

    def _take_up_drift(self) -> None:
        """The drift events the last life published after its checkpoint (``events.db``), taken up by the
        monitor (``Monitor.replay_events``): after a ``kill -9`` the monitor is the checkpoint's, and a drift
        announced after it, still under way, was announced again. With the monitor restored, every event since
        the checkpoint was saved, counted as that life counted it; with one started afresh (no checkpoint, or
        none of the monitor in it, or unreadable), the cooldowns of the events of the last COOLDOWN s."""
        restored = self._monitor_saved_at is not None
        since = self._monitor_saved_at if restored else time.time() - COOLDOWN
        try:
            rows = self.store.drift_after(since)
        except ValueError as exc:  # StoreError: the monitor goes on as restored
            log.warning("not taking up the last life's drift events (each may be announced again): %s", exc)
            return
        taken = self.monitor.replay_events(rows, devices=self._monitor_devices, counts=restored)
        if rows:
            log.info("%d drift events of the last life %s taken up by the monitor (%d skipped: of devices not "
                     "restored, or malformed)", taken, "since its checkpoint" if restored else "of the last "
                     f"{COOLDOWN:.0f} s", len(rows) - taken)

    def _takes_label(self, label: str) -> bool:
        """Whether to take a label message's name: one of the model's classes, or one of the first
        MAX_OTHER_LABELS other names (scored as the model's errors: it cannot name them)."""
        if label in self._other_labels or label in self.pipeline.classifier.classes:
            return True
        if len(self._other_labels) >= MAX_OTHER_LABELS:
            return False
        self._other_labels.add(label)
        return True

    # -- checkpoints ---------------------------------------------------------------------------
    def _restore(self, classifier: StatefulClassifier) -> None:
        """Resume the fine-tuned model and every device's state from the state directory."""
        directory = self.config.state_dir
        self._segments = EvictedSegments(directory)
        serving = directory / SERVING_MODEL
        if serving.exists():
            try:
                model, info = load_checkpoint(serving)
                classifier.set_model(model, info["version"])
                log.info("restored fine-tuned model %s from %s", info["version"], serving)
            except CheckpointError as exc:  # unreadable, or a newer harstream's: its first save would overwrite it
                log.warning("not restoring %s: %s%s", serving, exc, _kept(serving, exc))
            except ValueError as exc:  # another architecture: a new --model on this state directory replaces it
                log.warning("not restoring %s: %s", serving, exc)
        if self.shared is not None:
            return  # device state lives in the shared store
        try:
            state = load_state(directory)
        except StateRefused:  # a newer harstream's, or not readable now: its first checkpoint would overwrite it
            raise
        except (ValueError, OSError) as exc:  # devices start afresh; the journals are read all the same
            # kept under another name: the first checkpoint used to overwrite it (found by an upgrade probe)
            kept = _kept(directory / STATE_FILE, exc) if isinstance(exc, ValueError) else ""
            log.warning("not restoring device state: %s%s", exc,
                        f"{kept}, and every device starts afresh" if kept else "")
            state = None
            self._turns_lost = classifier.orienter is not None
            self._segments.hold_existing()  # the file set aside names them
        # killed before its first checkpoint, or the checkpoint unreadable: every journal on disk may hold
        # what was acknowledged and predictions the event store lacks (none is deleted unread)
        generations = None
        if state is None:
            generations = journal_generations(directory) or [0]
            state = {"devices": {}, "evicted": {}, "sequences": {}, "watermarks": {}, "journal": generations[-1],
                     "saved_at": time.time()}
        # each device's state as the model keeps it, (layers, hidden) per tensor: a checkpoint of another
        # architecture (a new --model on the same --state-dir) cannot be carried over
        shapes = classifier.model.state_shapes()

        def fits(tensors) -> bool:
            return [tuple(t.shape) for t in tensors] == shapes

        for kind in ("devices", "evicted"):
            unfit = [d for d, tensors in state[kind].items() if not fits(tensors)]
            for device in unfit:
                del state[kind][device]
            if unfit:
                log.warning("not restoring the state of %d %s from %s: it was kept for another model "
                            "architecture (they start afresh)", len(unfit),
                            "devices" if kind == "devices" else "evicted devices", directory)
        now = time.monotonic()
        for device, tensors in state["devices"].items():
            classifier.bank.set(device, tuple(t.unsqueeze(1) for t in tensors))
            self._last_seen[device] = now  # evicted as idle if it does not come back
        if classifier.orienter is not None and state.get("orientation") is not None:  # devices worn turned go on
            try:  # being served turned back; a malformed part is refused alone, the devices' state restored
                classifier.orienter.restore(state["orientation"])
            except ValueError as exc:
                log.warning("not restoring how devices are worn from %s: %s", directory, exc)
                self._turns_lost = True
        self._monitor_devices = frozenset(state["devices"])
        if state.get("monitor") is not None:  # older checkpoints have none: the monitor starts afresh
            try:  # of the devices restored (the others would never be evicted, so never forgotten)
                self.monitor.restore(state["monitor"], devices=state["devices"])
                self._monitor_saved_at = state["saved_at"]
            except ValueError as exc:
                log.warning("not restoring the drift monitor from %s (its detectors and live metrics start "
                            "afresh): %s", directory, exc)
        self._evicted.update(state["evicted"])
        self._segments.adopt(state.get("evicted_segments", []), self._evicted)  # not written again
        sequences, watermarks = dict(state["sequences"]), dict(state["watermarks"])
        anchors = dict(state.get("anchors") or {})
        journalled = 0
        if state["journal"] is not None:
            self._journal_generation = state["journal"]
            self._journalled = []
            for generation in generations or [state["journal"]]:  # oldest first: the newest line wins
                marks, seqs, more, predictions = read_journal(directory, generation)
                watermarks.update(marks)
                sequences.update(seqs)
                anchors.update(more)
                self._journalled += predictions
            journalled = len(watermarks) if generations else len(marks)
        if state.get("history") is not None:  # older checkpoints have none
            self._restore_history(state["history"], state["devices"], shapes, watermarks)
        self.sequence.restore(sequences)
        self._watermarks = watermarks
        self._resume = dict(watermarks)
        self._anchors = anchors
        # the last sample acknowledged before each device's resume point, to interpolate its next grid point
        self._resume_prev = {d: (a[0], np.asarray(a[1], dtype=np.float64)) for d, a in anchors.items()
                             if d in watermarks and a[0] <= watermarks[d] + 1e-9}
        if not (state["devices"] or state["evicted"] or watermarks):
            return
        log.info("restored the state of %d devices (%d evicted) saved %.0f s ago; what was acknowledged "
                 "since, for %d devices, from the journal", len(state["devices"]), len(state["evicted"]),
                 time.time() - state["saved_at"], journalled)

    def _restore_history(self, snapshot, devices: dict, shapes: list, marks: dict[str, float]) -> None:
        """The labelling devices' windows that were waiting for their labels (of the devices restored: an
        evicted one's were resolved when it left), waiting again: labels that come now (those sent while the
        consumer was down come with its persistent session) or were put back from the event store name them.
        Those a life killed after its checkpoint resolved since, as its journal's ``marks`` tell (each device's
        last window classified), are not taken again (``WindowHistory.drop_resolved``)."""
        config = self.pipeline.config
        try:
            refused = self.history.restore(snapshot, devices=devices, window=(config.window, config.input_channels),
                                           states=shapes)
        except Exception as exc:  # ValueError: malformed; anything else must not cost the devices' state either
            log.warning("not restoring the windows waiting for labels from %s (not scored nor learnt): %s",
                        self.config.state_dir, exc)
            return
        for device, why in list(refused.items())[:5]:
            log.warning("not restoring %s's windows waiting for labels (not scored nor learnt): %s", device, why)
        if len(refused) > 5:
            log.warning("nor those of %d other devices", len(refused) - 5)
        dropped = self.history.drop_resolved(marks)
        if dropped:
            log.info("%d windows waiting for labels in the checkpoint were resolved by the last life after it "
                     "(its journal): not resolved again", dropped)

    def checkpoint(self, final: bool = False) -> bool:
        """Save per-device state (and the serving model if it changed) to the state directory; False when
        it is to be tried again soon: predictions whose windows it would record as published are not yet
        sent (nothing saved), or the journal is kept because the event store lacks some of its predictions
        (device state saved all the same)."""
        directory = self.config.state_dir
        if directory is None:
            return True
        self._flush_acks(wait=1.0)
        if self._confirm and not final:
            return False
        classifier = self.pipeline.classifier
        try:
            self._save_serving(classifier.model, classifier.version)
            adapters = self.learner.adapters if self.learner is not None else None
            if adapters is not None and adapters.unsaved:  # changed since last saved (or loaded): else unwritten
                adapters.save(directory / ADAPTERS_FILE)
        except OSError as exc:  # a full disk, a state directory made read-only
            return self._not_saved(exc)
        if self.shared is not None:
            return True  # device state lives in the shared store, written every cycle
        bank = classifier.bank
        devices = {d: tuple(t[:, 0] for t in bank.get(d)) for d in bank.devices()}
        sequences = self.sequence.snapshot()
        if self.after_window:  # what the broker will send again must be accepted: up to the first one held
            sequences = {d: s for d, s in ((d, self.acks.safe_seq(d, s)) for d, s in sequences.items())
                         if s is not None}
        # the journal is the only copy of predictions the store has not written: it is rotated away only once
        # the store has written what is queued (a failing store is not waited for: EventStore.failing) and has
        # dropped no prediction (its queue full) since this journal began, or has had every prediction of the
        # journal put in again since. Otherwise the state names this journal still (device state is saved all
        # the same), whose predictions go into the store again: from here on once the store writes again, a
        # slice per checkpoint (resumed where the last stopped), or at the next start.
        stored = rotate = True
        dropped = 0
        if self.journal is not None and self.store is not None:
            dropped = self.store.dropped_predictions
            stored = self.store.flush(10.0, until_failure=True)
            if dropped > self._dropped_mark:  # new drops: which are not known, so the whole journal again
                self._reput, self._dropped_mark = 0, dropped
            rotate = stored and self._reput is None
        if self.journal is None:
            generation = self._journal_generation
        elif rotate:
            generation = self.journal.next_generation()
        else:
            generation = self.journal.generation
            if final:
                log.warning("the event store has not written %d events (%d predictions dropped, %d write "
                            "failures): the journal %s is kept for the next life", self.store.pending,
                            self.store.dropped_predictions, self.store.errors, generation)
        try:
            monitor = self.monitor.snapshot()
        except Exception:  # a fault of the monitor must not cost the devices' checkpoint
            log.exception("the drift monitor is not in this checkpoint")
            monitor = None
        try:
            history = self.history.snapshot()  # windows waiting for labels, resolved by the next life
        except Exception:
            log.exception("the windows waiting for labels are not in this checkpoint")
            history = None
        try:
            if self._segments is None:  # a state directory never restored from
                self._segments = EvictedSegments(directory)
            save_state(directory, classifier.version, devices, sequences, dict(self._evicted),
                       watermarks=self._watermarks, journal=generation, anchors=self._anchors,
                       orientation=classifier.orienter.snapshot() if classifier.orienter is not None else None,
                       monitor=monitor, history=history, segments=self._segments)
        except OSError as exc:
            return self._not_saved(exc)
        if getattr(self, "_checkpoint_failing", False):
            self._checkpoint_failing = False
            log.info("checkpoint written to %s again (after %d failures)", directory, self._checkpoint_failures)
        if self.journal is None:
            return True
        if generation == self.journal.generation:  # kept
            if stored and not final and self._reput is not None:  # the store writes again
                self._put_journal_again()
            return False
        self.journal.rotate(generation)
        self._dropped_mark = dropped
        for mid, qos, why in self._unjournalled:  # the checkpoint holds their windows: the lines are not needed
            self._client.ack(mid, qos)
            self._paho_acks[why] += 1
        self._unjournalled = []
        return True

    def _not_saved(self, exc: OSError) -> bool:
        """A checkpoint that could not be written (a full disk, a state directory made read-only): the last
        one stands with the journal since (not rotated), serving goes on and it is tried again soon (the error
        used to end the service loop). False."""
        self._checkpoint_failures = getattr(self, "_checkpoint_failures", 0) + 1
        self._checkpoint_failing = True
        if self._checkpoint_warnings.allow():
            log.warning("checkpoint not written to %s (%s); the last one and the journal since it stand, trying "
                        "again (%d failures so far)", self.config.state_dir, exc, self._checkpoint_failures)
        return False

    def _put_journal_again(self, budget: float = REPUT_BUDGET) -> None:
        """Put the current journal's predictions into the event store again (it ignores those it has), from
        byte ``_reput`` on, for at most ``budget`` s of waiting for room in its queue (serving waits
        meanwhile): the store dropped some since the journal began. Where the budget ends, the next
        checkpoint resumes; once every line is in, the next checkpoint that finds them written rotates the
        journal."""
        start = self._reput or 0
        if start == 0:
            log.warning("the event store dropped predictions (its queue full) since the journal %d began: "
                        "its predictions are put into the store again", self.journal.generation)
        deadline = time.monotonic() + budget
        for end, row in journal_predictions(self.config.state_dir, self.journal.generation, start):
            if not self.store.prediction(*row, block=True, count=False,
                                         timeout=max(0.0, deadline - time.monotonic())):
                self._reput = start  # the queue stayed full: from this line at the next checkpoint
                return
            start = end
        self._reput = None

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
                    gone, _ = self._evicted.popitem(last=False)
                    self._forget_device(gone)
            self.pipeline.evict(device)
            self.acks.drop_device(device)  # its partial window goes: nothing to wait for
            # its last windows are final now: scored, then learnt from
            self._publish_drift(self._resolved(self.history.flush(device, self.labels)))
            self.monitor.forget(device)
            self._submit(device, self._pending_sequences.pop(device, []))  # fewer than k1 windows
            self.labels.forget(device)
            del self._last_seen[device]
        for device in [d for d, seen in self._label_only.items() if seen < cutoff]:
            if device not in self._last_seen:  # labels for a device that never sent samples since
                self.history.forget(device)
                self.labels.forget(device)
            del self._label_only[device]

    def _forget_device(self, device: str) -> None:
        """What is kept of a device whose state is kept no more (beyond max_evicted): it starts afresh if it
        comes back. Its resume mark, anchor and last seq would otherwise stay in every checkpoint for good (the
        journal says so too: a kept journal's lines would bring them back to the next life)."""
        if self.journal is not None:
            self.journal.forget(device)
        self._watermarks.pop(device, None)
        self._anchors.pop(device, None)
        self._resume.pop(device, None)
        self._resume_prev.pop(device, None)
        self.sequence.forget(device)

    # -- paho thread: never block, never raise ------------------------------------------------
    def _on_message(self, client, userdata, message) -> None:
        if self._sealed:
            self._unread_at_stop += message.qos > 0
            return  # unacknowledged (_seal): a persistent session gets it again
        now = time.monotonic()
        self._last_arrival = now
        payload = message.payload
        size = len(payload) + QUEUED_OVERHEAD
        if len(payload) > self.config.max_payload:  # refused before it takes memory (decode would refuse it too)
            self._oversize += 1
            self._ack_in_paho(client, message, "at_once")
            return
        if not self._room(size):
            # explicit load shedding: acknowledged (the broker re-sends an unacknowledged message only
            # on reconnection, and it would hold an in-flight slot till then) and counted. Blocking
            # this thread instead, to leave the backlog to the broker, was tried: the broker cut the
            # connection for keep-alive timeout under the overload of benchmarks/faults.py
            self.stats.dropped += 1
            self._ack_in_paho(client, message, "dropped")
            return
        try:
            self._queue.put_nowait((message.topic, payload, now, message.mid, message.qos, message.dup,
                                    message.retain))
            self._bytes_in += size
        except queue.Full:
            self.stats.dropped += 1
            self._ack_in_paho(client, message, "dropped")

    def _queue_high(self) -> bool:
        """Paho's thread reads nothing more while the queue is this full (stream.mqtt.BufferedClient):
        the backlog waits at the broker, which keeps it for the session, instead of being dropped here.
        What was read already still fits: drops are left for plain paho (HARSTREAM_MQTT_READ=plain).
        Nor once the consumer is stopping (``_hand_over``): what is not read is not acknowledged."""
        if self._closing:
            self._read_closed.set()  # paho's thread is past any read begun before: none is under way
            return True
        return (self._bytes_in - self._bytes_out > HIGH_WATER * self.config.max_queue_bytes
                or self._queue.qsize() > HIGH_WATER * self.config.queue_size)

    def _room(self, size: int) -> bool:
        return (self._bytes_in - self._bytes_out + size <= self.config.max_queue_bytes
                and not self._queue.full())

    def _ack_in_paho(self, client, message, why: str) -> None:
        """Load shedding is explicit: the broker is told it may forget the message (and counted)."""
        if self.after_window and message.qos:
            client.ack(message.mid, message.qos)
            self._paho_acks[why] += 1

    # -- service thread ------------------------------------------------------------------------
    def stop(self) -> None:
        self._stop.set()

    def run(self) -> None:
        cfg = self.config
        # OpenMP threads that wait for a busy core turn a 3 ms batch into 300 ms: measured, see bench
        torch.set_num_threads(cfg.torch_threads)
        status = consumer_topic(cfg.prefix, cfg.consumer_id, "status")
        self._client = self._connect(status)
        self._client.on_publish = self._on_publish
        self.acks.client = self._client
        if self.after_window and cfg.state_dir is not None and self.shared is None:
            self.journal = AckJournal(cfg.state_dir, self._journal_generation)
        # the model message first: its versions are known before the learner starts (a second, more on a loaded
        # machine), and `harstream versions` took the last life's list, still retained, for this one's meanwhile
        connections = self._connections
        self._publish_model()
        self._client.publish(status, b"online", qos=1, retain=True)
        # the phone formats' topics too: a topic that matches no --adapter pattern is never received
        phones = [f"{r.pattern} = {r.adapter.name}" for r in self.router.routes[1:]]
        topics = ", ".join([self.imu_subscription, *phones])
        log.info("consumer %s on %s (%s), model %s (%d classes, window %.2f s); MQTT %s, acknowledging %s",
                 cfg.consumer_id, cfg.broker, topics, self.pipeline.classifier.version,
                 len(self.pipeline.classifier.classes), self.pipeline.config.window_seconds, self.protocol,
                 f"after the window (at most {self.acks.limit} held)" if self.after_window else "on receipt")
        if self.learner is not None:
            self.learner.start()
        next_metrics = time.monotonic() + cfg.metrics_interval
        next_checkpoint = time.monotonic() + cfg.checkpoint_interval
        try:
            while not self._stop.is_set():
                if self._connections != connections:  # reconnected: a connection lost uncleanly left the will,
                    connections = self._connections  # 'offline', retained, and a broker restarted may have lost both
                    self._publish_model()
                    self._client.publish(status, b"online", qos=1, retain=True)
                self._cycle(timeout=0.05)
                if time.monotonic() >= next_metrics:
                    self._publish_metrics()
                    self._evict_idle()
                    next_metrics += cfg.metrics_interval
                if time.monotonic() >= next_checkpoint:
                    # one that must wait is tried again a little later, not at every pass (each would wait)
                    delay = cfg.checkpoint_interval if self.checkpoint() else min(cfg.checkpoint_interval,
                                                                                  CHECKPOINT_RETRY)
                    next_checkpoint = time.monotonic() + delay
        finally:
            if self._stop.is_set():  # asked to stop (not an error out of the loop, which would only come again)
                try:
                    self._hand_over()
                except Exception:
                    log.exception("handing over at the stop failed; stopping")
            if self.learner is not None:
                self.learner.stop(timeout=5.0)  # what it learnt goes into the final checkpoint
            self._apply_swap()
            if not self.after_window and not self._queue.empty():  # plain paho (never paused) queued it as we sealed
                self._drain(0.0)
                self.pipeline.release(time.monotonic())
                self._classify()
            # acknowledging after the window, nothing not in a published window was acknowledged: the broker
            # keeps the rest for the session; on receipt, what was taken is in it (_hand_over)
            self.checkpoint(final=True)
            if self.journal is not None:
                self.journal.close()
            if self.store is not None:
                self.store.close()
            if self.shared is not None:
                self.shared.store.close()
            self._publish_metrics()
            try:
                self._client.publish(status, b"offline", qos=1, retain=True).wait_for_publish(5)
            except (RuntimeError, ValueError) as exc:  # not connected: paho raises; disconnect() and loop_stop() follow
                log.warning("could not publish 'offline' at the stop (%s); the broker published this consumer's "
                            "last will when the connection was lost", exc)
            if cfg.id_is_random:
                self._clear_retained()
            if self.after_window:
                self._say_unacknowledged()
            self._client.disconnect()
            self._client.loop_stop()
            if self._unread_at_stop:
                log.warning("%d messages that came after the hand-over were neither taken nor acknowledged: %s",
                            self._unread_at_stop, "the broker sends them again to this session" if cfg.persistent
                            else "lost with this clean session (a persistent one, --id or --state-dir, keeps them)")
            log.info("consumer stopped: %d windows classified, rejected %s", self.stats.windows,
                     self._rejected() or "none")

    def _cycle(self, timeout: float) -> None:
        """The service loop's work: take what is queued, release, classify and publish, acknowledge."""
        self._drain(timeout=timeout)
        self.pipeline.release(time.monotonic())
        if self.learner is not None:
            self.learner.poll()  # its reports, adapters and promoted weights
        self._apply_swap()
        self._classify()
        if self._confirm:
            self._flush_acks()
        if self.after_window and self.acks.held:
            self._check_stall()

    def _hand_over(self) -> None:
        """Take nothing more, and work off what was taken, before the final checkpoint.

        Acknowledging on receipt (always with a state store), what is queued, and in a shared group what is
        held for its device's earlier messages, was acknowledged: the broker will not send it to anyone
        again. So a replica in a shared group first leaves the shared subscription (the broker then
        dispatches to the other members; nor does a reconnection subscribe to it again, as a clean session
        that came back while the replica stops would be sent messages it then neither takes nor
        acknowledges) and waits, bounded, for the UNSUBACK; any other consumer stops
        reading (what the broker sent and was not read stays unacknowledged with it). Then the service
        loop's work goes on until nothing is queued or held (a held message waits for its predecessors on
        other replicas to be committed, at most the reorder wait), or until the deadline; reading stops
        before the last pass. A persistent session in a shared group keeps its subscription: Mosquitto
        (2.0) queues a shared subscription's messages for an offline persistent member, so leaving would
        lose its share of the downtime when it is the only member (measured, DESIGN.md). Acknowledging
        after the window, nothing unacknowledged is lost at a stop: the broker sends it again."""
        if self.after_window:
            return
        cfg, shared, client = self.config, self.shared, self._client
        start = time.monotonic()
        budget = max(STOP_WORK, cfg.reorder_wait + 1.0) if shared is not None else STOP_WORK
        deadline = start + budget
        leave = [] if cfg.persistent or not cfg.shared_group else self._sampled()
        # a clean session subscribes again at a reconnection (connect() reads the list each time): not these
        self._subscriptions[:] = [s for s in self._subscriptions if s[0] not in leave]
        if not client.is_connected():  # the broker ended the clean session and its subscriptions with it
            leave = []
        held, queued = (shared.held if shared is not None else 0), self._queue.qsize()
        log.info("stopping: handing over %d held, %d queued messages (%s; at most %.0f s)", held, queued,
                 f"left {', '.join(leave)}" if leave else "reading no more", budget)
        mid, unsub_until = None, start
        try:
            if leave:
                client.on_unsubscribe = self._on_unsubscribe
                mid = client.unsubscribe(leave)[1]
                unsub_until = min(deadline, start + UNSUBACK_WAIT)
            else:
                self._close_reading()
            while True:
                self._cycle(timeout=0.05)  # waits up to 50 ms for a message: the queue was empty that long
                now = time.monotonic()
                if now >= deadline:
                    break
                if self._queue.empty() and not (shared is not None and shared.held) and (
                        mid is None or mid in self._unsubacks or now >= unsub_until):
                    if self._closing:
                        break
                    self._close_reading()  # the messages the broker sent before the UNSUBACK: one more pass
        finally:
            self._seal()
        held, queued = (shared.held if shared is not None else 0), self._queue.qsize()
        if held or queued:
            log.warning("stopping after %.1f s of handing over: %d held and %d queued messages, acknowledged on "
                        "receipt, are lost", time.monotonic() - start, held, queued)

    def _close_reading(self) -> None:
        """Paho's thread reads nothing more (``_queue_high``); wait until no read begun before is under way.
        Plain paho (HARSTREAM_MQTT_READ=plain) reads on until the disconnection."""
        self._closing = True
        if getattr(self._client, "read_paused", None) is not None:
            self._read_closed.wait(READ_STOP_WAIT)

    def _seal(self) -> None:
        """From now on what arrives is neither taken nor acknowledged (paho acknowledges nothing by itself
        any more: a persistent session gets it again), and reading goes on, so that the PUBACKs of the last
        status messages come in. Reading was stopped first: no message read before is still on its way."""
        self._client.manual_ack_set(True)
        self._sealed = True
        self._closing = False

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:  # paho thread
        self._unsubacks.add(mid)

    def _clear_retained(self) -> None:
        """Take this consumer's retained messages off the broker (an empty retained message each), status last:
        watchers saw it go offline, and no later run comes back under its random id."""
        try:
            for kind in ("model", "metrics", "status"):
                info = self._client.publish(consumer_topic(self.config.prefix, self.config.consumer_id, kind), b"",
                                            qos=1, retain=True)
            info.wait_for_publish(5)
        except (RuntimeError, ValueError) as exc:  # the broker gone: its last will and these stay
            log.warning("could not clear this consumer's retained messages: %s", exc)

    def _connect(self, status: str):
        """Connect, deciding the protocol and how to acknowledge (``after_window``, ``protocol``)."""
        cfg = self.config
        want = cfg.ack == "after-window" or (cfg.ack == "auto" and cfg.persistent and cfg.qos == 1
                                              and self.shared is None)
        self._subscriptions[:] = [(self.imu_subscription, cfg.qos), (f"{cfg.prefix}/+/label", 1),
                                  (consumer_topic(cfg.prefix, cfg.consumer_id, "command"), 1),
                                  *[(t, cfg.qos) for t in self._sampled()[1:]]]
        kwargs = dict(
            client_id=cfg.consumer_id,
            will=(status, b"offline"),
            subscriptions=self._subscriptions,  # the list itself: a stopping replica takes its shares out
            on_message=self._on_message,
            on_connected=self._on_connected,
            clean_session=not cfg.persistent,
            read_paused=self._queue_high,
        )
        if want and cfg.mqtt_protocol in ("5", "auto"):
            if cfg.mqtt_protocol == "5" or speaks_mqtt5(cfg.broker):
                self.after_window = True  # before the first message can arrive
                client = connect(cfg.broker, "consumer", protocol="5", manual_ack=True,
                                 receive_maximum=cfg.max_unacked, **kwargs)
                self.protocol = "5"
                return client
            # 3.1.1 has no Receive Maximum: the broker's in-flight limit (Mosquitto's default 20)
            # would stall windows, so after-window only when asked for (with the broker set for it)
            self.after_window = cfg.ack == "after-window"
            log.warning("%s speaks MQTT 3.1.1 only: acknowledging %s", cfg.broker,
                        "after the window; the broker must allow enough messages in flight "
                        "(Mosquitto: max_inflight_messages 0)" if self.after_window else
                        "on receipt (a restart may lose what was queued; --ack after-window "
                        "with the broker's in-flight limit raised avoids it)")
        else:  # not wanted, or --mqtt 3.1.1: after the window only when asked for
            self.after_window = want and cfg.ack == "after-window"
        self.protocol = "3.1.1" if cfg.mqtt_protocol == "auto" else cfg.mqtt_protocol
        return connect(cfg.broker, "consumer", protocol=self.protocol, manual_ack=self.after_window,
                       receive_maximum=cfg.max_unacked if self.after_window else None, **kwargs)

    def _on_connected(self, client) -> None:  # paho thread, at every (re)connection
        self._connected_at = time.monotonic()
        self._connections += 1

    def _check_stall(self) -> None:
        """Messages held and nothing arriving: the broker's in-flight limit may be full of partial
        windows. Acknowledge them all (counted as forced) so that it sends more; under MQTT 3.1.1 the
        limit is then taken to be what was held, and kept below from now on."""
        now = time.monotonic()
        if (now - max(self._last_arrival, self._connected_at) < self.config.ack_stall
                or not self._queue.empty() or not self._client.is_connected()):
            return  # a broker that is away sends again what is held when it is back
        held = len(self.acks)
        self._forced["stall"] += self.acks.enforce_limit(0)
        if self._unjournalled:  # held while the journal cannot be written: they too fill the broker's limit
            written = self.journal.flush()
            for mid, qos, why in self._unjournalled:
                self._client.ack(mid, qos)
                self._paho_acks[why if written else "forced"] += 1
            if not written:
                self._forced["journal"] += len(self._unjournalled)
            self._unjournalled = []
        self._warn_forced()
        self._last_arrival = now
        if self.protocol == "3.1.1" and 10 <= held < self.acks.limit:
            self.acks.limit = held  # a broker limit repeats at the same count; a quiet spell rarely does
            if not self._stall_warned:
                self._stall_warned = True
                log.warning("nothing arrived for %.1f s with %d messages unacknowledged: the broker seems to "
                            "send at most %d in flight (Mosquitto: max_inflight_messages; set it to 0). "
                            "Holding fewer from now on; the rest are acknowledged on arrival (acks.forced)",
                            self.config.ack_stall, held, held)

    @property
    def imu_subscription(self) -> str:
        return self._shared_topic(f"{self.config.prefix}/+/imu")

    def _sampled(self) -> list[str]:
        """The subscriptions samples come through: imu first, then the phone formats' topics."""
        imu = f"{self.config.prefix}/+/imu"
        return [self.imu_subscription, *[self._shared_topic(t) for t in self.router.subscriptions() if t != imu]]

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
            predictions = shared.commit(self._classify_ready())
        elif self.pipeline.pending:
            predictions = self._classify_ready()
        else:
            return
        self._publish(predictions)
        self._after_predictions(predictions)

    def _classify_ready(self) -> list[Prediction]:
        """``Pipeline.classify_ready``; windows served before their device was turned anew in a later round
        of the same pass are turned with it (``_on_turn``)."""
        orienter = self.pipeline.classifier.orienter
        self._pass_start = orienter.calls if orienter is not None else None
        try:
            predictions = self.pipeline.classify_ready()
        finally:
            self._pass_start = None
        if not self._turned_in_pass:
            return predictions
        from models.orientation import turn_sensors  # loaded with the orienter (scipy: 0.6 s, not at start)
        for device, Qt, rounds in self._turned_in_pass:  # a device's k-th prediction is of round k
            for p in [p for p in predictions if p.device == device][:rounds]:
                p.window = turn_sensors(p.window, Qt)
        self._turned_in_pass = []
        return predictions

    def _drain(self, timeout: float) -> None:
        """Take messages until the queue is empty and a window has waited ``max_wait``."""
        deadline = None
        while True:
            try:
                wait = timeout if deadline is None else 0.001
                items = [self._queue.get(timeout=wait)]
            except queue.Empty:
                if deadline is None or time.monotonic() >= deadline:
                    return
                continue
            try:
                while len(items) < DRAIN_CHUNK:
                    items.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            for item in items:
                self._bytes_out += len(item[1]) + QUEUED_OVERHEAD
            self.handle_many(items)
            if deadline is None and (self.pipeline.pending or (self.shared is not None and self.shared.held)):
                # from now, not from the message's arrival: behind a backlog, arrival + max_wait has
                # long passed, every window would go through the network alone and the backlog grow
                deadline = time.monotonic() + self.config.max_wait
            if deadline is not None and time.monotonic() >= deadline:
                return

    def handle_many(self, items: list[tuple]) -> None:
        """``handle`` each (topic, payload, arrival[, mid, qos, dup[, retain]]) in order (a QoS 0 message may
        come as the first three alone); the native imu payloads among them are decoded in one go."""
        head = self._native_head
        imu: list[tuple[bytes, str]] = []
        where: list[int] = []
        for i, item in enumerate(items):
            topic = item[0]
            if topic.startswith(head) and topic.endswith("/imu"):
                try:
                    device, _ = parse_topic(topic, self.config.prefix)
                except Rejected:
                    continue  # handle() counts it
                imu.append((item[1], device))
                where.append(i)
        decoded: list = [None] * len(items)
        if imu:
            for i, device_item, result in zip(where, imu, decode_imu_many(imu, self.config.max_payload),
                                              strict=True):
                decoded[i] = (device_item[1], result)
        for item, pre in zip(items, decoded, strict=True):
            mid, qos, dup = item[3:6] or (0, 0, False)
            self.handle(item[0], item[1], item[2], mid, qos, dup, pre, retained=item[6] if len(item) > 6 else False)

    def handle(self, topic: str, payload: bytes, arrival: float, mid: int = 0, qos: int = 0,
               dup: bool = False, decoded: tuple | None = None, retained: bool = False) -> None:
        """Decode and buffer one message; a bad one is counted and logged, never raised.

        Acknowledging after the window, a QoS 1 message whose samples were buffered is held until
        they are in published windows; any other is acknowledged here. A copy the broker sent again
        (``dup``) of a message already taken is counted in ``acks.redelivered``, not as rejected. ``retained``:
        the broker's stored copy (MQTT's retain flag), sent at every subscription: a command so is not carried out.
        """
        lost = self.sequence.lost_samples
        try:
            if not (self.after_window and qos):
                self._handle(topic, payload, arrival, 0, 0, dup, decoded, retained)
                return
            if mid in self.acks.held:  # the broker sent it again (a reconnection): we have it already
                self.acks.counts["redelivered"] += 1
                return
            self._handle(topic, payload, arrival, mid, qos, dup, decoded, retained)
            if mid not in self.acks.held:
                self.acks.ack(mid, qos, "at_once")
            else:
                self._forced["limit"] += self.acks.enforce_limit()
        finally:  # a gap a QoS 1 message shows: the broker did not keep the messages before it (_warn_lost)
            if qos and self.sequence.lost_samples > lost:
                self._lost_qos1 += self.sequence.lost_samples - lost

    def _handle(self, topic: str, payload: bytes, arrival: float, mid: int, qos: int, dup: bool,
                decoded: tuple | None = None, retained: bool = False) -> None:
        """``decoded``: (device, batch or Rejected) of a native imu payload decoded beforehand."""
        self.stats.messages += 1
        device = None  # named in the warning of a rejection, once known
        try:
            if decoded is not None:
                device, kind = decoded[0], "imu"
            else:
                if topic == self._command_topic:
                    self._command(payload, retained)
                    return
                if not topic.startswith(self._native_head) and self.router.matches(topic):
                    batches = self.router.decode(topic, payload)  # phone formats: no seq
                    for part in batches.dropped:  # parts left out, the rest taken (no_gravity)
                        self.stats.rejected[part.reason] += 1
                        self._say_rejected(topic, batches[0].device if batches else None, part, payload, "part of ")
                    for batch in batches:
                        try:
                            self.pipeline.check(batch)  # the gyroscope, if the model reads it
                        except Rejected as exc:  # a part without it (a phone's gyroscope starting late or
                            self.stats.rejected[exc.reason] += 1  # pausing): the parts with it go on
                            continue
                        if batch.device in self._resume:  # after a restart, as a native message
                            batch = self._skip_published(batch)
                            if batch is None:  # sent again, but classified before the restart
                                self.acks.counts["redelivered"] += 1
                                continue
                        self._take(batch, arrival, mid, qos)
                    return
                device, kind = parse_topic(topic, self.config.prefix)
            if kind == "imu":
                if decoded is None:
                    batch = decode_imu(payload, device, self.config.max_payload)
                elif isinstance(decoded[1], Rejected):
                    raise decoded[1]
                else:
                    batch = decoded[1]
                self.pipeline.check(batch)  # the gyroscope, if the model reads it
                if self.shared is not None:  # applied in seq order, against the shared state
                    self._last_seen[device] = arrival
                    self.shared.hold(batch, arrival)
                    return
                # samples newer than every one taken tell a device numbering anew (its seq 0 lost) from a copy
                # sent again; where its buffer is gone (evicted, or a restart), the last published window's end
                buffered = self.pipeline.newest(device)
                given = buffered if buffered is not None else self._watermarks.get(device)
                newest = None if dup else given  # the broker's copy of a message sent before: no new numbering
                resumed = device in self._resume
                if resumed:
                    skipped, batch = batch, self._skip_published(batch, dup)
                    if batch is None:  # sent again, but classified before the restart
                        self.acks.counts["redelivered"] += 1
                        if skipped.seq != 0 or not self.sequence.last(device):  # a copy of seq 0: no new session
                            try:
                                self.sequence.check(skipped)  # its seq is no gap
                            except Rejected:
                                pass  # acknowledged before the kill, though the PUBACK did not leave
                        return
                # seq 0 after a higher one, not the broker's copy (DUP), is a new session whatever its clock: its
                # grid starts again at its first sample (samples at or before the buffer's newest were dropped
                # as late, a recording shorter than CLOCK_RESET replayed again at once gave no window)
                new_clock = False
                if batch.seq == 0 and (self.sequence.last(device) or 0) > 0:  # rare: not on the usual path
                    if not dup:
                        new_clock = buffered is not None and float(batch.t[0]) <= buffered
                    elif (not resumed and given is not None and float(batch.t[0]) <= given
                          and float(batch.t[-1]) >= given - CLOCK_RESET):
                        # the broker's copy of this session's seq 0 (its PUBACK lost to a reconnection): taken
                        # before; checked, it set the sequence's last seq back to 0 and the next message counted
                        # a gap of every one since. A DUP seq 0 after the newest (its first try never reached
                        # us), more than CLOCK_RESET back (a new clock), or found no copy by _skip_published
                        # after a restart is a new session, as before
                        self.acks.counts["redelivered"] += 1
                        return
                if self.sequence.check(batch, newest) < 0 and self._too_late(batch):
                    return  # a late message filling a gap, but its samples' place on the grid is gone
                self._take(batch, arrival, mid, qos, new_clock)
            elif kind == "label":
                label, start, end = decode_label(payload)
                if not self._takes_label(label):
                    raise Rejected("bad_label", f"{label[:24]!r}: more than {MAX_OTHER_LABELS} names outside "
                                                f"the model's classes")
                self.labels.add(device, label, start, end)
                if self.store is not None:
                    self.store.label(device, label, start, end)
                self.history.track(device)
                if device not in self._last_seen:  # evicted with the idle ones unless samples come
                    self._label_only[device] = arrival
        except Rejected as exc:
            if dup and exc.reason in ("repeated_seq", "backwards_seq"):
                self.acks.counts["redelivered"] += 1  # taken before (its PUBACK lost to a reconnection)
                return
            self.stats.rejected[exc.reason] += 1
            self._say_rejected(topic, device, exc, payload)

    def _say_rejected(self, topic: str, device: str | None, exc: Rejected, payload: bytes, what: str = "") -> None:
        """A rejected message (or ``what``: part of one): each at DEBUG (``-v``), and at WARNING the first of each
        (device, reason), naming them, at most REJECTION_WARNINGS a REJECTION_WARNING_INTERVAL (those beyond are
        counted and said together, ``_warn_unnamed``, and named in a later interval if they come again); the last
        REJECTION_PAIRS pairs named are remembered. Before, a rejection was only counted in the metrics and the
        minute's progress line, so a user could not tell which sensor was broken, and ``-v`` logged every one
        (222 B each, unthrottled: a probe's 10,000 bad messages, 2.2 MB)."""
        log.debug("rejected %s%s: %s (payload %r)", what, topic[:80], exc, payload[:60])
        if exc.reason in OWN_WARNINGS:
            return
        key = (device if device is not None else topic[:80], exc.reason)
        named = self._rejections_named
        if key in named:
            named.move_to_end(key)
            return
        if not self._naming.allow():
            self._unnamed[exc.reason] += 1
            return
        named[key] = None
        if len(named) > REJECTION_PAIRS:
            named.popitem(last=False)
        log.warning("rejected %sa message %s: %s (payload %r%s); further %s rejections of it are counted in the "
                    "metrics (rejected) only, each logged at DEBUG (-v)", what,
                    f"of device {device}" if device is not None else f"on topic {topic[:80]!r}", str(exc)[:200],
                    payload[:60], f", {len(payload)} bytes" if len(payload) > 60 else "", exc.reason)

    def _warn_unnamed(self) -> None:
        """The rejections of (device, reason) pairs not named because more came than REJECTION_WARNINGS a
        REJECTION_WARNING_INTERVAL (_say_rejected), in one line at most that often."""
        if not self._unnamed or not self._unnamed_warnings.allow():
            return
        log.warning("%d more rejected messages (%s) of devices or reasons not named here: at most %d are named every "
                    "%.0f s (each rejection is logged at DEBUG, -v)", sum(self._unnamed.values()),
                    ", ".join(f"{r} {n}" for r, n in self._unnamed.most_common()), REJECTION_WARNINGS,
                    REJECTION_WARNING_INTERVAL)
        self._unnamed.clear()

    @property
    def _native_head(self) -> str:
        return f"{self.config.prefix}/"

    @property
    def _command_topic(self) -> str:
        return consumer_topic(self.config.prefix, self.config.consumer_id, "command")

    def _skip_published(self, batch, dup: bool = False):
        """The first messages of a device after a restart, without what published windows hold.

        The windows go on on the same grid: the next grid sample after the last published window's
        end ``mark`` is interpolated from the samples around it, as the previous life would have, and
        becomes the first sample of the new grid. Returns None for a message that lies wholly before
        it (sent again, but classified before the restart); its last sample is kept to interpolate.
        ``seq`` 0 after a higher one, or samples more than CLOCK_RESET behind the mark, are a restarted
        device (nothing of it published), except in a copy the broker sends again (``dup``: the last life
        took it, and its PUBACK did not leave) of a message taken before: a ``seq`` the sequence check
        refuses, or the session's ``seq`` 0 reaching to within CLOCK_RESET of the mark and starting on the
        mark's grid (a session's first window whose acknowledgements a kill cut off); taken for a restart, its
        windows were classified again. A device restarted on a new clock within CLOCK_RESET of the mark whose
        ``seq`` 0 comes as a copy is told apart only by that grid: a clock that starts on it (whole seconds
        apart, or a recording replayed again) is taken for a copy, and its windows up to the mark are lost.
        """
        device = batch.device
        mark = self._resume[device]
        last = self.sequence.last(device)
        steps = (mark - float(batch.t[0])) * self.pipeline.config.rate  # a copy of the session's seq 0 starts
        on_grid = abs(steps - round(steps)) < 1e-3  # the grid the mark lies on; a new clock, almost never
        copy = dup and batch.seq is not None and last is not None and (
            0 < batch.seq <= last
            or (batch.seq == 0 and on_grid and batch.t[0] <= mark and batch.t[-1] >= mark - CLOCK_RESET))
        if not copy and ((batch.seq == 0 and (last or 0) > 0) or batch.t[-1] < mark - CLOCK_RESET):
            del self._resume[device]  # a restarted device, a new clock: nothing of it was published
            self._resume_prev.pop(device, None)
            # its labels put back from the last life are of its session before, as are those of this life that
            # start after the new clock's first sample (as for a clock going back live, WindowHistory.add): its
            # windows the last life left waiting are final, resolved on them, and then they are forgotten
            new = self.labels.split_off(device, self._reloaded, float(batch.t[0]))
            self._publish_drift(self._resolved(self.history.end_session(device, self.labels)))
            self.labels.take_over(device, new)
            return batch
        start = mark + 1.0 / self.pipeline.config.rate
        t, acc = batch.t, self._sample_values(batch).astype(np.float64)  # gyro too if the model reads it
        prev = self._resume_prev.pop(device, None)
        if prev is not None and len(prev[1]) == acc.shape[1]:
            t, acc = np.concatenate([[prev[0]], t]), np.concatenate([prev[1][None, :], acc])
        if t[-1] < start - 1e-6:
            self._resume_prev[device] = (float(t[-1]), acc[-1])
            return None
        del self._resume[device]
        after = t > start + 1e-6
        if t[0] <= start + 1e-6:  # a sample at or before the grid's next point: interpolate it
            first = np.array([np.interp(start, t, acc[:, i]) for i in range(acc.shape[1])])
            t, acc = np.concatenate([[start], t[after]]), np.concatenate([first[None, :], acc[after]])
        acc = acc.astype(np.float32)
        return SampleBatch(device, t, acc[:, :3], acc[:, 3:] if acc.shape[1] == 6 else None, batch.seq)

    def _sample_values(self, batch) -> np.ndarray:
        """A batch's samples as the model reads them: the accelerometer, then the gyroscope if it does."""
        if self.pipeline.config.input_channels == 3:
            return batch.acc
        return np.concatenate([batch.acc, batch.gyro], axis=1)

    def _too_late(self, batch) -> bool:
        """Whether the buffer has moved past all of ``batch`` (counted in ``late_samples``): pushed,
        a batch that old would look like a device whose clock restarted, and windows would repeat."""
        buffer = self.pipeline.buffers.get(batch.device)
        last = None if buffer is None else buffer.last_t
        if last is None or batch.t[-1] > last - self.pipeline.reorder:
            return False
        self._late_fills += len(batch)
        self.pipeline.late_by_device[batch.device] += len(batch)  # named in _warn_late
        return True

    def _take(self, batch, arrival: float, mid: int = 0, qos: int = 0, new_clock: bool = False) -> None:
        """Buffer a decoded batch, bringing an evicted device's state back first; ``new_clock``: it starts a
        new session of its device."""
        device = batch.device
        if qos and self.after_window:
            newest = self.acks.newest(device)
            if newest is not None and (new_clock or batch.t[-1] < newest - CLOCK_RESET):
                self.acks.drop_device(device)  # the device's clock restarted: its partial window goes
            self.acks.hold(mid, qos, device, float(batch.t[-1]), batch.seq, self._sample_values(batch)[-1])
        if device not in self._last_seen and device in self._evicted:
            state = tuple(t.unsqueeze(1) for t in self._evicted.pop(device))
            self.pipeline.classifier.bank.set(device, state)
        self._last_seen[device] = arrival
        self.stats.samples += len(batch)
        self.stats._interval_samples += len(batch)
        self.pipeline.add(batch, arrival, new_clock)

    def _publish(self, predictions: list[Prediction]) -> None:
        """Publish a cycle's predictions. With a journal (acknowledging after the window, with a state
        directory), the cycle is journalled first, predictions included: whatever a ``kill -9`` then
        interrupts, no window is classified twice by the next life and none is missing from the event
        store; predictions on their way over MQTT (QoS 0) may go down with the socket."""
        cfg = self.config
        classes = self.pipeline.classifier.classes
        version = self.pipeline.classifier.version
        now = time.monotonic()
        received = time.time()  # the store's key with the window, in the journal line too: no row twice
        bodies = []
        for p in predictions:
            latency = (now - p.arrival) * 1000.0
            self.stats._latencies.append(latency)
            bodies.append({
                "device": p.device,
                "t": p.t_end,
                "label": p.label,
                "confidence": round(p.confidence, 4),
                # in float64: a float32 rounded to 4 decimals is written with its binary tail (0.00039999998989515007)
                "probs": dict(zip(classes, p.probs.astype(np.float64).round(4).tolist(), strict=True)),
                "model": version,
                "latency_ms": round(latency, 2),
            })
        due = self._release(predictions, bodies, received) if self.after_window else None
        info = None
        with batched_writes(self._client):  # the network thread is woken once, when all are queued
            for p, body in zip(predictions, bodies, strict=True):
                info = self._client.publish(f"{cfg.prefix}/{p.device}/prediction", orjson.dumps(body))
                if self.store is not None:
                    self.store.prediction(p.device, p.t_end, p.label, body["confidence"], version,
                                          body["latency_ms"], received)
                self._watermarks[p.device] = p.t_end
        self.stats.windows += len(predictions)
        self.stats._interval_windows += len(predictions)
        if due is not None:
            with self._confirm_lock:
                entry = [info, time.monotonic(), due]
                self._confirm.append(entry)
                if info is not None:
                    self._confirm_mids[info.mid] = entry
            # the paho thread acknowledges them as soon as it has written the predictions (_on_publish)
            self._flush_acks()

    def _release(self, predictions: list[Prediction], bodies: list[dict], received: float) -> list:
        """Release what the cycle's windows cover and journal it, with the predictions; return the
        acknowledgements due once the predictions have left. In that order, so that after a kill every
        acknowledged message is in a window the journal holds, and the journal knows at least what the
        broker will not send again."""
        ends: dict[str, float] = {}
        for p in predictions:  # each device's in order: its last is its current session's newest window (the
            ends[p.device] = p.t_end  # session before's, its clock gone back, would release the new one's all)
        entries = []
        self.acks.deferred = []
        try:
            for device, t_end in ends.items():
                anchor = self.acks.covered(device, t_end)
                if anchor is not None:
                    self._anchors[device] = (float(anchor[0]), [float(x) for x in anchor[1]])
                entries.append((device, t_end, self.acks.safe_seq(device, self.sequence.last(device)),
                                self._anchors.get(device)))
        finally:
            due, self.acks.deferred = self.acks.deferred, None
        if self.journal is not None:
            if not self.journal.write(entries, [(b["device"], b["t"], b["label"], b["confidence"], b["model"],
                                                 b["latency_ms"], received) for b in bodies]):
                # a full disk: acknowledged, these would be lost to a kill -9 (the broker sends them to no one,
                # the journal does not say they were classified); held, a kill -9 classifies them again. Held
                # within the broker's in-flight budget with the partial windows; beyond, the oldest go (forced)
                self._unjournalled += due
                over = len(self._unjournalled) + len(self.acks) - self.acks.limit + 1
                due = [(mid, qos, "forced") for mid, qos, _ in self._unjournalled[:max(over, 0)]]
                del self._unjournalled[:max(over, 0)]
                self._forced["journal"] += len(due)
            elif self._unjournalled:  # written now, with the lines that had failed: theirs go with this cycle's
                due, self._unjournalled = self._unjournalled + due, []
        return due

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # paho thread
        entry = self._confirm_mids.get(mid)  # one dict look-up per publish: this thread must keep up
        if entry is None:
            return
        with self._confirm_lock:
            if self._confirm_mids.get(mid) is not entry:
                return  # completed meanwhile by the service thread
            while self._confirm:  # it and every earlier one: paho writes in order, so they are out too
                head = self._confirm[0]
                self._complete(1)
                if head is entry:
                    break

    def _complete(self, n: int) -> None:
        """Acknowledge what the first ``n`` confirmations release (holding ``_confirm_lock``)."""
        for _ in range(n):
            info, _, due = self._confirm.popleft()
            if info is not None:
                self._confirm_mids.pop(info.mid, None)
            for mid, qos, why in due:
                self._client.ack(mid, qos)
                self._paho_acks[why] += 1

    def _flush_acks(self, wait: float = 0.0) -> None:
        """Acknowledge what ``_release`` released, as far as its predictions are sent
        (waiting up to ``wait`` seconds for them; ``_on_publish`` usually did it already). QoS 0
        predictions lost to a disconnection are never sent: after ``CONFIRM_TIMEOUT`` they count as
        published (the event store has them)."""
        while self._confirm:
            with self._confirm_lock:
                if not self._confirm:
                    return
                info, since = self._confirm[0][0], self._confirm[0][1]
                if info is None or info.rc != 0 or info.is_published() or \
                        time.monotonic() - since >= CONFIRM_TIMEOUT:
                    self._complete(1)
                    continue
            if wait <= 0:
                return
            info.wait_for_publish(wait)
            wait = 0.0

    # -- online learning, drift, live metrics -------------------------------------------------
    def _after_predictions(self, predictions: list[Prediction]) -> None:
        events: list[DriftEvent] = []
        for p in predictions:  # magnitude and mean computed for the whole batch by the pipeline
            if p.reoriented:  # turned anew: not a drift of its own making (models.orientation)
                self.monitor.reoriented(p.device, p.t_end)
            events += self.monitor.observe(p.device, p.t_end, p.magnitude, p.confidence, p.mean_acc, p.label,
                                          p.motion, p.new_session)
            if p.device in self.history:
                self.history.add(LabelledWindow(p.device, p.t_end, p.window, p.state_before(), p.label,
                                                p.confidence), p.new_session)
        events += self._resolved(self.history.resolve(self.labels))
        self._publish_drift(events)

    def _resolved(self, windows: list[LabelledWindow]) -> list[DriftEvent]:
        """Windows whose label is settled: each labelled one scored (prequential), then all to the learner."""
        events: list[DriftEvent] = []
        for w in windows:
            if w.label is not None:
                events += self.monitor.labelled(w.device, w.t_end, w.label, w.predicted,
                                                w.samples.mean(axis=0), window_motion(w.samples))
            self._collect(w)
        return events

    def _publish_drift(self, events: list[DriftEvent]) -> None:
        cfg = self.config
        for e in events:
            target = (consumer_topic(cfg.prefix, cfg.consumer_id, "drift") if e.device == "_all"
                      else f"{cfg.prefix}/{e.device}/drift")
            self._client.publish(target, orjson.dumps(e.to_dict()), qos=1)
            if self.store is not None:
                self.store.drift(e.to_dict())
            if e.signal == "error" and self.learner is not None:
                # nothing to switch on: the learner learns from every labelled sequence already; forgetting
                # the device's adapter at the onset was measured and gained nothing (docs/personal.md)
                log.info("drift on %s's errors: its labels keep adapting it", e.device)

    def _collect(self, w: LabelledWindow) -> None:
        """Group resolved windows into sequences of k1 windows for the learner."""
        if self.learner is None:
            return
        pending = self._pending_sequences.setdefault(w.device, [])
        if pending and not 0 < w.t_end - pending[-1].t_end <= 1.5 * self.pipeline.config.window_seconds:
            self._submit(w.device, pending)  # not consecutive (a gap, or the device's clock went back): no
            pending.clear()  # sequence spans it; what came before goes as a shorter one
        pending.append(w)
        if len(pending) < self.learner.config.k1:
            return
        self._submit(w.device, pending)
        pending.clear()

    def _submit(self, device: str, windows: list[LabelledWindow]) -> None:
        """Consecutive resolved windows of a device to the learner, as one sequence, if any is labelled."""
        if self.learner is None or not windows:
            return
        index = {c: i for i, c in enumerate(self.pipeline.classifier.classes)}
        targets = torch.tensor([index.get(x.label, -1) if x.label else -1 for x in windows])
        if (targets >= 0).any():
            self.learner.submit(Sequence(
                device=device,
                windows=torch.from_numpy(np.stack([x.samples for x in windows])),
                targets=targets,
                state=windows[0].state,
            ))

    def _on_turn(self, device: str, Q: np.ndarray) -> None:  # from Orienter.apply, before the window is served
        """The orientation step turns ``device``'s windows by Q more from now on: its adapter (applied after
        the turn) is re-expressed for them, and so are its windows still waiting for labels or for a full
        sequence (the learner must get them as the adapter now sees them), and those served earlier in the
        same pass (a device with several windows ready has one per round; the turn came in round r)."""
        from models.orientation import turn_sensors  # loaded with the orienter that calls this
        self.learner.turn(device, Q)
        Qt = Q.T.astype(np.float32)
        for w in [*self.history.waiting(device), *self._pending_sequences.get(device, ())]:
            w.samples = turn_sensors(w.samples, Qt)
        if self._pass_start is not None:  # in a pass: its windows of earlier rounds are not kept yet
            rounds = self.pipeline.classifier.orienter.calls - self._pass_start - 1
            if rounds:
                self._turned_in_pass.append((device, Qt, rounds))

    def _on_promote(self, model, version: str) -> None:  # from LearnerProcess.poll
        with self._swap_lock:
            pending = self._swap is not None
        if pending:  # LearnerProcess.stop polls with no cycle between: serve, and say, the one before first
            self._apply_swap()  # (else replaced unserved, and the model message answering its command lost)
        with self._swap_lock:
            self._swap = (model, version, None)  # a command's answer, called next, names its id (_command)

    def _apply_swap(self) -> None:
        """Serve the weights the learner handed over, put them in ``serving.pt`` (with a state directory) and
        say so in a model message (naming the command it answers, if one). ``serving.pt`` comes before the
        message and the event, an automatic promotion's too: written only at the next periodic checkpoint, a
        consumer killed in between came back serving the older version while its events and versions said the
        new one was served. It is the version's file, which the learner process wrote (and synced) before
        handing it over, linked: one directory entry synced, no weights serialised and synced again on this
        thread, at up to 2.5 swaps a second at the default --learn-cpu (measured for the default model: 0.2 ms
        median, 35 ms at worst under a dd, against 3 ms and 184 ms for the write; /tmp/s13/versions2). Where it
        cannot be linked (no file, another file system) it is written; an OSError is a warning, and the next
        checkpoint writes it."""
        with self._swap_lock:
            swap, self._swap = self._swap, None
        if swap is None:
            return
        model, version, answers = swap
        self.pipeline.classifier.set_model(model, version)
        log.info("serving model %s", version)
        if self.config.state_dir is not None and self._saved_version != version:
            info = next((v for v in self.learner.versions if v.version == version), None) if self.learner else None
            serving = self.config.state_dir / SERVING_MODEL
            tmp = serving.with_name(serving.name + ".tmp")
            if info is not None and info.path:
                try:
                    tmp.unlink(missing_ok=True)
                    os.link(info.path, tmp)
                    tmp.replace(serving)
                    sync_directory(serving.parent)
                    self._saved_version = version
                except OSError:  # written below
                    try:
                        tmp.unlink(missing_ok=True)
                    except OSError:
                        pass
            try:
                self._save_serving(model, version)  # nothing to do where linked
            except OSError as exc:  # a full disk, a state directory made read-only: serving goes on
                log.warning("serving model %s is not in %s yet (%s); the next checkpoint tries again", version,
                            SERVING_MODEL, exc)
        if self.store is not None:
            self.store.model_event(version, "serving", self.learner.comparison() if self.learner else {})
        self._publish_model(answers=answers)

    def _on_update(self, report) -> None:  # from LearnerProcess.poll
        if self._client is not None:
            self._client.publish(consumer_topic(self.config.prefix, self.config.consumer_id, "training"),
                                 orjson.dumps(report.to_dict()))

    def _publish_model(self, refused: dict | None = None, answers: str | int | None = None) -> None:
        """The retained model message; ``answers``: the id of the command it answers (None: none, or a command
        sent without one), ``refused``: why that command was not carried out."""
        body = {"serving": self.pipeline.classifier.version, "versions": [], "updates": 0, "skipped": 0,
                "answers": answers}
        if self.learner is not None:
            kept = self.learner.versions
            # the models it started from and the newest: a message the dashboard reads whole (256 kB at most);
            # a rollback to a version not listed still works (`harstream versions --rollback` sends its id)
            serving = self.pipeline.classifier.version
            listed = [v for v in kept[:-LISTED_VERSIONS] if v.parent is None or v.version == serving]
            listed += kept[-LISTED_VERSIONS:]
            body.update(versions=[v.to_dict() for v in listed], versions_kept=len(kept),
                        updates=self.learner.updates, skipped=self.learner.skipped,
                        comparison=self.learner.comparison())
        if refused is not None:  # the answer to a command not carried out (harstream versions says why)
            body["refused"] = refused
        self._client.publish(consumer_topic(self.config.prefix, self.config.consumer_id, "model"),
                             orjson.dumps(body), qos=1, retain=True)

    def _save_serving(self, model, version: str | None) -> None:
        """``model`` in ``serving.pt``, unless that version is there already (an OSError is the caller's)."""
        if self._saved_version != version:
            save_checkpoint(self.config.state_dir / SERVING_MODEL, model, {"online": True})
            self._saved_version = version

    def _command(self, payload: bytes, retained: bool = False) -> None:
        """Carry out a command; one refused, here or by the learner process when it comes to it (the version's
        file gone since), is logged (``_warn_refused``), answered by a model message naming it and why
        (``refused``: action, version, reason, t), and counted ``bad_command``. One carried out is answered by the
        model message of its swap, and its weights are in ``serving.pt`` before that (``_apply_swap``): a consumer
        killed before its next checkpoint comes back serving what the command asked, not the version it rolled
        back from. Either answer names the command's ``id`` (``answers``), if it came with one: a string of at
        most ``COMMAND_ID`` characters or an integer (another is refused, answering none).

        What is not a command at all (not a JSON object with a string ``action``: a sensor's payload on the wrong
        topic, garbage) is refused unanswered, and refusals are answered at most COMMAND_ANSWERS a second: each
        answer is a retained QoS 1 model message, and a probe's 7,850 bad payloads a second, each answered, took
        the consumer from 421 to 745 MB. An empty message is no command (it clears a retained one). A retained
        command (``retained``: the broker's stored copy, sent at every subscription) is never carried out: it
        would be again at every start and reconnection (a rollback undoing the promotions since); it is logged,
        counted and cleared from the broker (``_refuse_retained``)."""
        if not payload:  # clearing a retained command (this consumer's own, _refuse_retained): nothing to do
            return
        if retained:
            self._refuse_retained(payload)
            raise Rejected("bad_command", "a retained command is not carried out")
        try:
            body = orjson.loads(payload)
        except orjson.JSONDecodeError:
            body = None
        action = body.get("action") if isinstance(body, dict) else None
        version = body.get("version") if action == "rollback" else None
        command_id = body.get("id") if action is not None else None
        valid_id = (command_id is None or (isinstance(command_id, int) and not isinstance(command_id, bool))
                    or (isinstance(command_id, str) and 0 < len(command_id) <= COMMAND_ID))
        answers = command_id if valid_id else None
        said = str(action)[:40] if isinstance(action, str) else "?"

        def refuse(reason: str) -> None:
            self._warn_refused(f"command {said} refused: {reason[:300]}")
            if self._client is None or not isinstance(action, str):  # not a command: no one waits for an answer
                return
            if not self._refusal_answers.allow():  # a flood: its answers would flood the broker and this process
                self._unanswered += 1
                return
            self._publish_model(refused={"action": action, "version": version if isinstance(version, str) else None,
                                         "reason": reason[:300], "t": time.time()}, answers=answers)

        def answered(model, served: str | None, reason: str | None) -> None:  # from LearnerProcess.poll
            if model is None and reason is None:  # nothing to serve came: not carried out, whatever the learner did
                reason = (f"the learner carried out the {action} but its weights did not reach the serving process; "
                          f"still serving {self.pipeline.classifier.version}")
            if reason is not None:
                self.stats.rejected["bad_command"] += 1  # counted before it is said
                refuse(reason)
                return
            with self._swap_lock:  # handed over just before (on_promote): its model message answers this command
                if self._swap is not None and self._swap[0] is model:
                    self._swap = (model, served, answers)

        try:
            if not valid_id:
                raise ValueError(f"invalid command id {str(command_id)[:60]!r} (a string of at most {COMMAND_ID} "
                                 "characters or an integer)")
            if action not in ("rollback", "promote"):
                raise ValueError(f"not a command: {payload[:60]!r}")
            if action == "rollback" and version is None:
                raise ValueError('a rollback names no version ("version": one of those the model message lists)')
            if action == "rollback" and (not isinstance(version, (str, int)) or isinstance(version, bool)):
                raise ValueError(f"the version to roll back to is not a string: {str(version)[:60]!r}")
            if self.learner is None:
                raise ValueError("this consumer does not learn (--no-learn): it keeps no versions")
            if action == "rollback":
                self.learner.rollback(str(version), answer=answered)
            else:
                self.learner.promote({"forced": True, **self.learner.comparison()}, answer=answered)
        except ValueError as exc:
            refuse(str(exc))
            raise Rejected("bad_command", str(exc)[:300]) from None

    def _refuse_retained(self, payload: bytes) -> None:
        """A retained command: not carried out (a command acts when it is sent; the broker's stored copy comes at
        every subscription, so at every start and reconnection), said at WARNING (once: it is cleared), not
        answered (no one waits: versions and the dashboard never retain one), and cleared from the broker with an
        empty retained message on the topic. Clearing it here: the command topic is this consumer's inbox, which
        nothing else reads, and left there the copy would be refused (and said) again at every connection, for
        good; a retained command published while this consumer is connected comes to it live (no retain flag)
        and is carried out once, as any."""
        topic = self._command_topic
        broker = self.config.broker
        log.warning("a retained command on %s is not carried out (payload %r): a command acts when it is sent, and "
                    "the broker's stored copy would be carried out again at every start and reconnection. This "
                    "consumer clears it (an empty retained message); if it comes back, the broker refused that (an "
                    "ACL?): clear it with mosquitto_pub -h %s -p %s -t '%s' -r -n, and send commands without the "
                    "retain flag", topic, payload[:80], getattr(broker, "host", "HOST"),
                    getattr(broker, "port", "PORT"), topic)
        if self._client is not None:
            self._client.publish(topic, b"", qos=1, retain=True)

    def _warn_refused(self, what: str | None) -> None:
        """A refused command (``what``: what to say of it): the first at WARNING at once, then one line at most every
        COMMAND_WARNING_INTERVAL of how many were refused since and the last; None: say what waits, if it may
        (_publish_metrics). Each refusal was a WARNING: a probe's flood of bad commands wrote 16 MB of log in
        20 s."""
        if what is not None:
            self._refused_unsaid += 1
            self._refused_last = what
        if not self._refused_unsaid or not self._refusal_warnings.allow():
            return
        now = time.monotonic()
        if self._refused_unsaid == 1 and not self._unanswered:
            log.warning("%s", self._refused_last)
        else:
            log.warning("%d commands refused in the last %.0f s (refusals are logged at most once every %.0f s; the "
                        "last: %s)%s", self._refused_unsaid, now - self._refused_since, COMMAND_WARNING_INTERVAL,
                        self._refused_last, f"; {self._unanswered} of them not answered (more than {COMMAND_ANSWERS} "
                        "refusals a second)" if self._unanswered else "")
        self._refused_unsaid, self._unanswered, self._refused_since = 0, 0, now

    def _publish_metrics(self) -> None:
        elapsed, samples, windows, lat = self.stats.interval()
        pct = np.percentile(lat, [50, 95, 99]).round(2).tolist() if len(lat) else [None] * 3
        metrics = {
            "t": time.time(),
            "consumer": self.config.consumer_id,
            "uptime_s": round(time.monotonic() - self.stats.started, 1),
            "samples_per_s": round(samples / max(elapsed, 1e-9), 1),
            "samples": self.stats.samples,  # since start: rates over any span, whatever the intervals
            "windows_per_s": round(windows / max(elapsed, 1e-9), 2),
            "devices": len(self.pipeline.buffers),
            "latency_ms": {"p50": pct[0], "p95": pct[1], "p99": pct[2],
                           "max": round(float(lat.max()), 2) if len(lat) else None},
            "messages": self.stats.messages,
            "windows": self.stats.windows,
            "rejected": self._rejected(),
            "dropped": self.stats.dropped,
            "lost_samples": self.sequence.lost_samples,
            "filled_samples": self.sequence.filled_samples,
            "renumbered": self.sequence.renumbered,  # messages of a device numbering anew with seq 0 lost
            "late_samples": self._late_fills + self.pipeline.late_samples,
            "duplicates": self.pipeline.duplicates,
            "clock_resets": self.pipeline.clock_resets,  # new grids: a device's clock went back over clock_reset
            "queue": self._queue.qsize(),
            "queue_bytes": self._bytes_in - self._bytes_out,
            "acks": {"mode": "after-window" if self.after_window else "on-receipt", "protocol": self.protocol,
                     "unacked": len(self.acks), "limit": self.acks.limit,
                     **{k: self.acks.counts[k] + self._paho_acks[k]
                        for k in ("after_window", "at_once", "redelivered", "dropped", "forced")}},
            "evicted": len(self._evicted),
            "store": None if self.store is None else {
                "written": self.store.written, "dropped": self.store.dropped, "pending": self.store.pending,
                "errors": self.store.errors,  # failed writes (each tried again); failing: the last one failed
                "failing": self.store.failing},
            "journal": None if self.journal is None else {  # held: acknowledgements waiting for it to be written
                "errors": self.journal.errors, "failing": self.journal.failing, "held": len(self._unjournalled)},
            "checkpoint": None if self.config.state_dir is None else {  # failures: checkpoints not written
                "failures": getattr(self, "_checkpoint_failures", 0),
                "failing": getattr(self, "_checkpoint_failing", False)},
            "model": self.pipeline.classifier.version,
            "shared": None if self.shared is None else {"group": self.config.shared_group or None,
                                                        **self.shared.summary()},
            "online": self.monitor.summary(),
            "learner": None if self.learner is None else {
                "adapt": self.learner.config.adapt,  # what learns: device adapters, the shared network, or both
                "updates": self.learner.updates, "skipped": self.learner.skipped, "dropped": self.learner.dropped,
                "adapter_updates": self.learner.adapters.updates if self.learner.adapters is not None else 0,
                "alive": self.learner.alive,  # False: the learner process is gone, labels are not learnt
                # started again after an unexpected end (restarting: until it runs; false and not alive: given up)
                "restarts": self.learner.restarts, "restarting": self.learner.restarting,
                "lost_sequences": self.learner.lost_sequences,  # sent to one that ended, never learnt (in dropped)
                "save_failures": self.learner.save_failures,  # promotions not served: their version was not written
                "rested_s": round(self.learner.rested, 1), **self.learner.comparison()},
        }
        self.last_metrics = metrics
        self._log_progress(metrics)
        self._warn_lost(metrics["lost_samples"])
        self._warn_late()
        self._warn_forced()
        self._warn_refused(None)
        self._warn_unnamed()
        if self.config.health_file is not None:
            self._write_health(metrics)
        if self._client is not None:
            self._client.publish(consumer_topic(self.config.prefix, self.config.consumer_id, "metrics"),
                                 orjson.dumps(metrics), qos=0, retain=True)

    def _log_progress(self, metrics: dict) -> None:
        """One line in the log every ``progress_interval`` seconds: a consumer run in a terminal said nothing
        between its start and its stop (all it does goes out over MQTT), so a newcomer could not tell it was
        working. Totals since start, the windows of the last stretch, the last metrics interval's latency."""
        now = time.monotonic()
        since, windows = self._progress
        if self.config.progress_interval <= 0 or now - since < self.config.progress_interval:
            return
        self._progress = (now, metrics["windows"])
        learner = metrics["learner"]
        learning = ("not learning (--no-learn)" if learner is None else
                    f"learnt {learner['updates']} updates, {learner['adapter_updates']} adapter updates"
                    + ("" if learner["alive"] or learner["restarting"] else "; the learner process is gone"))
        drifts = sum(n for k, n in self.monitor.event_counts.items() if not k.endswith(":repeated"))
        p99, interval = metrics["latency_ms"]["p99"], self.config.metrics_interval  # None: nothing classified
        latency = (f"p99 {p99} ms over the last {interval:g} s" if p99 is not None else
                   f"no window in the last {interval:g} s to take a latency of")
        log.info("%d device%s; %d windows in the last %.0f s, %d since start (%s); %s; %d drift events; "
                 "rejected %s", metrics["devices"], "" if metrics["devices"] == 1 else "s",
                 metrics["windows"] - windows, now - since, metrics["windows"], latency, learning,
                 drifts, metrics["rejected"] or "none")

    def _warn_lost(self, lost: int) -> None:
        """A warning, at most once every LOST_WARNING_INTERVAL, when the devices' seq numbers show more samples
        that never came than last said: counted in the metrics only, a whole downtime lost at every restart (a
        publisher at QoS 0, as `harstream simulate` is by default) went unremarked in the log (found by a soak
        run). Late messages that fill a gap take their samples off the count: warned of is its highest."""
        now = time.monotonic()
        if lost <= self._lost_said or not self._lost_warnings.allow(now):
            return
        qos1 = self._lost_qos1 - self._lost_qos1_said
        if qos1 <= 0:
            why = ("a publisher at QoS 0 loses what it sends while this consumer is down or disconnected, a QoS 1 one "
                   "what the broker does not queue for it (Mosquitto's max_queued_messages)")
        elif self.config.persistent:  # the broker's queue for the session: the probe's restarts lost 260 and 1,625
            why = (f"{qos1} of them in gaps that messages published at QoS 1 showed: the broker did not keep those "
                   "for this consumer's session while it was away or disconnected. Mosquitto keeps at most "
                   "max_queued_messages (1,000 by default) for an offline session, counting the messages the "
                   "consumer left unacknowledged at its stop (its partial windows and what came while it stopped, "
                   "said at the stop) with those published meanwhile, and drops the rest (its log: 'Outgoing "
                   "messages are being dropped'); raise it (deploy/mosquitto sets 100,000)")
        else:
            why = (f"{qos1} of them in gaps that messages published at QoS 1 showed: this consumer's session is "
                   "clean (no --state-dir or --id, or --shared), so the broker keeps nothing for it while it is "
                   "away or disconnected")
        log.warning("%d samples never came (%d since start; gaps in the devices' seq numbers): %s",
                    lost - self._lost_said, lost, why)
        self._lost_said = lost
        self._lost_qos1_said = self._lost_qos1

    def _say_unacknowledged(self) -> None:
        """At the stop, acknowledging after the window: how many messages are left unacknowledged with the broker,
        which sends them again to the next life. While the consumer is away they count against what the broker
        keeps for its session (Mosquitto: max_queued_messages, 1,000 by default), so that with that default the
        messages published during a restart of about 4 s were dropped (an ops probe: 260 and 1,625 samples never
        came): a WARNING from that many on, else INFO."""
        with self._confirm_lock:  # paho's thread completes confirmations (_on_publish) until the disconnection
            due = sum(len(entry[2]) for entry in self._confirm)
        parts = {"in partial windows": len(self.acks), "taken after the stop began": self._queue.qsize(),
                 "whose windows the journal could not record": len(self._unjournalled),
                 "whose predictions were not yet sent": due}
        total = sum(parts.values())
        log.log(logging.WARNING if total >= STOCK_MAX_QUEUED else logging.INFO,
                "leaving %d messages unacknowledged with the broker for the next life (%s); they count against what "
                "it keeps for this consumer's session while it is away (Mosquitto's max_queued_messages, %s by "
                "default), beyond which what is published meanwhile is dropped", total,
                ", ".join(f"{n} {what}" for what, n in parts.items() if n) or "none", f"{STOCK_MAX_QUEUED:,}")

    def _warn_forced(self) -> None:
        """A line, at most once every FORCED_WARNING_INTERVAL, of the held messages acknowledged by force since the
        last one (``acks.forced``), and why (a WARNING where the journal could not record them, else INFO): before,
        --ack-stall forced 20,000 at once (an ops probe, a full disk holding them for the journal up to
        --max-unacked) with nothing in the log."""
        now = time.monotonic()
        new = self._forced - self._forced_said
        if not new or not self._forced_warnings.allow(now):
            return
        why = []
        if new["journal"]:
            why.append(f"{new['journal']} whose windows the acknowledgement journal could not record (it cannot be "
                       "written: a full disk?)")
        if new["limit"]:
            why.append(f"{new['limit']} beyond --max-unacked ({self.acks.limit} held: partial windows)")
        if new["stall"]:
            why.append(f"{new['stall']} held when nothing had arrived for {self.config.ack_stall:g} s (--ack-stall: "
                       "the input paused, or the broker sends no more until some are acknowledged)")
        lost = []
        if new["limit"] or new["stall"]:
            lost.append("a stop or crash before the samples of those in partial windows are in a published window "
                        "loses them")
        if new["journal"]:
            lost.append("a kill -9 before the journal or a checkpoint is written loses the predictions of those the "
                        "event store had not written")
        # a WARNING where the journal failed; else INFO: a device that stops mid-window leaves its partial window
        # held until --ack-stall, at every phone's or simulator's stop (a WARNING there read as an error: phone probe)
        log.log(logging.WARNING if new["journal"] else logging.INFO,
                "%d held messages acknowledged by force (%d since start, acks.forced): %s. The broker will not "
                "send them again: %s", sum(new.values()), sum(self._forced.values()), "; ".join(why), "; ".join(lost))
        self._forced_said = Counter(self._forced)

    def _warn_late(self) -> None:
        """A warning, at most once every LATE_WARNING_INTERVAL, of samples dropped as late since the last one,
        naming the devices with the most: a device clock that stepped back by less than CLOCK_RESET dropped that
        much of its data (the documented rule: its samples are at or before ones already used) with nothing but
        ``late_samples`` in the metrics to show it (found by an ops probe: 20 s of a device without a
        prediction, the log silent)."""
        now = time.monotonic()
        counts = self.pipeline.late_by_device
        # a device evicted since (Pipeline.evict forgets its count) and back counts from 0 again
        new = {d: n - said if n >= said else n for d, n in counts.items()
               if n != (said := self._late_said.get(d, 0))}
        if not new or not self._late_warnings.allow(now):
            return
        top = sorted(new.items(), key=lambda kv: (-kv[1], kv[0]))[:5]
        log.warning("%d samples dropped as late (%d since start; %s%s): they came at or before samples already "
                    "used, as when a device's clock goes back by less than %g s (further back starts a new "
                    "session) or its samples arrive out of order by more than the reorder window (--reorder "
                    "%g s)", sum(new.values()), self.pipeline.late_samples,
                    ", ".join(f"{d} {n}" for d, n in top), f" and {len(new) - len(top)} more devices"
                    if len(new) > len(top) else "", CLOCK_RESET, self.pipeline.reorder)
        self._late_said = dict(counts)

    def _rejected(self) -> dict[str, int]:
        rejected = Counter(self.stats.rejected)
        if self._oversize:
            rejected["oversize"] += self._oversize
        return dict(rejected)

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
