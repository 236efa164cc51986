"""The consumer's own checkpoint: per-device recurrent state, sequence numbers and evicted devices.

Written atomically (temporary file, synced, then rename; then the directory synced) every
``checkpoint_interval`` seconds and on SIGTERM; read on start, so that after a restart (even ``kill -9``)
each device resumes from the state it had at the last checkpoint. The fine-tuned serving model is saved
beside it as a normal model checkpoint (``serving.pt``).

Sample buffers are not saved. A consumer that acknowledges QoS 1 messages only once their samples
are in published windows (``--ack after-window``) needs no buffers: the broker sends the
unacknowledged ones again to the next life. For that it saves, per device, the ``seq`` before the
first message not yet acknowledged (so the ones sent again are accepted) and the end of the last
classified window (``watermarks``: the next life skips samples already classified). Between
checkpoints, ``AckJournal`` appends both, and the predictions, for every device whose windows were
classified, before the predictions are published and the acknowledgements leave: so after a ``kill -9``
the next life classifies no window twice, knows what the broker will not send again, and stores what
the killed life classified, even though the recurrent state it restores is the checkpoint's.

The evicted devices' states (up to ``max_evicted``) are not in the file itself but in segment files beside it,
each written once (``EvictedSegments``), which the file names. The drift monitor is saved too (``monitor``:
``stream.monitor.Monitor.snapshot``, plain data), as of the checkpoint: what it saw after it, before a
``kill -9``, the next life does not see. So are the windows of
labelling devices still waiting for their labels (``history``: ``stream.labels.WindowHistory.snapshot``), which
the next life resolves on the labels it has or gets.
"""

from __future__ import annotations

import errno
import fcntl
import io
import logging
import os
import re
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import orjson
import torch

from models.checkpoint import sync_directory, write_atomic  # write_atomic leaves no temporary file behind when it fails

__all__ = ["AckJournal", "EvictedSegments", "save_state", "load_state", "read_journal", "journal_predictions",
           "journal_generations", "write_atomic", "lock_state_dir", "StateDirInUse", "StateRefused", "NewerState",
           "STATE_FILE", "SERVING_MODEL", "ADAPTERS_FILE", "LOCK_FILE", "kept_id"]

log = logging.getLogger(__name__)

STATE_FILE = "consumer-state.pt"
SERVING_MODEL = "serving.pt"
ADAPTERS_FILE = "adapters.pt"  # per-device adapters (models.personal), beside the serving model
FORMAT = "harstream.consumer-state"
VERSION = 4
# version 1 has no watermarks nor journal; neither needs ``monitor`` nor ``history`` (keys older harstream ignores);
# versions 1 and 2 keep each device's state as its own tensors, version 3 stacked (``_stacked``); version 4 keeps
# the numbers per device in one JSON string (``plain``) and the evicted states in segment files (``EvictedSegments``)
READABLE = (1, 2, 3, 4)
LOCK_FILE = "consumer.lock"  # held (flock) by the process whose consumer uses the state directory

_held: dict[Path, int] = {}  # state directories this process holds (lock_state_dir): resolved path -> fd


class StateRefused(ValueError):
    """The consumer state is left as it is and the consumer refuses to start: starting afresh, its first
    checkpoint would overwrite it (a ``ValueError``: one line). It could not be read now (an ``OSError``:
    permissions, an I/O error), not because of what it holds."""


class NewerState(StateRefused):
    """The consumer state was written by a newer harstream, in a format this one cannot read: the consumer
    refuses to start rather than overwrite it at its first checkpoint."""


class StateDirInUse(ValueError):
    """Another process's consumer holds the state directory (a ``ValueError``: the command line says it in
    one line)."""


