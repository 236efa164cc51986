"""Review of the importers (``harstream import``) and the phone adapters with damaged or odd input: bad input gets a
clear error naming the file and line and loses nothing; an adapter decodes a payload right or refuses it with a
counted reason."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.importers import DatasetError, load_dataset
from stream.adapters import SensorLoggerAdapter
from tests.test_importers import (
    EXERMOTE_HEADER,
    exermote_row,
    write_barbell,
    write_exermote,
    write_muvr,
    write_uci,
)

REPO = Path(__file__).resolve().parents[1]


def _error(name: str, src: Path) -> str:
    with pytest.raises(DatasetError) as exc:
        load_dataset(name, src)
    return str(exc.value)


# -------------------------------------------------------------------------------------------------
# importers: the written file


def _limited_import(args: list[str], max_bytes: int) -> subprocess.CompletedProcess:
    """``harstream import`` in a process that cannot write files over ``max_bytes`` (as on a full disk)."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), not the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))

    return subprocess.run([sys.executable, "-m", "stream.cli", "import", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120, preexec_fn=limit, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})


def test_import_that_cannot_be_written_whole_leaves_no_half_file_and_keeps_the_earlier_one(tmp_path):
    """Found importing muvr onto a 200 kB tmpfs: the error was clear, but OUT was left half-written (200 kB of
    rows cut mid-line, which train would read as a shorter data set) and the earlier OUT it replaced was lost."""
    src = write_muvr(tmp_path / "muvr")
    (src / "labelled" / "arms" / "labelled_arms_jan-2_3.csv").write_text(
        "".join(f"0.{k % 10},0.{k % 7},-1.0,biceps-curl,,40.0,20\n" for k in range(300)))
    out = tmp_path / "out" / "muvr.csv"
    out.parent.mkdir()
    out.write_text("an earlier import\n")
    done = _limited_import(["muvr", str(src), str(out), "--overwrite"], max_bytes=8192)
    assert done.returncode == 2, done.stderr
    assert f"{out}: cannot write" in done.stderr and "Traceback" not in done.stderr
    assert out.read_text() == "an earlier import\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["muvr.csv"]  # no temporary file left either

    out.unlink()  # and with no earlier file: none at all
    done = _limited_import(["muvr", str(src), str(out)], max_bytes=8192)
    assert done.returncode == 2 and list(out.parent.iterdir()) == []


def test_import_into_a_missing_folder_names_it(tmp_path):
    src = write_muvr(tmp_path / "muvr")
    out = tmp_path / "nowhere" / "muvr.csv"
    done = _limited_import(["muvr", str(src), str(out)], max_bytes=1 << 30)
    assert done.returncode == 2 and f"{out}: cannot write: No such file or directory" in done.stderr
    assert not out.parent.exists()


# -------------------------------------------------------------------------------------------------
# importers: samples no body-worn sensor reads


def test_uci_hapt_sample_beyond_any_sensor_names_its_line(tmp_path):
    """1e38 g was written as inf and refused naming the OUT file's row 'row 12', not the source; 1e20 g was
    imported as it was (and every replayed batch holding it refused out_of_range)."""
    src = write_uci(tmp_path / "uci")
    acc = src / "RawData" / "acc_exp02_user01.txt"
    acc.write_text("\n0 0 1\n0 0 1\n1e20 0 1\n0 0 1\n0 0 1\n0 0 1\n")  # an empty first line holds no sample
    assert f"{acc}:4: acceleration" in _error("uci-hapt", src)
    acc.write_text("0 0 1\n0 0 1\n1e38 0 1\n0 0 1\n0 0 1\n0 0 1\n")
    assert f"{acc}:3: acceleration" in _error("uci-hapt", src)
    acc.write_text("0 0 1\n" * 6)
    gyro = src / "RawData" / "gyro_exp02_user01.txt"
    gyro.write_text("0 0 0\n0 0 0\n0 0 0\n0 0 0\n0 -2000 0\n0 0 0\n")
    assert f"{gyro}:5: rotation rate 2000 rad/s" in _error("uci-hapt", src)


def _barbell_with_row(folder: Path, sensor: str, index: int, xyz: list[str]) -> tuple[Path, Path]:
    """A barbell source whose first bench set's ``sensor`` file has ``xyz`` in its line ``index + 1``."""
    src = write_barbell(folder)
    path = sorted((src / "raw").glob(f"A-bench*{sensor}*1.4.4.csv"))[0]
    lines = path.read_text().splitlines()
    lines[index] = ",".join(lines[index].split(",")[:3] + xyz)
    path.write_text("\n".join(lines) + "\n")
    return src, path


def test_barbell_sample_beyond_any_sensor_names_its_line(tmp_path):
    src, acc = _barbell_with_row(tmp_path / "barbell", "Accelerometer", 3, ["0.0", "-1e30", "1.0"])
    assert f"{acc}:4: acceleration 9.807e+30 m/s²" in _error("barbell", src)
    src, gyro = _barbell_with_row(tmp_path / "barbell2", "Gyroscope", 6, ["1e40", "0.0", "0.0"])
    assert f"{gyro}:7: rotation rate" in _error("barbell", src)


def test_muvr_sample_beyond_any_sensor_names_its_line(tmp_path):
    src = write_muvr(tmp_path / "muvr")
    bad = src / "labelled" / "arms" / "labelled_arms_jan-2_2.csv"
    bad.write_text("1.0,0.0,0.0,triceps-dips,,-1.0,15\n" * 2 + "1.0,2e3,0.0,triceps-dips,,-1.0,15\n")
    assert f"{bad}:3: acceleration 1.961e+04 m/s²" in _error("muvr", src)


