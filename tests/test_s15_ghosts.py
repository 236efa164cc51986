"""Ghost devices: retained statuses of devices long gone, and a dashboard that kept every device ever seen.

Found by a soak (3,184 device ids over 28 minutes, 80 streaming at a time, each publishing retained
"online" then "offline" as ``harstream simulate`` does): every id left a retained "offline" on the broker for
good; a dashboard subscribing at QoS 1 got only about 1,020 of the retained statuses from stock Mosquitto
(max_queued_messages 1000), so the "online" of most live devices was among those dropped, and each
"offline" it did get became a device; its store kept all 3,184 devices (168 MB) and the overview built a
row for each of them every second.
"""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest

import dashboard.live as live
from dashboard.live import LiveFeed, LiveStore
from simulators.publisher import Simulator, SimulatorConfig
from stream.mqtt import connect
from tests.helpers import imu, wait


@pytest.fixture
def app_feed(broker_url, monkeypatch):
    """The feed the app's pages share, for a prefix of this test's own (as tests/test_dashboard.py's)."""
    monkeypatch.setenv("HARSTREAM_BROKER", f"mqtt://{broker_url.host}:{broker_url.port}")
    monkeypatch.setenv("HARSTREAM_PREFIX", f"ghosts{uuid.uuid4().hex[:8]}")
    from dashboard.common import _shared_feed, get_feed
    feed = get_feed()
    assert wait(lambda: feed.connected), feed.error
    yield feed
    _shared_feed.clear()  # closes the feed (on_release)


def _retained(url, topic_filter: str, marker_topic: str) -> dict[str, bytes]:
    """The retained messages a new subscriber of ``topic_filter`` gets: all of them have come once a message
    published after the subscription (on ``marker_topic``, inside the filter) arrives."""
    got: dict[str, bytes] = {}
    done = threading.Event()

    def on_message(client, userdata, msg):
        if msg.topic == marker_topic:
            done.set()
        elif msg.retain:
            got[msg.topic] = msg.payload

    sub = connect(url, "ghosts-watch", on_message=on_message, subscriptions=[(topic_filter, 0)])
    try:
        pub = connect(url, "ghosts-marker")
        try:  # the broker sends the retained messages on subscribing, before anything published after
            assert wait(lambda: pub.publish(marker_topic, b"end", qos=1).wait_for_publish(2) or done.wait(0.2), 10)
        finally:
            pub.disconnect()
            pub.loop_stop()
    finally:
        sub.disconnect()
        sub.loop_stop()
    return got


# -- the simulator: "offline" for those listening, then no retained status left behind ---------------------------

@pytest.mark.broker
@pytest.mark.parametrize("which", ["broker_url", "embedded_broker"])
def test_a_simulator_stopped_cleanly_says_offline_and_leaves_no_retained_status(which, request):
    url = request.getfixturevalue(which)
    prefix = f"ghosts{uuid.uuid4().hex[:8]}"
    live: list[tuple[str, bytes]] = []
    watch = connect(url, "ghosts-live", subscriptions=[(f"{prefix}/+/status", 1)],
                    on_message=lambda c, u, m: live.append((m.topic.split("/")[1], m.payload)))
    try:
        Simulator(SimulatorConfig(broker=url, devices=3, duration=1.0, speed=0, prefix=prefix)).run()
        assert wait(lambda: sum(p == b"" for _, p in live) == 3, 10), live
    finally:
        watch.disconnect()
        watch.loop_stop()
    for device in ("sim-000", "sim-001", "sim-002"):  # those listening saw it come and go, in that order
        assert [p for d, p in live if d == device] == [b"online", b"offline", b""]
    assert _retained(url, f"{prefix}/#", f"{prefix}/marker/status") == {}  # before: 3 retained "offline"


# -- the dashboard's feed: every retained status, and no device made of an "offline" alone -------------------------

