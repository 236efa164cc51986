"""The consumer through a real broker: samples in, predictions out, bad payloads counted, never fatal."""

import contextlib
import threading
import time
import uuid

import numpy as np
import orjson
import pytest

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.mqtt import connect
from tests.helpers import wait

pytestmark = pytest.mark.broker


class Collector:
    def __init__(self, url, topics):
        self.messages = []
        self.lock = threading.Lock()
        self.client = connect(url, "test-collect", subscriptions=[(t, 1) for t in topics],
                              on_message=self.on_message)

    def on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload, msg.retain))

    def wait_for(self, predicate, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if predicate(self.messages):
                    return True
            time.sleep(0.05)
        return False

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@contextlib.contextmanager
def serving(consumer, broker_url, topics, client_id):
    """The consumer running in a thread; a Collector on ``topics`` (they must take in the consumer's
    status) once the consumer is online; a publisher. On leaving, the consumer stops, its thread ends
    and it says it is offline."""
    runner = threading.Thread(target=consumer.run)
    runner.start()
    watch = Collector(broker_url, topics)
    pub = None
    try:
        # connect one client at a time: amqtt 0.12 (the embedded broker) can drop a session when clients
        # connect while others subscribe ("dictionary changed size during iteration")
        assert watch.wait_for(lambda m: any(t.endswith("/status") and p == b"online" for t, p, _ in m))
        pub = connect(broker_url, client_id)
        yield watch, pub
    finally:
        consumer.stop()
        runner.join(15)
        if pub is not None:
            pub.disconnect()
            pub.loop_stop()
    assert not runner.is_alive()
    assert watch.wait_for(lambda m: any(t.endswith("/status") and p == b"offline" for t, p, _ in m))
    watch.close()


def imu(seq, t0, n, rate=50.0, z=9.81):
    t = t0 + np.arange(n) / rate
    acc = np.stack([np.sin(7 * t), np.cos(5 * t), z + np.sin(3 * t)], axis=1)
    return orjson.dumps({"seq": seq, "t": t.round(4).tolist(), "acc": acc.round(4).tolist()}), t, acc


def test_consumer_end_to_end(broker_url, tiny_model):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    consumer = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, metrics_interval=0.5),
                        StatefulClassifier(tiny_model, "tiny"))
    topics = [f"{prefix}/+/prediction", f"{prefix}/_consumer/+/+"]
    with serving(consumer, broker_url, topics, "test-pub") as (watch, pub):
        devices = ["dev-a", "dev-b", "dev-c"]
        sent = {d: [] for d in devices}
        # 4 s at 50 Hz per device in 0.2 s messages, plus a malformed payload of every kind in between
        bad = [(f"{prefix}/dev-a/imu", b"{oops"), (f"{prefix}/dev-a/imu", b"[]"),
               (f"{prefix}/bad id/imu", imu(0, 0, 5)[0]), (f"{prefix}/dev-b/imu", b'{"seq": 1, "acc": [[1,2]]}')]
        for k in range(20):
            for d in devices:
                body, t, acc = imu(k, 100.0 + 0.2 * k, 10)
                sent[d].append((t, acc))
                pub.publish(f"{prefix}/{d}/imu", body, qos=1)
            if k < len(bad):
                pub.publish(*bad[k], qos=1)
        pub.publish(f"{prefix}/dev-c/imu", imu(19, 200.0, 10)[0], qos=1)  # repeated seq
        pub.publish(f"{prefix}/dev-c/imu", imu(25, 104.0, 10)[0], qos=1).wait_for_publish(5)  # 5 lost messages
        # 4 s of 25 Hz grid = 100 samples = 5 windows of 20 per device
        ok = watch.wait_for(lambda m: sum(t.endswith("/prediction") for t, _, _ in m) >= 15)
        assert ok, f"predictions: {[t for t, _, _ in watch.messages]}"
        time.sleep(1.0)  # let a metrics message go out after everything was handled
        preds = [orjson.loads(p) for t, p, _ in watch.messages if t.endswith("/prediction")]
        by_device = {d: [p for p in preds if p["device"] == d] for d in devices}
        assert all(len(v) == 5 for v in by_device.values()), {d: len(v) for d, v in by_device.items()}
        for p in preds:
            assert set(p) >= {"device", "t", "label", "confidence", "probs", "model", "latency_ms"}
            assert p["label"] in tiny_model.config.classes and p["model"] == "tiny"
            assert abs(sum(p["probs"].values()) - 1) < 1e-3 and p["latency_ms"] >= 0
        # same answers as the stateful classifier run offline on the same windows
        offline = StatefulClassifier(tiny_model)
        from stream.buffers import DeviceBuffer
        buf = DeviceBuffer("dev-a", 25.0, 20)
        windows = [w for t, acc in sent["dev-a"] for w in buf.push(t, acc, 0.0)]
        expected = [offline.classify(["dev-a"], w.samples[None])[0] for w in windows]
        got = [np.array([p["probs"][c] for c in tiny_model.config.classes]) for p in by_device["dev-a"]]
        np.testing.assert_allclose(np.stack(got), np.stack(expected), atol=2e-4)
        rejected = consumer.stats.rejected
        assert rejected["bad_json"] == 1 and rejected["not_object"] == 1
        assert rejected["bad_device"] == 1 and rejected["bad_shape"] == 1 and rejected["repeated_seq"] == 1
        assert consumer.sequence.lost_samples == 50
        metrics = [orjson.loads(p) for t, p, _ in watch.messages if t.endswith("/metrics")]
        assert metrics and metrics[-1]["rejected"]["bad_json"] == 1 and metrics[-1]["devices"] == 3