def test_exermote_sample_beyond_any_sensor_names_its_line(tmp_path):
    src = write_exermote(tmp_path / "exermote")
    path = src / "RawData" / "2017-05-04 19-20-36 Individual 5.csv"
    rows = [exermote_row(100 * i, "Break", individual=5, rate=(0.0, 1e39 if i == 2 else 0.0, 0.0))
            for i in range(4)]
    path.write_text(",".join(EXERMOTE_HEADER) + "\n" + "\n".join(rows) + "\n")
    assert f"{path}:4: rotation rate 1e+39 rad/s" in _error("exermote", src)


# -------------------------------------------------------------------------------------------------
# importers: labels and people


def test_uci_hapt_experiment_without_any_segment_is_refused(tmp_path):
    """An empty (or cut short) labels.txt imported every experiment unlabelled, exit 0; the published one has
    segments of every experiment."""
    src = write_uci(tmp_path / "uci")
    labels = src / "RawData" / "labels.txt"
    labels.write_text("")
    assert "no segment of experiment 1 (acc_exp01_user01.txt)" in _error("uci-hapt", src)
    labels.write_text("1 1 5 2 5\n")  # cut after experiment 1
    message = _error("uci-hapt", src)
    assert str(labels) in message and "no segment of experiment 2" in message


def test_muvr_row_of_another_or_no_exercise_names_its_line(tmp_path):
    """One file is one set of one exercise (the source's format, and every published file): a row labelled
    otherwise, or not at all, was imported as a second class or as unlabelled in the middle of the set."""
    src = write_muvr(tmp_path / "muvr")
    bad = src / "labelled" / "arms" / "labelled_arms_jan-2_2.csv"
    bad.write_text("1.0,0.0,0.0,triceps-dips,,-1.0,15\n" * 3 + "1.0,0.0,0.0,,,-1.0,15\n")
    assert f"{bad}:4: exercise is empty" in _error("muvr", src)
    bad.write_text("1.0,0.0,0.0,triceps-dips,,-1.0,15\n" * 3 + "1.0,0.0,0.0,squat,,-1.0,15\n")
    assert f"{bad}:4: exercise 'squat' in a set of 'triceps_dips'" in _error("muvr", src)


def test_exermote_individual_and_exercise_name_their_line(tmp_path):
    """A row of another individual was refused naming the file only ('expected one individual per file, found
    ['3', '5']'); an empty exerciseType was imported as unlabelled (the published rows are all labelled)."""
    src = write_exermote(tmp_path / "exermote")
    path = src / "RawData" / "2017-05-04 19-20-36 Individual 5.csv"
    rows = [exermote_row(100 * i, "Break", individual=3 if i == 2 else 5) for i in range(4)]
    path.write_text(",".join(EXERMOTE_HEADER) + "\n" + "\n".join(rows) + "\n")
    assert f"{path}:4: individual '3'" in _error("exermote", src)
    rows = [exermote_row(100 * i, "Break", individual=5) for i in range(4)]
    rows[1] = rows[1].rsplit(",", 1)[0] + ","
    path.write_text(",".join(EXERMOTE_HEADER) + "\n" + "\n".join(rows) + "\n")
    assert f"{path}:3: individual ''" in _error("exermote", src)
    rows = [exermote_row(100 * i, "" if i == 3 else "Break", individual=5) for i in range(4)]
    path.write_text(",".join(EXERMOTE_HEADER) + "\n" + "\n".join(rows) + "\n")
    assert f"{path}:5: exerciseType is empty" in _error("exermote", src)


# -------------------------------------------------------------------------------------------------
# phone adapters


def test_sensor_logger_message_of_one_gyroscope_sample_keeps_it():
    """Sensor Logger with a short batch period sends one sample of each sensor a message: its gyroscope was
    dropped (two samples were needed to interpolate), so a model that reads the gyroscope refused every message
    as no_gyro, warning that the phone 'sends no gyroscope'. One sample is held, as np.interp holds the ends."""
    t = 1_700_000_000_000_000_000
    def entry(name: str, x: float, y: float, z: float, dt: int = 0) -> dict:
        return {"name": name, "time": t + dt, "values": {"x": x, "y": y, "z": z}}

    for payload in ([entry("accelerometer", 0.5, 0, 0), entry("gravity", 0, 0, 9.81, 1_000_000),
                     entry("gyroscope", 0.1, -0.2, 0.3, 2_000_000)],
                    [entry("totalacceleration", 0.5, 0, 9.81), entry("gyroscope", 0.1, -0.2, 0.3),
                     entry("gyroscope", 0.7, 0.7, 0.7)]):  # the same time twice: the first is kept
        (batch,) = SensorLoggerAdapter().decode(orjson.dumps({"payload": payload}), "phone-1")
        assert batch.t.tolist() == [1_700_000_000.0]
        np.testing.assert_allclose(batch.acc, [[0.5, 0, 9.81]], atol=1e-5)
        assert batch.gyro is not None
        np.testing.assert_allclose(batch.gyro, [[0.1, -0.2, 0.3]], atol=1e-6)


def test_out_inside_src_is_refused_before_anything_is_read_or_written(tmp_path):
    """An OUT that is one of SRC's files was read whole and then overwritten: the source was lost."""
    from models.importers import DatasetError, import_dataset
    src = tmp_path / "muvr"
    (src / "labelled" / "g").mkdir(parents=True)
    source = src / "labelled" / "g" / "set.csv"
    source.write_text("".join(f"{k % 3},0,1,biceps_curl,,,\n" for k in range(100)))
    before = source.read_bytes()
    with pytest.raises(DatasetError, match="inside SRC"):
        import_dataset("muvr", src, source)
    assert source.read_bytes() == before