def lock_state_dir(directory: Path) -> None:
    """Hold ``directory`` for this process's consumer: an exclusive ``flock`` of ``consumer.lock`` in it,
    which the kernel releases when the process ends (``kill -9`` too), so a restarted consumer never finds it
    held. Two consumers on one state directory share its ``consumer-id`` (the broker hands the session from
    one to the other, again and again) and overwrite each other's checkpoint, temporary files and journals:
    the second is refused (``StateDirInUse``, naming the first's pid). Held until the process ends; taken
    again by the same process, nothing happens. A file system without locks is warned about, not refused."""
    key = directory.resolve()
    if key in _held:
        return
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(key / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise StateDirInUse(f"{directory}: the state directory is in use by another consumer (pid "
                                f"{holder or 'unknown'}); give each consumer a --state-dir of its own") from None
        log.warning("cannot lock the state directory %s (%s): a second consumer on it would not be refused",
                    directory, exc)
        return
    try:  # the pid only names the holder to a second consumer refused; the lock is what matters
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    except OSError as exc:  # a full disk: before, a bare '[Errno 28] No space left on device' ended the start
        log.warning("could not write this process's pid into %s (%s): the state directory is held all the same",
                    key / LOCK_FILE, exc)
    _held[key] = fd


def kept_id(path: Path, new: str) -> str:
    """The id kept in ``path``; where there is none (no file, or an empty one a kill left), ``new``, written
    there for good. Consumers started at the same moment on a new state directory agree on one id: the
    file is created exclusively (a private temporary file, synced, then hard-linked to ``path``), so the
    first to link wins and the others read its id. With the last writer winning instead, the consumer that
    took the state directory's lock could go on under an id the file no longer held, and its next life,
    under another, never took up the broker's persistent session (nor the QoS 1 messages kept for it)."""
    kept = _read_id(path)
    if kept:
        return kept
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(new.encode())
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            kept = _read_id(path)
            if kept:  # another consumer's, written first
                return kept
            os.replace(tmp, path)  # an empty file a kill left (before ids were linked): the last writer wins
    finally:
        tmp.unlink(missing_ok=True)
    sync_directory(path.parent)  # the link itself on disk
    return new


def _read_id(path: Path) -> str:
    try:
        return path.read_text(errors="replace").strip()
    except FileNotFoundError:
        return ""


def save_state(directory: Path, model_version: str, devices: dict[str, tuple[torch.Tensor, ...]],
               sequences: dict[str, int], evicted: dict[str, tuple[torch.Tensor, ...]],
               watermarks: dict[str, float] | None = None, journal: int = 0,
               anchors: dict[str, tuple[float, list[float]]] | None = None,
               orientation: dict | None = None, monitor: dict | None = None, history: dict | None = None,
               segments: EvictedSegments | None = None) -> Path:
    """Write the checkpoint atomically; ``journal`` names the ``AckJournal`` that continues it. With ``segments``
    the evicted devices' states go to its segment files, only those not yet on disk (``EvictedSegments``), and
    the file names them; without, they are in the file itself (as up to 0b3c94f)."""
    directory.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "format_version": VERSION,
        "saved_at": time.time(),
        "model_version": model_version,
        "devices": _stacked(devices),
        "evicted": _stacked(evicted) if segments is None else [],
        "journal": int(journal),
        # since version 4 the numbers kept per device, evicted ones too (up to 100,000), are one JSON string:
        # pickled one object at a time they took 1.3 s of every checkpoint at 100,000 (docs/checkpoint.md).
        # sequences: last seq; watermarks: end of the last window classified; anchors: (time, sample) of the
        # last sample acknowledged; orientation: models.orientation.Orienter.snapshot(), devices settled, turns
        "plain": orjson.dumps({"sequences": sequences, "watermarks": watermarks or {}, "anchors": anchors or {},
                               "orientation": orientation or {}}, option=orjson.OPT_SERIALIZE_NUMPY).decode(),
        # stream.monitor.Monitor.snapshot(): detectors' references and tails, live metrics (None: not kept)
        "monitor": monitor,
        # stream.labels.WindowHistory.snapshot(): windows waiting for their labels (None: not kept)
        "history": history,
    }
    if segments is not None:  # evicted states in files of their own, each written once (EvictedSegments)
        blob["evicted_segments"] = segments.write(evicted)
        blob["evicted_order"] = "\n".join(evicted)  # least recently seen first: the first forgotten
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    path = directory / STATE_FILE
    write_atomic(path, buffer.getvalue())
    if segments is not None:
        segments.clean()
    return path


