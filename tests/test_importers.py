"""Importers of real data sets: small fixtures in each source's own format, then the real folders."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from models.importers import DATASETS, DatasetError, G, import_dataset, load_dataset
from stream.recording import read_recording

# ../shared/datasets next to the repository, unless HARSTREAM_DATASETS points elsewhere
DATASETS_DIR = Path(os.environ.get("HARSTREAM_DATASETS",
                                   Path(__file__).resolve().parents[2] / "shared" / "datasets"))
DEVICE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_recording(rec, out=None) -> None:
    """Invariants of every import: finite SI values, valid device ids, time increasing per device."""
    assert np.isfinite(rec.acc).all() and np.isfinite(rec.t).all()
    for device, rows in rec.segments():
        assert DEVICE_RE.fullmatch(device), device
        assert (np.diff(rec.t[rows]) > 0).all(), device
        assert rec.t[rows][0] == pytest.approx(0.0)
    assert len({d for d, _ in rec.segments()}) == len(list(rec.segments())), "a device is split"
    if out is not None:
        back = read_recording(out)
        assert len(back) == len(rec)
        np.testing.assert_allclose(back.acc, rec.acc, atol=1e-3)
        assert list(back.label) == list(rec.label)


def assert_error(exc_info, path: Path, line: int | None = None) -> None:
    where = f"{path}:{line}" if line is not None else str(path)
    assert where in str(exc_info.value), str(exc_info.value)


# -------------------------------------------------------------------------------------------------
# uci-hapt: RawData/acc_expXX_userYY.txt (g), gyro_… (rad/s), labels.txt; 50 Hz, Android's sign


def write_uci(root: Path) -> Path:
    raw = root / "RawData"
    raw.mkdir(parents=True)
    # standing: the phone on the waist carries gravity on +x
    (raw / "acc_exp01_user01.txt").write_text("1.0 0.0 0.0\n" * 10)
    (raw / "gyro_exp01_user01.txt").write_text("0.1 -0.2 0.3\n" * 10)
    # lying on the back: screen up, +z
    (raw / "acc_exp02_user01.txt").write_text("0.0 0.0 1.0\n" * 6)
    (raw / "gyro_exp02_user01.txt").write_text("0 0 0\n" * 6)
    (raw / "labels.txt").write_text(
        "1 1 5 2 5\n"  # standing, rows 1..4 (1-based inclusive)
        "1 1 7 6 7\n"  # stand_to_sit → ""
        "2 1 6 1 6\n"  # lying
        "3 2 1 1 100\n"  # an experiment whose files are absent: ignored
    )
    return root


def test_uci_hapt(tmp_path):
    src = write_uci(tmp_path / "uci")
    out = tmp_path / "uci.csv"
    summary = import_dataset("uci-hapt", src, out)
    rec = load_dataset("uci-hapt", src / "RawData")  # the inner folder works too
    check_recording(rec, out)
    assert summary["rows"] == 16 and summary["devices"] == 2 and summary["subjects"] == 1
    assert summary["classes"] == {"standing": 4, "lying": 6}
    first = rec.device == "uci-exp01"
    np.testing.assert_allclose(rec.acc[first], [[G, 0, 0]] * 10, atol=1e-4)
    np.testing.assert_allclose(rec.acc[~first], [[0, 0, G]] * 6, atol=1e-4)
    np.testing.assert_allclose(rec.gyro[0], [0.1, -0.2, 0.3], atol=1e-6)
    np.testing.assert_allclose(rec.t[first], np.arange(10) / 50)
    assert list(rec.label[first]) == [""] + ["standing"] * 4 + [""] * 5
    assert set(rec.subject) == {"uci-user01"}


def test_uci_hapt_errors(tmp_path):
    src = write_uci(tmp_path / "uci")
    raw = src / "RawData"
    (raw / "acc_exp02_user01.txt").write_text("0 0 1\n0 x 1\n0 0 1\n0 0 1\n0 0 1\n0 0 1\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset("uci-hapt", src)
    assert_error(exc, raw / "acc_exp02_user01.txt", 2)

    (raw / "acc_exp02_user01.txt").write_text("0 0\n1 0 0 1\n" + "0 0 1\n" * 5)  # right count, wrong lines
    with pytest.raises(DatasetError) as exc:
        load_dataset("uci-hapt", src)
    assert_error(exc, raw / "acc_exp02_user01.txt", 1)

    (raw / "acc_exp02_user01.txt").write_text("0 0 1\n" * 6)
    (raw / "labels.txt").write_text("1 1 5 2 5\n1 1 five 6 7\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset("uci-hapt", src)
    assert_error(exc, raw / "labels.txt", 2)

    (raw / "labels.txt").write_text("1 1 5 2 50\n")  # past the end of experiment 1
    with pytest.raises(DatasetError, match="runs past the end"):
        load_dataset("uci-hapt", src)

    (raw / "labels.txt").write_text("1 1 5 2 5\n")
    (raw / "gyro_exp02_user01.txt").unlink()
    with pytest.raises(DatasetError) as exc:
        load_dataset("uci-hapt", src)
    assert_error(exc, raw / "gyro_exp02_user01.txt")

    with pytest.raises(DatasetError, match="not the uci-hapt data set"):
        load_dataset("uci-hapt", tmp_path)


# -------------------------------------------------------------------------------------------------
# barbell: raw/<person>-<exercise>-<set>_MetaWear_…_<Accelerometer|Gyroscope>_<rate>Hz_<fw>.csv


def barbell_name(stem: str, stamp: str, sensor: str, fw: str = "1.4.4") -> str:
    rate = "12.500" if sensor == "Accelerometer" else "25.000"
    return f"{stem}_MetaWear_{stamp}_C42732BE255C_{sensor}_{rate}Hz_{fw}.csv"


def write_barbell_set(raw: Path, stem: str, stamp: str, epoch0: int, acc_g, n: int = 10,
                      fw: str = "1.4.4") -> None:
    rows = [f"{epoch0 + 80 * i},2019-01-14T14:22:49.{i:03d},{0.08 * i:.3f},{acc_g[0]:.3f},{acc_g[1]:.3f},"
            f"{acc_g[2]:.3f}" for i in range(n)]
    (raw / barbell_name(stem, stamp, "Accelerometer", fw)).write_text(
        "epoch (ms),time (01:00),elapsed (s),x-axis (g),y-axis (g),z-axis (g)\n" + "\n".join(rows) + "\n")
    # gyro at 25 Hz starting 40 ms earlier: x constant 90 deg/s, y a ramp of 1 deg/s per ms
    rows = [f"{epoch0 - 40 + 40 * i},2019-01-14T14:22:49.000,{0.04 * i:.3f},90.000,{40.0 * i - 40:.3f},0.000"
            for i in range(2 * n + 2)]
    (raw / barbell_name(stem, stamp, "Gyroscope", fw)).write_text(
        "epoch (ms),time (01:00),elapsed (s),x-axis (deg/s),y-axis (deg/s),z-axis (deg/s)\n"
        + "\n".join(rows) + "\n")


def write_barbell(root: Path) -> Path:
    raw = root / "raw"
    raw.mkdir(parents=True)
    # lying still face up: Bosch reads +1 g on z, as Android does
    write_barbell_set(raw, "A-bench-heavy", "2019-01-14T14.22.49.165", 1547472169165, (0.0, 0.0, 1.0))
    write_barbell_set(raw, "B-dead-medium1-rpe6", "2019-01-11T17.24.24.832", 1547223864832, (0.0, -1.0, 0.0))
    write_barbell_set(raw, "A-rest-sitting", "2019-01-18T18.22.25.565", 1547832145565, (1.0, 0.0, 0.0))
    # the published folder repeats sets under another person and firmware suffix, a day later
    write_barbell_set(raw, "E-bench-heavy", "2019-01-14T14.22.49.165", 1547558569165, (0.0, 0.0, 1.0))
    write_barbell_set(raw, "A-bench-heavy", "2019-01-14T14.22.49.165", 1547558569165, (0.0, 0.0, 1.0),
                      fw="1.4.41")
    return root


def test_barbell(tmp_path):
    src = write_barbell(tmp_path / "barbell")
    out = tmp_path / "barbell.csv"
    summary = import_dataset("barbell", src, out)
    rec = load_dataset("barbell", src)
    check_recording(rec, out)
    assert summary["devices"] == 3 and summary["rows"] == 30  # the two copies are skipped
    assert summary["classes"] == {"bench_press": 10, "deadlift": 10, "rest": 10}
    assert set(rec.subject) == {"barbell-A", "barbell-B"}
    bench = rec.label == "bench_press"
    np.testing.assert_allclose(rec.acc[bench], [[0, 0, G]] * 10, atol=2e-3)
    np.testing.assert_allclose(rec.acc[rec.label == "deadlift"], [[0, -G, 0]] * 10, atol=2e-3)
    np.testing.assert_allclose(rec.t[bench], np.arange(10) * 0.08, atol=1e-9)
    # gyro interpolated onto the accelerometer's epoch times, deg/s → rad/s
    np.testing.assert_allclose(rec.gyro[bench][:, 0], np.pi / 2, atol=1e-6)
    np.testing.assert_allclose(rec.gyro[bench][:, 1], np.deg2rad(80.0 * np.arange(10)), atol=1e-4)
    assert "barbell-B-dead-medium1-rpe6-2019-01-11T17.24.24.832" in set(rec.device)


def test_barbell_errors(tmp_path):
    src = write_barbell(tmp_path / "barbell")
    raw = src / "raw"
    acc = raw / barbell_name("B-dead-medium1-rpe6", "2019-01-11T17.24.24.832", "Accelerometer")
    lines = acc.read_text().splitlines()
    acc.write_text("\n".join(lines[:3] + ["1547223865072,x,0.240,0.0,oops,0.0"] + lines[4:]) + "\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset("barbell", src)
    assert_error(exc, acc, 4)

    acc.write_text("\n".join(["epoch (ms),time (01:00),elapsed (s),x-axis (m/s2),y-axis (m/s2),z-axis (m/s2)"]
                             + lines[1:]) + "\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset("barbell", src)
    assert_error(exc, acc, 1)

    acc.unlink()
    stray = raw / "notes.csv"
    stray.write_text("a,b\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset("barbell", src)
    assert_error(exc, stray)


# -------------------------------------------------------------------------------------------------
# muvr: labelled/<group>/*.csv, no header, x,y,z,exercise,intensity,weight,repetitions; g, Pebble


def write_muvr(root: Path) -> Path:
    arms = root / "labelled" / "arms"
    arms.mkdir(parents=True)
    # watch lying face up: Pebble reports gravity's direction, z = -1 g
    (arms / "labelled_arms_jan-2_1.csv").write_text("0.0,0.0,-1.0,biceps-curl,,40.0,20\n" * 8)
    # arm hanging: x (towards the hand) points down and Pebble reads +1 g on it
    (arms / "labelled_arms_jan-2_2.csv").write_text("1.0,0.0,0.0,triceps-dips,,-1.0,15\n" * 5)
    tbl = root / "labelled" / "18-09-15-triceps-biceps-lateral"
    tbl.mkdir()
    (tbl / "010f0d71-7edd-4167-ad05-49889ffff6a1.csv").write_text("0.0,1.0,0.0,lateral-raise,,,\n" * 4)
    return root


def test_muvr(tmp_path):
    src = write_muvr(tmp_path / "muvr")
    out = tmp_path / "muvr.csv"
    summary = import_dataset("muvr", src, out, progress=True)
    rec = load_dataset("muvr", src)
    check_recording(rec, out)
    assert rec.gyro is None
    assert summary["rows"] == 17 and summary["devices"] == 3 and summary["subjects"] == 1
    assert summary["classes"] == {"biceps_curl": 8, "triceps_dips": 5, "lateral_raise": 4}
    np.testing.assert_allclose(rec.acc[rec.label == "biceps_curl"], [[0, 0, G]] * 8, atol=1e-4)
    np.testing.assert_allclose(rec.acc[rec.label == "triceps_dips"], [[-G, 0, 0]] * 5, atol=1e-4)
    np.testing.assert_allclose(rec.t[rec.label == "biceps_curl"], np.arange(8) / 50)
    assert set(rec.device) == {"muvr-arms-labelled_arms_jan-2_1", "muvr-arms-labelled_arms_jan-2_2",
                               "muvr-18-09-15-triceps-biceps-lateral-010f0d71"}
    assert set(rec.subject) == {"muvr-1"}


def test_muvr_sets_repeating_another_are_kept_once_or_left_out_when_labelled_apart(tmp_path):
    """muvr holds one set twice, once as a biceps curl and once as a lateral raise: split by set, it was in
    one fold's test and the other's training, under the other label. A repeat under the same label is one
    set."""
    src = write_muvr(tmp_path / "muvr")
    tbl = src / "labelled" / "18-09-15-triceps-biceps-lateral"
    def samples(label: str) -> str:
        return "".join(f"0.{k},0.5,0.1,{label},,,\n" for k in range(6))

    (tbl / "09d9df3c-0000-4000-8000-000000000000.csv").write_text(samples("biceps-curl"))
    (tbl / "e5bb0aad-0000-4000-8000-000000000000.csv").write_text(samples("lateral-raise"))
    arms = src / "labelled" / "arms"
    (arms / "labelled_arms_jan-2_3.csv").write_text("0.0,0.0,-1.0,biceps-curl,,40.0,20\n" * 8)  # = _1
    rec = load_dataset("muvr", src)
    assert set(rec.device) == {"muvr-arms-labelled_arms_jan-2_1", "muvr-arms-labelled_arms_jan-2_2",
                               "muvr-18-09-15-triceps-biceps-lateral-010f0d71"}
    assert len(rec) == 17


def test_muvr_errors(tmp_path):
    src = write_muvr(tmp_path / "muvr")
    bad = src / "labelled" / "arms" / "labelled_arms_jan-2_2.csv"
    bad.write_text("1.0,0.0,0.0,triceps-dips,,-1.0,15\n1.0,0.0,triceps-dips,,-1.0,15\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset("muvr", src)
    assert_error(exc, bad, 2)
    bad.write_text("1.0,0.0,abc,triceps-dips,,-1.0,15\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset("muvr", src)
    assert_error(exc, bad, 1)


# -------------------------------------------------------------------------------------------------
# exermote: RawData/*.csv, 70 columns, CoreMotion gravity + user acceleration in g, 10 Hz

NEARABLES = ["Right Hand", "Left Foot", "Chest", "Left Hand", "Belly", "Right Foot"]
NEARABLE_COLUMNS = ["nearableID", "frequency", "rssi", "xAcceleration", "yAcceleration", "zAcceleration",
                    "currentStateDuration", "previousStateDuration", "timeStampRecorded"]
DEVICE_COLUMNS = [f"Device: {c}" for c in (
    "xGravity", "yGravity", "zGravity", "xAcceleration", "yAcceleration", "zAcceleration",
    "pitch", "roll", "yaw", "xRotationRate", "yRotationRate", "zRotationRate")]
EXERMOTE_HEADER = ([f"{n}: {c}" for n in NEARABLES for c in NEARABLE_COLUMNS] + DEVICE_COLUMNS
                   + ["exerciseType", "exerciseSubType", "timeStampSaved", "individual"])


def exermote_row(ms: int, kind: str, gravity=(0.0, 0.0, -1.0), user=(0.0, 0.0, 0.0), rate=(0.0, 0.0, 0.5),
                 individual: int = 3, phone: bool = True) -> str:
    nearables = ["15b97f918a0f190e", "4.34", "-57", "3.28", "-4.7", "-7.91", "0", "0",
                 "2017-03-30 18:45:36:696"] * len(NEARABLES)
    device = [*gravity, *user, 0.1, 0.2, 0.3, *rate] if phone else [""] * 12
    stamp = f"2017-03-30 18:45:{36 + ms // 1000:02d}:{ms % 1000:03d}"
    return ",".join(str(v) for v in [*nearables, *device, kind, kind, stamp, individual])


def write_exermote(root: Path) -> Path:
    raw = root / "RawData"
    raw.mkdir(parents=True)
    assert len(EXERMOTE_HEADER) == 70
    kinds = ["setBreak", "Burpee", "Burpee", "Situp", "Break", "Squat"]
    # phone lying still screen up: CoreMotion reads z = -1 g; the first row has no phone sample
    rows = [exermote_row(0, "setBreak", phone=False)]
    rows += [exermote_row(100 + 100 * i, kind) for i, kind in enumerate(kinds)]
    (raw / "2017-03-30 18-50-49 Individual 3.csv").write_text(",".join(EXERMOTE_HEADER) + "\n"
                                                             + "\n".join(rows) + "\n")
    # upright in the armband: gravity along -y on iOS, plus some user acceleration
    rows = [exermote_row(100 * i, "Break", gravity=(0.0, -1.0, 0.0), user=(0.0, -0.5, 0.0), individual=5)
            for i in range(4)]
    (raw / "2017-05-04 19-20-36 Individual 5.csv").write_text(",".join(EXERMOTE_HEADER) + "\n"
                                                             + "\n".join(rows) + "\n")
    return root


def test_exermote(tmp_path):
    src = write_exermote(tmp_path / "exermote")
    out = tmp_path / "exermote.csv"
    summary = import_dataset("exermote", src, out)
    rec = load_dataset("exermote", src)
    check_recording(rec, out)
    assert summary["rows"] == 10 and summary["devices"] == 2 and summary["subjects"] == 2
    assert summary["classes"] == {"burpee": 2, "rest": 6, "sit_up": 1, "squat": 1}
    first = rec.subject == "exermote-3"
    assert list(rec.label[first]) == ["rest", "burpee", "burpee", "sit_up", "rest", "squat"]
    np.testing.assert_allclose(rec.acc[first], [[0, 0, G]] * 6, atol=1e-4)
    np.testing.assert_allclose(rec.acc[~first], [[0, 1.5 * G, 0]] * 4, atol=1e-4)
    np.testing.assert_allclose(rec.gyro[first], [[0, 0, 0.5]] * 6, atol=1e-6)
    np.testing.assert_allclose(rec.t[first], np.arange(6) * 0.1, atol=1e-9)
    assert "exermote-2017-03-30_18-50-49_Individual_3" in set(rec.device)


def test_exermote_errors(tmp_path):
    src = write_exermote(tmp_path / "exermote")
    path = src / "RawData" / "2017-05-04 19-20-36 Individual 5.csv"
    lines = path.read_text().splitlines()
    lines[3] = lines[3].replace("2017-03-30 18:45:36:200", "30/03/2017 18:45")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset("exermote", src)
    assert_error(exc, path, 4)

    path.write_text(",".join(EXERMOTE_HEADER[:-3]) + "\n")
    with pytest.raises(DatasetError) as exc:
        load_dataset("exermote", src)
    assert_error(exc, path, 1)


def test_unknown_dataset_and_source(tmp_path):
    with pytest.raises(DatasetError, match="Valid values are"):
        load_dataset("nope", tmp_path)
    for name in DATASETS:
        with pytest.raises(DatasetError):
            load_dataset(name, tmp_path / "absent")
        with pytest.raises(DatasetError):
            load_dataset(name, tmp_path)  # empty folder: not the data set


# -------------------------------------------------------------------------------------------------
# the real data sets (a subset of files where the whole would be slow)


def real(folder: str) -> Path:
    path = DATASETS_DIR / folder
    if not path.is_dir():
        pytest.skip(f"data set folder {path} is absent")
    return path


def link_subset(src: Path, dst: Path, names: list[str]) -> Path:
    """A folder of symbolic links to some of ``src``'s files (the data stay where they are)."""
    dst.mkdir(parents=True)
    for name in names:
        (dst / name).symlink_to(src / name)
    return dst


