"""Per-device state in a shared store, so that consumer replicas can take any device's next message.

With MQTT shared subscriptions (``$share/<group>/har/+/imu``) a broker that dispatches round-robin
(Mosquitto) hands consecutive messages of one device to different replicas. Each device's state
(the recurrent state, the ``DeviceBuffer``'s resampling state and partial window, the last ``seq``)
therefore lives in a shared store (Redis), and a replica applies a message only when it is the
device's next one:

- **in order**: a message whose ``seq`` is ahead of the stored one is held until its predecessors
  have been applied (by whichever replica got them), at most ``reorder_wait`` seconds; then the gap
  is accepted and counted as lost samples, as a single consumer counts it.
- **exactly once**: each device's record carries a version; a replica writes back with a
  compare-and-set on that version (one Lua script per device, pipelined), so of two replicas that
  applied the same message only one commits. Predictions are published only after their device's
  commit, so a window is never published twice; a replica that dies between commit and publish
  loses those windows, it never repeats them. A store that loses its last writes (Redis's
  ``appendfsync everysec`` after a crash, a failover to a lagging replica) goes back to a lower
  version: a replica whose own last commit is newer offers it in the store (``StateStore.offer``, beside
  the record), and the replica whose held messages follow on from a copy, its own or one offered, goes on
  from that copy instead of the older state (``_store_behind``; under round-robin dispatch the one that
  committed last is seldom the one holding the next message); and, as a safety net, a replica never hands
  out a device's window at or before the last one it handed out.

A replica keeps what it last committed; when its next message for a device follows on from its own
copy (the usual case when the broker dispatches by topic or client id hash, as EMQX can), it skips
the read and only commits: one round trip per cycle instead of two. The version check catches a
copy that another replica has since overtaken.

Records are a small binary format (``encode_record``), never pickles: reading the store never runs
code from it. Beside each record the store keeps the model version whose recurrent state it holds
(a field of its own, written in the same compare-and-set, so that a replica of an older harstream,
which reads the record alone, still reads it during a rolling upgrade); a replica takes that state only
from a version it has served itself (the one it started with, or one it was promoted from).
"""

from __future__ import annotations

import logging
import math
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch

from models.checkpoint import _model_version
from stream.buffers import DeviceBuffer
from stream.decode import Rejected, SampleBatch, SequenceCheck
from stream.pipeline import Pipeline, Prediction

STORE_WARNING_INTERVAL = 60.0  # s at least between two warnings while the shared store does not answer

__all__ = [
    "BufferState",
    "DeviceRecord",
    "MemoryStore",
    "RedisStore",
    "SharedDevices",
    "StateStore",
    "StoreError",
    "buffer_state",
    "decode_record",
    "encode_record",
    "open_store",
    "restore_buffer",
]

log = logging.getLogger(__name__)

# The record format: 1, which every harstream reads; the model version is kept beside the record (StateStore).
FORMAT_VERSION = 1
_HEADER = struct.Struct(
    "<BBq"  # format, has seq, seq
    "didddd3ddqiI"  # rate, window, max_gap, reorder, clock_reset, last_t (NaN: none), last_acc, origin, k,
    # fill, held
    "qqqqB"  # late_samples, duplicates, gaps, clock_resets, recurrent tensors
)
_SHAPE = struct.Struct("<HH")


class StoreError(Exception):
    """The shared store did not answer; the messages involved stay held and are tried again."""


@dataclass
class BufferState:
    """What a ``DeviceBuffer`` needs to go on where another replica left it.

    Held samples keep their age instead of their arrival time: each replica has its own monotonic
    clock.
    """

    rate: float
    window: int
    max_gap: float
    reorder: float
    clock_reset: float
    last_t: float | None  # device time of the last sample on the grid; None before the first
    last_acc: np.ndarray  # (3,) float64, that sample's value
    origin: float  # grid time k is origin + k / rate
    k: int  # index of the next grid sample
    pending: np.ndarray  # (fill, 3) float32: the partial window
    held_t: np.ndarray  # (h,) float64: samples held back for reordering
    held_acc: np.ndarray  # (h, 3) float64
    held_age: np.ndarray  # (h,) float64: seconds since each held sample arrived
    late_samples: int = 0
    duplicates: int = 0
    gaps: int = 0
    clock_resets: int = 0


@dataclass
class DeviceRecord:
    """One device's shared state."""

    seq: int | None  # last seq applied; None before the first message
    buffer: BufferState | None  # None before the first sample
    recurrent: tuple[np.ndarray, ...] = ()  # each (d0, d2) float32; () is the model's initial state


