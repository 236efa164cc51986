"""The dashboard: its bounded live store, its MQTT feed through a real broker, and every page (AppTest)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

from dashboard.live import ALL_DEVICES, LiveFeed, LiveStore
from stream.mqtt import connect
from tests.helpers import wait

APP = str(Path(__file__).resolve().parents[1] / "dashboard" / "app.py")
PAGES = ["pages/overview.py", "pages/device.py", "pages/drift.py", "pages/model.py", "pages/label.py"]
CLASSES = ["rest", "squat", "walking"]


def imu(seq: int, t0: float, n: int = 10, rate: float = 50.0) -> bytes:
    t = t0 + np.arange(n) / rate
    acc = np.stack([np.sin(t), np.cos(t), 9.81 + 0 * t], axis=1)
    return orjson.dumps({"seq": seq, "t": t.round(4).tolist(), "acc": acc.round(4).tolist()})


def prediction(t: float, label: str = "squat", confidence: float = 0.8) -> bytes:
    rest = (1 - confidence) / (len(CLASSES) - 1)
    probs = {c: confidence if c == label else rest for c in CLASSES}
    return orjson.dumps({"device": "x", "t": t, "label": label, "confidence": confidence, "probs": probs,
                         "model": "v1", "latency_ms": 4.2})


def metrics(online: bool = True) -> bytes:
    body = {"samples_per_s": 150.0, "windows_per_s": 1.5, "devices": 3,
            "latency_ms": {"p50": 4.0, "p95": 8.0, "p99": 9.5, "max": 12.0}, "messages": 900, "windows": 90,
            "rejected": {"bad_json": 2}, "dropped": 0, "lost_samples": 20, "late_samples": 1, "queue": 0,
            "model": "v1"}
    if online:
        body["learner"] = {"updates": 4, "skipped": 0, "dropped": 7, "adapter_updates": 12, "alive": False,
                           "rested_s": 1.5, "windows": 0, "serving_accuracy": None,
                           "challenger_accuracy": None}
        body["online"] = {"accuracy": 0.8, "kappa": 0.7, "rolling_accuracy": 0.75, "estimated_accuracy": 0.72,
                          "per_class_recall": {"rest": 0.9, "squat": 0.7, "walking": 0.8},
                          "confusion": {"labels": CLASSES, "matrix": [[9, 1, 0], [2, 7, 1], [0, 2, 8]]}}
    return orjson.dumps(body)


# -- the store, without a broker ------------------------------------------------------------------
def test_a_prediction_published_again_after_a_restart_is_one_point():
    store = LiveStore("har")
    for t in (100.0, 102.0, 104.0):
        store.handle("har/dev-a/prediction", prediction(t), now=1000.0 + t)
    for t in (102.0, 104.0, 106.0):  # a restarted consumer repeats its last cycle, then goes on
        store.handle("har/dev-a/prediction", prediction(t), now=1010.0 + t)
    assert [p.t for p in store.device("dev-a").predictions] == [100.0, 102.0, 104.0, 106.0]
    assert store.counters()["received"]["duplicate_prediction"] == 2


def test_store_parses_every_kind():
    store = LiveStore("har")
    store.handle("har/dev-a/imu", imu(0, 100.0), now=1000.0)
    store.handle("har/dev-a/prediction", prediction(100.2), now=1000.1)
    store.handle("har/dev-a/label", b'{"label": "squat", "t": 99.0}', now=1000.2)
    store.handle("har/dev-a/label", b'{"label": "rest", "start": 90.0, "end": 95.0}', now=1000.2)
    drift = {"detector": "adwin", "signal": "confidence", "t": 100.1, "value": 0.4}
    store.handle("har/dev-a/drift", orjson.dumps(drift), now=1000.3)
    store.handle("har/dev-a/status", b"online", now=1000.4)
    store.handle("har/_consumer/c1/status", b"online")
    store.handle("har/_consumer/c1/metrics", metrics())
    overall = {"device": "_all", "detector": "FHDDM", "signal": "error", "t": 100.0, "value": 0.5,
               "needs_labels": False}
    store.handle("har/_consumer/c1/drift", orjson.dumps(overall), now=999.0)
    model = {"serving": "v1", "versions": [{"version": "v1", "promoted": True}]}
    store.handle("har/_consumer/c1/model", orjson.dumps(model))
    store.handle("har/_consumer/c1/training", b'{"t": 5, "version": "v2", "loss": 0.5, "grad_norm": 3.0, '
                                              b'"clipped": true, "skipped": false}')
    assert store.counters()["malformed"] == {}

    (row,) = store.devices(now=1001.0)
    assert (row.device, row.status, row.label, row.confidence) == ("dev-a", "online", "squat", 0.8)
    assert row.model == "v1"
    assert row.truth == "rest"  # the latest label received
    assert (row.drift_recent, row.last_drift, row.last_seen) == (1, "adwin/confidence", 1000.4)

    view = store.device("dev-a")
    assert view.trace_t.shape == (10,) and view.trace_acc.shape == (10, 3)
    assert view.device_time == pytest.approx(100.2)
    assert view.truth_at(99.5) == "squat" and view.truth_at(92.0) == "rest" and view.truth_at(80.0) is None
    (p,) = view.predictions
    assert p.classes == tuple(CLASSES) and p.probs.dtype == np.float32 and p.latency_ms == 4.2
    assert store.classes("dev-a") == tuple(CLASSES) and store.classes() == tuple(CLASSES)
    assert store.classes("nobody") == tuple(CLASSES)  # falls back to any device's model
    assert store.device_now("dev-a", now=1003.1) == pytest.approx(100.2 + 3.0)
    assert store.device_now("nobody") is None and store.device("nobody") is None

    (consumer,) = store.consumers()
    assert consumer.status == "online" and consumer.metrics["online"]["kappa"] == 0.7
    assert consumer.model["serving"] == "v1" and consumer.training[0].clipped
    assert store.drift()[0][0] == ALL_DEVICES and store.drift()[0][1].detector == "FHDDM"
    assert store.drift()[1][0] == "dev-a" and not store.drift()[1][1].needs_labels


def test_store_ignores_and_counts_malformed_payloads():
    store = LiveStore("har")
    bad = {
        ("har/dev-a/prediction", b"{oops"): "prediction/bad_json",
        ("har/dev-a/prediction", b"[1, 2]"): "prediction/not_object",
        ("har/dev-a/prediction", b'{"t": 1, "label": "x", "confidence": 2, "probs": {}}'):
            "prediction/bad_confidence",
        ("har/dev-a/prediction", b'{"t": 1, "label": "x", "confidence": 0.5, "probs": {"a": "b"}}'):
            "prediction/bad_probs",
        ("har/dev-a/prediction", b'{"t": "soon", "label": "x", "confidence": 0.5}'): "prediction/bad_t",
        ("har/dev-a/prediction", b'{"t": 1, "label": "", "confidence": 0.5}'): "prediction/bad_label",
        ("har/dev-a/imu", b'{"seq": 1, "acc": [[1, 2]], "t": [0]}'): "imu/bad_shape",
        ("har/dev-a/imu", b'{"seq": 1, "acc": [[1, 2, 3]], "t": [NaN]}'): "imu/bad_json",
        ("har/dev-a/label", b'{"label": "squat"}'): "label/bad_t",
        ("har/dev-a/label", b'{"label": "squat", "start": 5, "end": 1}'): "label/bad_t",
        ("har/dev-a/drift", b'{"detector": "adwin", "t": 1}'): "drift/bad_signal",
        ("har/dev-a/status", b"maybe"): "status/bad_status",
        ("har/bad id!/status", b"online"): "status/bad_device",
        ("har/dev-a/whatever", b"{}"): "other/unknown_kind",  # kinds outside the contract: "other"
        ("har/dev-a/imu/extra", b"{}"): "other/bad_topic",
        ("har/_consumer/c1/metrics", b"not json"): "metrics/bad_json",
        ("har/_consumer/c1/model", b'{"versions": 3}'): "model/bad_versions",
        ("har/_consumer/c1/training", b'{"loss": "high"}'): "training/bad_loss",
    }
    for (topic, payload), _ in bad.items():
        store.handle(topic, payload)  # never raises
    store.handle("other/dev-a/imu", imu(0, 0.0))
    counters = store.counters()
    expected = {}
    for reason in [*bad.values(), "other/bad_topic"]:
        expected[reason] = expected.get(reason, 0) + 1
    assert counters["malformed"] == expected
    # nothing was kept from the bad ones but the device entries they could not create
    assert all(not d.predictions and not d.labels for d in map(store.device, store.device_ids()))
    assert counters["consumers"] == 0


def test_store_memory_is_bounded():
    store = LiveStore("har", max_devices=3, max_consumers=1, trace_seconds=2.0, max_trace_samples=150,
                      max_predictions=5, max_labels=2, max_drift=2, max_metrics=3, max_training=4,
                      max_payload=2000)
    for k in range(5):
        store.handle(f"har/dev-{k}/status", b"online")
    assert store.device_ids() == ["dev-0", "dev-1", "dev-2"]
    for k in range(40):  # 8 s at 50 Hz, in 0.2 s messages
        store.handle("har/dev-0/imu", imu(k, 0.2 * k))
        store.handle("har/dev-0/prediction", prediction(0.2 * k))
        store.handle("har/dev-0/label", orjson.dumps({"label": "squat", "t": k}))
        store.handle("har/dev-0/drift", orjson.dumps({"detector": "d", "signal": "s", "t": k}))
        store.handle(f"har/_consumer/c{k % 2}/metrics", metrics())
        store.handle("har/_consumer/c0/training", b'{"t": 1, "loss": 0.1}')
    view = store.device("dev-0")
    # the last 2 s of device time, give or take a message
    assert 2.0 <= view.trace_t[-1] - view.trace_t[0] <= 2.2 and len(view.trace_t) <= 150
    assert len(view.predictions) == 5 and view.predictions[-1].t == pytest.approx(7.8)
    assert len(view.labels) == 2 and len(view.drift) == 2
    (consumer,) = store.consumers()
    assert consumer.consumer == "c0" and len(consumer.history) == 3 and len(consumer.training) == 4
    store.handle("har/dev-0/imu", b" " * 2001)
    counters = store.counters()
    assert counters["dropped"] == {"too_many_devices": 2, "too_many_consumers": 20, "oversize": 1}
    assert counters["trace_samples"] == len(view.trace_t)
    # a device whose clock starts again (a restart, a replay) gets a fresh trace
    store.handle("har/dev-0/imu", imu(0, 0.0))
    assert store.device("dev-0").trace_t[0] == 0.0 and len(store.device("dev-0").trace_t) == 10


def test_docstring_examples():
    import doctest

    import dashboard.live
    assert doctest.testmod(dashboard.live).failed == 0


def test_a_full_store_makes_room_for_new_devices_by_forgetting_silent_ones():
    store = LiveStore("har", max_devices=2, evict_after=60.0)
    store.handle("har/gone/status", b"online", now=0.0, retained=True)  # never heard from: no last_seen
    store.handle("har/busy/status", b"online", now=0.0)
    store.handle("har/old/status", b"online", now=0.0)  # replaces "gone" at once
    assert store.device_ids() == ["busy", "old"] and store.devices()[0].last_seen == 0.0
    store.handle("har/busy/status", b"online", now=50.0)
    store.handle("har/new-1/status", b"online", now=55.0)  # "old" silent for 55 s only: dropped
    assert store.device_ids() == ["busy", "old"]
    store.handle("har/old/status", b"online", now=70.0)  # heard from again: now "busy" is the oldest
    store.handle("har/new-2/status", b"online", now=115.0)  # "busy" silent for 65 s: forgotten
    assert store.device_ids() == ["new-2", "old"]
    counters = store.counters()
    assert counters["dropped"] == {"too_many_devices": 1} and counters["evicted_devices"] == 2


def test_store_validates_its_settings():
    with pytest.raises(ValueError, match="prefix"):
        LiveStore("har/#")
    with pytest.raises(ValueError, match="max_devices"):
        LiveStore(max_devices=0)
    with pytest.raises(ValueError, match="trace_seconds"):
        LiveStore(trace_seconds=0)


def test_feed_refuses_bad_requests_and_reports_no_broker():
    from stream.mqtt import BrokerURL
    feed = LiveFeed(BrokerURL.parse("mqtt://127.0.0.1:9"), "har", retry_seconds=60).start()  # nothing listens
    assert not feed.connected and "cannot connect" in feed.error
    with pytest.raises(ValueError, match="device"):
        feed.publish_label("bad id", "squat")
    with pytest.raises(ValueError, match="label"):
        feed.publish_label("dev-a", "")
    with pytest.raises(ValueError, match="action"):
        feed.send_command("c1", "delete", "v1")
    with pytest.raises(ValueError, match="version"):
        feed.send_command("c1", "rollback")
    with pytest.raises(ConnectionError):
        feed.publish_label("dev-a", "squat")


# -- through a real broker ------------------------------------------------------------------------
class Collector:
    def __init__(self, url, topics):
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = connect(url, "test-dashboard-collect", subscriptions=[(t, 1) for t in topics],
                              on_message=self._on_message)

    def _on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def wait_for(self, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [(t, p) for t, p in self.messages if predicate(t, p)]
            if found:
                return found
            time.sleep(0.05)
        return []

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


def publish_scene(url, prefix, devices=("dev-a", "dev-b", "dev-c")) -> float:
    """Samples, predictions, labels, drift and status of ``devices`` and one consumer; returns device time."""
    pub = connect(url, "test-dashboard-pub")
    t0 = time.time() - 10.0
    try:
        for d in devices:
            pub.publish(f"{prefix}/{d}/status", b"online", qos=1, retain=True)
            for k in range(50):
                pub.publish(f"{prefix}/{d}/imu", imu(k, t0 + 0.2 * k), qos=1)
            for k in range(5):
                pub.publish(f"{prefix}/{d}/prediction", prediction(t0 + 2 * (k + 1), CLASSES[k % 3]), qos=1)
            pub.publish(f"{prefix}/{d}/label", orjson.dumps({"label": "squat", "t": t0 + 1}), qos=1)
        pub.publish(f"{prefix}/dev-a/drift", orjson.dumps({"detector": "adwin", "signal": "confidence",
                                                           "t": t0 + 6, "value": 0.3}), qos=1)
        pub.publish(f"{prefix}/dev-a/imu", b"{not json", qos=1)
        consumer = f"{prefix}/_consumer/c1"
        pub.publish(f"{consumer}/status", b"online", qos=1, retain=True)
        for _ in range(3):
            pub.publish(f"{consumer}/metrics", metrics(), qos=1)
        pub.publish(f"{consumer}/model", orjson.dumps({"serving": "v2", "versions": [
            {"version": "v1", "created": t0 - 3600, "metrics": {"accuracy": 0.8}, "promoted": True},
            {"version": "v2", "created": t0, "metrics": {"accuracy": 0.85}, "promoted": True},
        ]}), qos=1, retain=True)
        old = f"{prefix}/_consumer/c0-gone"  # a consumer from an earlier run, as retained messages leave it
        pub.publish(f"{old}/status", b"offline", qos=1, retain=True)
        two_hours_old = orjson.dumps({**orjson.loads(metrics()), "t": t0 - 7200})
        pub.publish(f"{old}/metrics", two_hours_old, qos=1, retain=True)
        for k in range(6):
            step = {"t": t0 + k, "version": "v3", "loss": 1 / (k + 1), "grad_norm": float(k),
                    "clipped": k > 4, "skipped": k == 0}
            pub.publish(f"{consumer}/training", orjson.dumps(step), qos=1).wait_for_publish(5)
    finally:
        for d in devices:  # no retained messages left behind on a shared broker
            pub.publish(f"{prefix}/{d}/status", b"", qos=1, retain=True)
        pub.publish(f"{prefix}/_consumer/c1/status", b"", qos=1, retain=True)
        for topic in ("c1/model", "c0-gone/status", "c0-gone/metrics"):
            pub.publish(f"{prefix}/_consumer/{topic}", b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
    return t0 + 10.0


@pytest.fixture
def prefix():
    return f"hartest{uuid.uuid4().hex[:8]}"


@pytest.fixture
def app_feed(broker_url, prefix, monkeypatch):
    """The feed the app's pages share, for this test's prefix (the one st.cache_resource holds)."""
    monkeypatch.setenv("HARSTREAM_BROKER", f"mqtt://{broker_url.host}:{broker_url.port}")
    monkeypatch.setenv("HARSTREAM_PREFIX", prefix)
    from dashboard.common import _shared_feed, get_feed
    feed = get_feed()
    assert wait(lambda: feed.connected), feed.error
    yield feed
    _shared_feed.clear()  # closes the feed (on_release)


def app_test():
    from streamlit.testing.v1 import AppTest
    return AppTest.from_file(APP, default_timeout=30)


@pytest.mark.broker
def test_feed_through_the_broker(broker_url, prefix):
    feed = LiveFeed(broker_url, prefix).start()
    watch = Collector(broker_url, [f"{prefix}/+/label", f"{prefix}/_consumer/+/command"])
    try:
        assert feed.connected and feed.error is None
        device_time = publish_scene(broker_url, prefix)
        store = feed.store
        assert wait(lambda: store.counters()["received"].get("consumer/training", 0) == 6)
        assert store.device_ids() == ["dev-a", "dev-b", "dev-c"]
        assert store.counters()["malformed"] == {"imu/bad_json": 1}
        assert len(store.device("dev-b").predictions) == 5 and len(store.device("dev-b").trace_t) == 500

        body = feed.publish_label("dev-b", "walking")
        assert body["label"] == "walking" and abs(body["t"] - device_time) < 5.0  # device clock, not wall
        (topic, payload), = watch.wait_for(lambda t, p: t.endswith("/label") and b"walking" in p)
        assert topic == f"{prefix}/dev-b/label" and orjson.loads(payload) == body
        assert wait(lambda: any(lab.label == "walking" for lab in store.device("dev-b").labels))

        assert feed.send_command("c1", "rollback", "v1") == {"action": "rollback", "version": "v1"}
        (topic, payload), = watch.wait_for(lambda t, p: t.endswith("/command"))
        assert topic == f"{prefix}/_consumer/c1/command" and orjson.loads(payload)["action"] == "rollback"
        assert wait(lambda: store.consumers()[0].commands)
    finally:
        watch.close()
        feed.close()


@pytest.mark.broker
def test_every_page_waits_gracefully_without_data(app_feed):
    at = app_test().run()
    assert not at.exception
    for page in PAGES:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        waiting = " ".join(i.value for i in at.info)
        assert "Waiting" in waiting, (page, waiting)


@pytest.mark.broker
def test_every_page_shows_live_data(broker_url, prefix, app_feed):
    watch = Collector(broker_url, [f"{prefix}/+/label", f"{prefix}/_consumer/+/command"])
    try:
        publish_scene(broker_url, prefix)
        store = app_feed.store
        assert wait(lambda: store.counters()["received"].get("consumer/training", 0) == 6)
        at = app_test().run()
        assert not at.exception

        at.switch_page("pages/overview.py").run()
        assert not at.exception
        frame = at.dataframe[0].value
        assert list(frame["exercise"]) == ["squat"] * 3 and set(frame["status"]) == {"● online"}
        shown = {m.label: m.value for m in at.metric}
        assert shown["Samples / s"] == "150" and shown["Latency p99"] == "9.5 ms" and shown["Rejected"] == "2"
        (gone,) = [e for e in at.expander if "offline" in e.label]
        assert gone.label == "1 offline consumer (retained status)" and "2.0 h ago" in gone.markdown[0].value

        at.query_params["device"] = "dev-b"
        at.switch_page("pages/device.py").run()
        assert not at.exception
        assert at.selectbox(key="device_page_device").value == "dev-b"
        assert len(at.get("vega_lite_chart")) == 3  # traces, probabilities, predictions beside labels
        assert {m.label: m.value for m in at.metric}["Exercise (predicted)"] == "squat"

        at.switch_page("pages/drift.py").run()
        assert not at.exception
        shown = {m.label: m.value for m in at.metric}
        assert shown["Cumulative accuracy"] == "80.0%" and shown["Cohen's kappa"] == "0.700"
        assert len(at.get("vega_lite_chart")) == 4  # detections, history, recall, confusion

        at.switch_page("pages/model.py").run()
        assert not at.exception
        assert at.selectbox(key="model_consumer").value == "c1"  # the online one first
        assert list(at.dataframe[0].value["version"]) == ["v1", "v2"]
        assert {m.label: m.value for m in at.metric}["Gradient clipped"] == "1"
        (updates,) = [m for m in at.metric if m.label == "Fine-tuning updates"]
        assert updates.value == "4" and updates.proto.delta == "0 skipped · 12 device-adapter updates"
        (stopped,) = at.error
        assert "learner process has stopped" in stopped.value and "7 sequences dropped" in stopped.value
        assert at.selectbox(key="version-c1").options == ["v1"]  # the earlier versions, not the serving one
        at.button(key="rollback-c1").click().run()
        assert not at.exception and at.success
        (_, payload), = watch.wait_for(lambda t, p: t.endswith("/command"))
        command = orjson.loads(payload)  # with an id of the page's own, named by the consumer's answer
        assert command.pop("id") and command == {"action": "rollback", "version": "v1"}
        at.button(key="promote-c1").click().run()
        (_, payload), = watch.wait_for(lambda t, p: t.endswith("/command") and b"promote" in p)
        command = orjson.loads(payload)
        assert command.pop("id") and command == {"action": "promote"}

        at.query_params["device"] = "dev-c"
        at.switch_page("pages/label.py").run()
        assert not at.exception
        assert [b.key for b in at.button if b.key.startswith("label-")] == [f"label-{c}" for c in CLASSES]
        at.button(key="label-walking").click().run()
        assert not at.exception and "walking" in at.success[0].value
        (topic, payload), = watch.wait_for(lambda t, p: t.endswith("/label") and b"walking" in p)
        assert topic == f"{prefix}/dev-c/label" and orjson.loads(payload)["label"] == "walking"
    finally:
        watch.close()


def test_history_comes_from_the_consumers_event_store(tmp_path):
    from dashboard.live import LiveStore, load_history
    from stream.store import EventStore

    events = EventStore(tmp_path / "events.db")
    for k in range(5):
        events.prediction("dev-1", 100.0 + 2 * k, "squat", 0.9, "v1", 20.0)
    events.label("dev-1", "squat", 99.0, None)
    events.drift({"device": "dev-1", "detector": "ADWIN", "signal": "orientation", "t": 105.0, "value": 70.0,
                  "needs_labels": True})
    assert events.flush()
    events.close()
    store = LiveStore("har")
    assert load_history(store, str(tmp_path / "events.db")) == 7
    view = store.device("dev-1")
    assert len(view.predictions) == 5 and view.predictions[-1].label == "squat"
    assert store.counters()["received"] == {"prediction": 5, "label": 1, "drift": 1}
    assert load_history(LiveStore("har"), str(tmp_path / "missing.db")) == 0


# -- consumer messages of an unexpected shape (found in review) --------------------------------------------
ODD = {  # (kind, body): what a page read and crashed on
    "metrics_latency_number": ("metrics", {"t": 1.0, "latency_ms": 12.5, "samples_per_s": 10}),
    "model_metrics_list": ("model", {"serving": "v1", "versions": [{"version": "v1", "metrics": [0.9]}]}),
    "online_recall_list": ("metrics", {"t": 1.0, "online": {"accuracy": 0.5, "per_class_recall": [0.5]}}),
}


def test_consumer_fields_of_an_unexpected_shape_are_dropped_and_counted():
    store = LiveStore("har")
    for kind, body in ODD.values():
        store.handle(f"har/_consumer/c1/{kind}", orjson.dumps(body))
    store.handle("har/_consumer/c1/metrics", orjson.dumps(
        {"t": 2.0, "online": {"confusion": {"labels": ["a"], "matrix": [["x"]]}, "needing_labels": 3},
         "rejected": {"bad_json": "many"}, "learner": {"dropped": "lots", "alive": False}, "extra": [1]}))
    view, = store.consumers()
    assert view.metrics == {"t": 2.0, "online": {}, "learner": {"alive": False}, "extra": [1]}  # unknown kept
    assert [m for _, m in view.history][:2] == [{"t": 1.0, "samples_per_s": 10},
                                                {"t": 1.0, "online": {"accuracy": 0.5}}]
    assert view.model == {"serving": "v1", "versions": [{"version": "v1"}]}
    assert store.counters()["malformed"] == {"metrics/bad_field": 3, "model/bad_field": 1}
    store.handle("har/_consumer/c1/metrics", metrics())  # the consumer's own: kept whole
    assert store.consumers()[0].metrics == orjson.loads(metrics())


def test_malformed_counter_is_keyed_on_a_fixed_set_of_kinds():
    store = LiveStore("har")
    for k in range(2000):
        store.handle(f"har/dev-a/kind{k}", b"{}")
        store.handle(f"har/dev-a/x/kind{k}", b"{}")
        store.handle(f"har/_consumer/c{k % 3}/kind{k}", b"{}")
    assert store.counters()["malformed"] == {"other/unknown_kind": 4000, "other/bad_topic": 2000}


@pytest.mark.broker
@pytest.mark.parametrize("case, page", [("metrics_latency_number", "overview"), ("model_metrics_list", "model"),
                                        ("online_recall_list", "drift")])
def test_pages_survive_consumer_messages_of_an_unexpected_shape(case, page, app_feed):
    from streamlit.testing.v1 import AppTest
    kind, body = ODD[case]
    app_feed.store.handle(f"{app_feed.prefix}/_consumer/c1/status", b"online")
    app_feed.store.handle(f"{app_feed.prefix}/_consumer/c1/{kind}", orjson.dumps({**body, "t": time.time()}))
    at = AppTest.from_file(str(Path(APP).parent / "pages" / f"{page}.py"), default_timeout=30).run()
    assert not at.exception, [e.value for e in at.exception]
