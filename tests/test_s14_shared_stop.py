"""A clean stop of a replica in a shared group (``--shared G --state-store redis://...``) loses nothing it
acknowledged.

With a state store messages are acknowledged on receipt. A soak run found a SIGTERM'd replica losing what
was in its queue and what it held for reordering (1,465 samples, 9 window gaps; 13 times a ``kill -9``),
and paho went on receiving and acknowledging until the disconnection. A stopping replica now unsubscribes
(the broker dispatches to the others), works off its queue and what it holds, commits, and only then stops.

Two replicas run in this process on the real broker and Redis (db 13, flushed at the end); 20 devices
publish at QoS 1; one replica's service thread is held back while a burst arrives, so that its queue holds
messages when it is asked to stop; the devices go on publishing. Every window of every device must come
out exactly once, as from one consumer that never stopped.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import numpy as np
import orjson
import pytest

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.mqtt import connect
from tests.helpers import wait
from tests.test_scaleout import Collector, offline, shared_subscriptions, stream_of  # noqa: F401 (a fixture)

REDIS_DB_URL = "redis://127.0.0.1:6379/13"  # this file's own database, flushed at the end
DEVICES = 20
MESSAGES = 60  # per device, 10 samples at 50 Hz each: 12 s of device time, 15 windows of the tiny model
REORDER_WAIT = 2.0


def _redis_or_skip():
    try:
        import redis
    except ImportError:
        pytest.skip("the redis package is not installed (pip install redis)")
    client = redis.Redis.from_url(REDIS_DB_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        pytest.skip(f"Redis does not answer at {REDIS_DB_URL}: {exc}")
    return client


def _replica(broker_url, prefix: str, name: str, model) -> tuple[Consumer, threading.Thread]:
    config = ConsumerConfig(broker=broker_url, prefix=prefix, consumer_id=f"{prefix}-{name}", learn=False,
                            shared_group=f"{prefix}g", state_store=REDIS_DB_URL, reorder_wait=REORDER_WAIT,
                            metrics_interval=60.0, checkpoint_interval=600.0, qos=1)
    consumer = Consumer(config, StatefulClassifier(model, "tiny"))
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    assert wait(lambda: consumer._client is not None and consumer._client.is_connected(), 20)
    return consumer, thread


@pytest.mark.broker
def test_a_clean_stop_of_a_replica_hands_over_what_it_queued_and_held(shared_subscriptions, tiny_model):  # noqa: F811
    broker_url = shared_subscriptions
    store = _redis_or_skip()
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    devices = {f"dev-{k:02d}": stream_of(f"dev-{k:02d}", MESSAGES, seed=k) for k in range(DEVICES)}
    expected = {d: offline(tiny_model, b) for d, b in devices.items()}
    watch = Collector(broker_url, [f"{prefix}/+/prediction"])
    pub = connect(broker_url, "test-s14-pub")
    replicas = []
    try:
        a, a_thread = _replica(broker_url, prefix, "a", tiny_model)
        b, b_thread = _replica(broker_url, prefix, "b", tiny_model)
        replicas = [(a, a_thread), (b, b_thread)]
        time.sleep(0.5)  # their subscriptions are acknowledged after the connection
        infos = []

        def send(first: int, last: int, pause: float = 0.0) -> None:
            for k in range(first, last):
                for device, batches in devices.items():
                    m = batches[k]
                    body = {"seq": m.seq, "t": m.t.tolist(), "acc": m.acc.tolist()}
                    infos.append(pub.publish(f"{prefix}/{device}/imu", orjson.dumps(body), qos=1))
                time.sleep(pause)

        def predicted() -> Counter:
            return Counter((p["device"], round(p["t"], 4)) for p in watch.predictions())

        # 1. both replicas serve, round-robin
        send(0, 20)
        upto = {d: batches[19].t[-1] for d, batches in devices.items()}
        first = sum(1 for d, e in expected.items() for t, _ in e if t <= upto[d])
        assert wait(lambda: len(predicted()) >= first, 30), (len(predicted()), first)

        # 2. b's service thread is held back while a burst arrives: its share waits in its queue (and the
        # messages a took that follow on from b's are held by a); then b is asked to stop
        gate = threading.Event()
        classify = b._classify

        def held_back() -> None:
            gate.wait(30)
            classify()
        b._classify = held_back
        send(20, 40)
        for info in infos:
            info.wait_for_publish(10)
        assert wait(lambda: b._queue.qsize() > 0, 10), "b's queue stayed empty"
        queued = b._queue.qsize()
        b.stop()
        gate.set()
        # 3. the devices go on publishing while b stops: a takes them
        send(40, MESSAGES, pause=0.02)
        b_thread.join(30)
        assert not b_thread.is_alive()
        for info in infos:
            info.wait_for_publish(10)
        assert all(info.is_published() for info in infos)
        last = {(d, round(e[-1][0], 4)) for d, e in expected.items()}
        assert wait(lambda: last <= set(predicted()), 30), sorted(last - set(predicted()))[:5]
        time.sleep(REORDER_WAIT + 0.5)  # a message waited for in vain would be given up on by now

        counts = predicted()
        assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]  # no window twice
        want = {(d, round(t, 4)) for d, e in expected.items() for t, _ in e}
        missing = sorted(want - set(counts))
        assert not missing, (f"{len(missing)} windows never published after b stopped with {queued} "
                             f"queued: {missing[:5]}")
        assert set(counts) == want
        assert a.sequence.lost_samples == 0 and b.sequence.lost_samples == 0
        # and the windows are those of one consumer that never stopped: the recurrent state went on
        classes = tiny_model.config.classes
        preds = watch.predictions()
        for device, e in expected.items():
            got = sorted((p["t"], [p["probs"][c] for c in classes]) for p in preds if p["device"] == device)
            np.testing.assert_allclose(np.array([p for _, p in got]), np.stack([p for _, p in e]), atol=2e-4)
    finally:
        for consumer, _ in replicas:
            consumer.stop()
        for _, thread in replicas:
            thread.join(30)
        pub.disconnect()
        pub.loop_stop()
        watch.close()
        store.flushdb()
        store.close()


@pytest.mark.broker
def test_a_clean_stop_acknowledging_on_receipt_classifies_what_it_queued(broker_url, tiny_model):
    """One consumer, no group, acknowledging on receipt (as with a 3.1.1 broker): what it had queued when it
    was asked to stop was acknowledged already, so its windows come out before it stops."""
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    devices = {f"dev-{k}": stream_of(f"dev-{k}", 20, seed=k) for k in range(5)}
    expected = {(d, round(t, 4)) for d, b in devices.items() for t, _ in offline(tiny_model, b)}
    config = ConsumerConfig(broker=broker_url, prefix=prefix, consumer_id=f"{prefix}-c", learn=False,
                            ack="on-receipt", metrics_interval=60.0, qos=1)
    consumer = Consumer(config, StatefulClassifier(tiny_model, "tiny"))
    gate = threading.Event()
    classify = consumer._classify

    def held_back() -> None:
        gate.wait(30)
        classify()
    consumer._classify = held_back  # its queue fills while the service thread waits here
    watch = Collector(broker_url, [f"{prefix}/+/prediction"])
    pub = connect(broker_url, "test-s14-pub")
    thread = threading.Thread(target=consumer.run, daemon=True)
    thread.start()
    try:
        assert wait(lambda: consumer._client is not None and consumer._client.is_connected(), 20)
        time.sleep(0.5)  # its subscription is acknowledged after the connection
        total = 0
        for k in range(20):
            for device, batches in devices.items():
                m = batches[k]
                body = {"seq": m.seq, "t": m.t.tolist(), "acc": m.acc.tolist()}
                pub.publish(f"{prefix}/{device}/imu", orjson.dumps(body), qos=1).wait_for_publish(10)
                total += 1
        # every message received: handled before the gate closed, or queued
        assert wait(lambda: consumer.stats.messages + consumer._queue.qsize() == total, 10)
        assert consumer._queue.qsize() > 0
        consumer.stop()
        gate.set()
        thread.join(30)
        assert not thread.is_alive()
        assert consumer._queue.empty() and consumer.stats.messages == total
        assert wait(lambda: expected <= {(p["device"], round(p["t"], 4)) for p in watch.predictions()}, 10), \
            sorted(expected - {(p["device"], round(p["t"], 4)) for p in watch.predictions()})[:5]
    finally:
        consumer.stop()
        gate.set()
        thread.join(30)
        pub.disconnect()
        pub.loop_stop()
        watch.close()
