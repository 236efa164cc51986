"""`harstream record`, session 15, second look at the spool (cec1eab).

- One long session (a device never restarted: a phone at 500 Hz for 4 hours, 7.2 million samples) was sorted,
  labelled and checked whole at the end: some 180 bytes a sample, a 1.3 GB peak, which ``--recover`` met again
  after an out-of-memory kill. Its rows are now sorted by an index and written a slice at a time.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import orjson

from stream.mqtt import BrokerURL
from stream.recording import read_recording
from tests.helpers import imu

BROKER = BrokerURL.parse("mqtt://127.0.0.1:1")  # never connected to: these tests hand messages to handle()


def _recorder(out: Path, **kw):
    from stream.record import RecordConfig, Recorder
    return Recorder(RecordConfig(broker=BROKER, out=out, prefix="p", **kw))


def test_one_long_session_is_written_a_slice_at_a_time(tmp_path, monkeypatch):
    import stream.record
    monkeypatch.setattr(stream.record, "GROUP_SAMPLES", 10_000)  # the session is 20 times a group
    monkeypatch.setattr(stream.record, "WRITE_ROWS", 5_000, raising=False)
    recorder = _recorder(tmp_path / "long.csv")
    recorder.handle("p/phone/label", orjson.dumps({"label": "walk", "t": 0.0}))
    for k in range(1000):  # 100,000 samples of one device, a copy of every 100th message
        recorder.handle("p/phone/imu", imu(k, 10.0 + k * 2, n=100))
        if k % 100 == 0:
            recorder.handle("p/phone/imu", imu(k, 10.0 + k * 2, n=100))
        if k % 100 == 99:
            recorder.flush()
    recorder.handle("p/phone/label", orjson.dumps({"label": "rest", "start": 1000.0, "end": 2000.0}))
    tracemalloc.start()
    try:
        summary = recorder.write()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert summary["written"] and summary["samples"] == 100_000 and summary["duplicate_messages"] == 10
    assert peak < 100_000 * 100, f"{peak / 100_000:.0f} bytes a sample at the end"  # some 235 before
    rec = read_recording(tmp_path / "long.csv")
    assert len(rec) == 100_000 and (rec.t[1:] > rec.t[:-1]).all()
    rest = (rec.t >= 1000.0) & (rec.t <= 2000.0)
    assert set(rec.label[rest].tolist()) == {"rest"} and set(rec.label[~rest].tolist()) == {"walk"}
