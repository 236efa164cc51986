"""Importers of real accelerometer data sets into the recording file (DESIGN.md).

Each reader turns one published data set, in the layout its source published it, into a
:class:`~stream.recording.Recording`: time in seconds from each device's first sample, acceleration as
specific force in m/s² in Android's sign convention (a device lying still, screen up, reads about
+9.81 on z), gyroscope in rad/s, labels mapped onto :mod:`models.labels` names (snake_case where a
class has no canonical name), ``""`` where unknown.

What each source records, and what the readers do about it (checked on the data, see the tests):

``uci-hapt``
    Samsung Galaxy S II on the waist, Android's own accelerometer: already specific force, in g.
    Standing still reads about +1 g on x (the phone sits on its side, x up); lying on the back
    reads + on y and z (the screen faces away from the body, so up). Acc × 9.80665; gyro unchanged
    (rad/s; it turns the gravity vector the right-handed way on the same axes). 50 Hz,
    ``t = index / 50``.
    The six postural transitions (stand_to_sit, …) become ``""``: they last 2-5 s and the published
    benchmarks score the six activities only.
``barbell``
    MetaMotion wristband (Bosch BMI160). Bosch's data sheets: +1 g on the axis pointing up, as
    Android; on the wrist y runs along the forearm: +1 g with the hands up (bench, overhead press),
    -1 g with the arms hanging (deadlift, row). Acc × 9.80665; gyro (25 Hz, deg/s) is interpolated
    onto the accelerometer's epoch times (12.5 Hz) and converted to rad/s (a gyroscope file that starts
    or ends more than 0.5 s away from its accelerometer's is refused: cut short). The published folder
    repeats recordings under other names (every ``E-`` set is a copy of an ``A-`` or ``D-`` set, and
    ``..._1.4.41.csv`` files repeat ``..._1.4.4.csv`` ones shifted by a day); sets whose samples equal
    an earlier set's are skipped, so a split by person stays clean.
``muvr``
    Pebble watch (muvr's recording app of 2015), in g (magnitude about 1; ±4 g range; 50 Hz per
    the source's training code). Pebble reports the direction of gravity, the opposite of Android
    (Pebble's accelerometer demo rolls its discs *along* +accel), and the data agree for a watch on
    the left wrist: x (3 o'clock, towards the hand) reads +1 with the arms hanging (dips, rows) and
    -1 with the hands up (pulldowns, presses); z (out of the face) reads -1 on a chest press with
    the watch face up. Acc × -9.80665. No gyroscope.
``exermote``
    iPhone (CoreMotion) on the right upper arm: gravity + user acceleration, in g, with CoreMotion's
    sign (screen up reads z = -1 g): acc × -9.80665. ``rotationRate`` (rad/s) is right-handed on the
    same axes as Android's gyroscope and is kept. Rows whose phone columns are all empty are skipped (a
    row with some of them empty is refused).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import datetime
from functools import partial
from pathlib import Path

import numpy as np
from tqdm import tqdm

from models.labels import REST
from stream.decode import MAX_ACC, MAX_GYRO
from stream.recording import CsvRows, Recording, RecordingError, write_recording

__all__ = [
    "DATASETS",
    "DatasetError",
    "G",
    "import_dataset",
    "load_dataset",
    "read_barbell",
    "read_exermote",
    "read_muvr",
    "read_uci_hapt",
    "summarize",
]

log = logging.getLogger(__name__)

G = 9.80665  # standard gravity, m/s² per g

_DEVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class DatasetError(ValueError):
    """A source that is not the expected data set, or a malformed file; the message names the file."""


# --------------------------------------------------------------------------------------------------
# helpers


def _snake(name: str) -> str:
    """``"Dumbbell-Chest Fly"`` → ``"dumbbell_chest_fly"``."""
    return re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")


def _device_name(*parts: str) -> str:
    """A device id valid on MQTT topics (DESIGN.md): invalid characters become ``_``."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(parts)).strip("_")
    if not _DEVICE_RE.fullmatch(name):
        raise DatasetError(f"cannot make a device id of {'-'.join(parts)!r} (at most 64 characters)")
    return name