# -- DeviceBuffer's state: DeviceBuffer keeps it in private fields and has no snapshot of its own,
# so these two read and write them; tests/test_scaleout.py checks that a buffer restored midway
# (samples held for reordering included) cuts the same windows as one that never stopped.
def buffer_state(buffer: DeviceBuffer, now: float) -> BufferState:
    """``buffer``'s state; ``now`` is the monotonic time its held samples' ages are taken at."""
    buffer.settle()  # batches kept for one interpolation go onto the grid first
    return BufferState(
        rate=buffer.rate, window=buffer.window, max_gap=buffer.max_gap, reorder=buffer.reorder,
        clock_reset=buffer.clock_reset, last_t=buffer._last_t,
        last_acc=np.asarray(buffer._last_acc, dtype=np.float64).copy(), origin=buffer._origin, k=buffer._k,
        pending=buffer._pending[: buffer._fill].copy(), held_t=buffer._held_t.copy(),
        held_acc=buffer._held_acc.copy(), held_age=now - buffer._held_arrival,
        late_samples=buffer.late_samples, duplicates=buffer.duplicates, gaps=buffer.gaps,
        clock_resets=buffer.clock_resets,
    )


def restore_buffer(device: str, state: BufferState, now: float) -> DeviceBuffer:
    """A ``DeviceBuffer`` in ``state``; held samples arrived ``held_age`` before ``now`` (monotonic)."""
    buffer = DeviceBuffer(device, state.rate, state.window, state.max_gap, state.reorder, state.clock_reset)
    buffer._last_t = state.last_t
    buffer._last_acc = np.asarray(state.last_acc, dtype=np.float64).copy()
    buffer._origin = state.origin
    buffer._k = state.k
    fill = len(state.pending)
    buffer._pending[:fill] = state.pending
    buffer._fill = fill
    buffer._held_t = np.asarray(state.held_t, dtype=np.float64).copy()
    buffer._held_acc = np.asarray(state.held_acc, dtype=np.float64).reshape(-1, 3).copy()
    buffer._held_arrival = now - np.asarray(state.held_age, dtype=np.float64)
    buffer.late_samples = state.late_samples
    buffer.duplicates = state.duplicates
    buffer.gaps = state.gaps
    buffer.clock_resets = state.clock_resets
    return buffer


def encode_record(record: DeviceRecord) -> bytes:
    """A record as bytes: a fixed header, tensor shapes, the buffer's arrays, the recurrent tensors (without
    the model version: the store keeps it beside the record)."""
    b = record.buffer
    if b is None:  # window 0 marks "no buffer"
        b = BufferState(rate=0.0, window=0, max_gap=0.0, reorder=0.0, clock_reset=0.0, last_t=None,
                        last_acc=np.zeros(3), origin=0.0, k=0, pending=np.empty((0, 3)), held_t=np.empty(0),
                        held_acc=np.empty((0, 3)), held_age=np.empty(0))
    header = _HEADER.pack(
        FORMAT_VERSION, record.seq is not None, record.seq if record.seq is not None else 0,
        b.rate, b.window, b.max_gap, b.reorder, b.clock_reset, math.nan if b.last_t is None else b.last_t,
        *(float(v) for v in b.last_acc), b.origin, b.k, len(b.pending), len(b.held_t),
        b.late_samples, b.duplicates, b.gaps, b.clock_resets, len(record.recurrent),
    )
    tensors = [np.ascontiguousarray(t, dtype=np.float32) for t in record.recurrent]
    arrays = [np.ascontiguousarray(b.pending, dtype=np.float32),
              *(np.ascontiguousarray(a, dtype=np.float64) for a in (b.held_t, b.held_acc, b.held_age)),
              *tensors]
    shapes = b"".join(_SHAPE.pack(*t.shape) for t in tensors)
    return b"".join([header, shapes, *(a.tobytes() for a in arrays)])


