"""Review of the dashboard: defects found and fixed, each with the test that showed it."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from dashboard.live import ALL_DEVICES, LiveStore, load_history


def test_history_of_the_overall_detectors_makes_no_phantom_consumer(tmp_path):
    # the consumer's overall drift detections (device "_all" in its event store) were loaded as messages of a
    # consumer named "history": it was listed beside the real ones, never offline, so the overview no longer
    # warned that no consumer is online and the Model page offered "history" first
    from stream.store import EventStore

    events = EventStore(tmp_path / "events.db")
    events.drift({"device": "_all", "detector": "FHDDM", "signal": "error", "t": 50.0, "value": 0.4,
                  "needs_labels": False})
    events.drift({"device": "dev-1", "detector": "ADWIN", "signal": "confidence", "t": 51.0, "value": 0.3,
                  "needs_labels": True})
    assert events.flush()
    events.close()
    store = LiveStore("har")
    store.handle("har/_consumer/harstream-consumer-abc/status", b"offline", retained=True)
    assert load_history(store, str(tmp_path / "events.db")) == 2
    assert [v.consumer for v in store.consumers()] == ["harstream-consumer-abc"]
    assert store.counters()["consumers"] == 1
    drift = store.drift()
    assert [(device, d.detector) for device, d in drift] == [(ALL_DEVICES, "FHDDM"), ("dev-1", "ADWIN")]


def _history(tmp_path, device="dev-1"):
    from stream.store import EventStore

    events = EventStore(tmp_path / "events.db")
    for k in range(3):
        events.prediction(device, 100.0 + 2 * k, "squat", 0.9, "v1", 20.0)
    assert events.flush()
    events.close()
    return str(tmp_path / "events.db")


def test_the_label_page_offers_the_models_classes_for_a_device_known_from_history(tmp_path):
    # the event store keeps only a prediction's top class, so a device known from history had one class
    # ("squat"): the Label page showed one button. Its classes are those of the model (any live device's),
    # or none known (the page then offers the simulator's exercises)
    store = LiveStore("har")
    load_history(store, _history(tmp_path))
    assert store.classes("dev-1") == ()
    assert store.classes() == ()
    probs = {"rest": 0.1, "squat": 0.7, "walking": 0.2}
    store.handle("har/dev-2/prediction", orjson.dumps({"t": 5.0, "label": "squat", "confidence": 0.7,
                                                       "probs": probs, "model": "v1"}))
    assert store.classes("dev-1") == ("rest", "squat", "walking")
    assert store.classes("dev-2") == ("rest", "squat", "walking")
    store.handle("har/dev-3/status", b"online")  # known, not classified yet: the model's classes too
    assert store.classes("dev-3") == ("rest", "squat", "walking")


def _prediction(t: float, label: str = "squat") -> bytes:
    probs = {"rest": 0.1, "squat": 0.1, "walking": 0.1, label: 0.8}
    return orjson.dumps({"device": "phone-1", "t": t, "label": label, "confidence": 0.8, "probs": probs,
                         "model": "v1", "latency_ms": 3.0})


def test_a_device_whose_clock_restarts_is_followed_on_its_new_clock():
    # a phone served through an adapter (its samples never reach <prefix>/+/imu) is known to the dashboard
    # only by its predictions. After its clock restarted (an Android phone's clock counts from boot), the
    # device clock stayed on the old session's (a prediction older than the latest moved it no more): labels
    # pressed on the Label page went out stamped an hour ahead of the device, on no window it would ever
    # send, and the Device page drew the new predictions an hour before "now" beside the old session's
    store = LiveStore("har")
    for k in range(30):  # an hour into the phone's session
        store.handle("har/phone-1/prediction", _prediction(3600.0 + 2 * k), now=1000.0 + 2 * k)
    assert abs(store.device_now("phone-1", now=1060.0) - 3660.0) < 1e-6
    for k in range(3):  # rebooted: its clock starts again near 0
        store.handle("har/phone-1/prediction", _prediction(2.0 + 2 * k, "walking"), now=1100.0 + 2 * k)
    assert abs(store.device_now("phone-1", now=1105.0) - 7.0) < 1e-6
    view = store.device("phone-1")
    assert view.device_time == 6.0
    assert [p.t for p in view.predictions] == [2.0, 4.0, 6.0]  # the old session's are on another clock


def test_a_recording_replayed_again_shows_its_new_run_only():
    # a replayed recording starts its clock again: the trace began anew, but the first run's predictions
    # stayed, drawn beside the new run's on the same device-time axis (both runs' windows at the same times)
    store = LiveStore("har")
    for run in range(2):
        for k in range(20):  # 40 s, a window every 2 s
            base = 1000.0 + 100 * run
            t = 0.02 * (k * 100 + np.arange(1, 101))
            store.handle("har/rec-1/imu", orjson.dumps({"seq": k, "t": t.round(3).tolist(),
                                                        "acc": np.zeros((100, 3)).tolist()}), now=base + 2 * k)
            store.handle("har/rec-1/prediction", _prediction(float(t[-1])), now=base + 2 * k + 0.1)
    view = store.device("rec-1")
    assert [p.received for p in view.predictions][-3:] == [1134.1, 1136.1, 1138.1]
    assert [p.t for p in view.predictions] == [2.0 * (k + 1) for k in range(20)]


def test_a_span_label_wins_over_a_label_that_holds_as_the_consumer_reads_them():
    # DESIGN.md, "Labels": {"label", "start", "end"} covers a span and wins over {"label", "t"} (the consumer's
    # LabelBook); the Device page took whichever began last, so an operator's press during a labelled replay's
    # span showed the press as the true label (and its match column scored against it)
    store = LiveStore("har")
    store.handle("har/dev-1/label", orjson.dumps({"label": "squat", "start": 0.0, "end": 100.0}), now=1.0)
    store.handle("har/dev-1/label", orjson.dumps({"label": "rest", "t": 50.0}), now=2.0)
    store.handle("har/dev-1/label", orjson.dumps({"label": "walking", "start": 20.0, "end": 30.0}), now=3.0)
    store.handle("har/dev-1/label", orjson.dumps({"label": "push_up", "start": 10.0, "end": 80.0}), now=4.0)
    view = store.device("dev-1")
    assert view.truth_at(60.0) == "push_up"  # the latest span received that covers it
    assert view.truth_at(25.0) == "push_up"
    assert view.truth_at(90.0) == "squat"
    assert view.truth_at(120.0) == "rest"  # no span covers it: the label that holds
    assert view.truth_at(-1.0) is None


def test_a_label_the_consumer_refuses_is_not_shown_as_a_true_label():
    # stream.labels.decode_label: a label needs "t", or "start" < "end"; the dashboard took {"label", "start"}
    # as a label that holds, and a span of no length, both refused by the consumer (bad_time)
    store = LiveStore("har")
    store.handle("har/dev-1/label", orjson.dumps({"label": "squat", "start": 5.0}))
    store.handle("har/dev-1/label", orjson.dumps({"label": "squat", "start": 5.0, "end": 5.0}))
    store.handle("har/dev-1/label", orjson.dumps({"label": "rest", "t": None, "start": 1.0, "end": 9.0}))
    assert [(lab.label, lab.start, lab.end) for lab in store.device("dev-1").labels] == [("rest", 1.0, 9.0)]
    assert store.counters()["malformed"] == {"label/bad_t": 2}


def test_a_connection_lost_while_sending_is_reported_not_raised():
    # paho closes the socket before it marks the client disconnected: a label or command published in between
    # is not queued (MQTT_ERR_NO_CONN) and wait_for_publish raises RuntimeError, which the Label and Model
    # pages do not catch (they catch ConnectionError and ValueError): the user got a traceback
    import paho.mqtt.client as mqtt

    from dashboard.live import LiveFeed
    from stream.mqtt import BrokerURL

    class Dropped:
        def is_connected(self):
            return True

        def publish(self, topic, payload, qos=0):
            info = mqtt.MQTTMessageInfo(1)
            info.rc = mqtt.MQTT_ERR_NO_CONN
            return info

    feed = LiveFeed(BrokerURL.parse("mqtt://127.0.0.1:1883"), "har")
    feed._client = Dropped()
    with pytest.raises(ConnectionError, match="127.0.0.1:1883"):
        feed.publish_label("dev-1", "squat", t=5.0)
    with pytest.raises(ConnectionError, match="127.0.0.1:1883"):
        feed.send_command("c1", "promote")