def load_state(directory: Path) -> dict | None:
    """The saved state, or None when there is none; never executes code from the file. A file that cannot
    be read as one (empty, truncated, another format, fields missing or of the wrong type) is a
    ``ValueError`` naming it. Its ``monitor`` and ``history`` are as saved (None where older files have none): a
    malformed one is ``Monitor.restore``'s or ``WindowHistory.restore``'s to refuse, so that it costs the drift
    monitor or the windows waiting for labels only, not every device's state."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except OSError as exc:  # not what the file holds: EACCES (another user's), EIO, EMFILE; it may read later
        raise _unreadable_now(path, exc, "it") from None
    except Exception as exc:  # EOFError, UnpicklingError, a zip error (RuntimeError), refused globals
        # its first sentence only, as load_checkpoint says it: torch's advice that follows (weights_only=False)
        # would run code from the file, and its paragraph hid what the consumer did with the file after it
        first = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else ""
        raise ValueError(f"{path}: unreadable consumer state ({type(exc).__name__}: {first})") from None
    version = blob.get("format_version") if isinstance(blob, dict) and blob.get("format") == FORMAT else None
    if isinstance(version, int) and version > VERSION:
        raise NewerState(f"{path} was written by a newer harstream (consumer state version {version}; this one "
                         f"reads versions {READABLE[0]} to {VERSION}): run that harstream on this --state-dir, or "
                         f"move {path.name} away to start every device afresh")
    if version not in READABLE:
        raise ValueError(f"{path}: not a harstream consumer state of version {VERSION}")
    try:
        if version >= 4:  # the numbers kept per device, one JSON string (save_state); anchors as [t, [x, ...]]
            plain = _dict(orjson.loads(blob.pop("plain")))
            blob.update(sequences=plain["sequences"], watermarks=plain["watermarks"],
                        anchors={d: [a[0], *a[1]] for d, a in _dict(plain["anchors"]).items()})
            blob.setdefault("orientation", plain.get("orientation"))
        blob["devices"] = _states(blob["devices"])
        blob["evicted"] = _states(blob["evicted"])
        blob["evicted_segments"] = _segment_index(blob.get("evicted_segments", []))
        if blob["evicted_segments"]:  # a segment lost costs its devices' states only
            blob["evicted"].update(_read_segments(directory, blob["evicted_segments"], blob.get("evicted_order", "")))
        blob["sequences"] = {_device(d): int(s) for d, s in _dict(blob["sequences"]).items()}
        blob["watermarks"] = {_device(d): float(t) for d, t in _dict(blob.get("watermarks", {})).items()}
        journal = blob.get("journal")
        blob["journal"] = None if journal is None else int(journal)
        blob["orientation"] = blob.get("orientation")  # as the monitor: a bad one costs itself only (Orienter.restore)
        blob["monitor"] = blob.get("monitor")
        blob["history"] = blob.get("history")
        blob["anchors"] = {_device(d): (float(a[0]), [float(x) for x in a[1:]])
                           for d, a in _dict(blob.get("anchors", {})).items()}
        blob["saved_at"] = float(blob["saved_at"])
        blob["model_version"] = str(blob["model_version"])
    except StateRefused:  # a segment that cannot be read now (_read_segment)
        raise
    # RuntimeError: a tensor where a number belongs that converts to none (a meta one); OverflowError: int(inf)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, OverflowError) as exc:
        raise ValueError(f"{path}: consumer state with a field missing or malformed "
                         f"({type(exc).__name__}: {exc})") from None
    return blob


SEGMENT = re.compile(r"evicted-(\d+)\.pt")  # an evicted-state segment's file name in the state directory
MAX_SEGMENTS = 64  # beyond this many, the smallest are written again into the next one
FOLD_BUDGET = 5_000  # states of older segments written again at most per checkpoint (or twice the new ones)


class EvictedSegments:
    """The evicted devices' states on disk, in segment files (``evicted-<n>.pt``) that are written once and
    never changed; the checkpoint names each live segment and which of its devices still count, and all the
    evicted devices in their order (least recently seen first, as ``Consumer._evicted`` keeps them).

    Up to ``max_evicted`` (100,000) devices are evicted in a fleet whose ids keep changing, and the checkpoint
    wrote all their states every ``checkpoint_interval`` on the serving thread (docs/checkpoint.md). Now a
    checkpoint writes only the states evicted since the last one (a device that came back and was evicted again
    counts as new: its state is another object), plus some of older segments': of those of which fewer than
    half still count, and, beyond ``MAX_SEGMENTS``, of the smallest, at most ``FOLD_BUDGET`` states (or twice
    the new ones) a checkpoint, those with the fewest still counting first, so that no checkpoint writes tens
    of thousands of states at once (a review measured 0.6-0.8 s spikes without the bound). Segments no
    checkpoint names any more are removed after the checkpoint that stopped naming them is on disk (``clean``),
    and so are ones a kill left before its checkpoint was written; not those on disk at the start of a consumer
    whose checkpoint was set aside as unreadable (``hold_existing``): the file set aside names them. Since
    the checkpoint's version 4: a harstream up to 0b3c94f refuses to start on it (``NewerState``)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._where: dict[str, tuple[str, tuple]] = {}  # device -> (segment holding its state, that state)
        self._rows: dict[str, int] = {}  # segment -> states written into it
        self._held: set[str] = set()  # segment files never removed (hold_existing)
        self._next = 1 + max((int(m.group(1)) for m in map(SEGMENT.fullmatch, _names(directory)) if m), default=0)
        self.written = 0  # states written by the last ``write`` (for tests and benchmarks)

    def adopt(self, index: list[dict], evicted: dict[str, tuple]) -> None:
        """Take the segments a restored checkpoint names (``load_state``'s ``evicted_segments``) for the devices
        restored from them (``evicted``: the very state objects), so that they are not written again."""
        for segment in index:
            self._rows[segment["file"]] = segment["rows"]
            self._next = max(self._next, int(SEGMENT.fullmatch(segment["file"]).group(1)) + 1)
            for d in segment["names"]:
                if d in evicted:
                    self._where[d] = (segment["file"], evicted[d])

    def hold_existing(self) -> None:
        """Never remove the segment files on disk now: the checkpoint that names them was set aside."""
        self._held.update(n for n in _names(self.directory) if SEGMENT.fullmatch(n))

    def write(self, evicted: dict[str, tuple]) -> list[dict]:
        """Write what of ``evicted`` is not on disk yet into a new segment; the index for the checkpoint: each
        segment's file, its rows and the devices that still count. Raises OSError with nothing changed."""
        kept: dict[str, list[str]] = {}
        new: dict[str, tuple] = {}
        where = self._where
        for d, state in evicted.items():
            w = where.get(d)
            if w is not None and w[1] is state:
                kept.setdefault(w[0], []).append(d)
            else:
                new[d] = state
        fold = sorted((f for f, names in kept.items() if 2 * len(names) < self._rows[f]), key=lambda f: len(kept[f]))
        if len(kept) > MAX_SEGMENTS:
            fold += sorted((f for f in kept if f not in fold), key=self._rows.__getitem__)[:len(kept) - MAX_SEGMENTS]
        budget = max(FOLD_BUDGET, 2 * len(new))
        for f in fold:
            if len(kept[f]) <= budget:
                budget -= len(kept[f])
                new.update((d, evicted[d]) for d in kept.pop(f))
        rows = {f: self._rows[f] for f in kept}
        if new:
            name = f"evicted-{self._next}.pt"
            buffer = io.BytesIO()
            torch.save({"format": FORMAT + ".evicted", "states": _stacked(new)}, buffer)
            write_atomic(self.directory / name, buffer.getvalue())
            self._next += 1
            kept[name], rows[name] = list(new), len(new)
            for d, state in new.items():
                where[d] = (name, state)
        for d in where.keys() - evicted.keys():  # back, or forgotten: kept by no segment any more
            del where[d]
        self._rows = rows
        self.written = len(new)
        # the names as one string each (device ids hold no newline, stream.decode.DEVICE_ID): 100,000 names
        # pickled one by one took 0.1 s of every checkpoint
        return [{"file": f, "rows": rows[f], "names": "\n".join(names)} for f, names in kept.items()]

    def clean(self) -> None:
        """Remove the segments the checkpoint just written does not name (best effort: one left is removed at
        a later checkpoint)."""
        for name in _names(self.directory):
            if (SEGMENT.fullmatch(name) and name not in self._rows and name not in self._held) or (
                    name.startswith("evicted-") and name.endswith(".tmp")):
                try:
                    (self.directory / name).unlink()
                except OSError:
                    pass