def decode_record(blob: bytes) -> DeviceRecord:
    """The inverse of ``encode_record``; raises ValueError on anything else."""
    offset = 0

    def take(dtype, count: int, shape: tuple) -> np.ndarray:
        nonlocal offset
        out = np.frombuffer(blob, dtype, count, offset).reshape(shape).copy()
        offset += out.nbytes
        return out

    try:
        (version, has_seq, seq, rate, window, max_gap, reorder, clock_reset, last_t, ax, ay, az, origin, k,
         fill, held, late, duplicates, gaps, clock_resets, n_tensors) = _HEADER.unpack_from(blob)
        if version != FORMAT_VERSION:
            raise ValueError(f"record format {version}, expected {FORMAT_VERSION}")
        offset = _HEADER.size
        shapes = [_SHAPE.unpack_from(blob, offset + i * _SHAPE.size) for i in range(n_tensors)]
        offset += n_tensors * _SHAPE.size
        pending = take(np.float32, fill * 3, (fill, 3))
        held_t = take(np.float64, held, (held,))
        held_acc = take(np.float64, held * 3, (held, 3))
        held_age = take(np.float64, held, (held,))
        tensors = tuple(take(np.float32, d0 * d2, (d0, d2)) for d0, d2 in shapes)
    except (struct.error, ValueError) as exc:
        raise ValueError(f"bad device record: {exc}") from None
    if offset != len(blob):
        raise ValueError(f"device record of {len(blob)} bytes, expected {offset}")
    buffer = None
    if window:
        buffer = BufferState(rate=rate, window=window, max_gap=max_gap, reorder=reorder,
                             clock_reset=clock_reset, last_t=None if math.isnan(last_t) else last_t,
                             last_acc=np.array([ax, ay, az]), origin=origin, k=k, pending=pending,
                             held_t=held_t, held_acc=held_acc, held_age=held_age, late_samples=late,
                             duplicates=duplicates, gaps=gaps, clock_resets=clock_resets)
    return DeviceRecord(seq=seq if has_seq else None, buffer=buffer, recurrent=tensors)


def _seq_of(blob: bytes | None) -> int | None:
    """The ``seq`` of an encoded record, read from its header alone (-1: unreadable)."""
    if blob is None:
        return None
    try:
        _, has_seq, seq = _HEADER.unpack_from(blob)[:3]
    except struct.error:
        return -1
    return seq if has_seq else None


# -- stores ----------------------------------------------------------------------------------------
Offer = tuple[int, bytes, str]  # a copy on offer (StateStore.offer): (seq, record, model)


class StateStore:
    """Versioned records by device: ``load_records`` reads, ``commit`` compare-and-sets.

    A device never written has version 0 and no record. ``commit`` writes ``(expected, blob, model)``
    only where the stored version is still ``expected``, making it ``expected + 1``; it returns the
    devices written. ``model`` (the version of the model whose recurrent state the record holds) is kept
    beside the record, stamped with the version written: ``load_records`` gives it back only while the
    record is that version ("" once a writer that does not give it, an older harstream, wrote since).
    A commit drops the copy on offer (``offer``).
    """

    def load_records(self, devices: list[str]) -> dict[str, tuple[int, bytes | None, str, Offer | None]]:
        """(version, record, model, the copy on offer) per device."""
        raise NotImplementedError

    def commit(self, updates: dict[str, tuple[int, bytes, str]]) -> set[str]:
        raise NotImplementedError

    def offer(self, offers: dict[str, tuple[int, int, bytes, str]]) -> None:
        """Offer a replica's copy ``(expected, seq, blob, model)`` of each device whose store lost writes, beside
        the record (which stays as it is): ``load_records`` gives it, as ``(seq, blob, model)``, while the
        stored version is ``expected``; kept unless a copy of a ``seq`` as high is on offer at that version."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections."""


class MemoryStore(StateStore):
    """In one process (tests, benchmarks): the same contract as Redis, under a lock."""

    def __init__(self) -> None:
        self._records: dict[str, tuple[int, bytes]] = {}
        self._models: dict[str, tuple[int, str]] = {}  # device -> (version written with it, model)
        self._offers: dict[str, tuple[int, int, bytes, str]] = {}  # device -> (version offered at, seq, blob, model)
        self._lock = threading.Lock()

    def load_records(self, devices: list[str]) -> dict[str, tuple[int, bytes | None, str, Offer | None]]:
        with self._lock:
            out = {}
            for d in devices:
                version, blob = self._records.get(d, (0, None))
                stamp, model = self._models.get(d, (-1, ""))
                offered = self._offers.get(d)
                out[d] = (version, blob, model if stamp == version else "",
                          offered[1:] if offered is not None and offered[0] == version else None)
            return out

    def commit(self, updates: dict[str, tuple[int, bytes, str]]) -> set[str]:
        done = set()
        with self._lock:
            for device, (expected, blob, model) in updates.items():
                if self._records.get(device, (0, None))[0] == expected:
                    self._records[device] = (expected + 1, blob)
                    self._models[device] = (expected + 1, model)
                    self._offers.pop(device, None)
                    done.add(device)
        return done

    def offer(self, offers: dict[str, tuple[int, int, bytes, str]]) -> None:
        with self._lock:
            for device, (expected, seq, blob, model) in offers.items():
                offered = self._offers.get(device)
                if self._records.get(device, (0, None))[0] == expected and (
                        offered is None or offered[0] != expected or offered[1] < seq):
                    self._offers[device] = (expected, seq, blob, model)


