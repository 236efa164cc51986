"""``harstream record``: what sensors publish over MQTT, written as a recording file (DESIGN.md).

The way to train on a sensor of one's own (a phone app, a watch) without writing code: record it while
labelling (from the dashboard, or any client on ``<prefix>/<device>/label``), then ``harstream train --data``.
Samples are decoded exactly as ``harstream consume`` decodes them (``stream.adapters.AdapterRouter``: the
native ``<prefix>/+/imu`` and the phone formats of ``--adapter``); a payload either refuses is counted and
logged, never stops the recording. Each sample is labelled at the end, by every label received (a late one
too), with the consumer's label semantics (``stream.labels.LabelBook``: a label holds from its time until the
device's next; a ``start``/``end`` span wins where it covers).

Samples go to a spool file beside ``--out`` (``<out>.spool``) as they arrive: what came in each second is
appended as one chunk (the new sessions and labels, the counts so far, the samples) and synced, so a ``kill -9``,
a crash or a power cut loses at most the last second or so, and memory stays flat however long the recording.
When the recording stops (``--duration``, Ctrl-C, SIGTERM) the recording file is written from the spool,
sorted by device and time and labelled, to a temporary file renamed onto ``--out``, and the spool removed. The
end reads the spool once per group of sessions of at most ``GROUP_SAMPLES`` samples, so it holds one group (or
one longer session) at a time, not the whole recording: some 45 bytes a sample (a session is sorted by an index and
its rows labelled, checked and written ``WRITE_ROWS`` at a time). A spool left behind (the recorder killed) is locked by
nobody: ``harstream record --out FILE --recover`` writes FILE from it, labels included, and removes it; until
then ``harstream record --out FILE`` refuses to start (saying so). A spool in use is locked (``flock``), so a
second recorder on the same ``--out``, or ``--recover``, is refused while the first runs.

So that the end cannot lose it either, ``--out`` is tried before recording (its temporary file made and
removed: a folder that refuses files, a name too long), an existing file is replaced only with ``--overwrite``,
and if writing fails after all (the disk full, the folder gone) the recording goes to the system's temporary
folder instead (the spool, open, is read even where its folder was removed). A spool that cannot be written
(a full disk) keeps what it could not write in memory, tried again every second (a WARNING, then one a minute).

A device whose clock goes back (``seq`` 0 again with samples at or before its newest, or a batch 30 s or more
behind it: a restart, a reboot) cannot go on in the same rows (a recording file's time never goes back for a
device): its new session gets rows of its own under ``<device>.s2``, ``.s3``, ..., and the file a ``subject``
column naming the device, so that training keeps them one person. Labels go to the session under way when
they arrive.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import math
import os
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from stream.adapters import AdapterRouter
from stream.decode import Rejected, SampleBatch, parse_topic, valid_device
from stream.labels import LabelBook, decode_label
from stream.mqtt import BrokerURL, connect
from stream.recording import Recording, _check_writable, header, sync_directory, write_rows

__all__ = ["CLOCK_RESET", "RecordConfig", "Recorder", "check_out", "recover", "spool_path"]

log = logging.getLogger(__name__)

# s: a batch whose last sample is this far behind its device's newest is a new clock (as the consumer's
# CLOCK_RESET and DeviceBuffer's clock_reset); nearer, it is a batch out of order, merged in time order
CLOCK_RESET = 30.0
MAX_LABELS = 1_000_000  # per device session: a label a second for eleven days (LabelBook drops the earliest beyond)
FLUSH_EVERY = 1.0  # s: what arrived is appended to the spool and synced this often (what a kill -9 can lose)
# samples held at once at the end: sessions are taken in groups of at most this many (a longer session alone),
# each group one read of the spool; some 45 bytes a sample held while a group is written (37 read, 8 its order)
GROUP_SAMPLES = 2_000_000
WRITE_ROWS = 50_000  # rows of a session labelled, checked and written at once at the end (in time order)
SEQS_KEPT = 1024  # per session: the latest messages' seq, to drop a copy (a QoS 1 redelivery comes soon after;
# an older copy is still dropped at the end, as samples at a time already held)
SPOOL_MAGIC = b"harstream record spool 1\n"
# a chunk: b"HRSC", its JSON's bytes, its samples, the CRC-32 of both; then the JSON, then the samples
CHUNK = struct.Struct("<4sIII")
CHUNK_TAG = b"HRSC"
# a sample in the spool: its session's number, time, accelerometer, gyroscope (g: 1 if it had one)
SAMPLE = np.dtype([("s", "<u4"), ("t", "<f8"), ("acc", "<f4", (3,)), ("gyro", "<f4", (3,)), ("g", "u1")])


@dataclass
class RecordConfig:
    broker: BrokerURL
    out: Path
    prefix: str = "har"
    adapters: tuple[str, ...] = ()  # as harstream consume --adapter: "PATTERN = NAME[@DEVICE]"
    devices: frozenset[str] | None = None  # record only these (None: every device)
    duration: float | None = None  # seconds of wall time; None: until stopped
    qos: int = 1  # subscription QoS of the samples
    overwrite: bool = False  # replace an existing --out (else refused before recording)


def _tmp_path(out: Path) -> Path:
    """The temporary file written beside ``out``, then renamed onto it."""
    return out.with_name(f".{out.name}.{os.getpid()}.tmp")


def _remove_stale_tmp(out: Path) -> None:
    """Remove the temporary files beside ``out`` that a recorder (or ``--recover``) killed while writing the
    recording left (its pid gone): hidden, each the size of the recording. Called with the spool locked."""
    prefix = f".{out.name}."
    try:
        names = os.listdir(out.parent)
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):-len(".tmp")] if name.startswith(prefix) and name.endswith(".tmp") else ""
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # its writer runs (or another process has its pid now)
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            os.unlink(out.parent / name)
            log.info("removed %s, which a recorder killed while writing %s left", out.parent / name, out)
        except OSError:
            pass


def spool_path(out: Path) -> Path:
    """Where the samples of a recording to ``out`` go as they arrive (shorter than ``_tmp_path``'s name)."""
    return Path(out).with_name(f"{Path(out).name}.spool")


NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS)  # flock's errors where there are none