@pytest.mark.broker
def test_the_dashboard_gets_the_live_devices_status_among_thousands_of_retained_offline(broker_url):
    """3,000 retained "offline" (ids gone long ago) and 5 live devices' "online": stock Mosquitto sends a QoS 1
    subscriber about 1,020 of them (max_queued_messages 1000), so the "online" were mostly lost; each "offline"
    it got became a device."""
    prefix = f"ghosts{uuid.uuid4().hex[:8]}"
    gone = [f"{prefix}/gone-{k:04d}/status" for k in range(3000)]
    alive = [f"{prefix}/live-{k}/status" for k in range(5)]
    pub = connect(broker_url, "ghosts-pub")
    pub._max_inflight_messages = 65535  # noqa: SLF001 (as the simulator does)
    feed = None
    try:
        for topic in gone:
            pub.publish(topic, b"offline", qos=1, retain=True)
        for topic in alive:
            info = pub.publish(topic, b"online", qos=1, retain=True)
        info.wait_for_publish(20)
        store = LiveStore(prefix)
        feed = LiveFeed(broker_url, prefix, store).start()
        assert wait(lambda: store.counters()["dropped"].get("offline_unknown_device", 0) == 3000
                    and len(store.device_ids()) == 5, 15), (store.counters(), store.device_ids())
        assert store.device_ids() == [f"live-{k}" for k in range(5)]
        assert {r.status for r in store.devices()} == {"online"}
        assert store.counters()["received"]["status"] == 3005
    finally:
        if feed is not None:
            feed.close()
        for topic in gone + alive:  # no retained messages left behind on a shared broker
            info = pub.publish(topic, b"", qos=1, retain=True)
        info.wait_for_publish(20)
        pub.disconnect()
        pub.loop_stop()


def test_an_offline_status_alone_makes_no_device_but_tells_of_one_known():
    store = LiveStore("har")
    store.handle("har/gone/status", b"offline", now=100.0, retained=True)  # a will kept by the broker
    store.handle("har/left/status", b"offline", now=100.0)  # live, of a device never otherwise heard from
    assert store.device_ids() == [] and store.counters()["dropped"] == {"offline_unknown_device": 2}
    store.handle("har/known/status", b"online", now=100.0, retained=True)
    store.handle("har/busy/imu", imu(0, 50.0), now=101.0)
    store.handle("har/known/status", b"offline", now=102.0)
    store.handle("har/busy/status", b"offline", now=103.0)
    store.handle("har/busy/status", b"", now=103.0)  # the simulator's clearing of its retained copy
    rows = {r.device: r for r in store.devices(now=104.0)}
    assert set(rows) == {"known", "busy"}
    assert rows["known"].status == "offline" and rows["known"].last_seen == 102.0
    assert rows["busy"].status == "offline" and rows["busy"].last_seen == 103.0


# -- the store forgets silent devices: memory follows the devices streaming, not every id ever seen ---------------

def test_devices_silent_longer_than_forget_after_are_forgotten_and_come_back_with_their_next_message():
    store = LiveStore("har", forget_after=60.0)
    store.handle("har/old/imu", imu(0, 10.0), now=1000.0)
    store.handle("har/old/label", b'{"label": "squat", "t": 10.0}', now=1010.0)  # a label counts as a message
    store.handle("har/kept/status", b"online", now=1000.0, retained=True)  # retained copies never refresh
    store.handle("har/kept/prediction", orjson.dumps({"t": 12.0, "label": "squat", "confidence": 0.9,
                                                      "probs": {"squat": 0.9}}), now=1030.0)
    store.handle("har/new/imu", imu(0, 10.0), now=1069.0)
    assert store.device_ids() == ["kept", "new", "old"]  # "old": 59 s since its label
    store.handle("har/new/imu", imu(1, 10.2), now=1076.0)  # (the store looks every tenth of forget_after)
    assert store.device_ids() == ["kept", "new"] and store.counters()["forgotten_devices"] == 1
    store.handle("har/kept/status", b"online", now=1130.0, retained=True)  # a reconnection's copy: still silent
    store.handle("har/new/imu", imu(2, 10.4), now=1130.0)
    assert store.device_ids() == ["new"] and store.counters()["forgotten_devices"] == 2
    store.handle("har/old/imu", imu(1, 200.0), now=1131.0)  # back: a device like a new one
    assert store.device_ids() == ["new", "old"] and store.device("old").labels == []
    # the consumers' messages do not make devices silent: a store with only them keeps the last devices
    store.handle("har/_consumer/c1/status", b"online", now=5000.0)
    assert store.device_ids() == ["new", "old"]


