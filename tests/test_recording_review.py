"""A review of the recording file and the importers: malformed input refused with its line, nothing lost
silently, and a file that ``write_recording`` writes is one that ``read_recording`` reads."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from models.importers import DatasetError, load_dataset
from stream.recording import Recording, RecordingError, concat_recordings, read_recording, write_recording
from tests.test_importers import EXERMOTE_HEADER, barbell_name, exermote_row, write_barbell_set, write_uci

HEADER = "device,t,ax,ay,az,label"


def _read(tmp_path, text: str, name: str = "rec.csv"):
    path = tmp_path / name
    path.write_text(text)
    return read_recording(path)


def _rec(n: int = 3, device="d1", labels=None) -> Recording:
    return Recording(device=np.full(n, device), t=np.arange(n) / 25.0,
                     acc=np.tile(np.float32([0.1, -0.2, 9.81]), (n, 1)),
                     label=np.array(labels if labels is not None else ["squat"] * n))


# -------------------------------------------------------------------------------------------------
# read_recording: headers


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    """``label`` twice: the reader took the first and dropped the second's values without a word."""
    with pytest.raises(RecordingError, match=r"rec\.csv:1: .*'label' more than once"):
        _read(tmp_path, "device,t,ax,ay,az,label,label\nd1,0,0,0,9.8,,squat\n")


def test_a_header_with_part_of_the_gyroscope_is_refused(tmp_path):
    """``gx,gy`` without ``gz``: the gyroscope was dropped silently (read as a file without one)."""
    with pytest.raises(RecordingError, match=r"rec\.csv:1: .*gz"):
        _read(tmp_path, f"{HEADER},gx,gy\nd1,0,0,0,9.8,squat,0.1,0.2\n")


# -------------------------------------------------------------------------------------------------
# read_recording: values


@pytest.mark.parametrize("column, value", [("ax", "1e39"), ("az", "-1e300"), ("gy", "4e38")])
def test_a_value_beyond_float32_is_refused_with_its_line(tmp_path, column, value):
    """Finite as a float64, infinite once stored as float32: the reader let ``inf`` through."""
    names = [*HEADER.split(","), "gx", "gy", "gz"]
    values = {"device": "d1", "t": "0.04", "ax": "0", "ay": "0", "az": "9.8", "label": "squat",
              "gx": "0", "gy": "0", "gz": "0"}
    good = ",".join(values[c] for c in names)
    values[column] = value
    bad = ",".join(values[c] for c in names)
    with pytest.raises(RecordingError, match=rf"rec\.csv:3: column '{column}' .*float32"):
        _read(tmp_path, ",".join(names) + f"\n{good.replace('0.04', '0')}\n{bad}\n")


def test_a_field_too_large_for_the_csv_reader_names_its_line(tmp_path):
    """A field over the csv module's limit (131072 characters) raised a bare ``_csv.Error``."""
    with pytest.raises(RecordingError, match=r"rec\.csv:3: "):
        _read(tmp_path, f"{HEADER}\nd1,0,0,0,9.8,squat\nd1,0.04,0,0,9.8,{'x' * 200_000}\n")


# -------------------------------------------------------------------------------------------------
# write_recording: what it writes, read_recording reads


def test_a_label_with_a_line_end_is_refused_when_written(tmp_path):
    """The writer quoted it over two lines, a file the reader refuses: refused when written instead."""
    path = tmp_path / "out.csv"
    with pytest.raises(RecordingError, match=r"row 2: label .*line end"):
        write_recording(path, _rec(labels=["squat", "squat\nrest", "rest"]))


def test_an_invalid_device_id_is_refused_when_written(tmp_path):
    """``concat_recordings`` names a repeated device ``d1#2``, which the reader refuses: the writer wrote it."""
    both = concat_recordings([_rec(), _rec()])
    with pytest.raises(RecordingError, match=r"row 4: device id 'd1#2' is not valid"):
        write_recording(tmp_path / "out.csv", both)


def test_labels_with_commas_and_quotes_round_trip(tmp_path):
    path = tmp_path / "out.csv"
    rec = _rec(labels=['a,b', 'say "hi"', ''])
    write_recording(path, rec)
    assert read_recording(path).label.tolist() == rec.label.tolist()


# -------------------------------------------------------------------------------------------------
# importers


