"""A recording shorter than 30 s replayed a second time to the same running consumer gave no prediction: its
``seq`` 0 after the first run's last ``seq`` was taken as a new session by the sequence check, but the device's
buffer started a new window grid only where the clock went back more than ``clock_reset`` (30 s), so every
sample of the second run was dropped as late (``late_samples``). A ``seq`` 0 after a higher one that is not the
broker's copy (MQTT DUP) now starts the grid again whatever its clock; the copy still does not."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np
import orjson
import pytest

from models.state import StatefulClassifier
from simulators.replay import replay
from simulators.workout import simulate_recording
from stream.buffers import DeviceBuffer
from stream.consumer import Consumer, ConsumerConfig
from stream.mqtt import connect
from tests.helpers import wait


def _run_twice(broker_url, model, rec, tmp_path=None, labels=False, qos=1):
    """The real replayer publishes ``rec`` twice (as fast as possible) to a running consumer; the predictions
    of each run (device, t), the samples dropped as late, the consumer, and the messages it held unacknowledged
    after each run."""
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    got: list[tuple[str, float]] = []
    watch = connect(broker_url, f"test-watch-{prefix}", subscriptions=[(f"{prefix}/+/prediction", 1)],
                    on_message=lambda c, u, m: got.append((m.topic.split("/")[1], orjson.loads(m.payload)["t"])))
    config = ConsumerConfig(broker=broker_url, prefix=prefix, learn=False, state_dir=tmp_path,
                            metrics_interval=0.2)
    consumer = Consumer(config, StatefulClassifier(model, "tiny"))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    runs, held = [], []
    try:
        assert wait(lambda: consumer._client is not None and consumer._client.is_connected())
        time.sleep(0.3)
        for _ in range(2):
            before = len(got)
            assert replay(rec, broker_url, prefix=prefix, speed=0, labels=labels, qos=qos)["samples"] == len(rec)
            # every message of the run taken (samples counted), then every window it completed published
            assert wait(lambda: consumer.stats.samples >= len(rec) * (len(runs) + 1), timeout=20)
            assert wait(lambda: consumer.pipeline.pending == 0 and not consumer._queue.qsize(), timeout=20)
            n = -1
            while n != len(got):  # predictions still on their way from the broker
                n = len(got)
                wait(lambda n=n: len(got) > n, timeout=1.0)
            runs.append(sorted(got[before:]))
            held.append(len(consumer.acks.held))
        late = consumer.pipeline.late_samples + consumer._late_fills
    finally:
        consumer.stop()
        thread.join(20)
        watch.disconnect()
        watch.loop_stop()
    return runs, late, consumer, held


@pytest.mark.broker
@pytest.mark.parametrize("qos", [1, 0])
def test_a_20_s_recording_replayed_twice_gives_predictions_both_times(broker_url, tiny_model, qos):
    """Real replayer, real consumer, Mosquitto: the second run of a 20 s recording gave 0 predictions (all its
    samples late); now it gives the first run's windows again, on the same times."""
    rec = simulate_recording(1, 20.0, seed=3)
    runs, late, consumer, _ = _run_twice(broker_url, tiny_model, rec, qos=qos)
    first, second = runs
    assert len(first) >= 20  # 0.8 s windows of the tiny model
    assert second == first  # the same windows again: a new session on the recording's own clock
    assert late == 0
    assert consumer.pipeline.buffers["sim-000"].clock_resets == 1


@pytest.mark.broker
def test_replayed_twice_with_labels_to_a_consumer_acknowledging_after_the_window(broker_url, tiny_model, tmp_path):
    """With a state directory (QoS 1 messages held until their windows are published) and the file's labels:
    the first run's messages held for its partial window are let go when the new session starts, and the
    second run's windows are published and stored as rows of their own."""
    rec = simulate_recording(1, 12.0, seed=5)
    runs, late, consumer, held = _run_twice(broker_url, tiny_model, rec, tmp_path=tmp_path, labels=True)
    assert consumer.after_window
    first, second = runs
    assert len(first) >= 10 and second == first
    assert late == 0
    # held after each run: its last messages, of a partial window (till --ack-stall); the first run's were
    # let go when the second began, not left beside the second's
    assert held[1] == held[0] >= 1
    assert consumer.acks.counts["dropped"] == held[0]
    rows = consumer.store.query("SELECT t FROM predictions WHERE device = 'sim-000' ORDER BY t")
    assert len(rows) == 2 * len(first)  # both sessions' windows


