"""The dashboard walk of session 16 (headless Chromium, /tmp/s16/dash): old predictions looked current after the
consumer stopped; the demo could not show model versions nor take the ``--adapt`` its Model page advised; small
wording (drift values without a unit, "None" and raw headers in the Versions table, "1 detections", an "end"
column always "—")."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import orjson
import pytest

from tests.test_dashboard import app_feed, app_test, imu, prediction, prefix  # noqa: F401 (fixtures)

DEVICE = "dev-s16"


def stream_device(feed, predicted_ago: float, samples_ago: float, now: float, device: str = DEVICE) -> None:
    """Six predictions a window (2 s) apart, the last arrived ``predicted_ago`` s before ``now``, and raw samples
    until ``samples_ago`` s before it, as the dashboard's feed takes them from the broker."""
    store, p = feed.store, feed.prefix
    store.handle(f"{p}/{device}/status", b"online", now=now - 120)
    t_last = 1000.0  # device clock of the last prediction
    for k in range(6):
        store.handle(f"{p}/{device}/prediction", prediction(t_last - 2 * (5 - k), "squat", 0.86),
                     now=now - predicted_ago - 2 * (5 - k))
    for k in range(5):  # samples after the last prediction, the newest arrived samples_ago before now
        store.handle(f"{p}/{device}/imu", imu(k, t_last + predicted_ago - samples_ago - 0.2 * (4 - k)),
                     now=now - samples_ago - 0.2 * (4 - k))


def seconds_ago(text: str) -> int:
    """The N of the first "N s ago" in ``text`` (the pages take a few seconds to run)."""
    return int(re.search(r"(\d+) s ago", text).group(1))


def consumer(feed, status: str, name: str = "c1") -> None:
    feed.store.handle(f"{feed.prefix}/_consumer/{name}/status", status.encode())


def scene(feed, status: str, predicted_ago: float, samples_ago: float = 0) -> None:
    """A consumer of ``status`` and the device streaming (``stream_device``) as of now."""
    consumer(feed, status)
    stream_device(feed, predicted_ago=predicted_ago, samples_ago=samples_ago, now=time.time())


def metric(at, label: str):
    (shown,) = [m for m in at.metric if m.label == label]
    return shown


def page(at, name: str, device: str | None = DEVICE):
    if device:
        at.query_params["device"] = device
    at.switch_page(f"pages/{name}.py").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.broker
def test_a_prediction_no_consumer_makes_any_more_is_shown_as_old_on_every_page(app_feed):  # noqa: F811
    # the walk: SIGTERM to the consumer, and 75 s later the Device page said "rest, 86% confident", "Last seen
    # 0 s ago" (the raw samples, which still came) without a word; so did the Overview's table and the Label page
    scene(app_feed, "offline", predicted_ago=75)
    at = page(app_test().run(), "device")
    shown = metric(at, "Exercise (predicted)")
    assert shown.value == ":gray[squat]" and 75 <= seconds_ago(shown.proto.delta) < 100  # greyed, and how old
    assert seconds_ago(metric(at, "Last seen").value) < 25
    (warning,) = at.warning
    assert "last prediction came" in warning.value and "no consumer is online" in warning.value

    at = page(at, "label")
    shown = metric(at, "Predicted now")
    assert shown.value == ":gray[squat]" and 75 <= seconds_ago(shown.proto.delta) < 100
    assert any("no consumer is online" in w.value for w in at.warning)

    at = page(at, "overview", None)
    frame = at.dataframe[0].value
    assert list(frame["exercise"]) == ["squat (not current)"] and 75 <= seconds_ago(frame["predicted"][0]) < 100
    assert any("No consumer is online" in w.value for w in at.warning)


@pytest.mark.broker
def test_a_prediction_older_than_a_few_windows_while_samples_come_is_shown_as_old(app_feed):  # noqa: F811
    # a consumer online (its status), but none classifies this device: its samples come, its predictions do not
    scene(app_feed, "online", predicted_ago=40)
    at = page(app_test().run(), "device")
    assert metric(at, "Exercise (predicted)").value == ":gray[squat]"
    (warning,) = at.warning
    assert 40 <= seconds_ago(warning.value) < 65 and "samples still come" in warning.value

    stream_device(app_feed, predicted_ago=0, samples_ago=0, now=time.time(), device="dev-fresh")
    at = page(at, "overview", None)
    frame = at.dataframe[0].value
    assert sorted(frame["exercise"]) == ["squat", "squat (not current)"]
    (warning,) = [w for w in at.warning if "not current" in w.value]
    assert warning.value.startswith("1 device shown has had no prediction")

    stream_device(app_feed, predicted_ago=0, samples_ago=0, now=time.time(), device="dev-fresh")
    at = page(at, "device", "dev-fresh")  # current: as before, with its age
    shown = metric(at, "Exercise (predicted)")
    assert shown.value == "squat" and shown.proto.delta.startswith("86% confident · ") and not at.warning
    assert seconds_ago(shown.proto.delta) < 10


@pytest.mark.broker
def test_the_model_page_advises_the_demos_adapt_option_when_the_demo_started_it(app_feed, monkeypatch):  # noqa: F811
    from dashboard.launch import ENV_STARTED_BY, _environment

    assert _environment("mqtt://127.0.0.1:1883", "har", None, started_by="demo")[ENV_STARTED_BY] == "demo"
    consumer(app_feed, "online")
    app_feed.store.handle(f"{app_feed.prefix}/_consumer/c1/metrics", orjson.dumps(
        {"t": time.time(), "model": "v1", "learner": {"adapt": "device", "adapter_updates": 3, "updates": 0}}))
    monkeypatch.setenv(ENV_STARTED_BY, "demo")
    at = page(app_test().run(), "model", None)
    (info,) = [i for i in at.info if "per labelling device" in i.value]
    assert "`harstream demo --adapt shared`" in info.value and "harstream consume" not in info.value
    # the metric's note fits its column (it was cut: "the shared network is not fine-tun…")
    assert metric(at, "Device-adapter updates").proto.delta == "adapters only"

    monkeypatch.delenv(ENV_STARTED_BY)  # `harstream dashboard` beside a consumer started on its own
    at = page(app_test().run(), "model", None)
    (info,) = [i for i in at.info if "per labelling device" in i.value]
    assert "`harstream consume --adapt shared`" in info.value


