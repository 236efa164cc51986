"""Session 16's probe of bad recording files (/tmp/s16/files): what replay sent, what import overwrote, gzip,
and what evaluate and train said of recordings they could make nothing of."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import pytest

from simulators.replay import replay
from stream.consumer import ConsumerConfig
from stream.decode import Rejected, decode_imu
from stream.mqtt import connect
from stream.recording import Recording
from tests.helpers import wait


def _recording() -> Recording:
    """Three devices replay's messages of old broke: 130 s at 50 Hz with the gyroscope, at Unix times (a message
    of 60 s: 3,000 samples, ~410 KB); 3,000 samples at one time (t never advances: all in one message); one
    sample a second (a message of 60 s spans 59 s at 1 Hz: "bad_span")."""
    rng = np.random.default_rng(0)
    t0 = 1796687176.9256
    parts = {"dense": t0 + np.arange(6500) / 50.0, "still": np.full(3000, t0), "sparse": t0 + np.arange(120.0)}
    device = np.concatenate([np.full(len(t), name) for name, t in parts.items()])
    t = np.concatenate(list(parts.values()))
    n = len(t)
    acc = (rng.normal(0, 5, (n, 3)) + [0, 0, 9.81]).astype(np.float32)
    gyro = rng.normal(0, 1, (n, 3)).astype(np.float32)
    return Recording(device=device, t=t, acc=acc, label=np.full(n, "squat"), gyro=gyro)


@pytest.mark.broker
def test_replay_messages_fit_the_consumers_limits(broker_url):
    rec = _recording()
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    got: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        with lock:
            got.append((msg.topic.split("/")[1], msg.payload))

    watch = connect(broker_url, f"test-watch-{prefix}", subscriptions=[(f"{prefix}/+/imu", 1)],
                    on_message=on_message)
    try:
        time.sleep(0.3)
        sent = replay(rec, broker_url, prefix=prefix, speed=0, interval=60.0, qos=1)
        assert sent["samples"] == len(rec)
        assert wait(lambda: len(got) >= sent["messages"], timeout=20)
    finally:
        watch.disconnect()
        watch.loop_stop()
    assert len(got) == sent["messages"]
    limit = ConsumerConfig(broker=broker_url).max_payload
    samples: dict[str, int] = {}
    seqs: dict[str, list[int]] = {}
    for device, payload in got:
        assert len(payload) <= limit, (device, len(payload))
        try:
            batch = decode_imu(payload, device, limit)  # too_many_samples, bad_span, oversize
        except Rejected as exc:
            pytest.fail(f"{device}: {exc}")
        samples[device] = samples.get(device, 0) + len(batch.t)
        seqs.setdefault(device, []).append(batch.seq)
    assert samples == {"dense": 6500, "still": 3000, "sparse": 120}
    assert {d: sorted(s) for d, s in seqs.items()} == {d: list(range(len(s))) for d, s in seqs.items()}


def test_import_refuses_an_existing_out_unless_overwrite(tmp_path, capsys):
    """``import`` replaced an existing OUT without a word (``record`` refuses one unless ``--overwrite``)."""
    from stream.cli import main
    from stream.recording import read_recording
    from tests.test_importers import write_muvr
    src = write_muvr(tmp_path / "muvr")
    out = tmp_path / "muvr.csv"
    out.write_text("an earlier recording\n")
    assert main(["import", "muvr", str(src), str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} exists" in err and "--overwrite" in err
    assert out.read_text() == "an earlier recording\n"
    assert main(["import", "muvr", str(src), str(out), "--overwrite"]) == 0
    assert len(read_recording(out)) > 0
    out.unlink()
    assert main(["import", "muvr", str(src), str(out)]) == 0  # a new name needs no option


def _small_file(tmp_path, rows: int = 400) -> tuple[bytes, Recording]:
    from stream.recording import write_recording
    rec = _recording().take(np.arange(rows))
    write_recording(tmp_path / "plain.csv", rec)
    return (tmp_path / "plain.csv").read_bytes(), rec


def test_gzip_compressed_recordings_are_read_whatever_their_name(tmp_path, capsys):
    """``evaluate --data base.csv.gz`` said "base.csv.gz:1: not UTF-8 text (invalid start byte)"."""
    import gzip

    from stream.cli import main
    from stream.recording import RecordingError, read_recording
    text, rec = _small_file(tmp_path)
    plain = read_recording(tmp_path / "plain.csv")
    for name in ("rec.csv.gz", "named_plain.csv"):
        (tmp_path / name).write_bytes(gzip.compress(text))
        got = read_recording(tmp_path / name)
        assert np.array_equal(got.t, plain.t) and np.array_equal(got.acc, plain.acc)
        assert np.array_equal(got.gyro, plain.gyro) and got.label.tolist() == plain.label.tolist()
    # errors keep naming the line: a bad number, text that is not UTF-8, compressed data cut short
    lines = text.split(b"\n")
    bad = lines[:300] + [lines[300].replace(b"dense,", b"dense,x")] + lines[301:]
    (tmp_path / "bad.csv.gz").write_bytes(gzip.compress(b"\n".join(bad)))
    with pytest.raises(RecordingError, match=r"bad\.csv\.gz:301: column 't' is not a number"):
        read_recording(tmp_path / "bad.csv.gz")
    latin = lines[:200] + [lines[200].replace(b"squat", "squät".encode("latin-1"))] + lines[201:]
    (tmp_path / "latin.csv.gz").write_bytes(gzip.compress(b"\n".join(latin)))
    with pytest.raises(RecordingError, match=r"latin\.csv\.gz:201: not UTF-8 text"):
        read_recording(tmp_path / "latin.csv.gz")
    whole = gzip.compress(text)
    (tmp_path / "cut.csv.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(RecordingError, match=r"cut\.csv\.gz:\d+: gzip-compressed data damaged or cut short"):
        read_recording(tmp_path / "cut.csv.gz")
    # through the command line, as the probe ran it
    assert main(["evaluate", "--data", str(tmp_path / "rec.csv.gz"), "--json"]) == 0
    assert "not UTF-8" not in capsys.readouterr().err


def test_evaluate_with_no_window_says_why_and_fails(tmp_path, capsys):
    """A file where no device is as long as one window: "0 labelled windows (0 in all)", accuracy None, exit 0."""
    from models.checkpoint import default_model_path, load_checkpoint
    from stream.cli import main
    from stream.recording import write_recording
    model, _ = load_checkpoint(default_model_path())
    seconds = model.config.window / model.config.rate
    n = 20  # 0.4 s at 50 Hz each
    assert n / 50.0 < seconds
    devices = np.repeat([f"d{k}" for k in range(5)], n)
    t = 1000.0 + np.tile(np.arange(n) / 50.0, 5)
    acc = np.tile(np.float32([0, 0, 9.81]), (len(t), 1))
    write_recording(tmp_path / "short.csv", Recording(device=devices, t=t, acc=acc, label=np.full(len(t), "squat")))
    for extra in ([], ["--json"]):
        assert main(["evaluate", "--data", str(tmp_path / "short.csv"), *extra]) == 2
        out, err = capsys.readouterr()
        assert "no device has a window's worth of samples" in err and f"({seconds:g} s)" in err, err
        assert "d0, covers 0.38 s" in err and f"{tmp_path / 'short.csv'}: nothing to evaluate" in err and out == ""


def _doubtful(n: int = 3000) -> Recording:
    """Four devices of 60 s at 50 Hz: one right, one in g, one at whole-second times, one whose t never advances."""
    rng = np.random.default_rng(1)
    t = 1000.0 + np.arange(n) / 50.0
    times = {"good": t, "in-g": t, "whole": np.floor(t), "still": np.full(n, 1000.0)}
    device = np.concatenate([np.full(n, d) for d in times])
    acc = (rng.normal(0, 2, (4 * n, 3)) + [0, 0, 9.81]).astype(np.float32)
    acc[n:2 * n] /= 9.80665
    label = np.tile(np.repeat(["squat", "rest", "walking"], n // 3), 4)
    return Recording(device=device, t=np.concatenate(list(times.values())), acc=acc, label=label)


def test_implausible_recordings_are_warned_of_device_by_device(tmp_path, caplog, capsys):
    """Units of g, whole-second times and a device whose t never advances were read without a word (the last
    left out of evaluate: 59 of 60 windows)."""
    import logging

    from stream.cli import main
    from stream.recording import read_recording, write_recording
    path = tmp_path / "doubtful.csv"
    write_recording(path, _doubtful())
    with caplog.at_level(logging.WARNING, logger="stream.recording"):
        read_recording(path)
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 3, lines
    said = {line.split("device ")[1].split(":")[0]: line for line in lines}
    assert set(said) == {"in-g", "whole", "still"}
    assert "units look like g, not m/s²" in said["in-g"]
    assert "t takes only 60 distinct values over 3000 rows" in said["whole"]
    assert "t never advances" in said["still"]
    caplog.clear()
    # warnings only: evaluate still scores the rest, exit 0
    assert main(["evaluate", "--data", str(path), "--json"]) == 0
    assert sum("t never advances" in r.getMessage() for r in caplog.records) == 1


def test_train_says_nothing_could_be_validated_and_why(tmp_path, capsys):
    """train printed "validation accuracy None, macro F1 None ... on held-out people v-000" where the person held
    out (a device whose t never advances) gave no window to validate on."""
    from stream.cli import main
    from stream.recording import write_recording
    rec = _doubtful()
    rec = rec.take(np.isin(rec.device, ["good", "still"]))
    rec.device = np.where(rec.device == "still", "v-000", "v-001")  # as the probe's file: v-000 held out
    write_recording(tmp_path / "train.csv", rec)
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m.pt"), "--epochs", "1",
                 "--max-minutes", "0.03", "--hidden", "8", "--layers", "1", "--quiet", "--no-orientation"]) == 0
    out = capsys.readouterr().out
    assert "validation accuracy None" not in out
    assert "nothing could be validated: held-out people v-000 gave no labelled window of 50 samples at 25 Hz" in out


def test_replay_checks_the_broker_before_reading_the_file(tmp_path, monkeypatch, capsys):
    """replay read a 200 MB file (72 s, 1.7 GB) before it found the broker did not answer."""
    import stream.recording
    from stream.cli import main

    def read_recording(path):
        raise AssertionError("read before the broker was tried")
    monkeypatch.setattr(stream.recording, "read_recording", read_recording)
    assert main(["replay", "--broker", "mqtt://127.0.0.1:1", "--quiet", str(tmp_path / "big.csv")]) == 2
    assert "cannot connect to MQTT broker at mqtt://127.0.0.1:1" in capsys.readouterr().err


@pytest.mark.broker
def test_replay_from_the_command_line_still_sends_the_file(tmp_path, broker_url, capsys):
    from stream.cli import main
    from stream.recording import write_recording
    rec = _recording().take(np.arange(500))
    write_recording(tmp_path / "r.csv", rec)
    assert main(["replay", "--broker", str(broker_url), "--prefix", f"hartest{uuid.uuid4().hex[:8]}", "--speed",
                 "0", "--quiet", str(tmp_path / "r.csv")]) == 0
    assert capsys.readouterr().out.startswith("replayed 500 samples of 1 devices")
    assert main(["replay", "--broker", str(broker_url), "--quiet", str(tmp_path / "missing.csv")]) == 2
    assert "cannot open" in capsys.readouterr().err


def test_reading_a_recording_holds_a_few_times_its_size_not_eight(tmp_path, monkeypatch):
    """A 200 MB file took 1.7 GB to read (its rows as tuples of floats and a string per field and row); the
    numbers now go into arrays every _BLOCK rows, the text fields share one copy per value. Measured here with
    tracemalloc, blocks made small so that a small file spans many: 6.8 times the file's size before, 2.5 now."""
    import tracemalloc

    import stream.recording
    from stream.recording import read_recording, write_recording
    rec = _recording()
    rec = rec.take(np.flatnonzero(rec.device == "dense"))
    write_recording(tmp_path / "r.csv", rec.take(np.arange(len(rec))))
    size = (tmp_path / "r.csv").stat().st_size
    whole = read_recording(tmp_path / "r.csv")  # one block
    monkeypatch.setattr(stream.recording, "_BLOCK", 512, raising=False)
    tracemalloc.start()
    try:
        got = read_recording(tmp_path / "r.csv")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert len(got) == len(rec) and got.device.tolist() == whole.device.tolist()
    assert all(np.array_equal(getattr(got, k), getattr(whole, k)) for k in ("t", "acc", "gyro", "label"))
    assert peak < 4 * size, peak / size