def still_mean(rec, label: str, threshold: float = 0.3) -> np.ndarray:
    """Mean acceleration over 1-s windows of ``label`` whose magnitude barely moves."""
    means = []
    for _, rows in rec.segments():
        t, acc, lab = rec.t[rows], rec.acc[rows].astype(np.float64), rec.label[rows]
        w = max(4, round(1 / np.median(np.diff(t))))
        for k in range(0, len(t) - w, w):
            block = acc[k:k + w]
            if (lab[k:k + w] == label).all() and np.linalg.norm(block, axis=1).std() < threshold:
                means.append(block.mean(axis=0))
    assert means, f"no still window of {label}"
    return np.mean(means, axis=0)


@pytest.mark.datasets
def test_real_uci_hapt(tmp_path):
    raw = real("uci-hapt") / "RawData"
    names = ["labels.txt"] + [f"{sensor}_exp{exp}_user{user}.txt"
                              for sensor in ("acc", "gyro") for exp, user in (("01", "01"), ("03", "02"))]
    rec = load_dataset("uci-hapt", link_subset(raw, tmp_path / "RawData", names))
    check_recording(rec)
    assert set(rec.device) == {"uci-exp01", "uci-exp03"} and set(rec.subject) == {"uci-user01", "uci-user02"}
    assert set(rec.classes) == {"walking", "walking_upstairs", "walking_downstairs", "sitting", "standing",
                                "lying"}
    assert np.median(np.diff(rec.t[rec.device == "uci-exp01"])) == pytest.approx(0.02)
    standing = still_mean(rec, "standing")
    assert standing[0] > 9.0 and np.linalg.norm(standing) == pytest.approx(G, rel=0.06)
    assert np.abs(rec.gyro).max() < 20  # rad/s, not deg/s