def test_phone_formats_through_adapters(broker_url, tiny_model):
    """A Sensor Logger phone and an Android sensor app, through their adapters, get predictions."""
    tag = uuid.uuid4().hex[:8]
    consumer = Consumer(ConsumerConfig(broker=broker_url, prefix=f"hartest{tag}", learn=False, reorder=0.2,
                                       adapters=(f"sl{tag}/+ = sensor_logger", f"an{tag}/+ = android")),
                        StatefulClassifier(tiny_model, "tiny"))
    runner = threading.Thread(target=consumer.run)
    runner.start()
    deadline = time.monotonic() + 20
    while not (consumer._client and consumer._client.is_connected()) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # one client at a time (see above)
    watch = Collector(broker_url, [f"hartest{tag}/+/prediction"])
    time.sleep(0.3)
    pub = connect(broker_url, "test-phone")
    try:
        t0 = 1_700_000_000_000_000_000  # ns since the epoch (Sensor Logger) / since boot (Android)
        for k in range(10):  # 2 s of 50 Hz in 0.2 s batches
            payload = [{"name": "totalacceleration", "time": t0 + (10 * k + i) * 20_000_000,
                        "values": {"x": 0.1, "y": 0.2, "z": 9.8}} for i in range(10)]
            pub.publish(f"sl{tag}/phone-1", orjson.dumps({"messageId": k, "sessionId": "s", "deviceId": "x",
                                                         "payload": payload}), qos=1)
            for i in range(10):
                pub.publish(f"an{tag}/watch-2", orjson.dumps({"type": "android.sensor.accelerometer",
                                                             "timestamp": (10 * k + i) * 20_000_000,
                                                             "values": [0.0, 9.8, 0.5]}), qos=1)
        pub.publish(f"sl{tag}/phone-1", b"not json", qos=1).wait_for_publish(5)
        assert watch.wait_for(lambda m: {orjson.loads(p)["device"] for t, p, _ in m
                                         if t.startswith(f"hartest{tag}/")} == {"phone-1", "watch-2"})
        # published last: the predictions of the windows before can come before it is handled (seen under load)
        assert wait(lambda: consumer.stats.rejected["bad_json"] == 1, timeout=10), consumer.stats.rejected
    finally:
        consumer.stop()
        runner.join(15)
        pub.disconnect()
        pub.loop_stop()
        watch.close()


