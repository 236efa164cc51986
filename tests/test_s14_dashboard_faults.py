"""Faults a newcomer's walk through the dashboard found (session 14): the Model page's command status never
showed the consumer's answer in the browser; the Device page drew a history of rest, squat and row all "rest";
the Model page offered Promote to a consumer that fine-tunes per-device adapters only; the Label page said
"at device time 1796664804.35 s (0 s ago)" and kept still when the simulator's label replaced the user's; the
page icon was fetched from fonts.gstatic.com."""

from __future__ import annotations

import ast
import json
import time
from pathlib import Path

import orjson
import pytest

from dashboard.live import LiveStore, load_history
from stream.mqtt import connect
from stream.store import EventStore
from tests.helpers import wait
from tests.test_dashboard import APP, app_feed, app_test, prefix  # noqa: F401 (fixtures)

DASHBOARD = Path(APP).parent


# -- 1. the command's status reruns until the consumer answers ---------------------------------------------
def test_the_model_page_waits_for_the_answer_to_its_command_and_no_longer_once_it_came():
    """The status sat in a fragment that reruns only when a button is pressed (AppTest's at.run() hid it): in
    the browser "Sent … (0 s ago)" stayed 15 s although the consumer served the version a second later. The
    status now reruns on its own, and awaiting_answer decides when the answer has come (then the page reruns
    whole, with the consumer's new versions). Checked once in Chromium: the walkthrough's rollback_click.py."""
    from dashboard.model_view import awaiting_answer

    store = LiveStore("har")
    store.handle("har/_consumer/c1/status", b"online")
    store.handle("har/_consumer/c1/model", orjson.dumps({"serving": "v2", "versions": [], "answers": None}))
    sent = ("c1", {"action": "rollback", "version": "v1", "id": "abc"}, time.time())
    (view,) = store.consumers()
    assert awaiting_answer(view, sent)
    assert not awaiting_answer(view, ("c2", sent[1], sent[2]))  # sent to another consumer
    assert not awaiting_answer(view, ("c1", None, "broker refused"))  # never sent: nothing to wait for
    assert not awaiting_answer(view, None) and not awaiting_answer(None, sent)
    store.handle("har/_consumer/c1/model", orjson.dumps({"serving": "v3", "versions": [], "answers": "other"}))
    (view,) = store.consumers()
    assert awaiting_answer(view, sent)  # another command's answer is not this one's
    store.handle("har/_consumer/c1/model", orjson.dumps({"serving": "v1", "versions": [], "answers": "abc"}))
    store.handle("har/_consumer/c1/model", orjson.dumps({"serving": "v4", "versions": [], "answers": None}))
    (view,) = store.consumers()
    assert not awaiting_answer(view, sent)  # answered, though an automatic promotion came after


# -- 2. the Device page from history --------------------------------------------------------------------------
@pytest.mark.broker
def test_the_device_page_draws_a_history_of_several_classes_as_it_is(tmp_path, prefix, app_feed):  # noqa: F811
    """History rows keep only the predicted class's probability, so each came with a class list of its own;
    the chart kept the predictions whose list was the newest one's: all "rest" over 340 s while the store held
    rest, squat and row."""
    events = EventStore(tmp_path / "events.db")
    for k, label in enumerate(["rest"] * 4 + ["squat"] * 3 + ["row"] * 2 + ["rest"] * 2):
        events.prediction("dev-h", 1000.0 + 2 * k, label, 0.7 + 0.02 * k, "v1", 5.0)
    assert events.flush()
    events.close()
    assert load_history(app_feed.store, str(tmp_path / "events.db")) == 11
    at = app_test().run()
    at.switch_page("pages/device.py").run()
    assert not at.exception and not at.error
    charts = at.get("vega_lite_chart")
    assert len(charts) == 2  # no raw samples in history: the probabilities and the timeline
    spec = json.loads(charts[0].proto.spec)
    layers = spec.get("layer") or [spec]
    domain = layers[0]["encoding"]["color"]["scale"]["domain"]
    assert sorted(domain) == ["rest", "row", "squat"], domain
    assert any("only the predicted class's probability" in c.value for c in at.caption)


