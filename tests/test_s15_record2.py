"""`harstream record`, session 15, second look at the spool (cec1eab).

- One long session (a device never restarted: a phone at 500 Hz for 4 hours, 7.2 million samples) was sorted,
  labelled and checked whole at the end: some 180 bytes a sample, a 1.3 GB peak, which ``--recover`` met again
  after an out-of-memory kill. Its rows are now sorted by an index and written a slice at a time.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import orjson

from stream.mqtt import BrokerURL
from stream.recording import read_recording
from tests.helpers import imu
from tests.test_s15_record import _write_traced

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
    summary, peak = _write_traced(recorder)
    assert summary["written"] and summary["samples"] == 100_000 and summary["duplicate_messages"] == 10
    assert peak < 100_000 * 100, f"{peak / 100_000:.0f} bytes a sample at the end"  # some 235 before
    rec = read_recording(tmp_path / "long.csv")
    assert len(rec) == 100_000 and (rec.t[1:] > rec.t[:-1]).all()
    rest = (rec.t >= 1000.0) & (rec.t <= 2000.0)
    assert set(rec.label[rest].tolist()) == {"rest"} and set(rec.label[~rest].tolist()) == {"walk"}


def _left_behind(out: Path) -> list[int]:
    """A spool of three chunks (two devices, labels), its recorder gone (its lock too); each chunk's end."""
    recorder = _recorder(out)
    ends = []
    for k in range(3):
        recorder.handle("p/w/label", orjson.dumps({"label": f"ex{k}", "t": 10.0 + k}))
        recorder.handle("p/w/imu", imu(k, 10.0 + k, n=50))
        recorder.handle("p/v/imu", imu(k, 10.0 + k, n=50))
        recorder.flush()
        ends.append(out.with_name(out.name + ".spool").stat().st_size)
    os.close(recorder._spool.fd)
    return ends


def test_a_spool_damaged_before_its_end_is_refused_naming_the_chunk_and_byte(tmp_path, capsys):
    """A chunk whose CRC fails with more chunks after it is no last append cut short: --recover wrote the chunks
    before it and removed the spool, the rest dropped unsaid ('bytes of a last chunk cut short'). It is refused,
    naming the file, chunk and byte, the spool kept; cut there, the chunks before it are written."""
    from stream.cli import main
    out = tmp_path / "d.csv"
    spool = tmp_path / "d.csv.spool"
    ends = _left_behind(out)
    data = bytearray(spool.read_bytes())
    data[ends[0] + 40] ^= 0xFF  # in the second chunk
    spool.write_bytes(bytes(data))
    assert main(["record", "--out", str(out), "--recover"]) == 2
    err = capsys.readouterr().err
    assert f"{spool} is damaged at byte {ends[0]}, chunk 2" in err and f"truncate -s {ends[0]} {spool}" in err, err
    assert "100 samples of the 1 chunks before it" in err, err
    assert spool.read_bytes() == bytes(data) and not out.exists()
    os.truncate(spool, ends[0])
    assert main(["record", "--out", str(out), "--recover"]) == 0
    assert "wrote 100 samples of 2 devices" in capsys.readouterr().out
    rec = read_recording(out)
    assert rec.label[rec.device == "w"].tolist() == ["ex0"] * 50 and not spool.exists()


def test_a_last_chunk_cut_short_or_zeroed_by_a_power_cut_is_left_out(tmp_path, capsys):
    from stream.cli import main
    for tail, name in ((lambda d, ends: d[:ends[2] - 30], "cut"),  # a kill in the middle of the last append
                       (lambda d, ends: d[:ends[1]] + b"\0" * (ends[2] - ends[1]), "zeros")):  # a power cut
        out = tmp_path / f"{name}.csv"
        spool = tmp_path / f"{name}.csv.spool"
        ends = _left_behind(out)
        spool.write_bytes(tail(spool.read_bytes(), ends))
        assert main(["record", "--out", str(out), "--recover"]) == 0, name
        printed = capsys.readouterr().out
        assert "wrote 200 samples of 2 devices" in printed and "cut short left out" in printed, printed
        assert not spool.exists()


def test_the_temporary_file_a_kill_left_while_writing_is_removed(tmp_path, capsys):
    """A kill -9 while the recording was written from the spool (or by --recover) left its temporary file
    beside --out (hidden, '.FILE.<pid>.tmp', the recording's size: 36 MB for 2M samples), for good. --recover,
    and a recording to the same --out, remove those whose process is gone."""
    import subprocess

    from stream.cli import main
    out = tmp_path / "k.csv"
    _left_behind(out)
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = tmp_path / f".k.csv.{gone.pid}.tmp"
    alive = tmp_path / ".k.csv.1.tmp"  # pid 1 runs: a writer that may be at work
    for path in (stale, alive):
        path.write_text("device,t,ax,ay,az,label\n" + "w,1.0,0,0,0,\n" * 1000)
    assert main(["record", "--out", str(out), "--recover"]) == 0
    capsys.readouterr()
    assert not stale.exists() and alive.exists()
    out2 = tmp_path / "n.csv"  # the spool moved away to start over: the next recording removes it
    stale2 = tmp_path / f".n.csv.{gone.pid}.tmp"
    stale2.write_text("x")
    recorder = _recorder(out2)
    recorder.open_spool()
    assert not stale2.exists()
    recorder.write()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".k.csv.1.tmp", "k.csv"]


