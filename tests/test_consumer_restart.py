"""Restarts: device state and the fine-tuned model survive, QoS 1 messages kept by the broker arrive,
events are stored in SQLite, idle devices are evicted and come back with their state."""

import json
import threading
import time
import uuid

import pytest
import torch

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.mqtt import connect
from stream.persist import load_state
from stream.store import EventStore
from tests.helpers import imu, wait

pytestmark = pytest.mark.broker


def start(config, model):
    consumer = Consumer(config, StatefulClassifier(model, "tiny"))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    return consumer, thread


def test_restart_resumes_state_and_gets_messages_sent_while_down(broker_url, needs_full_broker, tiny_model, tmp_path):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    # ack_stall: no acknowledgement forced by a quiet spell, whatever the machine's speed
    config = dict(broker=broker_url, prefix=prefix, state_dir=tmp_path, metrics_interval=0.5, learn=False,
                  ack_stall=600.0)
    pub = connect(broker_url, "test-pub")
    consumer, thread = start(ConsumerConfig(**config), tiny_model)
    try:
        assert wait(lambda: consumer._client is not None and consumer._client.is_connected())
        time.sleep(0.3)
        for k in range(10):  # 2 s: one window of 20 samples at 25 Hz... and then some
            pub.publish(f"{prefix}/dev-a/imu", imu(k, 100.0 + 0.2 * k), qos=1)
        assert wait(lambda: consumer.stats.windows >= 2)
        saved_state = consumer.pipeline.classifier.bank.get("dev-a")
    finally:
        consumer.stop()
        thread.join(20)
    assert (tmp_path / "consumer-state.pt").exists() and (tmp_path / "serving.pt").exists()
    consumer_id = consumer.config.consumer_id
    # while the consumer is down, the device goes on; the broker keeps these QoS 1 messages
    for k in range(10, 20):
        pub.publish(f"{prefix}/dev-a/imu", imu(k, 100.0 + 0.2 * k), qos=1).wait_for_publish(5)
    saved = load_state(tmp_path)
    for a, b in zip(saved_state, saved["devices"]["dev-a"], strict=True):
        torch.testing.assert_close(a[:, 0], b)
    # acknowledged after the window: messages 0-6 lie in the two windows published (ending 101.56 s),
    # 7-9 in the partial third, so the broker keeps them, and the next life must accept them again
    assert consumer.after_window and consumer.protocol == "5"
    assert saved["sequences"]["dev-a"] == 6
    assert saved["watermarks"]["dev-a"] == pytest.approx(101.56)
    restarted = Consumer(ConsumerConfig(**config), StatefulClassifier(tiny_model, "tiny"))
    for a, b in zip(saved_state, restarted.pipeline.classifier.bank.get("dev-a"), strict=True):
        torch.testing.assert_close(a, b)  # restored before the first message
    thread = threading.Thread(target=restarted.run)
    thread.start()
    try:
        assert restarted.config.consumer_id == consumer_id  # the same persistent session
        assert wait(lambda: restarted.stats.windows >= 3), restarted.stats.windows  # nothing lost
        assert restarted.sequence.snapshot()["dev-a"] == 19
        assert restarted.stats.rejected == {}
        # message 7 came again but lies wholly in the window published before the stop; 8-19 are new
        assert restarted.acks.counts["redelivered"] == 1
        assert restarted.stats.samples == 120
    finally:
        restarted.stop()
        thread.join(20)
        pub.disconnect()
        pub.loop_stop()
    store = EventStore(tmp_path / "events.db")
    rows = store.query("SELECT device, label, model, t FROM predictions ORDER BY t")
    store.close()
    assert all(r[0] == "dev-a" for r in rows)
    assert rows[0][2] == "tiny"  # after the restart, the restored model is named by its weights' hash
    # every window of the 4 s, once, on one grid across the restart: none lost, none twice
    assert [r[3] for r in rows] == pytest.approx([100.76, 101.56, 102.36, 103.16, 103.96])


def test_idle_devices_are_evicted_and_return_with_their_state(broker_url, tiny_model):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    consumer = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, idle_timeout=0.5, learn=False,
                                       metrics_interval=0.2), StatefulClassifier(tiny_model, "tiny"))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    pub = connect(broker_url, "test-pub")
    try:
        assert wait(lambda: consumer._client is not None and consumer._client.is_connected())
        time.sleep(0.3)
        for k in range(10):
            pub.publish(f"{prefix}/dev-b/imu", imu(k, 50.0 + 0.2 * k), qos=1)
        assert wait(lambda: consumer.stats.windows >= 2)
        state = consumer.pipeline.classifier.bank.get("dev-b")
        assert wait(lambda: "dev-b" not in consumer.pipeline.classifier.bank, timeout=5)
        assert "dev-b" in consumer._evicted and "dev-b" not in consumer.pipeline.buffers
        pub.publish(f"{prefix}/dev-b/imu", imu(10, 52.0), qos=1)
        assert wait(lambda: "dev-b" in consumer.pipeline.classifier.bank)
        for a, b in zip(state, consumer.pipeline.classifier.bank.get("dev-b"), strict=True):
            torch.testing.assert_close(a, b)
    finally:
        consumer.stop()
        thread.join(20)
        pub.disconnect()
        pub.loop_stop()


