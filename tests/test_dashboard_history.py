"""The dashboard's time series: retained metrics sent again on a reconnection add no point, and the history
loaded from the consumer's event store comes in the order the consumer published it (found in review)."""

from __future__ import annotations

import socket
import time
import uuid

import orjson
import pytest

from dashboard.live import LiveFeed, LiveStore, load_history
from stream.mqtt import connect
from stream.store import EventStore
from tests.helpers import wait

METRICS = "har/_consumer/c1/metrics"


def metrics(t: float | None, accuracy: float) -> bytes:
    body = {"online": {"accuracy": accuracy}, "samples_per_s": 100.0}
    if t is not None:
        body["t"] = t
    return orjson.dumps(body)


def points(store: LiveStore) -> list[tuple[float, float]]:
    """(arrival, accuracy) of every metrics point kept for the one consumer."""
    view, = store.consumers()
    return [(received, m["online"]["accuracy"]) for received, m in view.history]


# -- retained metrics --------------------------------------------------------------------------------
def test_a_retained_copy_of_metrics_already_held_adds_no_point():
    store = LiveStore("har")
    store.handle(METRICS, metrics(500.0, 0.4), now=1000.0, retained=True)  # on subscribing: all there is
    store.handle(METRICS, metrics(505.0, 0.5), now=1005.0)  # live
    store.handle(METRICS, metrics(510.0, 0.6), now=1010.0)
    for now in (1020.0, 1060.0):  # a reconnection each: the broker's copy of the latest, sent again
        store.handle(METRICS, metrics(510.0, 0.6), now=now, retained=True)
    assert points(store) == [(1000.0, 0.4), (1005.0, 0.5), (1010.0, 0.6)]
    view, = store.consumers()
    assert view.metrics_received == 1010.0  # the copy says nothing of when the consumer was last heard from
    assert store.counters()["received"]["consumer/metrics_repeated"] == 2

    # published while the dashboard was away: the retained copy is news
    store.handle(METRICS, metrics(530.0, 0.7), now=1100.0, retained=True)
    assert points(store)[-1] == (1100.0, 0.7) and len(points(store)) == 4
    store.handle(METRICS, metrics(520.0, 0.1), now=1101.0, retained=True)  # older than what is held
    assert len(points(store)) == 4


def test_a_retained_copy_of_metrics_without_a_time_is_a_repeat_when_the_same():
    store = LiveStore("har")
    store.handle(METRICS, metrics(None, 0.5), now=1000.0)
    store.handle(METRICS, metrics(None, 0.5), now=1030.0, retained=True)
    assert points(store) == [(1000.0, 0.5)]
    store.handle(METRICS, metrics(None, 0.6), now=1040.0, retained=True)
    assert points(store) == [(1000.0, 0.5), (1040.0, 0.6)]


@pytest.mark.broker
def test_a_reconnected_dashboard_adds_no_point_for_the_retained_metrics(broker_url):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    topic = f"{prefix}/_consumer/c1/metrics"
    pub = connect(broker_url, "test-pub")
    feed = LiveFeed(broker_url, prefix).start()
    try:
        assert feed.connected, feed.error
        for accuracy in (0.5, 0.6, 0.7):  # as the consumer publishes them: retained, with its own time
            pub.publish(topic, metrics(time.time(), accuracy), qos=1, retain=True).wait_for_publish(5)
            time.sleep(0.1)
        assert wait(lambda: feed.store.consumers() and len(points(feed.store)) == 3, 10)
        for copies in (4, 5):
            feed._client.socket().shutdown(socket.SHUT_RDWR)  # the connection lost; paho reconnects
            assert wait(lambda: not feed.connected, 10)
            assert wait(lambda: feed.connected, 30), feed.error
            assert wait(lambda n=copies: feed.store.counters()["received"].get("consumer/metrics", 0) >= n, 10)
        assert feed.store.counters()["received"]["consumer/metrics"] == 5  # the copy came, twice
        assert [a for _, a in points(feed.store)] == [0.5, 0.6, 0.7]
    finally:
        pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)  # no retained message left behind
        feed.close()
        pub.disconnect()
        pub.loop_stop()


# -- history from the event store ----------------------------------------------------------------------
def journal_put_late(path) -> list[float]:
    """Predictions of one device written as the consumer writes them when its event store dropped some (the
    queue full): the newer ones first, the dropped ones put in again from the journal at a checkpoint, with
    the time their cycle ran. Returns the windows' times in the order of publication."""
    events = EventStore(path)
    published = [(100.0 + 2 * k, 1000.0 + 2 * k) for k in range(60)]  # (t, received)
    for t, received in published[30:] + published[:30]:
        events.prediction("dev-1", t, "squat", 0.9, "v1", 5.0, received)
    assert events.flush()
    events.close()
    assert [t for t, in events.query("SELECT t FROM predictions ORDER BY id")][:2] == [160.0, 162.0]
    return [t for t, _ in published]


def test_history_put_in_again_late_is_shown_in_the_order_published(tmp_path):
    path = tmp_path / "events.db"
    times = journal_put_late(path)
    store = LiveStore("har")
    assert load_history(store, str(path)) == 60
    assert [p.t for p in store.device("dev-1").predictions] == times  # not the newest forgotten as a restart


def test_history_keeps_the_newest_predictions_of_each_device(tmp_path):
    path = tmp_path / "events.db"
    times = journal_put_late(path)
    store = LiveStore("har")
    assert load_history(store, str(path), per_device=20) == 20
    assert [p.t for p in store.device("dev-1").predictions] == times[-20:]
    store = LiveStore("har")
    assert load_history(store, str(path), max_rows=10) == 10  # the newest in all, too
    assert [p.t for p in store.device("dev-1").predictions] == times[-10:]


def test_history_labels_and_drift_come_in_the_order_received(tmp_path):
    path = tmp_path / "events.db"
    EventStore(path).close()
    import sqlite3
    db = sqlite3.connect(path)  # rows of two writers, ids not in the order of their times
    with db:
        db.executemany("INSERT INTO labels (received, device, label, start, end_) VALUES (?, ?, ?, ?, ?)",
                       [(1010.0, "dev-1", "squat", 110.0, None), (1000.0, "dev-1", "rest", 100.0, None)])
        db.executemany("INSERT INTO drift (received, device, detector, signal, t, value, needs_labels) VALUES "
                       "(?, ?, ?, ?, ?, ?, ?)", [(1010.0, "dev-1", "ADWIN", "confidence", 110.0, 0.3, 1),
                                                 (1000.0, "dev-1", "ADWIN", "confidence", 100.0, 0.4, 1)])
    db.close()
    store = LiveStore("har")
    assert load_history(store, str(path)) == 4
    view = store.device("dev-1")
    assert [lab.label for lab in view.labels] == ["rest", "squat"]
    assert [d.t for d in view.drift] == [100.0, 110.0]