def _locked(path: Path) -> bool:
    """Whether a running recorder holds the spool ``path`` (its ``flock``; False where there are no locks)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        return exc.errno not in NO_LOCKS
    finally:
        os.close(fd)


def _spool_refusal(out: Path) -> str | None:
    """Why a recording to ``out`` cannot start for its spool (one running, one left by a killed recorder)."""
    spool = spool_path(out)
    if not os.path.lexists(spool):
        return None
    if _locked(spool):
        return (f"--out {out}: a harstream record writing it is running now ({spool} is in use); stop it, or give "
                "another --out")
    return (f"--out {out}: {spool} holds a recording that did not finish (the recorder was killed?); write it with "
            f"`harstream record --out {out} --recover`, or move it away")


def check_out(path: Path, overwrite: bool = False, spool: bool = True) -> None:
    """Refuse, before recording, an ``--out`` that could not be written at the end, or (without ``overwrite``)
    one that exists: the recording would replace it when it stops (ValueError, one line); and (``spool``) one
    whose spool exists (a recorder running, or killed: ``--recover``). The temporary file is made and removed:
    ``os.access`` says yes to root everywhere (/proc, /sys) and knows nothing of a name too long once the
    temporary file's prefix and suffix are added."""
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory; give the recording file to write")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"--out {path}: folder {parent} does not exist")
    if path.exists() or path.is_symlink():
        if not path.is_file():
            raise ValueError(f"--out {path} is not a regular file (it would be replaced by one)")
        if not overwrite:
            raise ValueError(f"--out {path} exists: the recording would replace it when it stops; give another "
                             "name, or --overwrite")
    tmp = _tmp_path(path)
    try:
        with tmp.open("x"):  # the temporary file goes there, then is renamed
            pass
    except OSError as exc:
        raise ValueError(f"--out {path}: cannot write in folder {parent} ({exc.strerror or exc})") from None
    tmp.unlink(missing_ok=True)
    refusal = _spool_refusal(path) if spool else None  # its name is shorter than the temporary file's
    if refusal:
        raise ValueError(refusal)