def test_the_probability_chart_leaves_out_history_beside_live_predictions():
    store = LiveStore("har")
    for k in range(3):  # from history: one class each
        store.handle("har/d/prediction", orjson.dumps({"t": 10.0 + k, "label": "row", "confidence": 0.8,
                                                       "probs": {"row": 0.8}}), now=100.0 + k)
    for k in range(3, 5):
        store.handle("har/d/prediction", orjson.dumps({"t": 10.0 + k, "label": "squat", "confidence": 0.6,
                                                       "probs": {"squat": 0.6, "rest": 0.4}}), now=100.0 + k)
    source = (DASHBOARD / "pages" / "device.py").read_text()
    tree = ast.parse(source)
    (func,) = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "full_probabilities"]
    namespace: dict = {}
    exec(compile(ast.Module([func], []), "device.py", "exec"), namespace)
    full = namespace["full_probabilities"](store.device("d"))
    assert [p.t for p in full] == [13.0, 14.0]


# -- 3. --adapt device: nothing to promote -------------------------------------------------------------------
def _adapter_consumer(store: LiveStore, **learner) -> None:
    body = {"t": 1.0, "model": "v1", "learner": {"updates": 0, "skipped": 0, "dropped": 0, "adapter_updates": 16,
                                                 "alive": True, "windows": 0, "serving_accuracy": None,
                                                 "challenger_accuracy": None, **learner}}
    store.handle("har/_consumer/c1/metrics", orjson.dumps(body))


def test_a_consumer_that_fine_tunes_device_adapters_only_is_told_from_its_messages():
    from dashboard.model_view import adapts_devices_only

    store = LiveStore("har")
    store.handle("har/_consumer/c1/status", b"online")
    _adapter_consumer(store, adapter_updates=0)
    assert not adapts_devices_only(store.consumers()[0])  # nothing learnt yet: cannot tell
    _adapter_consumer(store)
    store.handle("har/_consumer/c1/training", b'{"t": 5, "version": "v1+adapter:d1", "loss": 0.5, '
                                              b'"grad_norm": 3.0, "clipped": false, "skipped": false}')
    assert adapts_devices_only(store.consumers()[0])
    _adapter_consumer(store, windows=12)  # --adapt both scores the shared challenger
    assert not adapts_devices_only(store.consumers()[0])
    _adapter_consumer(store, updates=3)
    assert not adapts_devices_only(store.consumers()[0])
    _adapter_consumer(store)
    store.handle("har/_consumer/c1/training", b'{"t": 6, "version": "v1", "loss": 0.5, "grad_norm": 3.0, '
                                              b'"clipped": false, "skipped": true}')
    assert not adapts_devices_only(store.consumers()[0])  # a step of the shared network


