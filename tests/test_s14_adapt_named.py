"""The consumer names what it fine-tunes (``learner.adapt`` in its metrics) and the Model page reads it: before,
the page guessed ``--adapt device`` from adapter updates, so until a device's first adapter update it offered
Promote (serving the same weights again) to such a consumer."""

from __future__ import annotations

import orjson

from dashboard.live import LiveStore


def _metrics(store: LiveStore, **learner) -> None:
    body = {"t": 1.0, "model": "v1", "learner": {"updates": 0, "skipped": 0, "dropped": 0, "adapter_updates": 0,
                                                 "alive": True, "windows": 0, "serving_accuracy": None,
                                                 "challenger_accuracy": None, **learner}}
    store.handle("har/_consumer/c1/metrics", orjson.dumps(body))


def test_the_consumer_metrics_name_what_it_fine_tunes(tmp_path):
    from tests.test_s13_versions import _still
    c = _still(tmp_path)  # --adapt shared
    c._publish_metrics()
    assert c.last_metrics["learner"]["adapt"] == "shared"


def test_the_model_page_reads_the_setting_where_the_consumer_names_it():
    from dashboard.model_view import adapts_devices_only
    store = LiveStore("har")
    store.handle("har/_consumer/c1/status", b"online")
    _metrics(store, adapt="device")  # nothing learnt yet: known all the same
    assert adapts_devices_only(store.consumers()[0])
    _metrics(store, adapt="shared", adapter_updates=16)  # adapter updates, but the shared network learns
    assert not adapts_devices_only(store.consumers()[0])
    _metrics(store, adapt="both", adapter_updates=16)
    assert not adapts_devices_only(store.consumers()[0])
    _metrics(store, adapt="sideways")  # not a setting: dropped, and the page guesses as before (nothing learnt)
    view = store.consumers()[0]
    assert "adapt" not in view.metrics["learner"] and not adapts_devices_only(view)
