"""``harstream record``: what sensors publish over MQTT, written as a recording file (DESIGN.md).

The way to train on a sensor of one's own (a phone app, a watch) without writing code: record it while
labelling (from the dashboard, or any client on ``<prefix>/<device>/label``), then ``harstream train --data``.
Samples are decoded exactly as ``harstream consume`` decodes them (``stream.adapters.AdapterRouter``: the
native ``<prefix>/+/imu`` and the phone formats of ``--adapter``); a payload either refuses is counted and
logged, never stops the recording. Each sample is labelled at the end, by every label received (a late one
too), with the consumer's label semantics (``stream.labels.LabelBook``: a label holds from its time until the
device's next; a ``start``/``end`` span wins where it covers).

Everything is held in memory and written once, when the recording stops (``--duration``, Ctrl-C, SIGTERM),
sorted by device and time, to a temporary file renamed onto ``--out``. A ``kill -9`` loses it all. So that the
end cannot lose it either, ``--out`` is tried before recording (its temporary file made and removed: a folder
that refuses files, a name too long), an existing file is replaced only with ``--overwrite``, and if writing
fails after all (the disk full, the folder gone) the recording goes to the system's temporary folder instead.

A device whose clock goes back (``seq`` 0 again with samples at or before its newest, or a batch 30 s or more
behind it: a restart, a reboot) cannot go on in the same rows (a recording file's time never goes back for a
device): its new session gets rows of its own under ``<device>.s2``, ``.s3``, ..., and the file a ``subject``
column naming the device, so that training keeps them one person. Labels go to the session under way when
they arrive.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.adapters import AdapterRouter
from stream.decode import Rejected, SampleBatch, parse_topic, valid_device
from stream.labels import LabelBook, decode_label
from stream.mqtt import BrokerURL, connect
from stream.recording import Recording, write_recording

__all__ = ["CLOCK_RESET", "RecordConfig", "Recorder", "check_out"]

log = logging.getLogger(__name__)

# s: a batch whose last sample is this far behind its device's newest is a new clock (as the consumer's
# CLOCK_RESET and DeviceBuffer's clock_reset); nearer, it is a batch out of order, merged in time order
CLOCK_RESET = 30.0
MAX_LABELS = 1_000_000  # per device session: a label a second for eleven days (LabelBook drops the earliest beyond)
# a session's batches are joined every this many: a phone sending one sample a message (SensorSpot) cost about
# 360 bytes a sample held as one array each, about 60 so (two arrays' headers and list slots shared by 256)
JOIN_EVERY = 256


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


def check_out(path: Path, overwrite: bool = False) -> None:
    """Refuse, before recording, an ``--out`` that could not be written at the end, or (without ``overwrite``)
    one that exists: the recording would replace it when it stops (ValueError, one line). The temporary file is
    made and removed: ``os.access`` says yes to root everywhere (/proc, /sys) and knows nothing of a name too long
    once the temporary file's prefix and suffix are added."""
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


class _Session:
    """One device's samples on one clock (a device restarted gets a new session)."""

    def __init__(self, name: str, device: str) -> None:
        self.name, self.device = name, device
        self.t: list[np.ndarray] = []
        self.acc: list[np.ndarray] = []
        self.gyro: list[np.ndarray | None] = []
        self.samples = 0
        self.newest = -math.inf
        self.earliest = math.inf
        self.seqs: dict[int, float] = {}  # seq -> its first sample's time: a message seen again is a copy
        self.joined = 0  # batches t[:joined] are joined ones (JOIN_EVERY); those after, as received
        self.points: list[float] = []  # where a label received may change what holds (starts, just after ends)