def test_uci_hapt_gyro_file_without_its_acc_file_is_refused(tmp_path):
    """An experiment whose accelerometer file is missing was left out without a word (the reverse case,
    a gyroscope file missing, is refused)."""
    src = write_uci(tmp_path / "uci")
    (src / "RawData" / "acc_exp02_user01.txt").unlink()
    with pytest.raises(DatasetError, match=r"acc_exp02_user01\.txt: missing"):
        load_dataset("uci-hapt", src)


def test_barbell_gyroscope_file_cut_short_is_refused(tmp_path):
    """A gyroscope file cut short: ``np.interp`` held its last value over the rest of the set."""
    raw = tmp_path / "barbell" / "raw"
    raw.mkdir(parents=True)
    write_barbell_set(raw, "A-bench-heavy", "2019-01-14T14.22.49.165", 1547472169165, (0.0, 0.0, 1.0), n=40)
    gyro = raw / barbell_name("A-bench-heavy", "2019-01-14T14.22.49.165", "Gyroscope")
    lines = gyro.read_text().splitlines()
    gyro.write_text("\n".join(lines[:30]) + "\n")  # 1.1 s of a 3.2 s set
    with pytest.raises(DatasetError, match=r"Gyroscope.*\.csv: .*ends"):
        load_dataset("barbell", tmp_path / "barbell")


def test_barbell_gyroscope_ending_a_sample_early_still_imports(tmp_path, caplog):
    """The published sets' gyroscope ends up to 117 ms before the accelerometer: still imported."""
    raw = tmp_path / "barbell" / "raw"
    raw.mkdir(parents=True)
    write_barbell_set(raw, "A-bench-heavy", "2019-01-14T14.22.49.165", 1547472169165, (0.0, 0.0, 1.0), n=40)
    gyro = raw / barbell_name("A-bench-heavy", "2019-01-14T14.22.49.165", "Gyroscope")
    lines = gyro.read_text().splitlines()
    gyro.write_text("\n".join(lines[:-6]) + "\n")  # ends 160 ms before the accelerometer
    with caplog.at_level(logging.WARNING):
        rec = load_dataset("barbell", tmp_path / "barbell")
    assert len(rec) == 40


def test_exermote_row_with_part_of_the_phone_sample_is_refused(tmp_path):
    """A row with some of the phone's nine columns empty was skipped as if it had no phone sample."""
    raw = tmp_path / "exermote" / "RawData"
    raw.mkdir(parents=True)
    rows = [exermote_row(100 * i, "Squat") for i in range(4)]
    fields = rows[2].split(",")
    fields[EXERMOTE_HEADER.index("Device: zAcceleration")] = ""
    rows[2] = ",".join(fields)
    path = raw / "2017-03-30 18-50-49 Individual 3.csv"
    path.write_text(",".join(EXERMOTE_HEADER) + "\n" + "\n".join(rows) + "\n")
    with pytest.raises(DatasetError, match=r"Individual 3\.csv:4: .*zAcceleration"):
        load_dataset("exermote", tmp_path / "exermote")


@pytest.mark.parametrize("dataset", ["barbell", "muvr", "exermote"])
def test_a_source_field_too_large_for_the_csv_reader_names_its_line(tmp_path, dataset):
    """A field over the csv module's limit in a source file raised a bare ``_csv.Error``."""
    from tests.test_importers import write_barbell, write_exermote, write_muvr

    write = {"barbell": write_barbell, "muvr": write_muvr, "exermote": write_exermote}[dataset]
    src = write(tmp_path / dataset)
    path = sorted(p for p in src.rglob("*.csv") if "Gyroscope" not in p.name)[0]
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, "x" * 200_000]) + "\n")
    with pytest.raises(DatasetError, match=rf"{path.name}:{len(lines) + 1}: field larger"):
        load_dataset(dataset, src)


def test_a_quote_left_open_in_a_source_file_names_its_line(tmp_path):
    """An open quote swallowed the next lines into one row; the error named the line where the row ended."""
    from tests.test_importers import write_muvr

    src = write_muvr(tmp_path / "muvr")
    path = sorted(src.rglob("*.csv"))[0]
    lines = path.read_text().splitlines()
    lines[1] = lines[1].replace(",", ',"', 1)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"{path.name}:2: a field runs over"):
        load_dataset("muvr", src)