class _Spool:
    """The spool file, open and locked: chunks appended at ``size`` (a failed append is cut off, so the next
    goes where it began), read back through the open descriptor (its folder may be gone)."""

    def __init__(self, path: Path, fd: int, size: int) -> None:
        self.path, self.fd, self.size = path, fd, size
        self.torn = 0  # bytes after the last whole chunk (a chunk cut by a kill -9 or a power cut), not read

    @classmethod
    def create(cls, path: Path) -> _Spool:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:  # a file system without locks (some network and FUSE mounts): recorded all the same
                if exc.errno not in NO_LOCKS:
                    raise
                log.warning("%s cannot be locked on this file system (%s): a second harstream record to the same "
                            "--out, or a --recover while this one runs, is not refused", path, exc.strerror or exc)
            _write_all(fd, SPOOL_MAGIC, 0)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            path.unlink(missing_ok=True)
            raise
        sync_directory(path.parent)  # the spool's name too, so that a power cut does not lose the whole spool
        return cls(path, fd, len(SPOOL_MAGIC))

    @classmethod
    def open(cls, path: Path) -> _Spool:
        """A spool left behind, to recover (ValueError: not one, or in use)."""
        try:
            fd = os.open(path, os.O_RDWR)
        except OSError as exc:
            raise ValueError(f"cannot open {path}: {exc.strerror or exc}") from None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in NO_LOCKS:
                    raise ValueError(f"{path} is in use by a harstream record running now: it writes the "
                                     "recording when it stops") from None
            if not SPOOL_MAGIC.startswith(os.pread(fd, len(SPOOL_MAGIC), 0)):  # shorter: killed as it was made
                raise ValueError(f"{path} is not a harstream record spool")
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, len(SPOOL_MAGIC))  # ``chunks()`` read to the end sets ``size`` (before any append)

    def append(self, meta: bytes, samples: np.ndarray) -> None:
        body = meta + samples.tobytes()
        head = CHUNK.pack(CHUNK_TAG, len(meta), len(samples), zlib.crc32(body))
        try:
            _write_all(self.fd, head + body, self.size)
            os.fsync(self.fd)
        except OSError:
            try:
                os.ftruncate(self.fd, self.size)  # needs no room: the next append starts where this one did
            except OSError:
                pass
            raise
        self.size += len(head) + len(body)

    def chunks(self, end: int | None = None) -> Iterator[tuple[dict, np.ndarray]]:
        """(meta, samples) of every whole chunk, in order, up to ``end`` (its writer's own end, every chunk whole)
        or the file's end (a spool left behind). After its last whole chunk, a chunk cut short (by a kill: its
        header incomplete, or its length running to the file's end; or the zeros a power cut leaves) is left out
        (``torn``); anything else is damage: ValueError naming the chunk and byte once the chunks before it were
        read, so that what follows is not dropped unsaid with the spool. ``size`` and ``torn`` set at the end."""
        whole = end is not None
        offset, end = len(SPOOL_MAGIC), os.fstat(self.fd).st_size if end is None else end
        number = samples = 0
        why = ""
        while offset + CHUNK.size <= end:
            tag, meta_len, n, crc = CHUNK.unpack(os.pread(self.fd, CHUNK.size, offset))
            length = meta_len + n * SAMPLE.itemsize
            if tag != CHUNK_TAG or offset + CHUNK.size + length > end:
                why = "no chunk begins there" if tag != CHUNK_TAG else "its length runs past the end"
                break
            body = os.pread(self.fd, length, offset + CHUNK.size)
            if len(body) != length or zlib.crc32(body) != crc:
                why = "its CRC does not match"
                break
            offset += CHUNK.size + length
            number, samples = number + 1, samples + n
            yield orjson.loads(body[:meta_len]), np.frombuffer(body, SAMPLE, count=n, offset=meta_len)
        if offset < end and (whole or not self._cut_short(offset, end)):
            raise ValueError(f"{self.path} is damaged at byte {offset}, chunk {number + 1} ({why or 'cut short'}): "
                             f"the {end - offset} bytes from there cannot be read. To write the {samples} samples "
                             f"of the {number} chunks before it, cut the spool there (truncate -s {offset} "
                             f"{self.path}) and --recover again; the spool is left as it is")
        self.size, self.torn = offset, max(end - offset, 0)

    def _cut_short(self, offset: int, end: int) -> bool:
        """Whether the bytes from ``offset`` to ``end`` are a last chunk cut short (a kill, a power cut)."""
        if end - offset < CHUNK.size:
            return True
        tag, meta_len, n, _ = CHUNK.unpack(os.pread(self.fd, CHUNK.size, offset))
        if tag == CHUNK_TAG and offset + CHUNK.size + meta_len + n * SAMPLE.itemsize >= end:
            return True  # the last append, cut short, or not all of it on disk (a power cut)
        while offset < end:  # blocks never written (a power cut after the file grew): zeros
            if os.pread(self.fd, min(end - offset, 1 << 20), offset).strip(b"\0"):
                return False
            offset += 1 << 20
        return True

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)  # its folder gone (unplugged): nothing left to remove
        os.close(self.fd)  # after: closed first, its lock went while its name was still there


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        if written == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        view, offset = view[written:], offset + written


class _Session:
    """One device's samples on one clock (a device restarted gets a new session): counts and what tells a copy
    or a new clock; the samples themselves are in the spool, under ``number``."""

    def __init__(self, number: int, name: str, device: str) -> None:
        self.number, self.name, self.device = number, name, device
        self.samples = 0
        self.no_gyro = 0  # samples without the gyroscope
        self.newest = -math.inf
        self.earliest = math.inf
        self.seqs: dict[int, float] = {}  # seq -> its first sample's time: a message seen again is a copy
        self.seq_order: deque[int] = deque()  # the latest SEQS_KEPT seqs, oldest first
        self.seq0: float | None = None  # the first sample's time of the (latest) message of seq 0, kept beyond
        # SEQS_KEPT: its copy, however late, is a copy, not the device restarting
        self.points: list[float] = []  # where a label received may change what holds (starts, just after ends)

    def saw(self, seq: int, first: float) -> None:
        if seq not in self.seqs:
            self.seq_order.append(seq)
            if len(self.seq_order) > SEQS_KEPT:
                self.seqs.pop(self.seq_order.popleft(), None)
        self.seqs[seq] = first
        if seq == 0:
            self.seq0 = first