def _names(directory: Path) -> list[str]:
    try:
        return os.listdir(directory)
    except OSError:
        return []


def _segment_index(value) -> list[dict]:
    """The checkpoint's list of evicted-state segments, checked: each a file name of the form ``evicted-<n>.pt``
    (never a path), its row count and the names of the devices that still count."""
    index = []
    for segment in value if isinstance(value, list) else _dict(value):
        segment = _dict(segment)
        name, names = segment["file"], segment["names"]
        if not isinstance(name, str) or not SEGMENT.fullmatch(name) or not isinstance(names, str):
            raise ValueError(f"an evicted-state segment named {name!r}")
        index.append({"file": name, "rows": int(segment["rows"]), "names": names.split("\n") if names else []})
    return index


def _read_segments(directory: Path, index: list[dict], order) -> dict[str, tuple[torch.Tensor, ...]]:
    """The states of the devices that still count in the segments of ``index``, in ``order`` (the evicted
    devices' names, least recently seen first, one string); see ``_read_segment``."""
    states: dict[str, tuple[torch.Tensor, ...]] = {}
    for segment in index:
        states.update(_read_segment(directory, segment))
    if not isinstance(order, str):
        raise TypeError("the evicted devices' order: a string expected")
    ordered = {d: states.pop(d) for d in (order.split("\n") if order else []) if d in states}
    ordered.update(states)  # named by a segment, not by the order (none in a file harstream wrote)
    return ordered