def _payload(seq: int, t0: float, n: int, rate: float = 50.0) -> bytes:
    t = t0 + np.arange(n) / rate
    return orjson.dumps({"seq": seq, "t": t, "acc": np.tile([0.0, 0.0, 9.81], (n, 1))},
                        option=orjson.OPT_SERIALIZE_NUMPY)


class _Capture:
    def __init__(self) -> None:
        self.bodies: list[dict] = []

    def publish(self, topic, payload=None, qos=0, retain=False):
        if topic.endswith("/prediction"):
            self.bodies.append(orjson.loads(payload))


def _consumer(tiny_model) -> Consumer:
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="tp", learn=False),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Capture()
    return c


def _session(c: Consumer, seconds: int, dup_first: bool = False) -> None:
    for seq in range(seconds * 5):  # 0.2 s messages from device time 100
        c.handle("tp/dev/imu", _payload(seq, 100.0 + seq * 0.2, 10), time.monotonic(), dup=dup_first and seq == 0)
        c._classify()


def test_a_copy_of_seq_0_the_broker_sends_again_still_starts_no_session(tiny_model):
    """The broker's copy of a session's seq 0 (DUP), after higher seqs, is no new session: it is dropped as a
    redelivery (tests/test_s13_replay2.py) and no window is classified twice."""
    c = _consumer(tiny_model)
    _session(c, 4)
    n = len(c._client.bodies)
    c.handle("tp/dev/imu", _payload(0, 100.0, 10), time.monotonic(), mid=0, qos=1, dup=True)
    c._classify()
    assert len(c._client.bodies) == n
    assert c.pipeline.buffers["dev"].clock_resets == 0
    assert c.pipeline.late_samples == 0 and c.acks.counts["redelivered"] == 1  # dropped as a redelivery


def test_seq_0_not_a_copy_starts_a_new_grid_whatever_its_clock(tiny_model):
    """Without DUP, seq 0 after a higher one 4 s back is a new session: its windows come again, on a grid from
    its first sample; the session before's partial window is dropped."""
    c = _consumer(tiny_model)
    _session(c, 4)
    first = [b["t"] for b in c._client.bodies]
    _session(c, 4)
    second = [b["t"] for b in c._client.bodies][len(first):]
    assert first and second == first
    assert c.pipeline.late_samples == 0
    assert c.sequence.lost_samples == 0


def test_a_new_clock_going_forward_or_no_seq_0_changes_nothing(tiny_model):
    """A seq 0 whose samples come after the buffer's newest goes on as before (the grid goes on); a seq after it
    whose samples are older is late, as before; seq 0 again, its clock back, is a new session."""
    c = _consumer(tiny_model)
    _session(c, 2)
    c.handle("tp/dev/imu", _payload(0, 102.0, 10), time.monotonic())  # right after the last sample
    assert c.pipeline.buffers["dev"].clock_resets == 0
    c.handle("tp/dev/imu", _payload(1, 101.0, 10), time.monotonic())  # after seq 0: taken, but late
    assert c.pipeline.late_samples == 10
    c.handle("tp/dev/imu", _payload(0, 100.0, 10), time.monotonic())  # seq 0 after seq 1, back: new session
    assert c.pipeline.buffers["dev"].clock_resets == 1


def test_buffer_new_clock_restarts_the_grid_at_the_first_sample():
    rate, window = 25.0, 25
    buf = DeviceBuffer("d", rate=rate, window=window)
    t = 100.0 + np.arange(150) / 50
    acc = np.tile([0.0, 0.0, 9.81], (150, 1))
    first = buf.push(t, acc, 0.0)
    assert [w.t_end for w in first] == pytest.approx([100.96, 101.96, 102.96])
    assert buf.push(t[:50], acc[:50], 1.0) == [] and buf.late_samples == 50  # without: late
    again = buf.push(t, acc, 2.0, new_clock=True)
    assert [w.t_end for w in again] == [w.t_end for w in first]
    assert buf.clock_resets == 1 and buf.late_samples == 50
    fresh = DeviceBuffer("e", rate=rate, window=window)
    assert len(fresh.push(t, acc, 0.0, new_clock=True)) == 3 and fresh.clock_resets == 0  # nothing before
