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