def test_uci_hapt_overlapping_label_segments_are_refused(tmp_path):
    """Two segments of labels.txt over the same samples: the later one won without a word."""
    src = write_uci(tmp_path / "uci")
    (src / "RawData" / "labels.txt").write_text("1 1 5 2 5\n1 1 4 4 6\n")
    with pytest.raises(DatasetError, match=r"labels\.txt:2: .*overlaps"):
        load_dataset("uci-hapt", src)


def test_uci_hapt_labels_of_another_user_are_refused(tmp_path):
    """labels.txt gives experiment 1 to user 2, its files to user 1: the labels were applied regardless."""
    src = write_uci(tmp_path / "uci")
    (src / "RawData" / "labels.txt").write_text("1 1 5 2 5\n1 2 7 6 7\n")
    with pytest.raises(DatasetError, match=r"labels\.txt:2: .*user 2.*user01"):
        load_dataset("uci-hapt", src)


def test_a_value_that_is_not_finite_is_refused_when_written(tmp_path):
    """The writer wrote ``nan``, a file the reader refuses."""
    rec = _rec()
    rec.acc[1, 2] = np.nan
    with pytest.raises(RecordingError, match=r"row 2: .*az.* not finite"):
        write_recording(tmp_path / "out.csv", rec)


def test_time_going_backwards_is_refused_when_written(tmp_path):
    """The writer wrote a device's samples out of time order, a file the reader refuses."""
    rec = concat_recordings([_rec(device="a"), _rec(device="b")])
    rec.t[4] = -1.0  # b's second sample before its first
    with pytest.raises(RecordingError, match=r"row 5: time goes backwards for device 'b'"):
        write_recording(tmp_path / "out.csv", rec)


def test_uci_hapt_number_python_reads_but_numpy_does_not_names_its_line(tmp_path):
    """``1_0`` (Python's float reads it, numpy's parser does not): the error named no line."""
    src = write_uci(tmp_path / "uci")
    path = src / "RawData" / "acc_exp01_user01.txt"
    path.write_text("1.0 0.0 0.0\n" * 3 + "1_0 0.0 0.0\n" + "1.0 0.0 0.0\n" * 6)
    with pytest.raises(DatasetError, match=r"acc_exp01_user01\.txt:4: "):
        load_dataset("uci-hapt", src)


def test_float32s_largest_value_as_numpy_prints_it_is_read(tmp_path):
    """``3.4028235e38`` (float32's largest, as numpy prints it) is a little beyond float32's max as a float64
    but rounds to it, finite: read, not refused as beyond float32's range."""
    rec = _read(tmp_path, HEADER + "\nd1,0,3.4028235e38,0,9.8,squat\n")
    assert np.isfinite(rec.acc).all() and rec.acc[0, 0] == np.finfo(np.float32).max


@pytest.mark.parametrize("value", ["1_0", "\u0661", "\uff11.5", "0x10", "1.0.0", ""])
def test_a_number_only_python_reads_is_refused_with_its_line(tmp_path, value):
    """Python's float() reads "1_0" as 10 and digits of other scripts as numbers: the file was read with values
    nobody wrote."""
    with pytest.raises(RecordingError, match=r"rec\.csv:3: column 'ax' is not a number"):
        _read(tmp_path, HEADER + f"\nd1,0,1,0,9.8,squat\nd1,0.04,{value},0,9.8,squat\n")


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e999"])
def test_a_value_that_is_not_finite_is_refused_with_its_line(tmp_path, value):
    with pytest.raises(RecordingError, match=r"rec\.csv:2: column 'ay' is not finite"):
        _read(tmp_path, HEADER + f"\nd1,0,1,{value},9.8,squat\n")


@pytest.mark.parametrize("value", ["1", "-1.", ".5", "+2.5e-3", " 9.81 ", "1E+2"])
def test_plain_decimal_numbers_are_read(tmp_path, value):
    rec = _read(tmp_path, HEADER + f"\nd1,0,{value},0,9.8,squat\n")
    assert rec.acc[0, 0] == np.float32(float(value))


def test_a_step_back_smaller_than_the_written_precision_is_written(tmp_path):
    """A clock's jitter of a few microseconds back is written as two equal times, which the reader takes; the
    writer refused the file although what it would write is valid."""
    rec = _rec(3)
    rec.t[2] = rec.t[1] - 2e-6
    write_recording(tmp_path / "out.csv", rec)
    back = read_recording(tmp_path / "out.csv")
    assert back.t[2] == back.t[1] == pytest.approx(0.04)
