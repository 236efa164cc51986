"""A restarted device whose first message (``seq`` 0) was lost: its new numbering starts below the old
one. Refused as ``backwards_seq``, the whole new session was lost until its ``seq`` passed the old
session's last one (hours, for a phone that had run for hours). Its samples, newer than every one the
device gave, tell it from a copy sent again, which holds old samples."""

from __future__ import annotations

import time
import uuid

import numpy as np
import orjson
import pytest

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.decode import Rejected, SampleBatch, SequenceCheck
from tests.test_consumer_mqtt import imu, serving


def _batch(seq: int, t0: float, n: int = 50, device: str = "d") -> SampleBatch:
    t = t0 + np.arange(n) / 50
    return SampleBatch(device, t, np.tile([0.0, 0.0, 9.81], (n, 1)).astype(np.float32), None, seq)


def test_a_lower_seq_with_newer_samples_is_a_new_numbering():
    check = SequenceCheck()
    for k in range(5):
        check.check(_batch(k, 100.0 + k), newest=None if k == 0 else 100.98 + k - 1)
    newest = 104.98
    # a copy of an old message (old samples) is still refused, with or without what is newest
    for copy in (_batch(2, 102.0), _batch(4, 104.0)):
        with pytest.raises(Rejected):
            check.check(copy, newest)
    # the new session's seq 1 (its seq 0 lost), samples after the newest: taken, no loss counted
    assert check.check(_batch(1, 110.0), newest) == 0
    assert check.last("d") == 1 and check.renumbered == 1 and check.lost_samples == 0
    assert check.check(_batch(2, 111.0), 110.98) == 0  # and its numbering goes on
    # without knowing the newest sample, as before: refused
    fresh = SequenceCheck()
    fresh.check(_batch(7, 100.0))
    with pytest.raises(Rejected) as info:
        fresh.check(_batch(1, 110.0))
    assert info.value.reason == "backwards_seq"
    # a batch that reaches back into what was taken is no new numbering
    with pytest.raises(Rejected):
        check.check(_batch(1, 111.5), 111.98)
    # nor is one that follows on within RESTART_GAP (a second publisher under the same id), nor a repeat
    with pytest.raises(Rejected) as info:
        check.check(_batch(1, 112.5), 111.98)
    assert info.value.reason == "backwards_seq"
    with pytest.raises(Rejected) as info:
        check.check(_batch(2, 120.0), 111.98)
    assert info.value.reason == "repeated_seq"
    assert check.renumbered == 1 and check.last("d") == 2


class _Capture:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic, payload=None, qos=0, retain=False):
        self.topics.append(topic)


def _payload(seq: int, t0: float) -> bytes:
    t = t0 + np.arange(50) / 50
    return orjson.dumps({"seq": seq, "t": t, "acc": np.tile([0.0, 0.0, 9.81], (50, 1))},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def _predictions(c) -> int:
    return sum(t.endswith("/prediction") for t in c._client.topics)


@pytest.mark.parametrize("evicted", [False, True])
def test_a_restarted_device_whose_seq_0_was_lost_is_classified(tiny_model, evicted):
    """Before: every message of the second session refused (backwards_seq), no prediction."""
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="rn", learn=False),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Capture()
    for k in range(30):  # 30 s, seq 0..29
        c.handle_many([("rn/dev1/imu", _payload(k, 100.0 + k), time.monotonic())])
        c._classify()
    first = _predictions(c)
    assert first >= 30
    if evicted:  # idle: its buffer leaves memory, its seq is kept
        c._last_seen["dev1"] -= c.config.idle_timeout + 1
        c._evict_idle()
        assert "dev1" not in c.pipeline.buffers and c.sequence.last("dev1") == 29
    # a copy the broker sends again (DUP) of an old message is still no new numbering
    c.handle_many([("rn/dev1/imu", _payload(5, 105.0), time.monotonic(), 1, 1, True)])
    assert c.sequence.last("dev1") == 29
    for k in range(1, 11):  # restarted at 140 s: seq 0 lost, then 1..10
        c.handle_many([("rn/dev1/imu", _payload(k, 140.0 + k), time.monotonic())])
        c._classify()
    assert c.stats.rejected["backwards_seq"] == 0
    assert _predictions(c) - first >= 8
    assert c.sequence.renumbered == 1 and c.sequence.last("dev1") == 10


def test_a_shared_consumer_takes_a_new_numbering_after_its_wait(tiny_model):
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="rn", learn=False, state_store="memory://"),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Capture()
    for k in range(10):
        c.handle_many([("rn/dev1/imu", _payload(k, 100.0 + k), time.monotonic())])
        c._classify()
    first = _predictions(c)
    assert first >= 9
    for k in range(1, 6):
        c.handle_many([("rn/dev1/imu", _payload(k, 140.0 + k), time.monotonic())])
    c.shared.apply(now=time.monotonic() + 1000.0)  # a lower seq waits for another replica's seq 0 first
    c._classify()
    assert c.sequence.last("dev1") == 5 and c.sequence.renumbered == 1
    assert _predictions(c) - first >= 4


@pytest.mark.broker
def test_through_the_broker_a_restart_that_lost_seq_0_goes_on_being_served(broker_url, tiny_model):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    consumer = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, metrics_interval=0.3, learn=False),
                        StatefulClassifier(tiny_model, "tiny"))
    topics = [f"{prefix}/+/prediction", f"{prefix}/_consumer/+/+"]
    with serving(consumer, broker_url, topics, f"rn-{prefix}") as (watch, pub):
        for k in range(10):
            pub.publish(f"{prefix}/phone/imu", imu(k, 1000.0 + k, 50)[0], qos=1).wait_for_publish(5)
        assert watch.wait_for(lambda m: sum(t.endswith("/prediction") for t, _, _ in m) >= 9)
        before = sum(t.endswith("/prediction") for t, _, _ in watch.messages)
        for k in range(1, 11):  # the app restarted; its first message never arrived
            pub.publish(f"{prefix}/phone/imu", imu(k, 1030.0 + k, 50)[0], qos=1).wait_for_publish(5)

        def metrics(m):
            last = [orjson.loads(p) for t, p, _ in m if t.endswith("/metrics")]
            return last and last[-1].get("renumbered") == 1 and last[-1]["rejected"].get("backwards_seq", 0) == 0

        assert watch.wait_for(lambda m: sum(t.endswith("/prediction") for t, _, _ in m) - before >= 9)
        assert watch.wait_for(metrics)