def test_a_soak_of_thousands_of_device_ids_keeps_only_the_recent_ones():
    """As the soak: 3,000 ids, each streaming 40 s, a new one every 0.5 s (80 at a time). Before, all 3,000
    were kept (the store evicted only once full: 10,000 devices)."""
    store = LiveStore("har", forget_after=120.0)
    most = 0
    for step in range(2 * 3000 + 80):
        now = 1000.0 + step * 0.5
        for k in range(max(0, step - 79), min(step + 1, 3000)):
            if (step - k) % 2 == 0:  # each device every second
                store.handle(f"har/dev-{k:04d}/status", b"online", now=now)
        most = max(most, len(store.device_ids()) if step % 100 == 0 else 0)
    # heard from within 120 s (+ one sweep of 10 s): (120 + 10 + 40) / 0.5 devices at most
    assert 80 <= most <= 340 and store.counters()["forgotten_devices"] >= 3000 - 340


def test_forget_after_comes_from_the_environment_else_ten_minutes(monkeypatch, caplog):
    monkeypatch.delenv(live.ENV_FORGET_AFTER, raising=False)
    assert LiveStore().forget_after == live.FORGET_AFTER == 600.0
    monkeypatch.setenv(live.ENV_FORGET_AFTER, "90")
    assert LiveStore().forget_after == 90.0 and LiveStore(forget_after=5).forget_after == 5.0
    for bad in ("soon", "0", "-1", "inf", "nan"):
        monkeypatch.setenv(live.ENV_FORGET_AFTER, bad)
        assert LiveStore().forget_after == live.FORGET_AFTER
    assert live.ENV_FORGET_AFTER in caplog.text
    with pytest.raises(ValueError, match="forget_after"):
        LiveStore(forget_after=0)


# -- the overview: the devices heard from most recently, a bounded table -------------------------------------------

def _fill(store: LiveStore, now: float) -> None:
    for k in range(50):  # streaming now
        store.handle(f"har/run-{49 - k:02d}/status", b"online", now=now - 1 - k * 0.1)
    for k in range(200):  # silent for 60 s and more, the lowest k most recently heard from
        store.handle(f"har/quiet-{k:03d}/status", b"online", now=now - 60 - k)
    store.handle("har/retained-only/status", b"online", now=now, retained=True)
    store.handle("har/quiet-199/drift", orjson.dumps({"detector": "d", "signal": "s", "t": 1.0}), now=now - 5)


def test_the_overview_counts_every_device_and_makes_rows_for_the_most_recent_only():
    store = LiveStore("har")
    now = 10_000.0
    _fill(store, now)
    seen = store.overview(now, limit=60, heard_within=30.0, active_within=10.0)
    assert (seen.total, seen.online, seen.streaming, seen.drifting, seen.matching) == (251, 50, 50, 1, 251)
    # streaming ones by id (a table refreshed every second keeps its order), then by how long silent
    assert [r.device for r in seen.rows] == [f"run-{k:02d}" for k in range(50)] + [
        f"quiet-{k:03d}" for k in range(10)]  # by last_seen (the table's "last seen"), not the drift's arrival
    every = store.overview(now, limit=1000)
    assert len(every.rows) == 251 and every.rows[-1].device == "retained-only"
    some = store.overview(now, limit=3, contains="QUIET-1")
    assert some.matching == 100 and [r.device for r in some.rows] == ["quiet-100", "quiet-101", "quiet-102"]
    assert some.total == 251 and store.overview(now, contains="quiet-199").rows[0].drift_recent == 1


@pytest.mark.broker
def test_the_overview_page_shows_the_200_most_recent_devices_and_counts_the_rest(app_feed):
    from tests.test_dashboard import app_test
    now = time.time()
    store = app_feed.store
    p = store.prefix
    for k in range(50):
        store.handle(f"{p}/run-{k:02d}/status", b"online", now=now)
    for k in range(200):
        store.handle(f"{p}/quiet-{k:03d}/status", b"online", now=now - 60 - k)
    at = app_test()
    at.switch_page("pages/overview.py").run()
    assert not at.exception
    frame = at.dataframe[0].value
    assert len(frame) == 200
    assert [d.split("=")[1] for d in frame["device"][:51]] == [f"run-{k:02d}" for k in range(50)] + ["quiet-000"]
    assert {m.label: m.value for m in at.metric}["Devices"] == "250"
    shown = " ".join(c.value for c in at.caption)
    assert "The 200 devices heard from most recently are shown, of 250: 50 more" in shown