# One key per device, so that the script touches a single key: pipelined, it works unchanged on a
# Redis Cluster (each key's script goes to the key's node).
# Field 'm' is "<version>:<model>", the version it was written with: a replica of an older harstream
# writes 'v' and 'b' only (its script), leaving an 'm' of another version, which then names no model.
_COMMIT = """
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[1] then return 0 end
local version = tostring(tonumber(ARGV[1]) + 1)
redis.call('HSET', KEYS[1], 'v', version, 'b', ARGV[2], 'm', version .. ':' .. ARGV[4])
redis.call('HDEL', KEYS[1], 'o', 'om')
if tonumber(ARGV[3]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"""
# A copy on offer (StateStore.offer): field 'o' the record, 'om' "<version offered at>:<seq>:<model>".
_OFFER = """
local current = redis.call('HGET', KEYS[1], 'v') or '0'
if current ~= ARGV[1] then return 0 end
local offered = redis.call('HGET', KEYS[1], 'om')
if offered then
  local stamp, seq = string.match(offered, '^(%d+):(%d+):')
  if stamp == current and tonumber(seq) >= tonumber(ARGV[2]) then return 0 end
end
redis.call('HSET', KEYS[1], 'o', ARGV[3], 'om', current .. ':' .. ARGV[2] .. ':' .. ARGV[4])
if tonumber(ARGV[5]) > 0 then redis.call('PEXPIRE', KEYS[1], ARGV[5]) end
return 1
"""


class RedisStore(StateStore):
    """Records in Redis hashes ``<namespace>:<device>`` with fields ``v`` (version), ``b`` (record) and
    ``m`` (``<version>:<model version>``, see ``StateStore``); a copy on offer in ``o`` and ``om``.

    ``ttl`` seconds after its last write a device's record expires (0 keeps it forever).
    """

    def __init__(self, url: str, namespace: str, ttl: float = 7 * 86400.0, timeout: float = 5.0) -> None:
        try:
            import redis
        except ImportError:
            raise RuntimeError("a redis:// state store needs the redis package (pip install redis)") from None
        self.url = url
        self.namespace = namespace
        self.ttl = ttl
        self._errors = (redis.RedisError, OSError)
        self._client = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._commit = self._client.register_script(_COMMIT)
        self._offer = self._client.register_script(_OFFER)

    def key(self, device: str) -> str:
        return f"{self.namespace}:{device}"

    def ping(self) -> None:
        try:
            self._client.ping()
        except self._errors as exc:
            raise StoreError(f"Redis at {self.url} does not answer: {exc}") from None

    def load_records(self, devices: list[str]) -> dict[str, tuple[int, bytes | None, str, Offer | None]]:
        pipe = self._client.pipeline(transaction=False)
        for device in devices:
            pipe.hmget(self.key(device), "v", "b", "m", "o", "om")
        try:
            rows = pipe.execute()
        except self._errors as exc:
            raise StoreError(f"Redis load failed: {exc}") from None
        out = {}
        for d, (v, b, m, o, om) in zip(devices, rows, strict=True):
            version = int(v or 0)
            stamp, _, model = (m or b"").decode(errors="replace").partition(":")
            stamp_o, _, rest = (om or b"").decode(errors="replace").partition(":")
            seq, _, model_o = rest.partition(":")
            offered = (int(seq), o, model_o) if o is not None and stamp_o == str(version) and seq.isdigit() else None
            out[d] = (version, b, model if stamp == str(version) else "", offered)
        return out

    def commit(self, updates: dict[str, tuple[int, bytes, str]]) -> set[str]:
        ttl_ms = int(self.ttl * 1000)
        pipe = self._client.pipeline(transaction=False)
        devices = list(updates)
        for device in devices:
            expected, blob, model = updates[device]
            self._commit(keys=[self.key(device)], args=[str(expected), blob, ttl_ms, model], client=pipe)
        try:
            results = pipe.execute()
        except self._errors as exc:
            # unknown whether they were written: the caller treats them as not written, and the
            # version check makes a retry of an applied message a repeat, not a second window
            raise StoreError(f"Redis commit failed: {exc}") from None
        return {d for d, ok in zip(devices, results, strict=True) if ok == 1}

    def offer(self, offers: dict[str, tuple[int, int, bytes, str]]) -> None:
        pipe = self._client.pipeline(transaction=False)
        for device, (expected, seq, blob, model) in offers.items():
            self._offer(keys=[self.key(device)], args=[str(expected), seq, blob, model, int(self.ttl * 1000)],
                        client=pipe)
        try:
            pipe.execute()
        except self._errors as exc:
            raise StoreError(f"Redis offer failed: {exc}") from None

    def close(self) -> None:
        self._client.close()