class Recorder:
    """Subscribes, takes every message (``handle``, thread-safe), spools it (``flush``) and writes the recording
    from the spool (``write``)."""

    def __init__(self, config: RecordConfig) -> None:
        self.config = config
        self.router = AdapterRouter.from_spec(list(config.adapters), config.prefix)  # ValueError for a bad spec
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._current: dict[str, _Session] = {}  # device -> its session under way
        self._sessions: list[_Session] = []  # in order of creation: a session's number is its index
        self.labels = LabelBook(MAX_LABELS)  # keyed by session name
        # taken since the last flush: samples (session number, batch), new sessions, labels
        self._pending: list[tuple[int, SampleBatch]] = []
        self._new_sessions: list[list] = []
        self._new_labels: list[list] = []
        self._unwritten: list[tuple[bytes, np.ndarray]] = []  # chunks the spool could not take (yet): in order
        self._spool: _Spool | None = None
        self._spool_failed_at = -math.inf  # monotonic time of the last warning that the spool cannot be written
        self._spooled_messages = 0  # messages counted in the last chunk made
        self.messages = 0
        self.samples = 0
        self.label_messages = 0
        self.duplicates = 0  # messages received again (QoS 1 redelivery: same seq, same samples)
        self.duplicate_samples = 0  # samples at a time their session already has (set by ``write``)
        self.rejected: Counter[str] = Counter()
        self.errors = 0  # messages that raised something else (a fault of ours): logged, skipped
        self.gyro_dropped: dict[str, int] = {}  # set by ``write``: devices' samples without the gyroscope
        self.ignored: Counter[str] = Counter()  # samples of devices --devices leaves out (a typo shows here)
        self.rescued: Path | None = None  # where the recording went when --out could not be written at the end
        self.write_error = ""
        self.recovered: Path | None = None  # the spool a recovery read (``recover``)
        self.torn_bytes = 0

    def stop(self) -> None:
        self._stop.set()

    def subscriptions(self) -> list[tuple[str, int]]:
        cfg = self.config
        return [(topic, cfg.qos) for topic in self.router.subscriptions()] + [(f"{cfg.prefix}/+/label", 1)]

    # -- taking messages --------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> None:
        """Take one message; a bad one is counted and logged (its reason's first at WARNING), never raised."""
        with self._lock:
            self.messages += 1
            try:
                if topic.startswith(f"{self.config.prefix}/") and topic.endswith("/label"):
                    self._label(topic, payload)
                    return
                batches = self.router.decode(topic, payload)
                for part in batches.dropped:  # parts left out, the rest taken (no_gravity)
                    self._reject(topic, part)
                for batch in batches:
                    if self.config.devices is None or batch.device in self.config.devices:
                        self._take(batch)
                    elif len(self.ignored) < 1000 or batch.device in self.ignored:  # bounded against spoofing
                        self.ignored[batch.device] += len(batch.t)
            except Rejected as exc:
                self._reject(topic, exc)
            except Exception:  # noqa: BLE001 (raised in paho's thread, it would end the recording's network loop)
                self.errors += 1
                log.exception("message on %s skipped", topic[:80])

    def _reject(self, topic: str, exc: Rejected) -> None:
        self.rejected[exc.reason] += 1
        level = logging.WARNING if self.rejected[exc.reason] == 1 else logging.DEBUG
        log.log(level, "refused a message on %s: %s (every one refused is counted in the summary)", topic[:80], exc)

    def _label(self, topic: str, payload: bytes) -> None:
        device, _ = parse_topic(topic, self.config.prefix)
        if self.config.devices is not None and device not in self.config.devices:
            return
        label, start, end = decode_label(payload)
        if "\n" in label or "\r" in label:  # the recording file could not hold it (a field over two lines)
            raise Rejected("bad_label", f"{label[:24]!r} holds a line end")
        session = self._current.get(device) or self._new_session(device)
        self._add_label(session, label, start, end)
        self._new_labels.append([session.number, label, start, end])
        self.label_messages += 1

    def _add_label(self, session: _Session, label: str, start: float, end: float | None) -> None:
        self.labels.add(session.name, label, start, end)
        session.points.append(start)
        if end is not None:
            session.points.append(math.nextafter(end, math.inf))

    def _new_session(self, device: str) -> _Session:
        count = sum(s.device == device for s in self._sessions)
        name = device
        if count:
            taken = {s.name for s in self._sessions}
            k = count + 1
            while name in taken or name == device:
                suffix = f".s{k}"
                name, k = device[:64 - len(suffix)] + suffix, k + 1
        session = _Session(len(self._sessions), name, device)
        self._sessions.append(session)
        self._current[device] = session
        self._new_sessions.append([session.number, name, device])
        return session

    def _take(self, batch: SampleBatch) -> None:
        session = self._current.get(batch.device)
        first, last = float(batch.t[0]), float(batch.t[-1])
        if session is not None and batch.seq is not None and (session.seqs.get(batch.seq) == first or (
                batch.seq == 0 and session.seq0 == first)):
            self.duplicates += 1  # the same message again: a QoS 1 redelivery, a publisher's own copy
            return
        # seq 0 again, its clock back (not the session's own first message arriving late: no seq 0 yet, all of
        # it before the session's earliest sample), or any batch far behind: the device restarted
        if session is not None and session.samples and (
                (batch.seq == 0 and first <= session.newest
                 and (session.seq0 is not None or last >= session.earliest))
                or last < session.newest - CLOCK_RESET):
            log.info("%s: its clock went back (%s): a new session, recorded as a device of its own",
                     batch.device, "seq 0 again" if batch.seq == 0 else f"{session.newest - last:.0f} s")
            session = None
        if session is None:
            session = self._new_session(batch.device)
        self._pending.append((session.number, batch))
        session.samples += len(batch.t)
        if batch.gyro is None:
            session.no_gyro += len(batch.t)
        session.newest = max(session.newest, last)
        session.earliest = min(session.earliest, first)
        if batch.seq is not None:
            session.saw(batch.seq, first)
        self.samples += len(batch.t)

    # -- the spool --------------------------------------------------------------------------------
    def _counts(self) -> dict:
        return {"messages": self.messages, "samples": self.samples, "label_messages": self.label_messages,
                "duplicates": self.duplicates, "rejected": dict(self.rejected), "errors": self.errors,
                "ignored": dict(self.ignored)}

    def open_spool(self) -> None:
        """Make and lock the spool beside ``out`` (ValueError if it cannot be made: one exists, no room)."""
        if self._spool is not None:
            return
        path = spool_path(Path(self.config.out))
        try:
            self._spool = _Spool.create(path)
        except FileExistsError:
            raise ValueError(_spool_refusal(Path(self.config.out)) or f"{path} exists") from None
        except OSError as exc:
            raise ValueError(f"cannot make the spool {path}: {exc.strerror or exc}") from None
        _remove_stale_tmp(Path(self.config.out))

    def held(self) -> int:
        """Samples not on disk: taken since the last flush, and those the spool could not take."""
        with self._lock:
            pending = sum(len(b.t) for _, b in self._pending)
        return pending + sum(len(s) for _, s in self._unwritten)

    def flush(self) -> None:
        """Append what was taken since the last flush to the spool as one chunk, synced. A spool that cannot be
        written (a full disk; not made: its folder gone) keeps it in memory, tried again at the next flush."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, []
                sessions, self._new_sessions = self._new_sessions, []
                labels, self._new_labels = self._new_labels, []
                counts = self._counts()
            if pending or sessions or labels or counts["messages"] != self._spooled_messages:
                lengths = [len(b.t) for _, b in pending]
                samples = np.zeros(sum(lengths), SAMPLE)
                if pending:  # one copy a field (a phone's one-sample messages: some 25,000 a second at 500)
                    samples["s"] = np.repeat([number for number, _ in pending], lengths)
                    samples["t"] = np.concatenate([b.t for _, b in pending])
                    samples["acc"] = np.concatenate([b.acc for _, b in pending])
                    gyro = np.repeat([b.gyro is not None for _, b in pending], lengths)
                    if gyro.any():
                        samples["g"] = gyro
                        samples["gyro"][gyro] = np.concatenate([b.gyro for _, b in pending if b.gyro is not None])
                meta = orjson.dumps({"sessions": sessions, "labels": labels, "counts": counts})
                self._unwritten.append((meta, samples))
                self._spooled_messages = counts["messages"]
            if not self._unwritten:  # nothing new: no chunk (nor a spool made for nothing)
                return
            try:
                if self._spool is None:
                    self.open_spool()
                while self._unwritten:
                    self._spool.append(*self._unwritten[0])
                    self._unwritten.pop(0)
            except (OSError, ValueError) as exc:
                now = time.monotonic()
                if now - self._spool_failed_at >= 60:
                    log.warning("cannot write the spool %s (%s): %d samples held in memory, tried again every "
                                "second", spool_path(Path(self.config.out)), exc,
                                sum(len(s) for _, s in self._unwritten))
                    self._spool_failed_at = now
                return
            if self._spool_failed_at > -math.inf:
                log.info("the spool is written again")
                self._spool_failed_at = -math.inf

    def _chunks(self) -> Iterator[np.ndarray]:
        """Every sample taken, chunk after chunk: the spool's, then those it could not take."""
        if self._spool is not None:
            for _, samples in self._spool.chunks(self._spool.size):  # its whole chunks
                yield samples
        for _, samples in self._unwritten:
            yield samples

    def _restore(self, spool: _Spool) -> None:
        """Sessions, labels, counts and samples' counts as a killed recorder left them in ``spool``."""
        counts: dict = {}
        for meta, samples in spool.chunks():
            for number, name, device in meta["sessions"]:
                if number != len(self._sessions):
                    raise ValueError(f"{spool.path}: session {number} out of order")
                self._sessions.append(_Session(number, name, device))
                self._current[device] = self._sessions[-1]
            for number, label, start, end in meta["labels"]:
                self._add_label(self._sessions[number], label, start, end)
            counts = meta["counts"]
            if len(samples):
                numbers = samples["s"].astype(np.int64)
                if numbers.max() >= len(self._sessions):
                    raise ValueError(f"{spool.path}: samples of session {numbers.max()}, which it never began")
                for number, n in enumerate(np.bincount(numbers).tolist()):
                    self._sessions[number].samples += n
                for number, n in enumerate(np.bincount(numbers, weights=samples["g"] == 0).astype(int).tolist()):
                    self._sessions[number].no_gyro += n
        self.messages = counts.get("messages", 0)
        self.samples = counts.get("samples", 0)
        self.label_messages = counts.get("label_messages", 0)
        self.duplicates = counts.get("duplicates", 0)
        self.rejected = Counter(counts.get("rejected", {}))
        self.errors = counts.get("errors", 0)
        self.ignored = Counter(counts.get("ignored", {}))
        self._spooled_messages = self.messages
        self._spool, self.recovered, self.torn_bytes = spool, spool.path, spool.torn

    # -- what was received, as a recording ------------------------------------------------------
    def devices(self) -> int:
        with self._lock:
            return len({s.device for s in self._sessions if s.samples})

    def _labels_of(self, session: _Session, t: np.ndarray) -> np.ndarray:
        """The label holding at each of the session's sample times (``t`` sorted), "" where none does:
        ``LabelBook.at`` once per run of samples between the points where a label starts or a span ends."""
        out = np.full(len(t), "", dtype=object)
        if not session.points:
            return out.astype(str)
        cuts = np.searchsorted(t, np.asarray(session.points, dtype=np.float64), side="left")
        bounds = sorted({0, *(int(c) for c in cuts if 0 < c < len(t))})
        for a, b in zip(bounds, [*bounds[1:], len(t)], strict=True):
            out[a:b] = self.labels.at(session.name, float(t[a])) or ""
        return out.astype(str)

    def _groups(self, sessions: list[_Session]) -> Iterator[list[_Session]]:
        """``sessions`` (in order) in runs of at most ``GROUP_SAMPLES`` samples (a longer one alone)."""
        group: list[_Session] = []
        total = 0
        for s in sessions:
            if group and total + s.samples > GROUP_SAMPLES:
                yield group
                group, total = [], 0
            group.append(s)
            total += s.samples
        if group:
            yield group

    def _write_file(self, out: Path, sessions: list[_Session], with_gyro: bool, split: bool) -> dict:
        """The recording file, from the spool: each group of sessions read from it, each session sorted by
        time, a sample at a time it already has dropped (the first received kept), labelled, its rows checked
        as ``write_recording`` checks them and written. To a temporary file beside ``out``, renamed onto it."""
        written, labelled, duplicates, classes = 0, 0, 0, set()
        tmp = _tmp_path(out)
        try:
            with tmp.open("w", newline="") as handle:
                handle.write(",".join(header(with_gyro, split)) + "\n")  # as write_recording writes it
                for group in self._groups(sessions):
                    numbers = np.array([s.number for s in group], dtype=np.uint32)
                    # each session's samples in the order received, in one array made to its size (pieces
                    # joined at the end left the heap twice the group's size, fragmented, at 2 hours of 20 devices)
                    held = {s.number: np.empty(s.samples, SAMPLE) for s in group}
                    filled = dict.fromkeys(held, 0)
                    for samples in self._chunks():
                        mine = samples[np.isin(samples["s"], numbers)] if len(group) > 1 else \
                            samples[samples["s"] == numbers[0]]
                        if not len(mine):
                            continue
                        mine = mine[np.argsort(mine["s"], kind="stable")]  # in the order received, per session
                        found, first = np.unique(mine["s"], return_index=True)
                        for number, a, b in zip(found.tolist(), first.tolist(), [*first[1:].tolist(), len(mine)],
                                                strict=True):
                            at = filled[number]
                            n = min(b - a, len(held[number]) - at)  # the counts are the spool's: no more
                            held[number][at:at + n] = mine[a:a + n]
                            filled[number] = at + n
                    for s in group:
                        data = held.pop(s.number)[:filled[s.number]]
                        order = np.argsort(data["t"], kind="stable")  # the rows, sorted a slice at a time
                        newest = -math.inf
                        for a in range(0, len(order), WRITE_ROWS):  # a long session is not copied whole
                            part = data[order[a:a + WRITE_ROWS]]
                            keep = np.diff(part["t"], prepend=newest) > 0
                            newest = float(part["t"][-1])
                            duplicates += int(len(part) - keep.sum())
                            part = part[keep]
                            if not len(part):
                                continue
                            t = part["t"]
                            label = self._labels_of(s, t)
                            rec = Recording(device=np.full(len(t), s.name), t=t, acc=part["acc"], label=label,
                                            gyro=part["gyro"] if with_gyro else None,
                                            subject=np.full(len(t), s.device) if split else None)
                            _check_writable(f"{out}, {s.name}'s rows from the file's row {written + 1}", rec)
                            write_rows(handle, rec)
                            written += len(t)
                            labelled += int(np.count_nonzero(label != ""))
                            classes.update(np.unique(label).tolist())
                        del data, order
                handle.flush()
                os.fsync(handle.fileno())  # on disk before the spool, which the caller then removes, is gone
            os.replace(tmp, out)
            sync_directory(out.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        self.duplicate_samples = duplicates
        return {"samples": written, "labelled_samples": labelled, "classes": sorted(c for c in classes if c),
                "gyro": with_gyro}

    def write(self) -> dict:
        """Write the recording to ``out`` from the spool (a temporary file beside it, renamed: never half a
        file there), remove the spool; the summary. Without samples nothing is written (``written`` False). If
        ``out`` cannot be written now (the disk full, the folder gone since ``check_out``), the recording goes
        to the system's temporary folder (``rescued``; ``written`` False) rather than being lost; OSError only
        if that fails too (the spool then kept, for ``--recover``)."""
        self.flush()
        out = Path(self.config.out)
        sessions = sorted((s for s in self._sessions if s.samples), key=lambda s: s.name)
        if not sessions:
            self._remove_spool()
            return self.summary(None)
        lacking: Counter[str] = Counter()
        for s in sessions:
            if s.no_gyro:
                lacking[s.device] += s.no_gyro
        some = any(s.no_gyro < s.samples for s in sessions)  # mixed: said, not silently lost
        self.gyro_dropped = dict(lacking) if some and lacking else {}
        split = any(s.name != s.device for s in sessions)
        log.info("writing %d samples to %s from its spool (some 5-10 s a million)", sum(s.samples for s in sessions),
                 out)
        try:
            stats = self._write_file(out, sessions, not lacking, split)
        except OSError as exc:
            self.write_error = f"{exc.strerror or exc}"
            rescue = Path(tempfile.gettempdir()) / f"harstream-record-{os.getpid()}-{out.name[:100]}"
            log.error("could not write %s (%s): writing the recording to %s instead", out, self.write_error, rescue)
            try:
                stats = self._write_file(rescue, sessions, not lacking, split)
            except OSError:
                if self._spool is not None:
                    log.error("the recording stays in %s: harstream record --out %s --recover writes it",
                              self._spool.path, out)
                raise
            self.rescued = rescue
            self._remove_spool()
            return self.summary(stats)
        self._remove_spool()
        summary = self.summary(stats)
        summary["written"] = True
        return summary

    def _remove_spool(self) -> None:
        if self._spool is not None:
            self._spool.remove()
            self._spool = None
        self._unwritten.clear()

    def summary(self, stats: dict | None) -> dict:
        return {
            "written": False,
            "out": str(self.config.out),
            "samples": 0 if stats is None else stats["samples"],
            "devices": len({s.device for s in self._sessions if s.samples}),
            "sessions": len([s for s in self._sessions if s.samples]),
            "labels": self.label_messages,
            "labelled_samples": 0 if stats is None else stats["labelled_samples"],
            "classes": [] if stats is None else stats["classes"],
            "gyro": stats is not None and stats["gyro"],
            "gyro_dropped": self.gyro_dropped,
            "messages": self.messages,
            "duplicate_messages": self.duplicates,
            "duplicate_samples": self.duplicate_samples,
            "rejected": dict(self.rejected),
            "errors": self.errors,
            "ignored": dict(self.ignored),
            "rescued": None if self.rescued is None else str(self.rescued),
            "write_error": self.write_error,
            "recovered": None if self.recovered is None else str(self.recovered),
            "torn_bytes": self.torn_bytes,
        }

    # -- the command ------------------------------------------------------------------------------
    def progress_line(self, elapsed: float) -> str:
        with self._lock:
            devices = len({s.device for s in self._sessions if s.samples})
            rejected = sum(self.rejected.values())
            ignored = len(self.ignored)
            line = (f"recording {int(elapsed) // 60}:{int(elapsed) % 60:02d}: {self.samples} samples, {devices} "
                    f"device{'s' if devices != 1 else ''}, {self.label_messages} labels")
        return (line + (f", {rejected} refused" if rejected else "")
                + (f", {ignored} other device{'s' if ignored != 1 else ''} left out (--devices)" if ignored else ""))

    def run(self, progress: bool = True) -> dict:
        """Record until ``stop()`` or ``duration``, spooling every ``FLUSH_EVERY`` s; then write. Returns the
        summary."""
        cfg = self.config
        check_out(Path(cfg.out), cfg.overwrite)
        self.open_spool()

        def on_message(client, userdata, message) -> None:
            self.handle(message.topic, message.payload)

        try:
            client = connect(cfg.broker, "record", subscriptions=self.subscriptions(), on_message=on_message)
        except BaseException:
            self._remove_spool()  # nothing recorded: no spool left to recover
            raise
        topics = ", ".join(t for t, _ in self.subscriptions())
        log.info("recording %s from %s to %s%s (spooled to %s as it comes)", topics, cfg.broker, cfg.out,
                 f" for {cfg.duration:g} s" if cfg.duration else " until Ctrl-C", spool_path(Path(cfg.out)))
        tty = progress and sys.stderr.isatty()
        every = 1.0 if tty else 10.0  # a line in place on a terminal, else one every 10 s (a log)
        start = time.monotonic()
        shown = start
        try:
            while True:
                elapsed = time.monotonic() - start
                left = math.inf if cfg.duration is None else cfg.duration - elapsed
                if left <= 0 or self._stop.wait(min(FLUSH_EVERY, left)):
                    break
                self.flush()
                if progress and time.monotonic() - shown >= every - 0.01:
                    shown = time.monotonic()
                    print(("\r" if tty else "") + self.progress_line(shown - start),
                          end="" if tty else "\n", file=sys.stderr, flush=True)
        finally:
            client.disconnect()
            client.loop_stop()
            if tty:
                print(file=sys.stderr)
        return self.write()


def recover(config: RecordConfig) -> dict:
    """Write ``config.out`` from the spool a killed recorder left beside it (``--recover``): its samples up
    to its last whole chunk, labelled by the labels it had received; the spool removed. ValueError: no spool,
    one in use, ``out`` that exists (without ``overwrite``) or cannot be written."""
    out = Path(config.out)
    path = spool_path(out)
    if not os.path.lexists(path):
        raise ValueError(f"--recover: there is no {path} (what a harstream record --out {out} killed leaves)")
    if not config.overwrite and (out.is_file() or out.is_symlink()):  # check_out's advice, another name, would
        # find no spool
        raise ValueError(f"--recover: {out} exists; --overwrite replaces it with the recording in {path}, or move "
                         f"{out} away first")
    check_out(out, config.overwrite, spool=False)
    recorder = Recorder(config)
    spool = _Spool.open(path)
    try:
        _remove_stale_tmp(out)
        recorder._restore(spool)
    except BaseException:
        os.close(spool.fd)
        raise
    if spool.torn:
        log.info("%s: %d bytes after its last whole chunk (cut by the kill) left out", path, spool.torn)
    return recorder.write()


def format_summary(summary: dict) -> str:
    """The summary as ``harstream record`` prints it."""
    devices = summary["devices"]
    if not summary["samples"]:
        head = f"no samples received: {summary['out']} not written"
    else:
        share = summary["labelled_samples"] / max(summary["samples"], 1)
        sessions = (f" ({summary['sessions']} sessions: a device restarted on a new clock has rows of its own)"
                    if summary["sessions"] > devices else "")
        where = (summary["out"] if summary["written"] else f"{summary['rescued']}, NOT to {summary['out']}, "
                 f"which could not be written ({summary['write_error']})")
        head = (f"wrote {summary['samples']} samples of {devices} device{'s' if devices != 1 else ''}{sessions} to "
                f"{where}: {summary['labels']} label{'s' if summary['labels'] != 1 else ''} received, "
                f"{share:.0%} of samples labelled"
                + (f" ({', '.join(summary['classes'])})" if summary["classes"] else "")
                + f"; gyroscope {'gx,gy,gz written' if summary['gyro'] else 'not written'}")
    lines = [head]
    if summary.get("recovered"):
        lines.append(f"recovered from {summary['recovered']} (removed), what a recorder that did not finish had "
                     "spooled" + (f"; {summary['torn_bytes']} bytes of a last chunk cut short left out"
                                  if summary.get("torn_bytes") else ""))
    if summary["gyro_dropped"]:
        lacking = ", ".join(f"{d} {n}" for d, n in sorted(summary["gyro_dropped"].items())[:10])
        lines.append(f"the gyroscope was left out: not every sample had it (samples without it: {lacking})")
    if summary["rejected"] or summary["errors"]:
        refused = ", ".join(f"{r} {n}" for r, n in sorted(summary["rejected"].items()))
        lines.append(f"refused: {refused or 'none'}" + (f"; {summary['errors']} skipped by a fault (logged)"
                                                         if summary["errors"] else ""))
    if summary.get("ignored"):
        left = sorted(summary["ignored"].items(), key=lambda kv: -kv[1])
        lines.append(f"left out by --devices: {len(left)} other device{'s' if len(left) != 1 else ''} ("
                     + ", ".join(f"{d} {n} samples" for d, n in left[:5]) + (" ..." if len(left) > 5 else "") + ")")
    if summary["duplicate_messages"] or summary["duplicate_samples"]:
        lines.append(f"dropped as received twice: {summary['duplicate_messages']} messages, "
                     f"{summary['duplicate_samples']} samples")
    return "\n".join(lines)


def parse_devices(text: str | None) -> frozenset[str] | None:
    """``--devices A,B``: the ids (ValueError naming an invalid one); None for every device."""
    if text is None:
        return None
    ids = [d.strip() for d in text.split(",") if d.strip()]
    bad = [d for d in ids if not valid_device(d)]
    if bad or not ids:
        raise ValueError(f"--devices: {bad[0][:70]!r} is not a device id" if bad else "--devices: no device id given")
    return frozenset(ids)
