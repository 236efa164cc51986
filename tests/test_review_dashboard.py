"""Review of the dashboard: defects found and fixed, each with the test that showed it."""

from __future__ import annotations

import orjson

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