def _read_segment(directory: Path, segment: dict) -> dict[str, tuple[torch.Tensor, ...]]:
    """The states of ``segment``'s devices that still count; none (a warning) when its file is missing or does
    not hold a segment: those devices start afresh when they come back, the others' states are restored. A file
    that cannot be read now (an ``OSError`` other than its absence: EACCES, EIO, EMFILE) is ``StateRefused``, as
    the checkpoint itself: taken for lost, it would be removed at the next checkpoint."""
    path = directory / segment["file"]
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(blob, dict) or blob.get("format") != FORMAT + ".evicted":
            raise ValueError("not a harstream evicted-state segment")
        states = _states(blob["states"])
    except OSError as exc:
        if not isinstance(exc, FileNotFoundError):
            raise _unreadable_now(path, exc, f"the state directory's {STATE_FILE}") from None
        states, error = None, exc
    except Exception as exc:  # torn, another format: as load_state's own, but for these devices alone
        states, error = None, exc
    if states is None:
        log.warning("not restoring the states of %d evicted devices: %s: %s (they start afresh when they come "
                    "back)", len(segment["names"]), path, error)
        segment["names"] = []
        return {}
    wanted = [d for d in segment["names"] if d in states]
    segment["names"] = wanted
    if len(wanted) < len(states):  # copies: views would keep every row of the file in memory
        return {d: tuple(t.clone() for t in states[d]) for d in wanted}
    return {d: states[d] for d in wanted}


def _unreadable_now(path: Path, exc: OSError, away: str) -> StateRefused:
    """The refusal of a file of the consumer state that could not be read now (not what it holds: EACCES,
    EIO, EMFILE): left as it is, the start refused; ``away``: what to move to start every device afresh."""
    return StateRefused(f"{path} could not be read ({type(exc).__name__}: {exc}); it is left as it is: make it "
                        f"readable, or move {away} away to start every device afresh")