class Recorder:
    """Subscribes, takes every message (``handle``, thread-safe), and builds the recording (``recording``)."""

    def __init__(self, config: RecordConfig) -> None:
        self.config = config
        self.router = AdapterRouter.from_spec(list(config.adapters), config.prefix)  # ValueError for a bad spec
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._current: dict[str, _Session] = {}  # device -> its session under way
        self._sessions: list[_Session] = []  # in order of creation
        self.labels = LabelBook(MAX_LABELS)  # keyed by session name
        self.messages = 0
        self.samples = 0
        self.label_messages = 0
        self.duplicates = 0  # messages received again (QoS 1 redelivery: same seq, same samples)
        self.duplicate_samples = 0  # samples at a time their session already has (set by ``recording``)
        self.rejected: Counter[str] = Counter()
        self.errors = 0  # messages that raised something else (a fault of ours): logged, skipped
        self.gyro_dropped: dict[str, int] = {}  # set by ``recording``: devices' samples without the gyroscope
        self.ignored: Counter[str] = Counter()  # samples of devices --devices leaves out (a typo shows here)
        self.rescued: Path | None = None  # where the recording went when --out could not be written at the end
        self.write_error = ""

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
        self.labels.add(session.name, label, start, end)
        session.points.append(start)
        if end is not None:
            session.points.append(math.nextafter(end, math.inf))
        self.label_messages += 1

    def _new_session(self, device: str) -> _Session:
        count = sum(s.device == device for s in self._sessions)
        name = device
        if count:
            taken = {s.name for s in self._sessions}
            k = count + 1
            while name in taken or name == device:
                suffix = f".s{k}"
                name, k = device[:64 - len(suffix)] + suffix, k + 1
        session = _Session(name, device)
        self._sessions.append(session)
        self._current[device] = session
        return session

    def _take(self, batch: SampleBatch) -> None:
        session = self._current.get(batch.device)
        first, last = float(batch.t[0]), float(batch.t[-1])
        if session is not None and batch.seq is not None and session.seqs.get(batch.seq) == first:
            self.duplicates += 1  # the same message again: a QoS 1 redelivery, a publisher's own copy
            return
        # seq 0 again, its clock back (not the session's own first message arriving late: no seq 0 yet, all of
        # it before the session's earliest sample), or any batch far behind: the device restarted
        if session is not None and session.samples and (
                (batch.seq == 0 and first <= session.newest and (0 in session.seqs or last >= session.earliest))
                or last < session.newest - CLOCK_RESET):
            log.info("%s: its clock went back (%s): a new session, recorded as a device of its own",
                     batch.device, "seq 0 again" if batch.seq == 0 else f"{session.newest - last:.0f} s")
            session = None
        if session is None:
            session = self._new_session(batch.device)
        session.t.append(batch.t)
        session.acc.append(batch.acc)
        session.gyro.append(batch.gyro)
        session.samples += len(batch.t)
        session.newest = max(session.newest, last)
        session.earliest = min(session.earliest, first)
        if batch.seq is not None:
            session.seqs[batch.seq] = first
        self.samples += len(batch.t)
        if len(session.t) - session.joined >= JOIN_EVERY:
            self._join(session)

    @staticmethod
    def _join(session: _Session) -> None:
        """Join the batches received since the last join, in order, into one (runs with and without the
        gyroscope kept apart, as ``recording`` counts them)."""
        t, acc, gyro = session.t[session.joined:], session.acc[session.joined:], session.gyro[session.joined:]
        runs: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]] = []
        a = 0
        for b in range(1, len(t) + 1):
            if b == len(t) or (gyro[b] is None) != (gyro[a] is None):
                runs.append((np.concatenate(t[a:b]), np.concatenate(acc[a:b]),
                             None if gyro[a] is None else np.concatenate(gyro[a:b])))
                a = b
        del session.t[session.joined:], session.acc[session.joined:], session.gyro[session.joined:]
        for rt, racc, rgyro in runs:
            session.t.append(rt)
            session.acc.append(racc)
            session.gyro.append(rgyro)
        session.joined = len(session.t)

    # -- what was received, as a recording ------------------------------------------------------
    def devices(self) -> int:
        with self._lock:
            return len({s.device for s in self._sessions if s.samples})

    def recording(self) -> Recording | None:
        """Every session's samples, sorted by device (session) and time, a sample at a time its session
        already has dropped (the first received kept), labelled by the labels received; None without samples.
        The gyroscope only where every sample has it (else dropped, ``gyro_dropped`` saying whose lacked it)."""
        with self._lock:
            sessions = sorted((s for s in self._sessions if s.samples), key=lambda s: s.name)
            if not sessions:
                return None
            lacking: Counter[str] = Counter()
            for s in sessions:
                for t, g in zip(s.t, s.gyro, strict=True):
                    if g is None:
                        lacking[s.device] += len(t)
            with_gyro = not lacking
            some = any(g is not None for s in sessions for g in s.gyro)  # mixed: said, not silently lost
            self.gyro_dropped = dict(lacking) if some and lacking else {}
            parts: dict[str, list[np.ndarray]] = {"device": [], "t": [], "acc": [], "gyro": [], "label": [],
                                                  "subject": []}
            self.duplicate_samples = 0
            for s in sessions:
                t = np.concatenate(s.t)
                order = np.argsort(t, kind="stable")
                t = t[order]
                keep = np.concatenate([[True], np.diff(t) > 0])
                self.duplicate_samples += int(len(t) - keep.sum())
                order, t = order[keep], t[keep]
                parts["device"].append(np.full(len(t), s.name))
                parts["subject"].append(np.full(len(t), s.device))
                parts["t"].append(t)
                parts["acc"].append(np.concatenate(s.acc)[order])
                if with_gyro:
                    parts["gyro"].append(np.concatenate(s.gyro)[order])
                parts["label"].append(self._labels_of(s, t))
            split = any(s.name != s.device for s in sessions)
            return Recording(
                device=np.concatenate(parts["device"]),
                t=np.concatenate(parts["t"]),
                acc=np.concatenate(parts["acc"]).astype(np.float32),
                label=np.concatenate(parts["label"]),
                gyro=np.concatenate(parts["gyro"]).astype(np.float32) if with_gyro else None,
                subject=np.concatenate(parts["subject"]) if split else None,
            )

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

    def write(self) -> dict:
        """Write the recording to ``out`` (a temporary file beside it, renamed: never half a file there);
        the summary. Without samples nothing is written (``written`` False). If ``out`` cannot be written now
        (the disk full, the folder gone since ``check_out``), the recording goes to the system's temporary
        folder (``rescued``; ``written`` False) rather than being lost; OSError only if that fails too."""
        rec = self.recording()
        out = Path(self.config.out)
        if rec is None:
            return self.summary(rec)
        try:
            self._write_to(out, rec)
        except OSError as exc:
            self.write_error = f"{exc.strerror or exc}"
            rescue = Path(tempfile.gettempdir()) / f"harstream-record-{os.getpid()}-{out.name[:100]}"
            log.error("could not write %s (%s): writing the recording to %s instead", out, self.write_error, rescue)
            self._write_to(rescue, rec)
            self.rescued = rescue
            return self.summary(rec)
        summary = self.summary(rec)
        summary["written"] = True
        return summary

    @staticmethod
    def _write_to(out: Path, rec: Recording) -> None:
        tmp = _tmp_path(out)
        try:
            write_recording(tmp, rec)
            os.replace(tmp, out)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def summary(self, rec: Recording | None) -> dict:
        labelled = 0 if rec is None else int(np.count_nonzero(rec.label != ""))
        return {
            "written": False,
            "out": str(self.config.out),
            "samples": 0 if rec is None else len(rec),
            "devices": len({s.device for s in self._sessions if s.samples}),
            "sessions": len([s for s in self._sessions if s.samples]),
            "labels": self.label_messages,
            "labelled_samples": labelled,
            "classes": [] if rec is None else rec.classes,
            "gyro": rec is not None and rec.gyro is not None,
            "gyro_dropped": self.gyro_dropped,
            "messages": self.messages,
            "duplicate_messages": self.duplicates,
            "duplicate_samples": self.duplicate_samples,
            "rejected": dict(self.rejected),
            "errors": self.errors,
            "ignored": dict(self.ignored),
            "rescued": None if self.rescued is None else str(self.rescued),
            "write_error": self.write_error,
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
        """Record until ``stop()`` or ``duration``; then write. Returns the summary."""
        cfg = self.config
        check_out(Path(cfg.out), cfg.overwrite)

        def on_message(client, userdata, message) -> None:
            self.handle(message.topic, message.payload)

        client = connect(cfg.broker, "record", subscriptions=self.subscriptions(), on_message=on_message)
        topics = ", ".join(t for t, _ in self.subscriptions())
        log.info("recording %s from %s to %s%s", topics, cfg.broker, cfg.out,
                 f" for {cfg.duration:g} s" if cfg.duration else " until Ctrl-C")
        tty = progress and sys.stderr.isatty()
        every = 1.0 if tty else 10.0  # a line in place on a terminal, else one every 10 s (a log)
        start = time.monotonic()
        try:
            while True:
                elapsed = time.monotonic() - start
                left = math.inf if cfg.duration is None else cfg.duration - elapsed
                if left <= 0 or self._stop.wait(min(every, left)):
                    break
                if progress:
                    print(("\r" if tty else "") + self.progress_line(time.monotonic() - start),
                          end="" if tty else "\n", file=sys.stderr, flush=True)
        finally:
            client.disconnect()
            client.loop_stop()
            if tty:
                print(file=sys.stderr)
        return self.write()


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
