"""A second look at the recording-file, importer and adapter fixes of 483bb66..123ef67: valid input that
the fixes began to refuse."""

from __future__ import annotations

import logging

import pytest

from stream.recording import RecordingError, read_recording


def test_a_column_not_read_may_be_named_twice(tmp_path, caplog):
    """Other columns are allowed (and only warned about): two of them named alike (a spreadsheet's ``note``
    columns) were read before 165f276 and refused after it, though neither is read."""
    path = tmp_path / "r.csv"
    path.write_text("device,t,ax,ay,az,label,note,note\nd1,0,0,0,9.8,squat,a,b\nd1,0.04,0,0,9.8,squat,c,d\n")
    with caplog.at_level(logging.WARNING, logger="stream.recording"):
        rec = read_recording(path)
    assert rec.label.tolist() == ["squat", "squat"]
    assert rec.acc[:, 2].tolist() == pytest.approx([9.8, 9.8])
    assert "'note'" in caplog.text


@pytest.mark.parametrize("name", ["label", "subject", "gx"])
def test_a_column_that_is_read_named_twice_is_still_refused(tmp_path, name):
    path = tmp_path / "r.csv"
    header = "device,t,ax,ay,az,label,gx,gy,gz,subject"
    path.write_text(f"{header},{name}\nd1,0,0,0,9.8,squat,0,0,0,p1,x\n")
    with pytest.raises(RecordingError, match=rf"r\.csv:1: .*'{name}' more than once"):
        read_recording(path)
