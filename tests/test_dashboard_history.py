"""The dashboard's time series: retained metrics sent again on a reconnection add no point (found in review)."""

from __future__ import annotations

import socket
import time
import uuid

import orjson
import pytest

from dashboard.live import LiveFeed, LiveStore
from stream.mqtt import connect
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
