"""The recording file: the CSV interchange format of DESIGN.md.

``device,t,ax,ay,az,label`` and optionally ``gx,gy,gz,subject``; ``t`` in seconds, acceleration in
m/s² as specific force (a phone lying screen up reads about +9.81 on z), ``label`` empty where
unknown. Importers write it; ``train``, ``evaluate`` and ``replay`` read it, plain or gzip-compressed.
"""

from __future__ import annotations

import csv
import gzip
import io
import logging
import math
import os
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from stream.decode import MAX_T, valid_device

log = logging.getLogger(__name__)

__all__ = ["CsvRows", "Recording", "RecordingError", "concat_recordings", "implausible", "read_recording",
           "write_recording", "REQUIRED", "OPTIONAL"]

REQUIRED = ("device", "t", "ax", "ay", "az", "label")
OPTIONAL = ("gx", "gy", "gz", "subject")
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# a decimal number as C and numpy write them (spaces around allowed): Python's float() also reads "1_0" (as 10),
# digits of other scripts ("١") and "nan"/"inf", which no tool writes into such a file by intent
_NUMBER = re.compile(r"\s*[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\s*", re.ASCII)


def sync_directory(directory: Path) -> None:
    """fsync a folder, so that the names made, renamed or removed in it are on disk (here, without torch, for
    ``harstream record``; ``models.checkpoint`` uses it too)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse to sync a directory: the rename is as durable as they make it
        pass
    finally:
        os.close(fd)


class RecordingError(ValueError):
    """A recording file that cannot be read; the message names the file and line."""


@dataclass
class Recording:
    """Samples of one or more devices, in file order.

    Rows of one device are contiguous segments in time order; ``segments()`` yields them.
    """

    device: np.ndarray  # (n,) str
    t: np.ndarray  # (n,) float64 seconds
    acc: np.ndarray  # (n, 3) float32 m/s², specific force
    label: np.ndarray  # (n,) str, "" where unknown
    gyro: np.ndarray | None = None  # (n, 3) float32 rad/s
    subject: np.ndarray | None = None  # (n,) str

    def __len__(self) -> int:
        return len(self.t)

    @property
    def classes(self) -> list[str]:
        """Sorted distinct non-empty labels."""
        return sorted({str(x) for x in np.unique(self.label) if x})

    def segments(self) -> Iterator[tuple[str, slice]]:
        """(device, row slice) for each run of consecutive rows of one device."""
        n = len(self.t)
        if n == 0:
            return
        change = np.flatnonzero(self.device[1:] != self.device[:-1]) + 1
        bounds = np.concatenate([[0], change, [n]])
        for a, b in zip(bounds[:-1], bounds[1:], strict=True):
            yield str(self.device[a]), slice(int(a), int(b))

    def subjects(self) -> np.ndarray:
        """The person of every row: ``subject`` where given, else the device (an empty cell too: devices
        without one are not one person ``""``)."""
        if self.subject is None:
            return self.device
        return np.where(self.subject == "", self.device, self.subject)

    def take(self, mask: np.ndarray) -> Recording:
        """The rows where ``mask`` is true (or the given indices)."""
        return Recording(
            device=self.device[mask],
            t=self.t[mask],
            acc=self.acc[mask],
            label=self.label[mask],
            gyro=None if self.gyro is None else self.gyro[mask],
            subject=None if self.subject is None else self.subject[mask],
        )


def concat_recordings(recordings: list[Recording]) -> Recording:
    """Rows of several recordings, one after the other (the gyroscope kept only if all have it). A device
    id found in more than one of them is made distinct per file (``id#2``, ...: two files' clocks are not
    one stream), its person staying the id (``subject``, always kept: a file without the column names each
    device's person by its id, so that files with and without it keep their people apart)."""
    if len(recordings) == 1:
        return recordings[0]
    gyro = all(r.gyro is not None for r in recordings)
    devices, seen = [], set()
    for k, r in enumerate(recordings):
        names = set(np.unique(r.device).tolist())
        clash = names & seen
        seen |= names
        if clash:
            renamed = np.array([f"{d}#{k + 1}" if d in clash else d for d in r.device.tolist()])
            devices.append(renamed)
        else:
            devices.append(r.device)
    return Recording(
        device=np.concatenate(devices),
        t=np.concatenate([r.t for r in recordings]),
        acc=np.concatenate([r.acc for r in recordings]),
        label=np.concatenate([r.label for r in recordings]),
        gyro=np.concatenate([r.gyro for r in recordings]) if gyro else None,
        subject=np.concatenate([r.subjects() for r in recordings]),
    )


def _float32_inf(x: float) -> bool:
    """Whether ``x`` (beyond float32's largest finite value) rounds to infinity as float32."""
    with np.errstate(over="ignore"):
        return bool(np.isinf(np.float32(x)))


def _float(value: str, column: str, where: str) -> float:
    if not _NUMBER.fullmatch(value):
        try:
            x = float(value)
        except ValueError:
            x = 0.0
        if not math.isfinite(x):
            raise RecordingError(f"{where}: column {column!r} is not finite: {value[:40]!r}")
        raise RecordingError(f"{where}: column {column!r} is not a number: {value[:40]!r}")
    x = float(value)
    if not math.isfinite(x):  # 1e999
        raise RecordingError(f"{where}: column {column!r} is not finite: {value[:40]!r}")
    if abs(x) > _FLOAT32_MAX and column != "t" and _float32_inf(x):  # kept as float32: it would read as inf
        raise RecordingError(f"{where}: column {column!r} is beyond float32's range: {value[:40]!r}")
    if column == "t" and abs(x) >= MAX_T:  # as the consumer refuses it (stream.decode.MAX_T)
        raise RecordingError(f"{where}: column 't' is {value[:40]}, beyond {MAX_T:.0e} s: t is in seconds "
                             f"(milliseconds or nanoseconds?)")
    return x


GZIP_MAGIC = b"\x1f\x8b"
# what a damaged gzip stream raises as it is read: a bad header or CRC, a stream cut short, bad deflate data
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


class _GzipReader(gzip.GzipFile):
    """A ``GzipFile`` over an open file that it closes when closed (``GzipFile(fileobj=...)`` leaves it open)."""

    def __init__(self, raw) -> None:
        super().__init__(fileobj=raw, mode="rb")
        self._raw = raw

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._raw.close()


def open_bytes(path: Path):
    """``path`` opened for reading bytes, decompressed where it is gzip (its first bytes \\x1f\\x8b, whatever
    its name): a recording file may be kept compressed. OSError where it cannot be opened."""
    raw = path.open("rb")
    try:
        compressed = raw.peek(2)[:2] == GZIP_MAGIC  # peek: a pipe cannot seek back
    except OSError:
        raw.close()
        raise
    return _GzipReader(raw) if compressed else raw


def read_recording(path: str | Path) -> Recording:
    """Read a recording file, plain or gzip-compressed; a bad row raises ``RecordingError`` naming its line."""
    path = Path(path)
    try:
        raw = open_bytes(path)
    except OSError as exc:
        raise RecordingError(f"{path}: cannot open: {exc.strerror}") from None
    # a byte order mark is not part of the header
    handle = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    try:
        with handle:
            rec = _read_rows(path, handle)
    except UnicodeDecodeError as exc:
        raise RecordingError(f"{path}:{_undecodable_line(path)}: not UTF-8 text ({exc.reason})") from None
    rec = _grouped(rec)
    for line in implausible(rec):
        log.warning("%s: %s", path, line)
    return rec


G_LOOKING = (0.5, 2.0)  # a device's median |acc| in this range: its acceleration is in g, not m/s²
SHARED_TIMES = 2.0  # rows per distinct time, on average, from which a device's times look rounded (whole seconds)
_MOST_NAMED = 5  # devices named per kind of doubt; the others counted on one more line


def implausible(rec: Recording) -> list[str]:
    """Doubts about a readable recording, one line per device and kind (at most ``_MOST_NAMED`` devices named per
    kind): acceleration whose median magnitude is near 1 (g, not the m/s² of the file format, where a device lying
    still reads about 9.81); times taking few distinct values (whole seconds shared by many rows); a device whose
    t never advances (no window comes of it: evaluate and the consumer leave it out)."""
    kinds: dict[str, list[str]] = {"g": [], "shared": [], "still": []}
    for device, rows in rec.segments():
        t = rec.t[rows]
        n = len(t)
        distinct = 1 + int(np.count_nonzero(t[1:] > t[:-1]))  # each device's times do not decrease
        if n > 1 and distinct == 1:
            kinds["still"].append(f"device {device}: t never advances (all {n} rows at t {t[0]:.4f}): no window "
                                  "comes of it, and evaluate and the consumer leave it out")
        elif n >= 10 and n >= SHARED_TIMES * distinct:
            kinds["shared"].append(f"device {device}: t takes only {distinct} distinct values over {n} rows "
                                   f"(some {n / distinct:.3g} rows share each time): times rounded (to whole "
                                   "seconds?) or rows repeated? each sample needs its own t, in seconds with its "
                                   "fraction")
        magnitude = float(np.median(np.linalg.norm(rec.acc[rows].astype(np.float64), axis=1)))  # float32 overflows
        if G_LOOKING[0] <= magnitude <= G_LOOKING[1]:
            kinds["g"].append(f"device {device}: median |acc| is {magnitude:.3g}: the units look like g, not m/s² "
                              "(a recording file holds m/s², a device lying still reads about 9.81: multiply by "
                              "9.80665)")
    out = []
    for lines in kinds.values():
        out += lines[:_MOST_NAMED]
        if len(lines) > _MOST_NAMED:
            out.append(f"{len(lines) - _MOST_NAMED} more devices likewise: " + lines[0].split(": ", 1)[1])
    return out


def _undecodable_line(path: Path) -> int:
    """The first line of ``path`` that is not UTF-8 (the text reader decodes ahead, in blocks)."""
    with open_bytes(path) as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode("utf-8-sig" if number == 1 else "utf-8")
            except UnicodeDecodeError:
                return number
    return 1  # not reached: the text reader found an undecodable byte


class CsvRows:
    """``csv.reader`` over an open file whose own errors (a field over the csv module's size limit) raise
    ``error`` naming the file and line, and that refuses a row over several lines (a quote left open
    swallows the lines after it) at its first line. Recording files and the importers' sources read this way."""

    def __init__(self, path: Path, handle, error: type[ValueError] = RecordingError) -> None:
        self.path, self.reader, self.error = path, csv.reader(handle), error

    @property
    def line_num(self) -> int:
        return self.reader.line_num

    def __iter__(self):
        return self

    def __next__(self) -> list[str]:
        first = self.reader.line_num + 1
        try:
            row = next(self.reader)
        except csv.Error as exc:
            raise self.error(f"{self.path}:{first}: {exc}") from None
        except _GZIP_ERRORS as exc:  # a compressed file cut short or damaged, read so far
            raise self.error(f"{self.path}:{first}: gzip-compressed data damaged or cut short "
                             f"({exc or type(exc).__name__})") from None
        if self.reader.line_num != first:
            raise self.error(f"{self.path}:{first}: a field runs over {self.reader.line_num - first + 1} lines "
                             "(a quote left open?)")
        return row


_BLOCK = 65_536  # rows read into one array of numbers


def _read_rows(path: Path, handle) -> Recording:
    """The rows of an open recording file, in file order."""
    reader = CsvRows(path, handle)
    try:
        header = next(reader)
    except StopIteration:
        raise RecordingError(f"{path}: empty file, expected a header {','.join(REQUIRED)}") from None
    header = [h.strip() for h in header]
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise RecordingError(f"{path}:1: header lacks {', '.join(missing)} (has {', '.join(header)})")
    repeated = sorted({c for c in header if c in REQUIRED + OPTIONAL and header.count(c) > 1})
    if repeated:  # which of the two would hold the values? (columns not read may repeat)
        raise RecordingError(f"{path}:1: header names {', '.join(map(repr, repeated))} more than once")
    col = {name: header.index(name) for name in header}
    has_gyro = all(c in col for c in ("gx", "gy", "gz"))
    if not has_gyro and any(c in col for c in ("gx", "gy", "gz")):  # read without it, the gyroscope would be lost
        lacks = [c for c in ("gx", "gy", "gz") if c not in col]
        raise RecordingError(f"{path}:1: header has part of the gyroscope, lacks {', '.join(lacks)} "
                             "(gx,gy,gz: all three or none)")
    has_subject = "subject" in col
    unused = [h for h in header if h and h not in REQUIRED + OPTIONAL]
    if unused:  # allowed (a file of other tools), but a misspelt 'subject' would lose the people silently
        log.warning("%s: column%s %s not read (a recording file has %s, and optionally %s)", path,
                    "s" if len(unused) > 1 else "", ", ".join(map(repr, unused)), ",".join(REQUIRED),
                    ",".join(OPTIONAL))
    width = len(header)
    # memory: a row's text fields point at one copy of each distinct value (``texts``), and its numbers go into a
    # float64 array every _BLOCK rows: a list of tuples of floats, and a new string per field and row, held some
    # 8 times the file's size (1.7 GB for a 200 MB file)
    texts: dict[str, str] = {}
    devices: list[str] = []
    labels: list[str] = []
    subjects: list[str] = []
    numbers: list[tuple[float, ...]] = []
    blocks: list[np.ndarray] = []
    numeric = ["t", "ax", "ay", "az"] + (["gx", "gy", "gz"] if has_gyro else [])
    idx = [col[c] for c in numeric]
    last_t: dict[str, float] = {}
    for row in reader:
        where = f"{path}:{reader.line_num}"
        if not row:
            continue
        if len(row) != width:
            raise RecordingError(f"{where}: {len(row)} fields, header has {width}")
        device = row[col["device"]]
        if not device:
            raise RecordingError(f"{where}: empty device")
        if device not in last_t and not valid_device(device):
            raise RecordingError(f"{where}: device id {device[:70]!r} is not valid (a letter or digit, then "
                                 "letters, digits, '_', '.' or '-'; at most 64 characters)")
        values = tuple(_float(row[i], c, where) for i, c in zip(idx, numeric, strict=True))
        if device in last_t and values[0] < last_t[device]:
            raise RecordingError(f"{where}: time goes backwards for device {device!r}")
        last_t[device] = values[0]
        devices.append(texts.setdefault(device, device))
        label = row[col["label"]].strip()
        labels.append(texts.setdefault(label, label))
        if has_subject:
            subject = row[col["subject"]]
            subjects.append(texts.setdefault(subject, subject))
        numbers.append(values)
        if len(numbers) == _BLOCK:
            blocks.append(np.asarray(numbers, dtype=np.float64))
            numbers.clear()
    if numbers:
        blocks.append(np.asarray(numbers, dtype=np.float64))
        numbers.clear()
    if not blocks:
        raise RecordingError(f"{path}: no samples")
    data = np.concatenate(blocks) if len(blocks) > 1 else blocks[0]
    blocks.clear()
    rec = Recording(
        device=np.asarray(devices),
        t=data[:, 0],
        acc=data[:, 1:4].astype(np.float32),
        label=np.asarray(labels),
        gyro=data[:, 4:7].astype(np.float32) if has_gyro else None,
        subject=np.asarray(subjects) if has_subject else None,
    )
    return rec


def _grouped(rec: Recording) -> Recording:
    """Each device's rows together (devices in order of first appearance, rows in file order): a file may
    interleave devices (as they arrived live); the rest of the code reads each device as one run."""
    runs = 1 + int(np.count_nonzero(rec.device[1:] != rec.device[:-1])) if len(rec) else 0
    _, first, inverse = np.unique(rec.device, return_index=True, return_inverse=True)
    if runs == len(first):
        return rec
    return rec.take(np.argsort(first[inverse], kind="stable"))  # rows ranked by their device's first row


def _check_writable(path: str | Path, rec: Recording) -> None:
    """Refuse rows that would make a file ``read_recording`` refuses."""
    for names, values in ((("t",), rec.t.reshape(-1, 1)), (("ax", "ay", "az"), rec.acc),
                          (("gx", "gy", "gz"), rec.gyro)):
        if values is not None and not np.isfinite(values).all():
            i, j = np.argwhere(~np.isfinite(values))[0]
            raise RecordingError(f"{path}: row {i + 1}: column {names[j]!r} is not finite: {values[i, j]}")
    beyond = np.flatnonzero(np.abs(rec.t) >= MAX_T)
    if beyond.size:
        i = int(beyond[0])
        raise RecordingError(f"{path}: row {i + 1}: column 't' is {rec.t[i]:.6g}, beyond {MAX_T:.0e} s: t is in "
                             f"seconds (milliseconds or nanoseconds?)")
    order = np.argsort(rec.device, kind="stable")  # each device's rows, in file order
    written = np.array([float(f"{x:.4f}") for x in rec.t.tolist()])  # as the file will hold them: a step back
    # of a few microseconds (a sensor clock's jitter) is written as no step at all, which the reader takes
    back = np.flatnonzero((rec.device[order][1:] == rec.device[order][:-1]) & (np.diff(written[order]) < 0))
    if back.size:
        i = int(order[back + 1].min())
        raise RecordingError(f"{path}: row {i + 1}: time goes backwards for device {str(rec.device[i])!r}")
    for device in np.unique(rec.device).tolist():
        if not valid_device(device):  # concat_recordings' "id#2", say
            i = int(np.flatnonzero(rec.device == device)[0])
            raise RecordingError(f"{path}: row {i + 1}: device id {device[:70]!r} is not valid (a letter or digit, "
                                 "then letters, digits, '_', '.' or '-'; at most 64 characters)")
    for name, values in (("label", rec.label), ("subject", rec.subject)):
        if values is None:
            continue
        for i, value in enumerate(values.tolist()):
            if "\n" in value or "\r" in value:
                raise RecordingError(f"{path}: row {i + 1}: {name} {value[:40]!r} holds a line end (a field over "
                                     "several lines is refused when read)")


def header(gyro: bool, subject: bool) -> list[str]:
    """The columns of a recording file, with or without ``gx,gy,gz`` and ``subject``."""
    return list(REQUIRED) + (["gx", "gy", "gz"] if gyro else []) + (["subject"] if subject else [])


def _quoted(values: np.ndarray) -> list[str]:
    """Each text value as ``csv.writer`` writes it among other fields (quoted where it holds a comma, a quote)."""
    names, index = np.unique(values, return_inverse=True)
    quoted = []
    for name in names.tolist():
        text = io.StringIO()
        csv.writer(text, lineterminator="\n").writerow([name])
        quoted.append(text.getvalue()[:-1] if name else "")  # alone, an empty field is written '""'
    return [quoted[i] for i in index.ravel().tolist()]


def write_rows(handle, rec: Recording, rows: int = 50_000) -> None:
    """``rec``'s rows (no header, unchecked) as ``csv.writer`` writes them with ``lineterminator="\\n"`` (the
    reader takes "\\r\\n" too, but grep ',squat$' does not): times and acceleration ``%.4f``, the gyroscope
    ``%.5f``, text quoted where it needs it; ``rows`` a write."""
    line = ("%s,%.4f,%.4f,%.4f,%.4f,%s" + (",%.5f,%.5f,%.5f" if rec.gyro is not None else "")
            + (",%s" if rec.subject is not None else "") + "\n")
    for a in range(0, len(rec.t), rows):
        part = slice(a, a + rows)
        columns = [_quoted(rec.device[part]), rec.t[part].tolist(), *rec.acc[part].T.tolist(),
                   _quoted(rec.label[part])]
        if rec.gyro is not None:
            columns += rec.gyro[part].T.tolist()
        if rec.subject is not None:
            columns.append(_quoted(rec.subject[part]))
        handle.write("".join(line % row for row in zip(*columns, strict=True)))


def write_recording(path: str | Path, rec: Recording) -> None:
    """Write ``rec`` as a recording file (``gx,gy,gz`` and ``subject`` when present); a row that
    ``read_recording`` would refuse raises ``RecordingError`` (naming it, 1 = the first) before the file is
    written."""
    _check_writable(path, rec)
    with Path(path).open("w", newline="") as handle:
        handle.write(",".join(header(rec.gyro is not None, rec.subject is not None)) + "\n")
        write_rows(handle, rec)