@pytest.mark.datasets
def test_real_barbell(tmp_path):
    rec = load_dataset("barbell", real("barbell-metamotion"))
    check_recording(rec)
    # every E- set repeats an A- or D- set: they are dropped, so a split by person stays clean
    assert set(rec.subject) == {"barbell-A", "barbell-B", "barbell-C", "barbell-D"}
    assert set(rec.classes) == {"bench_press", "deadlift", "overhead_press", "row", "squat", "rest"}
    assert len(set(rec.device)) == 59
    assert np.median(np.diff(rec.t)) == pytest.approx(0.08)
    # the forearm's y: hands up on the bench, hanging in the deadlift
    assert still_mean(rec, "bench_press")[1] > 8.5
    assert still_mean(rec, "deadlift")[1] < -9.0
    assert np.linalg.norm(rec.acc, axis=1).mean() == pytest.approx(G, rel=0.05)


@pytest.mark.datasets
def test_real_muvr(tmp_path):
    group = real("muvr-gym") / "labelled" / "arms"
    subset = link_subset(group, tmp_path / "labelled" / "arms", sorted(p.name for p in group.glob("*.csv")))
    rec = load_dataset("muvr", tmp_path)
    check_recording(rec)
    assert len(set(rec.device)) == len(list(subset.iterdir())) and set(rec.subject) == {"muvr-1"}
    assert {"triceps_dips", "rope_biceps_curl", "straight_bar_biceps_curl"} <= set(rec.classes)
    # dips: arms straight down; x runs towards the hand, so the specific force is -g on x
    dips = still_mean(rec, "triceps_dips")
    assert dips[0] < -9.0 and np.linalg.norm(dips) == pytest.approx(G, rel=0.08)


@pytest.mark.datasets
def test_real_exermote(tmp_path):
    raw = real("exermote") / "RawData"
    names = ["2017-04-27 21-01-37 Individual 2.csv", "2017-04-27 21-07-25 Individual 2.csv"]
    rec = load_dataset("exermote", link_subset(raw, tmp_path / "RawData", names))
    check_recording(rec)
    assert set(rec.classes) == {"burpee", "rest", "sit_up", "squat"}
    assert set(rec.subject) == {"exermote-2"} and len(set(rec.device)) == 2
    assert np.median(np.diff(rec.t)) == pytest.approx(0.1, abs=0.002)
    # standing between sets, upright in the armband: +y carries gravity once CoreMotion's sign is flipped
    standing = rec.take(rec.device == rec.device[0])
    rest = still_mean(standing, "rest")
    assert rest[1] > 9.0 and np.linalg.norm(rest) == pytest.approx(G, rel=0.03)
