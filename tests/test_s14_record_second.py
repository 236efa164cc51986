"""`harstream record`, a second look (session 14): what a user recording for an hour could lose, or not see.

- ``--out`` was checked with ``os.access`` only: root passes everywhere (/proc), and a name that fits but whose
  temporary file (``.NAME.PID.tmp``) does not was found only when the recording stopped, losing it all. The
  temporary file is now made and removed before recording.
- an existing ``--out`` was replaced silently when the recording stopped (yesterday's hour of someone else): now
  refused before recording, unless ``--overwrite``.
- a failure writing at the end (the disk full, the folder gone) raised, and the recording was lost: it now goes to
  the system's temporary folder, and the summary says where.
- ``--devices`` with a typo recorded nothing for an hour with no word why: the devices left out are now counted in
  the progress line and the summary ("1 devices" also read "1 device").
- a phone sending one sample a message (SensorSpot) kept two arrays a sample, about 360 bytes: batches are now
  joined every ``JOIN_EVERY``.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream.mqtt import BrokerURL
from stream.recording import read_recording
from tests.helpers import imu

BROKER = BrokerURL.parse("mqtt://127.0.0.1:1")  # never connected to: these tests hand messages to handle()


def _recorder(out: Path, **kw):
    from stream.record import RecordConfig, Recorder
    return Recorder(RecordConfig(broker=BROKER, out=out, prefix="p", **kw))


def test_out_whose_temporary_file_cannot_be_made_is_refused_before_recording(tmp_path):
    from stream.record import check_out
    out = tmp_path / ("a" * 246 + ".csv")  # 250 characters: a name; ".NAME.PID.tmp" is over 255
    with pytest.raises(ValueError, match="cannot write in folder"):
        check_out(out)
    assert list(tmp_path.iterdir()) == []  # nothing left behind
    check_out(tmp_path / "fine.csv")
    assert list(tmp_path.iterdir()) == []
    if Path("/proc/self").is_dir():  # root's os.access says /proc is writable
        with pytest.raises(ValueError):
            check_out(Path("/proc/harstream-record-test.csv"))


def test_existing_out_is_refused_before_recording_unless_overwrite(tmp_path):
    from stream.cli import main
    from stream.record import check_out
    out = tmp_path / "alice.csv"
    out.write_text("yesterday's hour\n")
    with pytest.raises(ValueError, match="exists.*--overwrite"):
        check_out(out)
    check_out(out, overwrite=True)
    # the command refuses it before connecting (port 1: nothing listens there)
    assert main(["record", "--broker", "mqtt://127.0.0.1:1", "--out", str(out), "--duration", "1"]) == 2
    assert out.read_text() == "yesterday's hour\n"
    with pytest.raises(ValueError, match="not a regular file"):
        check_out(Path("/dev/null"), overwrite=True)


def test_a_recording_that_cannot_be_written_at_the_end_goes_to_the_temporary_folder(tmp_path, monkeypatch):
    from stream.record import check_out, format_summary
    rescue_dir = tmp_path / "rescue"
    rescue_dir.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(rescue_dir))
    folder = tmp_path / "usb-stick"
    folder.mkdir()
    out = folder / "alice.csv"
    check_out(out)
    recorder = _recorder(out)
    for k in range(5):
        recorder.handle("p/dev-a/imu", imu(k, 10.0 + k * 0.2, n=10))
    shutil.rmtree(folder)  # unplugged while recording
    summary = recorder.write()
    assert not summary["written"] and summary["samples"] == 50
    rescued = Path(summary["rescued"])
    assert rescued.parent == rescue_dir and rescued.name.endswith("alice.csv")
    rec = read_recording(rescued)
    assert len(rec) == 50 and set(rec.device) == {"dev-a"}
    text = format_summary(summary)
    assert str(rescued) in text and "NOT to" in text and str(out) in text
    assert list(rescue_dir.iterdir()) == [rescued]  # no temporary file left


def test_devices_left_out_by_devices_are_counted_and_one_device_is_singular(tmp_path):
    from stream.record import format_summary
    recorder = _recorder(tmp_path / "r.csv", devices=frozenset({"alice-phon"}))  # a typo
    recorder.handle("p/alice-phone/imu", imu(0, 10.0, n=10))
    recorder.handle("p/bob-phone/imu", imu(0, 10.0, n=5))
    assert "2 other devices left out (--devices)" in recorder.progress_line(5)
    summary = recorder.write()
    assert summary["ignored"] == {"alice-phone": 10, "bob-phone": 5}
    text = format_summary(summary)
    assert "no samples received" in text and "alice-phone 10 samples" in text
    recorder = _recorder(tmp_path / "s.csv", devices=frozenset({"alice-phone"}))
    recorder.handle("p/alice-phone/imu", imu(0, 10.0, n=10))
    recorder.handle("p/bob-phone/imu", imu(0, 10.0, n=5))
    assert "1 other device left out" in recorder.progress_line(5)
    text = format_summary(recorder.write())
    assert "of 1 device to" in text and "0 labels received" in text
    assert "1 other device (bob-phone 5 samples)" in text


def test_one_sample_messages_are_joined_in_order_and_gyroscope_runs_kept_apart(tmp_path):
    import stream.record
    JOIN_EVERY = getattr(stream.record, "JOIN_EVERY", 256)  # noqa: N806 (before it: one array a message)
    recorder = _recorder(tmp_path / "r.csv")
    n = 3 * JOIN_EVERY + 7
    for i in range(n):
        msg = {"seq": i, "t": [100.0 + i / 50], "acc": [[0.1, 0.2, 9.81]]}
        if 400 <= i < 500:  # a gyroscope for a while only
            msg["gyro"] = [[0.01, 0.02, 0.03]]
        recorder.handle("p/dev-a/imu", orjson.dumps(msg))
    recorder.handle("p/dev-a/imu", orjson.dumps({"seq": 5, "t": [100.1], "acc": [[0.1, 0.2, 9.81]]}))  # a copy
    # since session 15 the samples go to a spool on disk every second (tests/test_s15_record.py): once flushed,
    # none is held in memory, whatever the size of the messages
    assert recorder._sessions[0].samples == n and recorder.held() == n
    recorder.flush()
    assert recorder.held() == 0
    summary = recorder.write()
    assert summary["samples"] == n and summary["duplicate_messages"] == 1
    assert summary["gyro_dropped"] == {"dev-a": n - 100}
    rec = read_recording(tmp_path / "r.csv")
    assert np.allclose(rec.t, 100.0 + np.arange(n) / 50, atol=1e-4)