@pytest.mark.broker
def test_the_model_page_offers_no_promotion_to_a_consumer_fine_tuning_device_adapters(
        broker_url, prefix, app_feed):  # noqa: F811
    """Under --adapt device (the demo's default) Promote was enabled (it served the same weights again, forced)
    and "Fine-tuning updates 0" stood beside 16 adapter updates."""
    pub = connect(broker_url, "test-s14-adapt-pub")
    topic = f"{prefix}/_consumer/c1"
    learner = {"updates": 0, "skipped": 0, "dropped": 0, "adapter_updates": 16, "alive": True, "windows": 0,
               "serving_accuracy": None, "challenger_accuracy": None}
    try:
        pub.publish(f"{topic}/status", b"online", qos=1, retain=True).wait_for_publish(5)
        pub.publish(f"{topic}/metrics", orjson.dumps({"t": 1.0, "model": "v1", "learner": learner}), qos=1,
                    retain=True).wait_for_publish(5)
        pub.publish(f"{topic}/model", orjson.dumps({"serving": "v1", "versions": [{"version": "v1"}],
                                                   "updates": 0, "skipped": 0, "answers": None,
                                                   "comparison": {"windows": 0}}),
                    qos=1, retain=True).wait_for_publish(5)
        pub.publish(f"{topic}/training", orjson.dumps({"t": 2.0, "version": "v1+adapter:d1", "loss": 0.4,
                                                      "grad_norm": 1.0, "clipped": False, "skipped": False}),
                    qos=1).wait_for_publish(5)
        assert wait(lambda: (app_feed.store.consumers() or [None])[0] is not None
                    and app_feed.store.consumers()[0].model is not None
                    and app_feed.store.consumers()[0].metrics is not None
                    and app_feed.store.consumers()[0].training)
        at = app_test().run()
        at.switch_page("pages/model.py").run()
        assert not at.exception and not at.error
        assert at.button(key="promote-c1").disabled
        assert any("per labelling device" in i.value and "nothing to promote" in i.value for i in at.info)
        assert not any(m.label == "Fine-tuning updates" for m in at.metric)
    finally:
        for kind in ("status", "metrics", "model"):
            pub.publish(f"{topic}/{kind}", b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()


# -- 4 and 6. the Label page -----------------------------------------------------------------------------------
def test_a_device_clock_reads_as_a_time():
    from dashboard.common import device_clock

    now = 1796664900.0  # 2026-12-07 UTC
    assert device_clock(1796664804.35, now) == "17:33:24 UTC by its clock"
    assert device_clock(1796664804.35, now + 86400) == "2026-12-07 17:33:24 UTC by its clock"
    assert device_clock(123.456, now) == "123.5 s by its clock"


@pytest.mark.broker
def test_the_label_page_says_a_readable_time_and_when_another_label_replaced_the_users(
        broker_url, prefix, app_feed):  # noqa: F811
    """It said "at device time 1796664804.35 s (0 s ago)", the age never changing; and the demo's simulator
    replaced the user's label 17 s later without a word."""
    pub = connect(broker_url, "test-s14-label-pub")
    t0 = 1796664804.0
    try:
        pub.publish(f"{prefix}/dev-l/prediction", orjson.dumps({
            "t": t0, "label": "rest", "confidence": 0.9, "probs": {"rest": 0.9, "squat": 0.1}}),
            qos=1).wait_for_publish(5)
        assert wait(lambda: app_feed.store.device("dev-l") is not None)
        at = app_test().run()
        at.switch_page("pages/label.py").run()
        at.button(key="label-squat").click().run()
        assert not at.exception and not at.error
        (done,) = at.success
        assert "UTC by its clock" in done.value and "1796664" not in done.value and "ago" not in done.value
        assert wait(lambda: app_feed.store.device("dev-l").labels)
        at.run()
        assert not any("from elsewhere" in c.value for c in at.caption)  # its own echo replaces nothing
        sent_t = app_feed.store.device("dev-l").labels[-1].start
        pub.publish(f"{prefix}/dev-l/label", orjson.dumps({"label": "row", "t": sent_t + 17.0}),
                    qos=1).wait_for_publish(5)
        assert wait(lambda: len(app_feed.store.device("dev-l").labels) == 2)
        at.run()
        assert not at.exception
        assert any("**squat**" in c.value and "17 s later by **row** from elsewhere" in c.value for c in at.caption)
    finally:
        pub.disconnect()
        pub.loop_stop()


# -- 5. nothing fetched from the internet -----------------------------------------------------------------------
def test_the_page_icon_needs_no_download():
    """A ":material/…:" page icon is fetched by the browser from fonts.gstatic.com (the favicon), failing
    offline; the other material icons come from the font served with the app."""
    from streamlit.string_util import is_emoji

    icons = []
    for path in DASHBOARD.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "set_page_config":
                icons += [k.value for k in node.keywords if k.arg == "page_icon"]
    assert icons, "no set_page_config"
    for icon in icons:
        assert isinstance(icon, ast.Constant) and is_emoji(icon.value), ast.dump(icon)
