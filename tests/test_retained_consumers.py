"""Consumers with a random id leave nothing retained on the broker when they stop; the dashboard makes room for
new consumers among offline ones. Every `make demo` (a consumer with a random id) left its offline status,
model and metrics retained on Mosquitto for good: the dashboard listed them all, and once it held 64 it
showed no new consumer at all."""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import pytest

from dashboard.live import LiveStore
from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.mqtt import connect
from tests.helpers import wait


def _retained(broker_url, prefix: str) -> dict[str, bytes]:
    """What the broker holds retained under the prefix's consumers, read by a fresh subscriber."""
    got: dict[str, bytes] = {}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        if msg.retain:
            with lock:
                got[msg.topic] = msg.payload

    client = connect(broker_url, f"ret-{uuid.uuid4().hex[:6]}", subscriptions=[(f"{prefix}/_consumer/+/+", 1)],
                     on_message=on_message)
    time.sleep(1.0)  # retained messages come at once on subscribing
    client.disconnect()
    client.loop_stop()
    with lock:
        return {t: p for t, p in got.items() if p}


def _run(broker_url, tiny_model, prefix: str, **config) -> Consumer:
    c = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, learn=False, metrics_interval=0.2, **config),
                 StatefulClassifier(tiny_model, "t"))
    runner = threading.Thread(target=c.run)
    runner.start()
    assert wait(lambda: len(_retained(broker_url, prefix)) >= 3, timeout=20)  # status, model, metrics
    c.stop()
    runner.join(15)
    assert not runner.is_alive()
    return c


@pytest.mark.broker
def test_a_consumer_with_a_random_id_clears_what_it_retained_when_it_stops(broker_url, tiny_model):
    prefix = f"ret{uuid.uuid4().hex[:8]}"
    c = _run(broker_url, tiny_model, prefix)
    assert c.config.id_is_random
    assert _retained(broker_url, prefix) == {}


@pytest.mark.broker
def test_a_consumer_with_a_given_id_keeps_its_offline_status_and_versions(broker_url, tiny_model):
    prefix = f"ret{uuid.uuid4().hex[:8]}"
    _run(broker_url, tiny_model, prefix, consumer_id="kept")
    left = _retained(broker_url, prefix)
    assert left[f"{prefix}/_consumer/kept/status"] == b"offline"
    assert f"{prefix}/_consumer/kept/model" in left
    for topic in left:  # clean up after the test
        pub = connect(broker_url, f"clr-{uuid.uuid4().hex[:6]}")
        pub.publish(topic, b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()


def test_the_dashboard_makes_room_for_a_new_consumer_among_offline_ones():
    store = LiveStore("har", max_consumers=3)
    for k in range(3):
        store.handle(f"har/_consumer/old{k}/status", b"offline", retained=True)
    store.handle("har/_consumer/live/status", b"online")
    store.handle("har/_consumer/live/metrics", orjson.dumps({"t": 1.0, "samples_per_s": 1.0}))
    names = [c.consumer for c in store.consumers()]
    assert "live" in names and "old0" not in names and len(names) == 3
    assert store.counters()["dropped"].get("offline_consumers_forgotten") == 1
    # with every one online, a new one is still refused (memory stays bounded)
    full = LiveStore("har", max_consumers=2)
    for k in range(3):
        full.handle(f"har/_consumer/on{k}/status", b"online")
    assert [c.consumer for c in full.consumers()] == ["on0", "on1"]
    assert full.counters()["dropped"]["too_many_consumers"] == 1