def test_demo_takes_adapt_and_passes_it_to_its_consumer(broker_url, prefix, monkeypatch):  # noqa: F811
    from stream import demo
    from stream.cli import build_parser, main

    parser = build_parser()
    consume = parser.parse_args(["consume"])
    assert parser.parse_args(["demo"]).adapt == consume.adapt == "device"  # the same default
    for choice in ("device", "shared", "both"):
        assert parser.parse_args(["demo", "--adapt", choice]).adapt == choice
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--adapt", "everything"])

    started = []

    def child(args):  # the demo's children as it starts them, each a process that only waits
        started.append(args)
        return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", args[0]],
                                start_new_session=True)

    monkeypatch.setattr(demo, "_child", child)
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        assert main(["demo", "--no-dashboard", "--duration", "0.5", "--adapt", "shared", "--prefix", prefix,
                     "--broker", f"mqtt://{broker_url.host}:{broker_url.port}"]) == 0
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    (consumer_args,) = [a for a in started if a[0] == "consume"]
    assert consumer_args[consumer_args.index("--adapt") + 1] == "shared"


@pytest.mark.broker
def test_the_versions_table_says_percentages_under_readable_headers_and_no_none(app_feed):  # noqa: F811
    consumer(app_feed, "online")
    app_feed.store.handle(f"{app_feed.prefix}/_consumer/c1/model", orjson.dumps({"serving": "v2", "versions": [
        {"version": "v1", "parent": None, "created": 1.7e9, "metrics": None},
        {"version": "v2", "parent": "v1", "created": 1.7e9 + 60,
         "metrics": {"windows": 24, "serving_accuracy": 0.7083, "challenger_accuracy": 0.75}},
    ]}))
    at = page(app_test().run(), "model", None)
    frame = at.dataframe[0].value
    assert "serving_accuracy" not in frame.columns and "challenger_accuracy" not in frame.columns
    row = frame.set_index("version").loc["v2"]
    assert row["its accuracy then"] == "75.0%" and row["parent's accuracy, same windows"] == "70.8%"
    assert row["labelled windows compared"] == "24"
    first = frame.set_index("version").loc["v1"]
    assert "None" not in [str(v) for v in first] and first["parent"] == "—"


@pytest.mark.broker
def test_drift_values_have_their_unit_and_detections_their_plural(app_feed):  # noqa: F811
    scene(app_feed, "online", predicted_ago=1)
    app_feed.store.handle(f"{app_feed.prefix}/{DEVICE}/drift", orjson.dumps(
        {"detector": "ADWIN", "signal": "orientation", "t": 998.0, "value": 45.69, "needs_labels": True}))
    at = page(app_test().run(), "device")
    (table,) = [d.value for d in at.dataframe if "detector" in d.value.columns]
    assert list(table["value"]) == ["46°"]
    at = page(at, "drift", None)
    assert any(c.value.startswith("1 detection kept") for c in at.caption)
    assert any("degrees" in c.value for c in at.caption)


@pytest.mark.broker
def test_the_label_page_says_how_long_each_label_held(app_feed):  # noqa: F811
    scene(app_feed, "online", predicted_ago=1)
    p = app_feed.prefix
    for label, body in (("squat", {"t": 980.0}), ("row", {"t": 992.5}), ("rest", {"start": 984.0, "end": 986.0})):
        app_feed.store.handle(f"{p}/{DEVICE}/label", orjson.dumps({"label": label, **body}))
    at = page(app_test().run(), "label")
    frame = at.dataframe[0].value
    assert "end" not in frame.columns  # always "—" for the labels this page sends
    assert dict(zip(frame["label"], frame["held"], strict=True)) == {
        "row": "holds now", "rest": "2.0 s (span)", "squat": "12.5 s"}


@pytest.mark.broker
def test_the_device_pages_charts_carry_their_data_beside_the_drift_rules(app_feed):  # noqa: F811
    # the charts are plain Vega-Lite specs now (Altair's schema work took most of a rerun): with a detection,
    # the chart's own data and the rules' are both named datasets (the chart's own, passed beside a named one,
    # was drawn empty in Chromium)
    import json

    scene(app_feed, "online", predicted_ago=0)
    app_feed.store.handle(f"{app_feed.prefix}/{DEVICE}/drift", orjson.dumps(
        {"detector": "ADWIN", "signal": "confidence", "t": 996.0, "value": 0.4}))
    at = page(app_test().run(), "device")
    charts = at.get("vega_lite_chart")
    assert len(charts) == 3  # traces, probabilities, predictions beside labels
    for chart in charts[1:]:
        spec = json.loads(chart.proto.spec)
        assert spec["data"] == {"name": "chart"} and [layer.get("data") for layer in spec["layer"]] == [
            None, {"name": "drift"}]
        assert sorted(d.name for d in chart.proto.datasets) == ["chart", "drift"] and not chart.proto.data.data
        assert all(d.data.data for d in chart.proto.datasets)
    assert charts[0].proto.data.data and not charts[0].proto.datasets  # the traces: no rules, their data only
