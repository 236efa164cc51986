"""Words of the command line a newcomer tripped over: `train` said "not every training file has gx, gy, gz" of
files none of which has them; `harstream --help` left the dashboard out of what the demo starts."""

from __future__ import annotations

import pytest

import models.train as train_module
from stream.recording import write_recording
from tests.test_train import synthetic_recording


class _Stop(Exception):
    pass


def _inputs_line(tmp_path, capsys, monkeypatch, files) -> str:
    from stream.cli import main

    def no_training(*args, **kwargs):  # what train prints before training is the point, not the training
        raise _Stop

    monkeypatch.setattr(train_module, "train", no_training)
    with pytest.raises(_Stop):
        main(["train", "--data", *map(str, files), "--out", str(tmp_path / "m.pt"), "--quiet"])
    return next(line for line in capsys.readouterr().out.splitlines() if line.startswith("inputs:"))


def test_train_tells_no_gyroscope_from_some(tmp_path, capsys, monkeypatch):
    rec = synthetic_recording(people=2, minutes=0.2)
    assert rec.gyro is None
    write_recording(tmp_path / "a.csv", rec)
    write_recording(tmp_path / "b.csv", rec)
    line = _inputs_line(tmp_path, capsys, monkeypatch, [tmp_path / "a.csv", tmp_path / "b.csv"])
    assert line == "inputs: accelerometer (no training file has gx, gy, gz)"


def test_the_top_level_help_says_the_demo_starts_the_dashboard(capsys):
    from stream.cli import main
    with pytest.raises(SystemExit):
        main(["--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "simulator, consumer, dashboard" in out
