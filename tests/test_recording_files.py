"""Recording files as others write them: devices interleaved, one id in several files, mixed columns."""

import numpy as np

from models.data import labelled_streams
from models.evaluate import evaluate
from models.rnn import HARNet, ModelConfig
from stream.recording import Recording, concat_recordings, read_recording


def _rec(device: str, n: int, label: str, t0: float = 0.0, rate: float = 25.0, subject: str | None = None,
         seed: int = 0) -> Recording:
    rng = np.random.default_rng(seed)
    acc = rng.normal(0, 1, (n, 3)).astype(np.float32)
    acc[:, 2] += 9.81
    return Recording(device=np.full(n, device), t=t0 + np.arange(n) / rate, acc=acc, label=np.full(n, label),
                     subject=None if subject is None else np.full(n, subject))


def _interleaved(path, recs: list[Recording], chunk: int = 25) -> None:
    """The rows of several devices, ``chunk`` rows of each in turn (as they arrived live)."""
    lines = ["device,t,ax,ay,az,label"]
    for start in range(0, max(len(r) for r in recs), chunk):
        for r in recs:
            for i in range(start, min(start + chunk, len(r))):
                lines.append(f"{r.device[i]},{float(r.t[i])!r},{float(r.acc[i, 0])!r},{float(r.acc[i, 1])!r},"
                             f"{float(r.acc[i, 2])!r},{r.label[i]}")
    path.write_text("\n".join(lines) + "\n")


def test_a_file_interleaving_devices_reads_as_each_devices_rows_together(tmp_path):
    a, b = _rec("a", 200, "squat", seed=1), _rec("b", 150, "rest", seed=2)
    _interleaved(tmp_path / "mixed.csv", [a, b])
    _interleaved(tmp_path / "grouped.csv", [a, b], chunk=10**6)
    mixed, grouped = read_recording(tmp_path / "mixed.csv"), read_recording(tmp_path / "grouped.csv")
    assert [d for d, _ in mixed.segments()] == ["a", "b"]
    np.testing.assert_array_equal(mixed.t, grouped.t)
    np.testing.assert_array_equal(mixed.acc, grouped.acc)
    model = HARNet(ModelConfig(classes=("rest", "squat"), hidden=8, layers=1, window=25, hop=25, patch=5,
                               rate=25.0)).eval()
    scored = [evaluate(model, r) for r in (mixed, grouped)]
    assert scored[0]["windows"] == scored[1]["windows"] == 14
    assert scored[0]["accuracy"] == scored[1]["accuracy"]


def test_one_device_id_in_two_files_stays_two_streams_of_one_person():
    """Two days of one phone, each file from t = 0: one stream would pair one day's samples with the other
    day's labels; kept apart, they stay one person for the person-held-out split."""
    day1, day2 = _rec("phone", 300, "squat", seed=1), _rec("phone", 300, "curl", seed=2)
    both = concat_recordings([day1, day2])
    assert [d for d, _ in both.segments()] == ["phone", "phone#2"]
    assert set(both.subjects().tolist()) == {"phone"}
    streams = labelled_streams(both, ["curl", "squat"], rate=25.0)
    assert len(streams) == 2


def test_files_with_and_without_a_subject_column_keep_their_people():
    with_people = concat_recordings([_rec("p1-day1", 100, "squat", subject="p1"),
                                     _rec("p1-day2", 100, "squat", subject="p1")])
    without = _rec("p2", 100, "squat")
    both = concat_recordings([with_people, without])
    assert both.subjects().tolist() == ["p1"] * 200 + ["p2"] * 100


def test_empty_subject_cells_name_each_device_its_own_person(tmp_path):
    """A subject column with some cells empty: those devices are each their own person, not one person ""
    (which would put them all on one side of the person-held-out validation split)."""
    path = tmp_path / "r.csv"
    path.write_text("device,t,ax,ay,az,label,subject\n"
                    "a,0,0,0,9.8,squat,p1\nb,0,0,0,9.8,squat,\nc,0,0,0,9.8,squat,\n")
    assert read_recording(path).subjects().tolist() == ["p1", "b", "c"]


def test_columns_not_read_are_named_in_a_warning(tmp_path, caplog):
    """Other columns are allowed, but a misspelt one (``subjct``) would lose the people silently: a warning
    names every column that is not read."""
    path = tmp_path / "r.csv"
    path.write_text("device,t,ax,ay,az,label,subjct,note\na,0,0,0,9.8,squat,p1,x\n")
    with caplog.at_level("WARNING", logger="stream.recording"):
        rec = read_recording(path)
    assert rec.subjects().tolist() == ["a"]
    assert "'subjct', 'note' not read" in caplog.text
    caplog.clear()
    path.write_text("device,t,ax,ay,az,label,subject\na,0,0,0,9.8,squat,p1\n")
    with caplog.at_level("WARNING", logger="stream.recording"):
        read_recording(path)
    assert "not read" not in caplog.text


def test_a_quote_left_open_names_its_line(tmp_path):
    """A quote left open would swallow the rest of the file into one label; the file is refused at the
    line where the quote opened."""
    import pytest

    from stream.recording import RecordingError

    path = tmp_path / "quote.csv"
    path.write_text("device,t,ax,ay,az,label\nd1,0,0,0,9.8,squat\nd1,0.04,0,0,9.8,\"squat\n"
                    "d1,0.08,0,0,9.8,squat\nd1,0.12,0,0,9.8,squat\n")
    with pytest.raises(RecordingError, match=r"quote\.csv:3: a field runs over 3 lines"):
        read_recording(path)