def test_a_sensor_turned_mid_set_is_published_as_drift(broker_url, tiny_model):
    """Through the broker: a labelled set whose sensor turns 90° on its fifth window (before the
    per-class check trusts a direction for the class) gets a drift message on the device's drift topic,
    from the check within the run of steadily moving windows (it needs no labels, and comes first) and
    from the within-set check when the labels resolve (repeated within the cooldown, so counted, not
    published again); its twin, not turned, gets none, and so does a third, turned the same way but
    held still (the consumer gives the monitor each window's motion: a posture has no orientation of its
    own to check)."""
    tag = uuid.uuid4().hex[:8]
    prefix = f"hartest{tag}"
    consumer = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, learn=False, label_lateness=1.0),
                        StatefulClassifier(tiny_model, "tiny"))
    turn = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # 90° about x (the forearm)
    topics = [f"{prefix}/+/drift", f"{prefix}/_consumer/+/status"]
    with serving(consumer, broker_url, topics, "test-turn") as (watch, pub):
        for device in ("turned", "steady", "still"):
            pub.publish(f"{prefix}/{device}/label", orjson.dumps({"label": "squat", "t": 100.0}), qos=1)
        time.sleep(0.3)
        for k in range(60):  # 12 s at 50 Hz in 0.2 s messages; the tiny model's windows are 0.8 s
            t = 100.0 + 0.2 * k + np.arange(10) / 50.0
            reps = np.sin(2 * np.pi * 2.5 * t)[:, None] * np.array([0.5, 2.0, 1.5])  # 2 a window, 1.8 m/s²
            acc = np.array([2.0, 9.0, 3.0]) + reps
            for device in ("turned", "steady", "still"):
                sample = acc - reps if device == "still" else acc
                sample = sample @ turn.T if device != "steady" and t[0] >= 100.0 + 4 * 0.8 else sample
                pub.publish(f"{prefix}/{device}/imu", orjson.dumps(
                    {"seq": k, "t": t.round(4).tolist(), "acc": sample.round(4).tolist()}), qos=1)
        assert watch.wait_for(lambda m: any(t.endswith("/turned/drift") for t, _, _ in m)), watch.messages
        time.sleep(1.0)
        drifts = [(t, orjson.loads(p)) for t, p, _ in watch.messages if t.endswith("/drift")]
        assert [t for t, _ in drifts] == [f"{prefix}/turned/drift"]
        event = drifts[0][1]
        assert event["signal"] == "orientation" and event["detector"] in ("run", "set")
        assert event["value"] > 60
        assert 100.0 + 5 * 0.8 <= event["t"] <= 100.0 + 7 * 0.8
        counts = consumer.monitor.event_counts
        assert {"run:orientation", "set:orientation:repeated"} <= set(counts), counts


def test_retained_messages_of_other_clients_subscriptions_are_not_counted(embedded_broker, tiny_model):
    """amqtt (the demo's broker) sends a connecting client the retained messages matching any subscription
    in the broker, a dashboard's included: the consumer takes them for nothing, and counts no bad topic."""
    prefix = f"hf{uuid.uuid4().hex[:6]}"
    pub = connect(embedded_broker, "foreign-pub")
    pub.publish(f"{prefix}/_consumer/other/metrics", b'{"x": 1}', qos=1, retain=True).wait_for_publish(5)
    pub.publish(f"{prefix}/dev1/status", b"online", qos=1, retain=True).wait_for_publish(5)
    got = []
    dash = connect(embedded_broker, "foreign-dash", on_message=lambda c, u, m: got.append(m.topic),
                   subscriptions=[(f"{prefix}/_consumer/+/metrics", 1), (f"{prefix}/+/status", 1)])
    time.sleep(0.5)
    consumer = Consumer(ConsumerConfig(broker=embedded_broker, prefix=prefix, learn=False, metrics_interval=0.5),
                        StatefulClassifier(tiny_model, "tiny"))
    runner = threading.Thread(target=consumer.run)
    runner.start()
    try:
        deadline = time.monotonic() + 10
        while consumer._client is None and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2)  # what the broker sends on connection has come by now
        assert f"{prefix}/_consumer/other/metrics" in got  # the dashboard's subscription holds it
        assert not consumer.stats.rejected
    finally:
        consumer.stop()
        runner.join(15)
        for c in (pub, dash):
            c.disconnect()
            c.loop_stop()