def open_store(url: str, namespace: str, ttl: float = 7 * 86400.0) -> StateStore:
    """A store from its URL: ``redis://[:password@]host:port/db`` (or ``rediss://``), or ``memory://``."""
    if url.startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(url, namespace, ttl)
    if url == "memory://":
        return MemoryStore()
    raise ValueError(f"Invalid state store {url!r}: expected redis://host:port/db or memory://")


# -- the consumer's side ---------------------------------------------------------------------------
@dataclass
class _Held:
    batch: SampleBatch
    arrival: float  # monotonic time received


class SharedDevices:
    """Applies held messages to the ``Pipeline`` in each device's ``seq`` order, from shared state.

    Each cycle of the consumer: ``hold`` every decoded imu batch; ``apply`` the ones that are their
    device's next (loading state from the store where this replica's copy is stale); classify
    (``Pipeline.classify_ready``); then ``commit``, which writes every touched device back and
    returns the predictions of the devices whose write succeeded.
    """

    def __init__(self, store: StateStore, pipeline: Pipeline, sequence: SequenceCheck,
                 reorder_wait: float = 5.0, max_held: int = 200_000) -> None:
        if reorder_wait < 0:
            raise ValueError("Invalid 'reorder_wait': must be at least 0 seconds")
        if pipeline.config.input_channels != 3:  # the record format (encode_record) holds three per sample
            raise ValueError("shared device state (--state-store) holds accelerometer buffers only; serve a "
                             "model that reads the gyroscope from one consumer, or train one with --no-gyro")
        self.store = store
        self.pipeline = pipeline
        self.sequence = sequence
        self.reorder_wait = reorder_wait
        self.max_held = max_held
        self.counts: Counter[str] = Counter()  # reads, commits, conflicts, store_errors, dropped, ...
        self._held: dict[str, list[_Held]] = {}
        self._n_held = 0
        self._versions: dict[str, int] = {}  # store version of the state this replica holds
        # what this replica last committed per device: (version written, seq, record, model version); kept
        # through a failed commit, so that a store that lost writes (see _store_behind) gets it back
        self._mine: dict[str, tuple[int, int | None, bytes, str]] = {}
        # per device: t_end of the last prediction handed out, and its buffer's clock_resets then
        self._published: dict[str, tuple[float, int]] = {}
        # samples and lost samples of each device applied since the last commit: they count only once
        # the device's commit succeeds (a failed one applies the same messages again)
        self._cycle_samples: Counter[str] = Counter()
        self._cycle_lost: Counter[str] = Counter()
        self._uncount = 0  # samples reported by apply whose commit then failed: taken off later reports
        self._applied: dict[str, list[_Held]] = {}  # devices touched since the last commit
        self._shapes = pipeline.classifier.model.state_shapes()
        self._warned_local = False
        # the store unreachable: since when (monotonic) and store_errors then (None: it answers), and when the
        # log last said so (_store_failed, _store_answered)
        self._store_down: tuple[float, int] | None = None
        self._store_said = 0.0
        # model versions this replica has served (the one it started with and each it was promoted to):
        # recurrent state they made goes on, as a single consumer keeps its devices' state across a
        # promotion; state made by any other model starts afresh (_install)
        self._served: set[str] = set()
        self._hashed: tuple[object, str] | None = None  # (model, its weights' hash) for an unnamed model
        self._foreign: set[str] = set()  # other models' versions warned about
        self._serving()

    def _serving(self) -> str:
        """The serving model's version (a hash of its weights when the classifier has none), noted as
        served: a promotion (the consumer's ``_apply_swap``) swaps the model under this replica."""
        classifier = self.pipeline.classifier
        version = classifier.version
        if not version or version == "unknown":
            if self._hashed is None or self._hashed[0] is not classifier.model:
                self._hashed = (classifier.model, _model_version(classifier.model))
            version = self._hashed[1]
        self._served.add(version)
        return version

    @property
    def held(self) -> int:
        """Messages waiting to be applied."""
        return self._n_held

    @property
    def touched(self) -> int:
        """Devices applied to since the last ``commit``."""
        return len(self._applied)

    def hold(self, batch: SampleBatch, arrival: float) -> None:
        if self._n_held >= self.max_held:
            self.counts["dropped"] += 1
            return
        self._held.setdefault(batch.device, []).append(_Held(batch, arrival))
        self._n_held += 1

    def forget(self, device: str) -> None:
        """Drop this replica's copy of ``device`` (idle); the store keeps the device's state."""
        self._versions.pop(device, None)
        self._mine.pop(device, None)
        self._published.pop(device, None)
        self.sequence.forget(device)

    # -- apply ------------------------------------------------------------------------------------
    def apply(self, now: float | None = None) -> tuple[int, list[Rejected]]:
        """Apply every held message that is its device's next; returns (samples applied, rejections).

        Samples applied again after a failed commit are not reported twice: what a failed commit had
        reported is taken off the next reports."""
        now = time.monotonic() if now is None else now
        self._serving()
        last = self.sequence.snapshot()
        first = {}  # the first held seq of each device whose copy here may be stale
        for device, messages in self._held.items():
            seq = min(m.batch.seq for m in messages)
            if device not in self._versions or seq != last.get(device, -2) + 1:
                first[device] = seq
        stale = list(first)
        if stale:
            try:
                loaded = self.store.load_records(stale)
            except StoreError as exc:
                self._store_failed(exc)
                return 0, []
            self._store_answered()
            self.counts["reads"] += len(stale)
            offer = {}
            for device in stale:
                version, blob, model, offered = loaded[device]
                mine = self._mine[device][1:] if self._store_behind(device, version, blob) else None  # an Offer
                follows = [c for c in (mine, offered) if c is not None and c[0] + 1 == first[device]]
                if follows:
                    # the store lost writes (Redis's appendfsync everysec after a crash, a failover to
                    # a lagging replica, a restart without its data): this replica's last commit, or the
                    # one another replica offered, is newer, and the held messages follow on from it: it
                    # goes back (written against the stored version), rather than windows being classified
                    # again or the device starting afresh
                    self.counts["store_behind"] += 1
                    log.warning("%s: the shared store holds version %d, behind the last commit (seq %d); going "
                                "on from %s copy", device, version, follows[0][0],
                                "this replica's" if follows[0] is mine else "another replica's")
                    self._install(device, version, *follows[0][1:])
                    continue
                if mine is not None and (offered is None or offered[0] < mine[0]):
                    # for the replica that holds the message following on from it (round-robin dispatch)
                    offer[device] = (version, *mine)
                # a store that lost writes numbers its versions again: the same version with another seq is
                # another state than this replica's
                if self._versions.get(device) != version or _seq_of(blob) != last.get(device):
                    self._install(device, version, blob, model)
            if offer:
                try:
                    self.store.offer(offer)
                except StoreError as exc:
                    self._store_failed(exc)
        samples, rejected = 0, []
        last = self.sequence.snapshot()  # again: installs changed it
        for device in list(self._held):
            n, r = self._apply_device(device, last.get(device), now)
            samples += n
            rejected += r
        taken = min(self._uncount, samples)
        self._uncount -= taken
        return samples - taken, rejected

    def _store_behind(self, device: str, version: int, blob: bytes | None) -> bool:
        """Whether the stored ``(version, blob)`` of ``device`` is older than what this replica last
        committed of it: versions only grow, so a lower one than this replica wrote means writes were
        lost; its ``seq`` behind this replica's tells it from a store that others have since moved on
        from that older state. A copy newer than the store's goes on only where the messages held for it
        follow on from it (the first one's ``seq`` its next; ``apply``): else another replica may have
        applied later ones since (a handover), whose state was lost with the store, and this copy would
        publish their windows again."""
        mine = self._mine.get(device)
        if mine is None or version >= mine[0] or mine[1] is None:
            return False
        if blob is None:
            return True  # no record (a store restarted empty): this replica's copy is the state
        try:
            record = decode_record(blob)
        except ValueError:
            return True  # unreadable: this replica's copy is better than starting afresh
        return record.seq is None or (mine[1] is not None and record.seq < mine[1])

    def _install(self, device: str, version: int, blob: bytes | None, model: str = "") -> None:
        """Make the pipeline's state of ``device`` the stored one; ``model``: the version of the model
        whose recurrent state it holds, "" unknown."""
        self.pipeline.evict(device)
        self.sequence.forget(device)
        self._versions[device] = version
        if blob is None:
            return
        try:
            record = decode_record(blob)
        except ValueError as exc:
            log.warning("%s: unreadable shared state (%s); starting afresh", device, exc)
            return
        if record.seq is not None:
            self.sequence.restore({device: record.seq})
        cfg = self.pipeline.config
        if record.buffer is not None:
            if record.buffer.rate == cfg.rate and record.buffer.window == cfg.window:
                self.pipeline.adopt(device, restore_buffer(device, record.buffer, time.monotonic()))
            else:
                log.warning("%s: shared buffer state for %g Hz x %d, the model has %g Hz x %d; starting "
                            "afresh", device, record.buffer.rate, record.buffer.window, cfg.rate, cfg.window)
        if record.recurrent:
            if model and model not in self._served:
                # made by weights this replica never served (a rolling upgrade, another --model): it
                # means nothing to this model; the buffer and seq go on, the recurrent state restarts
                self.counts["model_resets"] += 1
                if model not in self._foreign and len(self._foreign) < 16:
                    self._foreign.add(model)
                    log.warning("%s: shared recurrent state made by model %s, this replica serves %s; it "
                                "starts afresh (counted as model_resets)", device, model,
                                self._serving())
            elif [t.shape for t in record.recurrent] == self._shapes:
                # the bank's tensors are inference tensors once it has grown inside a forward pass
                with torch.inference_mode():
                    self.pipeline.classifier.bank.set(device, tuple(torch.from_numpy(t).unsqueeze(1)
                                                                    for t in record.recurrent))
            else:
                log.warning("%s: shared recurrent state of another architecture; starting afresh", device)

    def _apply_device(self, device: str, last: int | None, now: float) -> tuple[int, list[Rejected]]:
        """Apply ``device``'s held messages that follow on from ``last``, the seq applied last."""
        messages = sorted(self._held.pop(device), key=lambda m: m.batch.seq)
        keep: list[_Held] = []
        samples, rejected = 0, []
        for i, m in enumerate(messages):
            seq, waited = m.batch.seq, now - m.arrival >= self.reorder_wait
            if last is None:
                ready = seq == 0 or waited  # earlier ones of a new device may be on another replica
            elif seq == last + 1 or (seq == 0 and last > 0):  # next, or the device restarted
                ready = True
            elif seq == last:
                ready = True  # a repeat: the sequence check refuses it at once
            elif seq < last:
                # perhaps a restarted device whose seq 0 another replica has not applied yet
                if not waited:
                    keep.append(m)
                    continue
                ready = True  # the sequence check refuses it
            else:
                ready = waited  # a gap: its messages may still be on another replica
            if not ready:
                keep += messages[i:]  # order: nothing after a gap goes before it
                break
            try:
                lost = self.sequence.check(m.batch, self.pipeline.newest(device))
            except Rejected as exc:
                rejected.append(exc)
                continue
            self.pipeline.add(m.batch, m.arrival)
            self._applied.setdefault(device, []).append(m)
            samples += len(m.batch)
            self._cycle_samples[device] += len(m.batch)
            self._cycle_lost[device] += lost
            last = seq
        self._n_held -= len(messages) - len(keep)
        if keep:
            self._held[device] = keep
        return samples, rejected

    # -- commit -----------------------------------------------------------------------------------
    def commit(self, predictions: list[Prediction]) -> list[Prediction]:
        """Write back every touched device; returns the predictions of those written, and those of
        devices this cycle did not apply through the store (phone formats, taken directly)."""
        if not self._applied:
            return predictions
        applied, self._applied = self._applied, {}
        devices = list(applied)
        bank = self.pipeline.classifier.bank
        with_state = [d for d in devices if d in bank]
        rows = {}
        if with_state:
            gathered = [t.numpy() for t in bank.gather(bank.slots(with_state))]  # each (d0, B, d2)
            rows = {d: tuple(t[:, i] for t in gathered) for i, d in enumerate(with_state)}
        last = self.sequence.snapshot()
        now = time.monotonic()
        model = self._serving()
        updates = {}
        for device in devices:
            buffer = self.pipeline.buffers.get(device)
            record = DeviceRecord(seq=last.get(device), recurrent=rows.get(device, ()),
                                  buffer=None if buffer is None else buffer_state(buffer, now))
            updates[device] = (self._versions.get(device, 0), encode_record(record), model)
        try:
            done = self.store.commit(updates)
        except StoreError as exc:
            self._store_failed(exc)
            done = set()
        else:
            self._store_answered()
            self.counts["conflicts"] += len(devices) - len(done)
        self.counts["commits"] += len(done)
        cycle_samples, self._cycle_samples = self._cycle_samples, Counter()
        cycle_lost, self._cycle_lost = self._cycle_lost, Counter()
        for device in devices:
            if device in done:
                version = self._versions[device] = updates[device][0] + 1
                self._mine[device] = (version, last.get(device), *updates[device][1:])
                continue
            # not counted: the messages are applied (and counted) again, or turn out to be repeats
            self._uncount += cycle_samples[device]
            self.sequence.lost_samples -= cycle_lost[device]
            # another replica got there first (a duplicate delivery), or the store failed: this
            # replica's copy is worthless; the messages go back to be checked against the store (which
            # may also turn out to have lost this replica's last commit: apply writes that back)
            self.pipeline.evict(device)
            self._versions.pop(device, None)
            self.sequence.forget(device)
            for m in applied[device]:
                self.hold(m.batch, m.arrival)
        out, local = [], []
        for p in predictions:
            if p.device not in applied:
                # not applied through the store this cycle (a phone format, taken by the consumer directly:
                # no seq, its state stays on this replica): its predictions are kept
                out.append(p)
                if not self._warned_local:
                    local.append(p.device)
            elif p.device in done:
                # a safety net for exactly once: never a window at or before the last one handed out,
                # within a device clock's session: not once the device's buffer has counted a clock reset
                # since (a clock gone back further than its clock_reset; the count travels in the record)
                # nor more than that clock_reset before it
                buffer = self.pipeline.buffers.get(p.device)  # there: applied this cycle (Pipeline.add)
                resets = buffer.clock_resets if buffer is not None else 0
                mark = self._published.get(p.device)
                if (mark is not None and buffer is not None and resets <= mark[1]
                        and mark[0] - buffer.clock_reset < p.t_end <= mark[0]):
                    self.counts["repeats_dropped"] += 1
                    continue
                self._published[p.device] = (p.t_end, resets)
                out.append(p)
        if local:
            self._warned_local = True
            log.warning("device %s (a phone format: no seq) keeps its state on this replica, not in the shared "
                        "store: with a round-robin shared subscription its messages would be split among the "
                        "replicas; see DESIGN.md (Scale-out)", min(local))
        return out

    # -- the store's failures in the log ---------------------------------------------------------------
    def _store_failed(self, exc: StoreError) -> None:
        """Count a failed load, offer or commit (``store_errors``) and say so: once when the store stops
        answering, then at most every STORE_WARNING_INTERVAL while it stays so. Each consumer cycle tries
        again (every 40 ms or so), and a line per try flooded the log (an ops probe: 507 lines in 20 s with
        Redis killed, some 90,000 an hour) while nothing was lost: the messages wait, held, and are applied
        when it answers."""
        now = time.monotonic()
        if self._store_down is None:
            self._store_down = (now, self.counts["store_errors"])
            self._store_said = now
            log.warning("the shared state store does not answer (%s); %d messages held, tried again every cycle "
                        "until it does", exc, self._n_held)
        elif now - self._store_said >= STORE_WARNING_INTERVAL:
            self._store_said = now
            log.warning("the shared state store has not answered for %.0f s (%d tries; %s); %d messages held",
                        now - self._store_down[0], self.counts["store_errors"] - self._store_down[1] + 1, exc,
                        self._n_held)
        self.counts["store_errors"] += 1

    def _store_answered(self) -> None:
        """The store answered: one line if it had not (how long it was away)."""
        if self._store_down is None:
            return
        since, errors = self._store_down
        self._store_down = None
        log.info("the shared state store answers again, after %.1f s away (%d failed tries); %d messages held",
                 time.monotonic() - since, self.counts["store_errors"] - errors, self._n_held)

    def summary(self) -> dict:
        down = 0.0 if self._store_down is None else round(time.monotonic() - self._store_down[0], 1)
        return {"held": self._n_held, "devices": len(self._versions), "store_down_s": down, **self.counts}