def set_aside(path: Path) -> Path | None:
    """Rename a file that cannot be used, so that what would be written in its place does not destroy it:
    ``<name>.unreadable-<UTC time>``. The new name, or None when there is no such file; an ``OSError`` when it
    cannot be renamed (the consumer then refuses to start: its first checkpoint would overwrite it)."""
    aside = path.with_name(f"{path.name}.unreadable-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
    try:
        os.replace(path, aside)
    except FileNotFoundError:
        return None
    return aside


def _dict(value) -> dict:
    if not isinstance(value, dict):
        raise TypeError(f"a dict expected, not {type(value).__name__}")
    return value


def _device(name) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a device id expected, not {type(name).__name__}")
    return name


def plain_tensor(value, what: str, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``value``, a tensor read from a file, as a plain one: dense, on the CPU, of ``dtype`` (any float tensor
    converted), needing no grad, its negative bit resolved; else a ``TypeError`` naming ``what``. For every
    restore: ``torch.load(weights_only=True)`` reads sparse tensors, meta ones, tensors needing grad or with
    their negative bit set, and ones of any dtype, whose ops or ``numpy()`` raise RuntimeError or
    NotImplementedError (taken for no malformed file: the consumer did not start) or that reach the model in a
    dtype it refuses."""
    if not (isinstance(value, torch.Tensor) and value.layout == torch.strided and value.device.type == "cpu"
            and value.dtype.is_floating_point):
        raise TypeError(f"{what}: a dense float tensor on the CPU expected")
    return value.detach().resolve_neg().to(dtype)


def _stacked(states: dict[str, tuple[torch.Tensor, ...]]) -> list[dict]:
    """Device states as the file keeps them since version 3: grouped by their shapes, each group as its devices'
    names and one stacked tensor per part of the state. torch.save pickles every tensor as an object of its own:
    100,000 evicted devices (``max_evicted``'s default, a fleet whose ids keep changing) took 7 s to save, every
    checkpoint_interval on the serving thread, 159 MB, and 16 s to load; stacked, 0.3 s, 104 MB and 0.8 s."""
    groups: dict[tuple, list[str]] = {}
    for d, s in states.items():
        groups.setdefault(tuple(tuple(t.shape) for t in s), []).append(d)
    return [{"names": names, "parts": [torch.stack([states[d][k] for d in names]) for k in range(len(shapes))]}
            for shapes, names in groups.items()]


def _states(value) -> dict[str, tuple[torch.Tensor, ...]]:
    """Each device's state tensors, as the bank keeps them: dense float32 CPU tensors (``plain_tensor``).
    weights_only reads sparse and meta tensors too, and ones of another float type: the bank's
    ``index_copy_`` refused them, and the consumer did not start. Version 3's groups (``_stacked``) or, in
    older files, a tensor list per device."""
    states = {}
    if isinstance(value, list):
        for group in value:
            names, parts = _dict(group)["names"], group["parts"]
            if not isinstance(names, list) or not isinstance(parts, list):
                raise TypeError("a group of device states: names and parts as lists expected")
            names = [_device(d) for d in names]
            parts = [plain_tensor(p, f"the states of {len(names)} devices") for p in parts]
            if not all(p.dim() > 0 and len(p) == len(names) for p in parts):
                raise ValueError(f"the states of {len(names)} devices: parts of other lengths")
            rows = zip(*(p.unbind(0) for p in parts), strict=True) if parts else [()] * len(names)
            states.update(zip(names, rows, strict=True))
        return states
    for d, s in _dict(value).items():
        if not isinstance(s, (list, tuple)):
            raise TypeError(f"device {d!r}: a list of dense float tensors expected")
        states[_device(d)] = tuple(plain_tensor(t, f"device {d!r}") for t in s)
    return states


PREDICTION = "=P"  # a journal line's first field: no device id starts with "=" (stream.decode.DEVICE_ID)
JOURNAL_WARN_EVERY = 60.0  # s between warnings while the journal cannot be written
MAX_PENDING_PREDICTIONS = 100_000  # prediction lines kept in memory while it cannot (about 10 MB)
FORGET = "=F"  # a journal line: the device is forgotten (beyond max_evicted); the lines before it no longer count


def _journal_path(directory: Path, generation: int) -> Path:
    return directory / f"acked-{generation}.log"


def _open_append(path: Path) -> int:
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def journal_generations(directory: Path) -> list[int]:
    """The generations of the journals in ``directory``, in increasing order."""
    found = []
    for path in directory.glob("acked-*.log"):
        number = path.name[len("acked-"):-len(".log")]
        if number.isdigit():
            found.append(int(number))
    return sorted(found)


def _cut_partial_line(path: Path) -> int:
    """Truncate ``path`` after its last newline: what a kill cut short in the middle of a line (a short
    write) would otherwise take the next life's first line with it. Returns the bytes cut."""
    if not path.exists():
        return 0
    with open(path, "rb+") as f:
        size = pos = f.seek(0, os.SEEK_END)
        keep = 0
        while pos > 0:
            step = min(65536, pos)
            f.seek(pos - step)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                keep = pos - step + newline + 1
                break
            pos -= step
        if keep < size:
            f.truncate(keep)
        return size - keep


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


class AckJournal:
    """Append-only lines since the last checkpoint, written *before* a cycle's predictions are published.

    Per device and cycle: ``device<TAB>end of its last classified window<TAB>seq[<TAB>last sample]``; per
    window: ``=P<TAB>device<TAB>t<TAB>label<TAB>confidence<TAB>model<TAB>latency_ms[<TAB>received]``
    (``received``: when the cycle ran, the event store's key with the window; older journals lack it); per device
    forgotten (its state kept no more, beyond ``max_evicted``): ``=F<TAB>device``, so that the next life takes no mark,
    ``seq`` or last sample of it from the lines before (it comes back afresh, and is not kept for good again; older
    harstream skips the line). So a ``kill -9``
    at any point leaves every classified window in the journal: the next life classifies none of them
    again (it resumes after the marks) and puts their predictions into the event store (which ignores
    the ones it already has), while what was on its way over MQTT (QoS 0) may be lost with the socket.

    Each ``write`` is ``os.write`` on a file opened with ``O_APPEND`` (again for what a short write left):
    nothing waits in a Python buffer, so a ``kill -9`` loses none of it (it is in the kernel's page cache;
    a power cut is another matter: no fsync). A line a kill cut short is cut off when the next life opens
    the file. ``rotate`` starts the file of the next checkpoint. Other generations found when it opens
    (left by a kill during ``rotate``, or named by a checkpoint that could not be read) are not deleted
    unread: their prediction lines are carried into this one first (the event store ignores those it has).

    A write that fails (a full disk: ``OSError``) raises nothing: the file is cut back to its last whole line
    (what a short write left would take the next line with it), the lines are kept in memory and written before
    the next ones (``written`` False until then; each device's last line only, which is what a reader takes,
    and at most ``MAX_PENDING_PREDICTIONS`` predictions, the oldest dropped beyond), warned about once, then at
    most once a minute, and said when it writes again. The consumer acknowledges nothing they record meanwhile.
    A file that cannot be opened (at the start or ``rotate``) is such a failure too, opened before the next write;
    other generations whose lines cannot be carried are left on disk (the next life carries them) and carried
    after the next write that succeeds.
    """

    def __init__(self, directory: Path, generation: int = 0) -> None:
        self.directory = directory
        self.generation = generation
        directory.mkdir(parents=True, exist_ok=True)
        self._fd: int | None = None
        self._size = 0  # the end of the last whole line: a failed write is cut back to it
        self._unopened = False  # the file could not be opened (a full disk): opened before the next write
        self._torn = False  # a failed write could not be cut back yet: done before the next one
        self._marks: dict[str, str] = {}  # lines not yet written: each device's last (a reader takes the last) ...
        self._forgets: dict[str, None] = {}  # ... the devices forgotten since (written first: a later line wins)
        self._predictions: deque[str] = deque()  # ... and the predictions
        self.errors = 0  # writes that failed (each tried again with the next)
        self.dropped = 0  # predictions not kept in memory beyond MAX_PENDING_PREDICTIONS while it failed
        self.failing = False
        self._failed_since = 0  # failures since it last wrote
        self._warned = -JOURNAL_WARN_EVERY
        # other generations whose prediction lines are not carried into this one yet: left on disk (read again by
        # the next life) until they are, tried again after each write that succeeds
        self._uncarried = [g for g in journal_generations(directory) if g != generation]
        try:
            self._open()
        except OSError as exc:  # a full disk: before, this ended the consumer's start
            self._unopened = True
            self._failed(exc)
            return
        self._carry()

    def _open(self) -> None:
        """Open this generation's file (``O_APPEND``), cut after its last whole line; raises OSError."""
        path = _journal_path(self.directory, self.generation)
        _cut_partial_line(path)  # what a kill left (shrinking needs no space)
        self._fd = _open_append(path)
        self._size = os.fstat(self._fd).st_size
        self._unopened = False

    def _carry(self) -> None:
        """Carry the prediction lines of the other generations found at the start into this file, then delete
        them; one that cannot be written (a full disk) is cut back and left on disk, tried again later."""
        for other in list(self._uncarried):
            old = _journal_path(self.directory, other)
            try:
                carried = [line for line in old.read_bytes().split(b"\n")[:-1]
                           if line.startswith(PREDICTION.encode() + b"\t")]
                if carried:
                    data = b"\n".join(carried) + b"\n"
                    _write_all(self._fd, data)
                    self._size += len(data)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self._failed(exc)
                return
            old.unlink(missing_ok=True)
            self._uncarried.remove(other)

    @property
    def written(self) -> bool:
        """Whether every line given so far is in the file."""
        return not (self._marks or self._forgets or self._predictions)

    def write(self, entries: list[tuple], predictions: list[tuple] = ()) -> bool:
        """Lines of (device, end of its last classified window, seq acknowledged up to once its predictions
        are out[, (t, values) of the last sample then acknowledged: acc, then gyro for a model that
        reads it]) and of predictions (device, t, label, confidence, model, latency_ms[, received]), in one
        write with those a failed write left. Returns whether all are written (``written``)."""
        if self._closed:
            return True
        for d, t, s, *rest in entries:
            anchor = rest[0] if rest else None
            extra = ("" if anchor is None
                     else "\t" + "\t".join(repr(float(x)) for x in (anchor[0], *anchor[1])))
            self._marks.pop(d, None)  # in the order given: dicts write in insertion order
            self._marks[d] = f"{d}\t{t!r}\t{'' if s is None else s}{extra}\n"
        for d, t, label, confidence, model, latency, *received in predictions:
            extra = "".join(f"\t{float(r)!r}" for r in received[:1])
            self._predictions.append(f"{PREDICTION}\t{d}\t{t!r}\t{label}\t{confidence!r}\t{model}\t{latency!r}"
                                     f"{extra}\n")
        return self.flush()

    def forget(self, device: str) -> None:
        """A line saying ``device`` is forgotten: what the lines before say of it no longer counts."""
        if not self._closed:
            self._marks.pop(device, None)
            self._forgets[device] = None
            self.flush()

    def flush(self) -> bool:
        """Write what is not yet written (forgotten devices, then marks, then predictions); whether all is."""
        if self._closed or (self.written and not self._unopened):
            return True
        while len(self._predictions) > MAX_PENDING_PREDICTIONS:
            self._predictions.popleft()
            self.dropped += 1
        data = "".join([*(f"{FORGET}\t{d}\n" for d in self._forgets), *self._marks.values(),
                        *self._predictions]).encode()
        try:
            if self._unopened:  # a full disk when it was to be opened (start, rotate)
                self._open()
            if self._torn:
                os.ftruncate(self._fd, self._size)
                self._torn = False
            _write_all(self._fd, data)
        except OSError as exc:
            self._failed(exc)
            return False
        self._size += len(data)
        self._forgets.clear()
        self._marks.clear()
        self._predictions.clear()
        if self.failing:
            self.failing = False
            log.info("acknowledgement journal %s written again (after %d failures%s)",
                     _journal_path(self.directory, self.generation).name, self._failed_since,
                     f"; {self.dropped} predictions not kept meanwhile" if self.dropped else "")
            self._failed_since = 0
        if self._uncarried:
            self._carry()
        return True

    @property
    def _closed(self) -> bool:
        return self._fd is None and not self._unopened

    def _failed(self, exc: OSError) -> None:
        """A write failed: cut the file back to its last whole line (a short write leaves part of one, to which
        the next write would glue its first line: both lost to a reader), or mark it to be cut first."""
        try:
            if self._fd is not None:  # None: the file could not be opened
                os.ftruncate(self._fd, self._size)  # shrinking needs no space
        except OSError:
            self._torn = True
        self.errors += 1
        self._failed_since += 1
        self.failing = True
        now = time.monotonic()
        if now - self._warned >= JOURNAL_WARN_EVERY:
            self._warned = now
            log.warning("acknowledgement journal %s not written (%s): its lines are kept in memory and written "
                        "once it can be; until then the messages whose windows they record stay unacknowledged "
                        "(%d failures so far)", _journal_path(self.directory, self.generation).name, exc,
                        self._failed_since)

    def discard(self) -> None:
        """Forget the lines not yet written: a checkpoint saved since holds what they say (``rotate``)."""
        self._forgets.clear()
        self._marks.clear()
        self._predictions.clear()
        self._torn = False  # the file is left

    def next_generation(self) -> int:
        return self.generation + 1

    def rotate(self, generation: int) -> None:
        """Continue in ``generation``'s file (call once the checkpoint that names it is saved). Where it cannot
        be opened (a full disk) nothing is raised: it is opened before the next write, which until then fails
        as any failed write does (its lines kept, their messages held)."""
        old = _journal_path(self.directory, self.generation)
        if self._fd is not None:
            os.close(self._fd)
        self._fd, self.generation = None, generation
        self.discard()  # the checkpoint that names it holds the marks, the event store the predictions
        try:
            self._open()
        except OSError as exc:
            self._unopened = True
            self._failed(exc)
        old.unlink(missing_ok=True)

    def close(self) -> None:
        if not self._closed:
            self.flush()  # once more: what it then writes, the next life reads (not classified again)
            if self._fd is not None:
                os.close(self._fd)
            self._fd, self._unopened = None, False


def _prediction(parts: list[str]) -> tuple | None:
    """A journal's prediction line, split at its tabs, as ``EventStore.prediction``'s arguments."""
    if len(parts) not in (7, 8):
        return None
    try:
        return (parts[1], float(parts[2]), parts[3], float(parts[4]), parts[5], *map(float, parts[6:]))
    except ValueError:
        return None


def journal_predictions(directory: Path, generation: int, offset: int = 0) -> Iterator[tuple[int, tuple]]:
    """The predictions of ``generation``'s journal from byte ``offset`` on (a line's start), each with the
    offset of the line after it: a reader that stops can resume there without reading the rest again."""
    path = _journal_path(directory, generation)
    if not path.exists():
        return
    with open(path, "rb") as f:
        f.seek(offset)
        for raw in f:
            if not raw.endswith(b"\n"):
                return  # a line a kill cut short
            offset += len(raw)
            parts = raw[:-1].decode(errors="replace").split("\t")
            row = _prediction(parts) if parts[0] == PREDICTION else None
            if row is not None:
                yield offset, row


def read_journal(directory: Path, generation: int) -> tuple[dict[str, float], dict[str, int],
                                                             dict[str, tuple], list[tuple]]:
    """(watermarks, seqs, anchors, predictions) from ``generation``'s journal, the last line of each device
    winning, a device forgotten since its last line having none; an incomplete last line (a kill in the middle of
    a write) is ignored. A prediction is
    (device, t, label, confidence, model, latency_ms[, received]) as written (``EventStore.prediction``'s
    arguments)."""
    path = _journal_path(directory, generation)
    watermarks: dict[str, float] = {}
    seqs: dict[str, int] = {}
    anchors: dict[str, tuple] = {}
    predictions: list[tuple] = []
    if not path.exists():
        return watermarks, seqs, anchors, predictions
    for line in path.read_bytes().decode(errors="replace").split("\n")[:-1]:
        parts = line.split("\t")
        if parts[0] == PREDICTION:
            row = _prediction(parts)
            if row is not None:
                predictions.append(row)
            continue
        if parts[0] == FORGET and len(parts) == 2:
            for marks in (watermarks, seqs, anchors):
                marks.pop(parts[1], None)
            continue
        if len(parts) not in (3, 7, 10):  # anchor: t and the accelerometer (and the gyroscope, if read)
            continue
        try:
            mark = float(parts[1])
            seq = int(parts[2]) if parts[2] else None
            anchor = (float(parts[3]), [float(x) for x in parts[4:]]) if len(parts) > 3 else None
        except ValueError:
            continue
        watermarks[parts[0]] = mark
        if seq is not None:
            seqs[parts[0]] = seq
        if anchor is not None:
            anchors[parts[0]] = anchor
    return watermarks, seqs, anchors, predictions