class _Published:
    rc, mid = 0, 1

    def is_published(self):
        return True


class _NoBroker:
    """Takes what the consumer publishes (its predictions set the resume marks that checkpoints keep)."""

    def __init__(self):
        self.windows = []  # (device, t_end) of every prediction

    def publish(self, topic, payload=b"", *args, **kwargs):
        if topic.endswith("/prediction"):
            body = json.loads(payload)
            self.windows.append((topic.split("/")[1], body["t"]))
        return _Published()

    def is_connected(self):
        return True


def _life(tmp_path, model, **config):
    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path, learn=False, **config),
                        StatefulClassifier(model, "tiny"))
    consumer._client = _NoBroker()
    return consumer


def _send(consumer, device, seq):
    consumer.handle(f"har/{device}/imu", imu(seq, 100.0 + seq, n=25, rate=25.0), time.monotonic())
    consumer._classify()


def test_a_model_of_another_architecture_on_the_same_state_dir_starts_devices_afresh(tiny_model, tmp_path):
    from models.rnn import HARNet, ModelConfig

    first = _life(tmp_path, tiny_model)
    for seq in range(3):
        _send(first, "dev", seq)
    assert "dev" in first.pipeline.classifier.bank
    first.checkpoint(final=True)
    first.store.close()
    other = HARNet(ModelConfig(classes=("rest", "squat", "walking"), hidden=32, layers=1, window=20, hop=20,
                               patch=5, rate=25.0))
    second = _life(tmp_path, other)  # the old states do not fit: refused with a warning, not a crash
    try:
        assert "dev" not in second.pipeline.classifier.bank and "dev" not in second._evicted
        for seq in range(3, 6):
            _send(second, "dev", seq)
        assert "dev" in second.pipeline.classifier.bank
    finally:
        second.store.close()


def test_restored_devices_that_do_not_come_back_are_evicted_and_forgotten_beyond_max_evicted(tiny_model,
                                                                                             tmp_path):
    first = _life(tmp_path, tiny_model)
    for device in ("a", "b", "c"):
        for seq in range(3):
            _send(first, device, seq)
    first.checkpoint(final=True)
    first.store.close()
    second = _life(tmp_path, tiny_model, idle_timeout=0.0, max_evicted=1)
    try:
        assert len(second.pipeline.classifier.bank) == 3
        time.sleep(0.01)
        second._evict_idle()
        assert len(second.pipeline.classifier.bank) == 0 and len(second._evicted) == 1
        second.checkpoint(final=True)
        state = load_state(tmp_path)
        kept = set(state["evicted"])
        assert state["devices"] == {} and len(kept) == 1
        assert set(state["watermarks"]) == set(state["sequences"]) == kept  # the others are forgotten
    finally:
        second.store.close()


def test_a_phone_format_message_sent_again_after_a_restart_resumes_on_the_same_grid(tiny_model, tmp_path):
    """What came through an adapter (here CSV, no seq) and is sent again after a restart is cut where
    the last published window ended, as a native message is: no window is classified twice."""
    import numpy as np

    def csv(t0):
        t = t0 + np.arange(21) / 25.0
        return "\n".join(f"{x:.4f},0.1,0.2,9.8" for x in t).encode()

    first = _life(tmp_path, tiny_model, adapters=("phone/+ = csv",))
    messages = [csv(100.0 + 0.84 * k) for k in range(6)]
    for body in messages:
        first.handle("phone/dev", body, time.monotonic())
        first._classify()
    published = [t for _, t in first._client.windows]
    first.checkpoint(final=True)
    first.store.close()
    second = _life(tmp_path, tiny_model, adapters=("phone/+ = csv",))
    try:
        for body in messages[-2:] + [csv(100.0 + 0.84 * k) for k in range(6, 9)]:  # the last two again
            second.handle("phone/dev", body, time.monotonic())
            second._classify()
        again = [t for _, t in second._client.windows]
        assert again and min(again) > max(published)  # nothing classified twice
        step = 20 / 25.0  # the tiny model's window, s
        assert all(abs((t - published[0]) / step - round((t - published[0]) / step)) < 1e-3 for t in again)
    finally:
        second.store.close()