def _root(src: str | Path, inner: str) -> Path:
    """The folder that holds the data files: ``src/inner`` when it exists, else ``src``."""
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: no such directory")
    return src / inner if (src / inner).is_dir() else src


def _files(items: Iterable, progress: bool, desc: str) -> Iterable:
    """``items``, behind a progress bar over files when asked."""
    items = list(items)
    return tqdm(items, desc=desc, unit="file") if progress else items


def _open(path: Path):
    try:
        return path.open(newline="", encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot open: {exc.strerror}") from None


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read: {exc.strerror}") from None


def _number(value: str, where: str, column: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise DatasetError(f"{where}: {column} is not a number: {value[:40]!r}") from None
    if not math.isfinite(x):
        raise DatasetError(f"{where}: {column} is not finite: {value!r}")
    return x


def _check_range(path: Path, line_of: Callable[[int], int], acc: np.ndarray | None = None,
                 gyro: np.ndarray | None = None) -> None:
    """Refuse a sample no body-worn sensor reads, naming its line (``line_of(i)``: the line of sample ``i``):
    acc (m/s²) beyond ``stream.decode.MAX_ACC``, gyro (rad/s) beyond ``MAX_GYRO``, the limits past which the live
    path refuses a batch (``out_of_range``). Imported, such a glitch skewed training's normalisation and every
    replayed batch holding it was refused; beyond float32's range it made the written file's row infinite."""
    for name, values, limit, unit in (("acceleration", acc, MAX_ACC, "m/s²"),
                                      ("rotation rate", gyro, MAX_GYRO, "rad/s")):
        if values is None or not len(values):
            continue
        bad = np.abs(values).max(axis=1) > limit
        if bad.any():
            i = int(np.argmax(bad))
            raise DatasetError(f"{path}:{line_of(i)}: {name} {float(np.abs(values[i]).max()):.4g} {unit} is beyond "
                               f"what a body-worn sensor reads ({limit:g} {unit})")


def _read_columns(path: Path, ncols: int) -> np.ndarray:
    """A whitespace-separated text file of ``ncols`` numbers a line → (n, ncols) float64.

    numpy parses the whole file at once; when that fails, a second pass finds the bad line.
    """
    text = _read_text(path)
    widths = [len(line.split()) for line in text.splitlines()]
    lines = len(widths) - widths.count(0)
    try:
        values = np.fromstring(text, dtype=np.float64, sep=" ")
    except ValueError:
        values = None
    if (values is None or widths.count(0) + widths.count(ncols) != len(widths)
            or values.size != ncols * lines or not np.isfinite(values).all()):
        for number, line in enumerate(text.splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{number}"
            if len(fields) != ncols:
                raise DatasetError(f"{where}: {len(fields)} fields, expected {ncols}")
            for i, field in enumerate(fields):
                _number(field, where, f"column {i + 1}")
            try:  # numpy's parser, stricter than float(): "1_0" is a number to the one, not the other
                parsed = np.fromstring(line, dtype=np.float64, sep=" ").size
            except ValueError:
                parsed = -1
            if parsed != ncols:
                raise DatasetError(f"{where}: not {ncols} plain numbers: {line.strip()[:60]!r}")
        raise DatasetError(f"{path}: cannot parse as {ncols} numbers a line")
    if not lines:
        raise DatasetError(f"{path}: no samples")
    return values.reshape(lines, ncols)


def _sample_line(path: Path, i: int) -> int:
    """The line of ``path`` that holds its sample ``i`` (0 = the first; empty lines hold none)."""
    return [n for n, line in enumerate(_read_text(path).splitlines(), start=1) if line.split()][i]


class _Builder:
    """Collects the devices of one data set and assembles the Recording."""

    def __init__(self, with_gyro: bool) -> None:
        self.with_gyro = with_gyro
        self._parts: list[tuple[str, str, np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = []
        self._names: set[str] = set()

    def add(self, device: str, subject: str, t: np.ndarray, acc: np.ndarray, label: np.ndarray,
            gyro: np.ndarray | None = None) -> None:
        if device in self._names:
            raise DatasetError(f"two sources would both become device {device!r}")
        self._names.add(device)
        self._parts.append((device, subject, t, acc, label, gyro))

    def build(self, what: str, src: Path) -> Recording:
        if not self._parts:
            raise DatasetError(f"{src}: no samples found for {what}")
        n = [len(p[2]) for p in self._parts]
        return Recording(
            device=np.repeat(np.array([p[0] for p in self._parts]), n),
            t=np.concatenate([p[2] for p in self._parts]).astype(np.float64),
            acc=np.concatenate([p[3] for p in self._parts]).astype(np.float32),
            label=np.concatenate([np.asarray(p[4], dtype=str) for p in self._parts]),
            gyro=np.concatenate([p[5] for p in self._parts]).astype(np.float32) if self.with_gyro else None,
            subject=np.repeat(np.array([p[1] for p in self._parts]), n),
        )


# --------------------------------------------------------------------------------------------------
# uci-hapt

_UCI_RATE = 50.0
_UCI_ACTIVITIES = {
    1: "walking",
    2: "walking_upstairs",
    3: "walking_downstairs",
    4: "sitting",
    5: "standing",
    6: "lying",
    # 7-12: stand_to_sit, sit_to_stand, sit_to_lie, lie_to_sit, stand_to_lie, lie_to_stand
    **{k: "" for k in range(7, 13)},
}
_UCI_FILE = re.compile(r"acc_exp(\d+)_user(\d+)\.txt")


def _uci_labels(path: Path) -> dict[int, list[tuple[int, int, str, int, int]]]:
    """labels.txt → experiment → [(first row, end row exclusive, label, user, line)]."""
    segments: dict[int, list[tuple[int, int, str, int, int]]] = {}
    for number, line in enumerate(_read_text(path).splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}:{number}"
        if len(fields) != 5 or not all(f.isdigit() for f in fields):
            raise DatasetError(f"{where}: expected 'experiment user activity start end' (5 integers)")
        exp, user, activity, start, end = (int(f) for f in fields)
        if activity not in _UCI_ACTIVITIES:
            raise DatasetError(f"{where}: unknown activity id {activity} (expected 1-12)")
        if not 1 <= start <= end:
            raise DatasetError(f"{where}: bad segment {start}..{end} (1-based, inclusive)")
        for first, last, _, _, other in segments.get(exp, []):
            if start - 1 < last and first < end:  # the later segment would relabel the earlier one's samples
                raise DatasetError(f"{where}: segment {start}..{end} of experiment {exp} overlaps line {other}'s "
                                   f"({first + 1}..{last})")
        segments.setdefault(exp, []).append((start - 1, end, _UCI_ACTIVITIES[activity], user, number))
    return segments


def read_uci_hapt(src: str | Path, progress: bool = False) -> Recording:
    """Read UCI HAPT's ``RawData`` (``acc_expXX_userYY.txt``, ``gyro_…``, ``labels.txt``).

    ``src`` is the data set's folder or its ``RawData``. One device per experiment
    (``uci-expXX``), subject ``uci-userYY``.
    """
    root = _root(src, "RawData")
    accs = sorted(p for p in root.glob("acc_exp*_user*.txt") if _UCI_FILE.fullmatch(p.name))
    if not accs:
        raise DatasetError(f"{root}: no acc_expXX_userYY.txt files: not the uci-hapt data set (RawData)")
    labels_path = root / "labels.txt"
    if not labels_path.is_file():
        raise DatasetError(f"{labels_path}: missing (uci-hapt's labelled segments)")
    for gyro_path in sorted(root.glob("gyro_exp*_user*.txt")):  # an experiment whose acc file is missing
        acc_path = gyro_path.with_name(gyro_path.name.replace("gyro_", "acc_", 1))
        if _UCI_FILE.fullmatch(acc_path.name) and not acc_path.is_file():
            raise DatasetError(f"{acc_path}: missing (pairs with {gyro_path.name})")
    segments = _uci_labels(labels_path)
    out = _Builder(with_gyro=True)
    for acc_path in _files(accs, progress, "uci-hapt"):
        exp, user = _UCI_FILE.fullmatch(acc_path.name).groups()
        gyro_path = acc_path.with_name(acc_path.name.replace("acc_", "gyro_", 1))
        if not gyro_path.is_file():
            raise DatasetError(f"{gyro_path}: missing (pairs with {acc_path.name})")
        if int(exp) not in segments:  # the published labels.txt has segments of every experiment
            raise DatasetError(f"{labels_path}: no segment of experiment {int(exp)} ({acc_path.name}): cut short?")
        acc = _read_columns(acc_path, 3)
        gyro = _read_columns(gyro_path, 3)
        _check_range(acc_path, partial(_sample_line, acc_path), acc=acc * G)
        _check_range(gyro_path, partial(_sample_line, gyro_path), gyro=gyro)
        if len(acc) != len(gyro):
            raise DatasetError(f"{gyro_path}: {len(gyro)} samples, {acc_path.name} has {len(acc)}")
        n = len(acc)
        label = np.full(n, "", dtype="<U20")
        for first, end, name, who, number in segments.get(int(exp), []):
            if who != int(user):  # labels of another recording
                raise DatasetError(f"{labels_path}:{number}: experiment {int(exp)} of user {who}, but its files "
                                   f"are {acc_path.name}")
            if end > n:
                raise DatasetError(f"{labels_path}: segment {first + 1}..{end} of experiment {int(exp)} "
                                   f"runs past the end of {acc_path.name} ({n} samples)")
            label[first:end] = name
        out.add(f"uci-exp{exp}", f"uci-user{user}", np.arange(n) / _UCI_RATE, acc * G, label, gyro)
    return out.build("uci-hapt", root)


# --------------------------------------------------------------------------------------------------
# barbell (MetaMotion)

_BARBELL_FILE = re.compile(
    r"(?P<person>[A-Za-z])-(?P<exercise>[A-Za-z]+)-?(?P<detail>[^_]*?)\s*_MetaWear_(?P<stamp>[^_]+)_"
    r"(?P<mac>[0-9A-Fa-f]+)_(?P<sensor>Accelerometer|Gyroscope)_(?P<rate>[\d.]+)Hz_(?P<firmware>[^_]+)\.csv"
)
_BARBELL_EXERCISES = {
    "bench": "bench_press",
    "squat": "squat",
    "dead": "deadlift",
    "ohp": "overhead_press",
    "row": "row",
    "rest": REST,
}


# how far the gyroscope may start after, or end before, the accelerometer of its set (the published sets:
# up to 33 ms and 117 ms): beyond it, a file cut short
_BARBELL_GYRO_REACH_MS = 500.0


def _barbell_csv(path: Path, unit: str) -> tuple[np.ndarray, np.ndarray]:
    """A MetaMotion CSV → (epoch ms (n,), xyz (n, 3)) in the file's unit, which must be ``unit``."""
    with _open(path) as handle:
        reader = CsvRows(path, handle, DatasetError)
        header = [h.strip() for h in next(reader, [])]
        expected = ["epoch (ms)", f"x-axis ({unit})", f"y-axis ({unit})", f"z-axis ({unit})"]
        if len(header) != 6 or [header[0], *header[3:]] != expected:
            raise DatasetError(f"{path}:1: expected columns {expected[0]},time,elapsed (s),"
                               f"{','.join(expected[1:])}; found {','.join(header)[:120]}")
        epoch: list[float] = []
        xyz: list[tuple[float, float, float]] = []
        lines: list[int] = []
        for row in reader:
            if not row:
                continue
            where = f"{path}:{reader.line_num}"
            if len(row) != 6:
                raise DatasetError(f"{where}: {len(row)} fields, expected 6")
            ms = _number(row[0], where, "epoch (ms)")
            if epoch and ms <= epoch[-1]:
                raise DatasetError(f"{where}: epoch does not increase")
            epoch.append(ms)
            xyz.append(tuple(_number(row[i], where, header[i]) for i in (3, 4, 5)))
            lines.append(reader.line_num)
    if not epoch:
        raise DatasetError(f"{path}: no samples")
    values = np.array(xyz, dtype=np.float64)
    if unit == "g":
        _check_range(path, lines.__getitem__, acc=values * G)
    else:
        _check_range(path, lines.__getitem__, gyro=np.deg2rad(values))
    return np.array(epoch), values


def read_barbell(src: str | Path, progress: bool = False) -> Recording:
    """Read the MetaMotion barbell sets (``raw/*.csv``, one accelerometer and one gyroscope file a set).

    ``src`` is the data set's folder or its ``raw``. One device per set, subject ``barbell-<person>``.
    Sets whose accelerometer samples repeat an earlier set's (in file-name order) are skipped, as
    are sets missing one of their two files; both are logged, and so is a person all of whose sets
    repeat others' (the published folder's E: the summary's people are one fewer than its README's).
    """
    root = _root(src, "raw")
    paths = sorted(root.glob("*.csv"))
    if not paths:
        raise DatasetError(f"{root}: no CSV files: not the barbell-metamotion data set (raw/)")
    sets: dict[tuple[str, ...], dict[str, Path]] = {}
    for path in paths:
        match = _BARBELL_FILE.fullmatch(path.name)
        if not match:
            raise DatasetError(f"{path}: name does not follow <person>-<exercise>-<set>_MetaWear_<time>_"
                               "<mac>_<Accelerometer|Gyroscope>_<rate>Hz_<firmware>.csv")
        key = tuple(match.group(k) for k in ("person", "exercise", "detail", "stamp", "mac", "firmware"))
        sets.setdefault(key, {})[match.group("sensor")] = path
    out = _Builder(with_gyro=True)
    seen: dict[bytes, tuple[str, str]] = {}  # samples -> the first set's file and person
    duplicates: list[str] = []
    repeated: dict[str, dict[str, int]] = {}  # person -> whose sets theirs repeat, how many
    kept: set[str] = set()  # people with a set of their own
    for key, pair in _files(sets.items(), progress, "barbell"):
        person, exercise, detail, stamp, _, _ = key
        if "Accelerometer" not in pair:
            log.warning("barbell: skipping %s: its Accelerometer file is missing", pair["Gyroscope"].name)
            continue
        epoch, acc = _barbell_csv(pair["Accelerometer"], "g")
        digest = hashlib.sha1(np.round(acc, 4).tobytes()).digest()
        if digest in seen:
            first, whose = seen[digest]
            duplicates.append(f"{pair['Accelerometer'].name} = {first}")
            counts = repeated.setdefault(person.upper(), {})
            counts[whose] = counts.get(whose, 0) + 1
            continue
        seen[digest] = pair["Accelerometer"].name, person.upper()
        kept.add(person.upper())
        if "Gyroscope" not in pair:
            log.warning("barbell: skipping %s: its Gyroscope file is missing", pair["Accelerometer"].name)
            continue
        gyro_epoch, gyro_deg = _barbell_csv(pair["Gyroscope"], "deg/s")
        late, short = gyro_epoch[0] - epoch[0], epoch[-1] - gyro_epoch[-1]
        if max(late, short) > _BARBELL_GYRO_REACH_MS:  # interpolated, its end value would stand for the rest
            raise DatasetError(f"{pair['Gyroscope']}: {'starts' if late > short else 'ends'} "
                               f"{max(late, short) / 1000:.2f} s {'after' if late > short else 'before'} "
                               f"{pair['Accelerometer'].name} (cut short?)")
        gyro = np.stack([np.interp(epoch, gyro_epoch, gyro_deg[:, i]) for i in range(3)], axis=1)
        label = np.full(len(epoch), _BARBELL_EXERCISES.get(exercise.lower(), _snake(exercise)))
        parts = [person.upper(), exercise.lower(), *([detail] if detail else []), stamp]
        device = _device_name("barbell", *parts)
        out.add(device, f"barbell-{person.upper()}", (epoch - epoch[0]) / 1000.0, acc * G, label,
                np.deg2rad(gyro))
    if duplicates:
        gone = sorted(set(repeated) - kept)  # every set of theirs a repeat: not one person more, but none
        whole = "".join(f"; all {sum(repeated[p].values())} sets of person {p} repeat others' ("
                        + ", ".join(f"{n} {w}'s" for w, n in sorted(repeated[p].items()))
                        + f"): {p} is left out" for p in gone)
        log.warning("barbell: skipped %d sets that repeat an earlier set's samples, e.g. %s%s%s",
                    len(duplicates), duplicates[0], whole,
                    f" ({len(kept)} people remain: {', '.join(sorted(kept))})" if gone else "")
    return out.build("barbell", root)


# --------------------------------------------------------------------------------------------------
# muvr

_MUVR_RATE = 50.0
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)


def read_muvr(src: str | Path, progress: bool = False) -> Recording:
    """Read muvr's ``labelled/<group>/*.csv`` (no header: ``x,y,z,exercise,intensity,weight,repetitions``).

    ``src`` is the data set's folder or its ``labelled``. One device per file (set):
    ``muvr-<group>-<file stem>``, a UUID stem shortened to its first 8 digits so the id fits MQTT's
    64 characters; one subject, ``muvr-1``. Sets whose samples repeat another's are kept once if their
    labels agree, else left out (both logged).
    """
    root = _root(src, "labelled")
    paths = sorted(root.glob("*/*.csv"))
    if not paths:
        raise DatasetError(f"{root}: no <group>/*.csv files: not the muvr data set (labelled/)")
    out = _Builder(with_gyro=False)
    sets: dict[bytes, list[tuple[Path, str, np.ndarray, np.ndarray]]] = {}  # samples -> the sets holding them
    for path in _files(paths, progress, "muvr"):
        xyz: list[tuple[float, float, float]] = []
        labels: list[str] = []
        lines: list[int] = []
        with _open(path) as handle:
            reader = CsvRows(path, handle, DatasetError)
            for row in reader:
                if not row:
                    continue
                where = f"{path}:{reader.line_num}"
                if len(row) != 7:
                    raise DatasetError(f"{where}: {len(row)} fields, expected 7 "
                                       "(x,y,z,exercise,intensity,weight,repetitions)")
                xyz.append((_number(row[0], where, "x"), _number(row[1], where, "y"),
                            _number(row[2], where, "z")))
                label = _snake(row[3])
                if not label:
                    raise DatasetError(f"{where}: exercise is empty")
                if labels and label != labels[0]:  # one exercise a file (the source's format)
                    raise DatasetError(f"{where}: exercise {row[3].strip()[:40]!r} in a set of {labels[0]!r} "
                                       f"(line {lines[0]}): one exercise a file")
                labels.append(label)
                lines.append(reader.line_num)
        if not xyz:
            raise DatasetError(f"{path}: no samples")
        stem = path.stem[:8] if _UUID.fullmatch(path.stem) else path.stem
        device = _device_name("muvr", path.parent.name, stem)
        acc = np.array(xyz) * -G  # Pebble reports gravity's direction, Android the specific force
        _check_range(path, lines.__getitem__, acc=acc)
        digest = hashlib.sha1(np.round(acc, 4).tobytes()).digest()
        sets.setdefault(digest, []).append((path, device, acc, np.array(labels)))
    # a set whose samples repeat another's is one set: kept once where their labels agree, and left out
    # where they do not (18-09-15-triceps-biceps-lateral holds one set as a biceps curl and as a lateral
    # raise: split by set, it was in one fold's test and the other's training)
    repeated, contradicted = [], []
    for copies in sets.values():
        path, device, acc, labels = copies[0]
        if len(copies) > 1:
            if all(np.array_equal(labels, c[3]) for c in copies[1:]):
                repeated += [f"{c[0].name} = {path.name}" for c in copies[1:]]
            else:
                contradicted.append(" and ".join(f"{c[0].parent.name}/{c[0].name} ({c[3][0]})" for c in copies))
                continue
        out.add(device, "muvr-1", np.arange(len(acc)) / _MUVR_RATE, acc, labels)
    if repeated:
        log.warning("muvr: skipped %d sets that repeat an earlier set's samples, e.g. %s", len(repeated),
                    repeated[0])
    if contradicted:
        log.warning("muvr: left out %d sets whose samples repeat under another label: %s", len(contradicted),
                    "; ".join(contradicted))
    return out.build("muvr", root)


# --------------------------------------------------------------------------------------------------
# exermote

_EXERMOTE_LABELS = {"burpee": "burpee", "squat": "squat", "situp": "sit_up", "break": REST, "setbreak": REST}
_EXERMOTE_COLUMNS = [
    f"Device: {axis}{what}"
    for what in ("Gravity", "Acceleration", "RotationRate")
    for axis in ("x", "y", "z")
]


def _exermote_time(value: str, where: str) -> datetime:
    try:
        return datetime.strptime(value.strip(), "%Y-%m-%d %H:%M:%S:%f")
    except ValueError:
        pass
    raise DatasetError(f"{where}: timeStampSaved is not 'YYYY-MM-DD HH:MM:SS:mmm': {value[:40]!r}")


def read_exermote(src: str | Path, progress: bool = False) -> Recording:
    """Read Exermote's ``RawData/*.csv`` (70 columns; the iPhone's own are used).

    ``src`` is the data set's folder or its ``RawData``. One device per file (workout), subject
    ``exermote-<individual>``.
    """
    root = _root(src, "RawData")
    paths = sorted(root.glob("*.csv"))
    if not paths:
        raise DatasetError(f"{root}: no CSV files: not the exermote data set (RawData/)")
    out = _Builder(with_gyro=True)
    for path in _files(paths, progress, "exermote"):
        with _open(path) as handle:
            reader = CsvRows(path, handle, DatasetError)
            header = [h.strip() for h in next(reader, [])]
            needed = [*_EXERMOTE_COLUMNS, "exerciseType", "timeStampSaved", "individual"]
            missing = [c for c in needed if c not in header]
            if missing:
                raise DatasetError(f"{path}:1: not an Exermote file, lacks {', '.join(missing[:4])}")
            cols = [header.index(c) for c in _EXERMOTE_COLUMNS]
            i_type, i_time, i_who = (header.index(c)
                                     for c in ("exerciseType", "timeStampSaved", "individual"))
            values: list[list[float]] = []
            times: list[float] = []
            labels: list[str] = []
            subjects: list[str] = []
            lines: list[int] = []
            start: datetime | None = None
            for row in reader:
                if not row:
                    continue
                where = f"{path}:{reader.line_num}"
                if len(row) != len(header):
                    raise DatasetError(f"{where}: {len(row)} fields, header has {len(header)}")
                empty = [header[i] for i in cols if not row[i].strip()]
                if len(empty) == len(cols):
                    continue  # no phone sample in this row (the nearables' columns were saved alone)
                if empty:
                    raise DatasetError(f"{where}: part of the phone's sample is empty: {', '.join(empty[:3])}")
                stamp = _exermote_time(row[i_time], where)
                start = start or stamp
                t = (stamp - start).total_seconds()
                if times and t < times[-1]:
                    raise DatasetError(f"{where}: timeStampSaved goes backwards")
                times.append(t)
                values.append([_number(row[i], where, header[i]) for i in cols])
                kind = row[i_type].strip()
                if not _snake(kind):  # the published rows are all labelled
                    raise DatasetError(f"{where}: exerciseType is empty")
                labels.append(_EXERMOTE_LABELS.get(kind.lower(), _snake(kind)))
                who = row[i_who].strip()
                if not who or (subjects and who != subjects[0]):
                    raise DatasetError(f"{where}: individual {who!r}, expected one individual per file"
                                       + (f" ({subjects[0]!r} from line {lines[0]})" if subjects else ""))
                subjects.append(who)
                lines.append(reader.line_num)
        if not values:
            raise DatasetError(f"{path}: no rows with the phone's samples")
        data = np.array(values)
        acc = (data[:, 0:3] + data[:, 3:6]) * -G  # CoreMotion's sign is the opposite of Android's
        _check_range(path, lines.__getitem__, acc=acc, gyro=data[:, 6:9])
        out.add(_device_name("exermote", path.stem), f"exermote-{subjects[0]}", np.array(times), acc,
                np.array(labels), data[:, 6:9])
    return out.build("exermote", root)


# --------------------------------------------------------------------------------------------------
# entry points

DATASETS: dict[str, Callable[..., Recording]] = {
    "uci-hapt": read_uci_hapt,
    "barbell": read_barbell,
    "muvr": read_muvr,
    "exermote": read_exermote,
}


def load_dataset(name: str, src: str | Path, progress: bool = False) -> Recording:
    """Read the data set ``name`` (a key of ``DATASETS``) from its folder ``src``."""
    if name not in DATASETS:
        raise DatasetError(f"Invalid 'name' {name!r}. Valid values are: {', '.join(DATASETS)}")
    return DATASETS[name](src, progress=progress)


def summarize(rec: Recording) -> dict:
    """Rows, devices, subjects, rows per class (``unlabelled`` apart) and total duration in seconds."""
    duration = sum(float(rec.t[rows][-1] - rec.t[rows][0]) for _, rows in rec.segments())
    counts = Counter(str(x) for x in rec.label)
    unlabelled = counts.pop("", 0)
    return {
        "rows": len(rec),
        "devices": len(np.unique(rec.device)),
        "subjects": len(np.unique(rec.subjects())),
        "classes": dict(sorted(counts.items())),
        "unlabelled": unlabelled,
        "duration_s": round(duration, 3),
    }


def import_dataset(name: str, src: str | Path, out: str | Path, progress: bool = False,
                   overwrite: bool = False) -> dict:
    """Read the data set ``name`` from ``src``, write it as the recording file ``out``; the summary. An ``out``
    that exists as a file is refused (before reading ``src``) unless ``overwrite``, as ``harstream record`` does.

    Examples
    --------
    ``harstream import muvr ../shared/datasets/muvr-gym muvr.csv`` runs
    ``import_dataset("muvr", "../shared/datasets/muvr-gym", "muvr.csv", progress=True)``.
    """
    out = Path(out)
    if Path(src).is_dir() and out.resolve().is_relative_to(Path(src).resolve()):
        # it could be one of the files read (read whole, then overwritten: the source lost), or be read as a
        # source by the next import
        raise DatasetError(f"{out}: OUT must not be inside SRC {src}: write the recording file elsewhere")
    if out.is_file() and not overwrite:  # a path that is no regular file (/dev/stdout, a pipe) is written to
        raise DatasetError(f"{out} exists: the import would replace it; give another name, or --overwrite")
    rec = load_dataset(name, src, progress=progress)
    try:
        _write_whole(out, rec)
    except OSError as exc:
        raise DatasetError(f"{out}: cannot write: {exc.strerror}") from None
    return {"dataset": name, "out": str(out), **summarize(rec)}


def _write_whole(out: Path, rec: Recording) -> None:
    """Write ``out`` whole or not at all: into a temporary file beside it, renamed over it once complete. A write
    that fails (a full disk) leaves neither a half-written ``out`` nor the temporary file, and an earlier ``out`` as
    it was. A path that is no regular file (``/dev/stdout``, a pipe) is written to as it is."""
    if out.exists() and not out.is_file():
        write_recording(out, rec)
        return
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        write_recording(tmp, rec)
        tmp.replace(out)
    except RecordingError as exc:  # a row it would not write: named as in ``out``
        tmp.unlink(missing_ok=True)
        raise RecordingError(str(exc).replace(str(tmp), str(out))) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
