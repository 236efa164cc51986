"""`harstream record`, session 15: durable as it goes, and started without torch.

- It held the whole recording in memory until it stopped: a ``kill -9`` (a crash, the OOM killer, a power cut)
  lost all of it, and memory grew with the recording (some 20-60 bytes a sample, more at the end). Samples now go
  to ``<out>.spool`` every second (synced); the end writes the file from it, a group of sessions at a time, and
  ``harstream record --out FILE --recover`` writes FILE from a spool a killed recorder left.
- ``stream.labels`` imported torch (for the consumer's window history), so ``record`` took some 2 s and 200 MB
  more to start: it now imports torch only where windows' tensors are handled.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import sys
import time
import tracemalloc
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream.mqtt import BrokerURL, connect
from stream.recording import read_recording, write_recording
from tests.helpers import imu, wait
from tests.test_s14_record import _record_process

ROOT = Path(__file__).resolve().parents[1]
BROKER = BrokerURL.parse("mqtt://127.0.0.1:1")  # never connected to: these tests hand messages to handle()


def _recorder(out: Path, **kw):
    from stream.record import RecordConfig, Recorder
    return Recorder(RecordConfig(broker=BROKER, out=out, prefix="p", **kw))


def _flush(recorder) -> None:
    getattr(recorder, "flush", lambda: None)()  # before session 15 there was none: all was held


def _spooled(spool: Path) -> int:
    """Samples in a spool, read as a reader that does not lock it (the recorder may be running)."""
    from stream.record import SPOOL_MAGIC, _Spool
    fd = os.open(spool, os.O_RDONLY)
    try:
        return sum(len(s) for _, s in _Spool(spool, fd, len(SPOOL_MAGIC)).chunks())
    finally:
        os.close(fd)


def _write_traced(recorder) -> tuple[dict, int]:
    """``recorder.write()`` and the peak of the memory Python allocated meanwhile (tracemalloc), in bytes."""
    tracemalloc.start()
    try:
        summary = recorder.write()
        return summary, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_stream_record_and_the_record_command_do_not_import_torch(tmp_path):
    code = ("import sys\n"
            "import stream.record\n"
            "assert 'torch' not in sys.modules, 'import stream.record'\n"
            "from stream.cli import main\n"
            f"rc = main(['record', '--broker', 'mqtt://127.0.0.1:1', '--out', {str(tmp_path / 'x.csv')!r}])\n"
            "assert rc == 2, rc\n"  # refused: nothing listens on port 1, after check_out, Recorder, the spool
            "assert 'torch' not in sys.modules, 'harstream record'\n"
            "from stream.labels import LabelBook, decode_label\n"
            "b = LabelBook(); b.add('d', *decode_label(b'{\"label\": \"squat\", \"t\": 1}'))\n"
            "assert b.at('d', 2.0) == 'squat' and 'torch' not in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-2000:]
    assert list(tmp_path.iterdir()) == []  # no spool left by a recording that never connected
    # the consumer's window history still has torch where it needs it
    import torch

    from stream.labels import LabelledWindow, WindowHistory
    history = WindowHistory(span=0.98, lateness=4.0)
    history.track("d")
    history.add(LabelledWindow("d", 1.0, np.zeros((50, 3), np.float32), (torch.zeros(1, 4),), "squat", 0.9))
    snap = history.snapshot()
    assert isinstance(snap["t_end"], torch.Tensor)
    other = WindowHistory(span=0.98, lateness=4.0)
    assert other.restore(snap, window=(50, 3), states=[(1, 4)]) == {} and len(other.waiting("d")) == 1


@pytest.mark.broker
def test_kill_9_leaves_a_spool_that_recover_writes_labels_included(broker_url, tmp_path, capsys):
    from stream.cli import main
    prefix = f"s15kill{uuid.uuid4().hex[:6]}"
    out = tmp_path / "alice.csv"
    spool = out.with_name("alice.csv.spool")
    proc, lines, reader = _record_process(broker_url, prefix, out)
    pub = connect(broker_url, "test-pub")

    def send(topic: str, payload: bytes) -> None:
        pub.publish(topic, payload, qos=1).wait_for_publish(10)

    try:
        for _ in range(200):  # the label topic is subscribed last: its first refusal says all are live
            send(f"{prefix}/probe/label", b"not json")
            if wait(lambda: any("bad_json" in line for line in lines), 0.2):
                break
        assert any("bad_json" in line for line in lines), "".join(lines)
        rss = int(next(line.split()[1] for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines()
                       if line.startswith("VmRSS")))
        send(f"{prefix}/watch-1/label", orjson.dumps({"label": "squat", "t": 50.0}))
        for k in range(20):  # 4 s of watch-1 at 50 Hz, and 1 s of watch-2
            send(f"{prefix}/watch-1/imu", imu(k, 50.0 + k * 0.2, n=10))
        send(f"{prefix}/watch-1/imu", imu(3, 50.6, n=10))  # a copy
        for k in range(5):
            send(f"{prefix}/watch-2/imu", imu(k, 7.0 + k * 0.2, n=10))
        send(f"{prefix}/watch-1/label", orjson.dumps({"label": "rest", "start": 52.0, "end": 52.98}))  # late
        sent = time.monotonic()
        assert wait(lambda: spool.exists() and _spooled(spool) == 250, 10), "the spool never held every sample"
        synced = time.monotonic() - sent
        # a second recorder on the same --out, or --recover, is refused while this one runs
        capsys.readouterr()
        assert main(["record", "--broker", "mqtt://127.0.0.1:1", "--out", str(out), "--duration", "1"]) == 2
        assert "running now" in capsys.readouterr().err
        assert main(["record", "--out", str(out), "--recover"]) == 2
        assert "in use" in capsys.readouterr().err
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.disconnect()
        pub.loop_stop()
    assert synced < 3.0, f"spooled {synced:.1f} s after the last sample"  # flushed every second, synced
    assert rss < 150_000, f"VmRSS {rss} kB: torch imported?"  # some 227 MB with torch, some 45 MB without
    assert not out.exists() and spool.exists()
    # the next recording to the same file says what to do (before connecting: port 1)
    assert main(["record", "--broker", "mqtt://127.0.0.1:1", "--out", str(out), "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert "did not finish" in err and f"harstream record --out {out} --recover" in err, err
    assert main(["record", "--out", str(out), "--recover"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 250 samples of 2 devices" in printed and "recovered from" in printed, printed
    assert "dropped as received twice: 1 messages" in printed
    assert not spool.exists()
    rec = read_recording(out)
    rows = {d: (rec.t[s], rec.label[s].tolist()) for d, s in rec.segments()}
    assert list(rows) == ["watch-1", "watch-2"]
    t1, labels1 = rows["watch-1"]
    assert np.allclose(t1, 50.0 + np.arange(200) / 50, atol=1e-4)
    expected = ["rest" if 52.0 <= t <= 52.98 else "squat" for t in np.round(t1, 4)]
    assert labels1 == expected and labels1.count("rest") == 50
    assert rows["watch-2"][1] == [""] * 50
    # recovering again: there is nothing to recover
    assert main(["record", "--out", str(out), "--recover", "--overwrite"]) == 2
    assert "there is no" in capsys.readouterr().err


def test_memory_stays_flat_while_recording(tmp_path, monkeypatch):
    """20 devices at 50 Hz in 50-sample messages: what a long recording holds does not grow with it (it grew
    by some 20-60 bytes a sample held in memory until the end)."""
    import stream.record
    monkeypatch.setattr(stream.record, "SEQS_KEPT", 64, raising=False)  # its bound, reached sooner
    monkeypatch.setattr(os, "fsync", lambda fd: None)  # 190 flushes: the test's time, not what it measures
    recorder = _recorder(tmp_path / "long.csv")
    payloads = {}

    def second(k: int) -> None:
        for d in range(20):
            if d not in payloads:
                payloads[d] = orjson.loads(imu(0, 0.0, n=50))
            body = payloads[d]
            body["seq"], body["t"] = k, (1000.0 + k + np.arange(50) / 50).round(4).tolist()
            recorder.handle(f"p/dev-{d}/imu", orjson.dumps(body))
        _flush(recorder)

    tracemalloc.start()
    try:
        for k in range(40):
            second(k)
        before = tracemalloc.get_traced_memory()[0]
        for k in range(40, 190):  # 150 s more: 150,000 samples
            second(k)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert recorder.samples == 190 * 1000
    assert after - before < 300_000, f"{(after - before) / 150_000:.1f} bytes a sample held"
    summary = recorder.write()
    assert summary["written"] and summary["samples"] == 190_000
    assert not (tmp_path / "long.csv.spool").exists()


def _feed(recorder) -> None:
    """Out of order, copies, a device restarting, late labels, spans, the gyroscope for some only."""
    rng = np.random.default_rng(3)
    for d in range(6):
        batches = [(k, 100.0 + d + k * 0.2) for k in range(40)]
        order = rng.permutation(len(batches))
        for i in order:
            k, t0 = batches[i]
            recorder.handle(f"p/dev-{d}/imu", imu(k, t0, n=10))
            if i % 7 == 0:
                recorder.handle(f"p/dev-{d}/imu", imu(k, t0, n=10))  # a copy
        recorder.handle(f"p/dev-{d}/label", orjson.dumps({"label": "squat" if d % 2 else 'bench, "flat"',
                                                          "t": 101.0 + d}))
        recorder.handle(f"p/dev-{d}/label", orjson.dumps({"label": "rest", "start": 103.0 + d, "end": 104.0 + d}))
        if d == 2:  # restarted: a session of its own
            recorder.handle("p/dev-2/imu", imu(0, 5.0, n=10))
            recorder.handle("p/dev-2/label", orjson.dumps({"label": "lunge", "t": 5.05}))
        _flush(recorder)


def test_the_end_reads_the_spool_a_group_of_sessions_at_a_time_and_writes_the_same_file(tmp_path, monkeypatch):
    import stream.record
    whole = _recorder(tmp_path / "whole.csv")
    _feed(whole)
    assert whole.write()["written"]
    monkeypatch.setattr(stream.record, "GROUP_SAMPLES", 700, raising=False)  # two sessions a group, or one
    grouped = _recorder(tmp_path / "grouped.csv")
    _feed(grouped)
    summary = grouped.write()
    assert (tmp_path / "whole.csv").read_bytes() == (tmp_path / "grouped.csv").read_bytes()
    write_recording(tmp_path / "again.csv", read_recording(tmp_path / "whole.csv"))  # as write_recording writes
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    (tmp_path / "again.csv").unlink()
    assert summary["sessions"] == 7 and summary["samples"] == 6 * 400 + 10 and summary["duplicate_messages"] == 36
    rec = read_recording(tmp_path / "grouped.csv")
    assert rec.subject is not None and set(rec.label[rec.device == "dev-2.s2"].tolist()) == {"", "lunge"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grouped.csv", "whole.csv"]


def test_writing_the_end_holds_a_group_not_the_recording(tmp_path, monkeypatch):
    import stream.record
    monkeypatch.setattr(stream.record, "GROUP_SAMPLES", 10_000, raising=False)
    recorder = _recorder(tmp_path / "big.csv")
    for k in range(100):  # 20 devices, 5,000 samples each
        for d in range(20):
            recorder.handle(f"p/dev-{d}/imu", imu(k, 10.0 + k, n=50))
        if k % 10 == 9:
            _flush(recorder)
    summary, peak = _write_traced(recorder)
    assert summary["written"] and summary["samples"] == 100_000
    assert peak < 4_000_000, f"{peak / 100_000:.0f} bytes a sample at the end"


def test_a_spool_cut_by_a_kill_is_recovered_to_its_last_whole_chunk(tmp_path, capsys):
    from stream.cli import main
    out = tmp_path / "cut.csv"
    recorder = _recorder(out)
    recorder.handle("p/w/label", orjson.dumps({"label": "squat", "t": 0.0}))
    for k in range(3):
        recorder.handle("p/w/imu", imu(k, 10.0 + k * 0.2, n=10))
        recorder.flush()
    spool = out.with_name("cut.csv.spool")
    whole = spool.stat().st_size
    recorder.handle("p/w/imu", imu(3, 10.6, n=10))
    recorder.flush()
    os.close(recorder._spool.fd)  # the recorder dies: its lock goes
    os.truncate(spool, spool.stat().st_size - 7)  # in the middle of its last chunk
    assert main(["record", "--out", str(out), "--recover"]) == 0
    printed = capsys.readouterr().out
    assert "wrote 30 samples of 1 device" in printed and "cut short left out" in printed, printed
    rec = read_recording(out)
    assert rec.label.tolist() == ["squat"] * 30 and not spool.exists()
    assert whole > 0
    junk = tmp_path / "junk.csv"
    junk.with_name("junk.csv.spool").write_bytes(b"hello")
    assert main(["record", "--out", str(junk), "--recover"]) == 2
    assert "not a harstream record spool" in capsys.readouterr().err


def test_a_spool_that_cannot_be_written_keeps_the_samples_until_it_can(tmp_path, monkeypatch, caplog):
    import stream.record
    out = tmp_path / "full.csv"
    recorder = _recorder(out)
    real = os.pwrite
    full = {"on": True}

    def pwrite(fd, data, offset):
        if full["on"] and offset > len(stream.record.SPOOL_MAGIC):  # the header fits, then the disk is full
            written = real(fd, bytes(data[:5]), offset)  # a short write first, then nothing more
            if written:
                raise OSError(errno.ENOSPC, "No space left on device")
        return real(fd, data, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    recorder.handle("p/w/imu", imu(0, 10.0, n=10))
    recorder.flush()  # the first chunk (its header only, before the samples, is written) ...
    with caplog.at_level(logging.WARNING, logger="stream.record"):
        for k in range(1, 4):
            recorder.handle("p/w/imu", imu(k, 10.0 + k * 0.2, n=10))
            recorder.flush()
    warnings = [r for r in caplog.records if "cannot write the spool" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in caplog.records]
    spool = out.with_name("full.csv.spool")
    assert recorder.held() >= 30 and _spooled(spool) < 40
    full["on"] = False
    recorder.handle("p/w/imu", imu(4, 10.8, n=10))
    recorder.flush()
    assert recorder.held() == 0 and _spooled(spool) == 50  # every chunk, in order, none torn
    summary = recorder.write()
    assert summary["written"] and summary["samples"] == 50
    assert np.allclose(read_recording(out).t, 10.0 + np.arange(50) / 50, atol=1e-4)


def test_the_gyroscope_goes_through_the_spool(tmp_path):
    recorder = _recorder(tmp_path / "g.csv")
    gyro = [[0.01 * i, -0.02, 0.5] for i in range(4)]
    recorder.handle("p/w/imu", orjson.dumps({"seq": 1, "t": [7.04, 7.06], "acc": [[0, 1, 9.8]] * 2, "gyro": gyro[2:]}))
    recorder.flush()
    recorder.handle("p/w/imu", orjson.dumps({"seq": 0, "t": [7.0, 7.02], "acc": [[0, 0, 9.8]] * 2, "gyro": gyro[:2]}))
    summary = recorder.write()
    assert summary["written"] and summary["gyro"] and not summary["gyro_dropped"]
    rec = read_recording(tmp_path / "g.csv")
    assert np.allclose(rec.gyro, gyro) and np.allclose(rec.t, [7.0, 7.02, 7.04, 7.06])
    assert np.allclose(rec.acc[:, 1], [0, 0, 1, 1])