def test_a_late_copy_of_the_first_message_is_a_copy_not_a_restart(tmp_path):
    """Seqs are kept for the latest SEQS_KEPT (1024) messages: a copy of seq 0 arriving later than that (2 s of a
    sensor sending one sample a message at 500 Hz) was taken for the device restarting, seq 0 again: a session
    ``ph.s2`` of the copy and everything after it, which lost the label received before (1500 of 2001 samples
    labelled, the copy written twice). Before the spool (seqs unbounded) and now: a copy, dropped."""
    recorder = _recorder(tmp_path / "ph.csv")
    recorder.handle("p/ph/label", orjson.dumps({"label": "squat", "t": 0.0}))

    def message(k: int) -> bytes:
        return orjson.dumps({"seq": k, "t": [100 + k / 500], "acc": [[0, 0, 9.8]]})

    for k in range(1500):
        recorder.handle("p/ph/imu", message(k))
    recorder.handle("p/ph/imu", message(0))  # a copy of the first, 3 s later
    for k in range(1500, 2000):
        recorder.handle("p/ph/imu", message(k))
    summary = recorder.write()
    assert (summary["samples"], summary["sessions"], summary["duplicate_messages"]) == (2000, 1, 1), summary
    assert summary["labelled_samples"] == 2000
    recorder = _recorder(tmp_path / "re.csv")  # seq 0 again on a clock gone back: still a restart
    for k in range(1500):
        recorder.handle("p/ph/imu", message(k))
    recorder.handle("p/ph/imu", orjson.dumps({"seq": 0, "t": [100.5], "acc": [[0, 0, 9.8]]}))
    assert recorder.write()["sessions"] == 2


def test_recover_onto_a_file_that_exists_says_what_to_do(tmp_path, capsys):
    """A recorder started with --overwrite on an older file, then killed: --recover was refused with
    check_out's advice, 'give another name, or --overwrite', and another name has no spool."""
    from stream.cli import main
    out = tmp_path / "o.csv"
    _left_behind(out)
    out.write_text("device,t,ax,ay,az,label\nw,1.0000,0.0000,0.0000,9.8000,\n")  # the older recording
    assert main(["record", "--out", str(out), "--recover"]) == 2
    err = capsys.readouterr().err
    assert f"{out} exists; --overwrite replaces it" in err and "another name" not in err, err
    assert main(["record", "--out", str(out), "--recover", "--overwrite"]) == 0
    assert "wrote 300 samples" in capsys.readouterr().out


def test_the_end_says_it_is_writing(tmp_path, caplog):
    """Stopped, the recorder wrote for a while unsaid (34 s for 2 hours of 20 devices; a stop signal then is
    only logged): a line says what it writes."""
    recorder = _recorder(tmp_path / "w.csv")
    recorder.handle("p/w/imu", imu(0, 10.0, n=50))
    with caplog.at_level(logging.INFO, logger="stream.record"):
        assert recorder.write()["written"]
    assert any(f"writing 50 samples to {tmp_path / 'w.csv'}" in r.getMessage() for r in caplog.records)


def test_write_recording_writes_rows_as_csv_writer_does(tmp_path):
    """write_recording and harstream record share one row writer (stream.recording.write_rows; record had its
    own copy): its rows are csv.writer's, text quoted where it needs it, numbers as f"{x:.4f}" and ".5f"."""
    import csv

    import numpy as np

    from stream.recording import Recording, write_recording
    words = ["", "squat", "a,b", 'q"x', " lead", "trail ", "é", "%s", "tab\there", "日本"]
    n = 3 * len(words)
    rec = Recording(device=np.repeat(["a", "b-1", "c.s2"], len(words)), t=np.tile(np.arange(len(words)) * 0.0137, 3),
                    acc=np.linspace(-99.99996, 99.99996, n * 3).reshape(n, 3).astype(np.float32),
                    label=np.array(words * 3, dtype=object), gyro=np.linspace(-5, 5, n * 3).reshape(n, 3),
                    subject=np.array(words[1:] + words[1:] + words[1:] + ["x", "y", "z"]))
    write_recording(tmp_path / "w.csv", rec)
    with (tmp_path / "ref.csv").open("w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["device", "t", "ax", "ay", "az", "label", "gx", "gy", "gz", "subject"])
        for i in range(n):
            writer.writerow([rec.device[i], f"{rec.t[i]:.4f}", *(f"{v:.4f}" for v in rec.acc[i]), rec.label[i],
                             *(f"{v:.5f}" for v in rec.gyro[i]), rec.subject[i]])
    assert (tmp_path / "w.csv").read_bytes() == (tmp_path / "ref.csv").read_bytes()


def test_a_spool_killed_as_it_was_made_is_recovered_as_empty(tmp_path, capsys):
    """Killed (or the power cut) between making the spool and its first second: an empty spool, or part of its
    first line. It was 'not a harstream record spool', kept, and the next recording to FILE refused for it."""
    from stream.cli import main
    from stream.record import SPOOL_MAGIC
    for k, head in enumerate((b"", SPOOL_MAGIC[:9])):
        out = tmp_path / f"e{k}.csv"
        spool = tmp_path / f"e{k}.csv.spool"
        spool.write_bytes(head)
        assert main(["record", "--out", str(out), "--recover"]) == 1
        assert "no samples received" in capsys.readouterr().out
        assert not spool.exists() and not out.exists()
    junk = tmp_path / "j.csv.spool"
    junk.write_bytes(b"harstream record spool 9\n")
    assert main(["record", "--out", str(tmp_path / "j.csv"), "--recover"]) == 2
    assert "not a harstream record spool" in capsys.readouterr().err and junk.exists()
