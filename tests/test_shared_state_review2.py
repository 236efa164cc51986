"""Shared device state (``stream.shared_state``) after Redis lost writes, with the device's messages
dispatched round-robin over the replicas (Mosquitto's shared subscriptions): the replica that committed
last is then seldom the one that holds the device's next message, so its newer copy must reach that
one through the store. Skipped when Redis does not answer (as tests/test_scaleout.py does).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import numpy as np
import pytest

from stream.shared_state import RedisStore, decode_record
from tests.test_scaleout import cycle, redis_or_skip, replica, stream_of
from tests.test_shared_state_review import _reference


def _as_one_replica(published, model, batches) -> None:
    """Every window published once, each as one replica that never lost its state would have: the
    recurrent state went on."""
    counts = Counter(round(p.t_end, 6) for p in published)
    assert max(counts.values()) == 1
    expected = _reference(model, batches)
    assert sorted(counts) == sorted(expected)
    for p in published:
        np.testing.assert_allclose(p.probs, expected[round(p.t_end, 6)], atol=1e-5)


@pytest.mark.parametrize("loss", ["empty", "behind"])
def test_round_robin_replicas_hand_the_newest_copy_on_after_redis_lost_writes(tiny_model, loss):
    """Two replicas take a device's messages in turn. Redis restarts empty, or comes back four commits
    behind (a window was published from the lost ones): the device goes on from the last commit,
    without waiting for a reorder_wait, starting afresh, publishing a window twice or counting lost
    samples; the same predictions as without the loss."""
    import redis

    url = redis_or_skip()
    namespace = f"harstream-test:{uuid.uuid4().hex[:8]}"
    stores = [RedisStore(url, namespace, ttl=60) for _ in range(2)]
    client = redis.Redis.from_url(url)
    key = stores[0].key("dev")
    try:
        replicas = [replica(s, tiny_model, reorder_wait=5.0) for s in stores]
        batches = stream_of("dev", 40, seed=3)  # the tiny model's windows end at messages 3, 7, 11, ...
        published: list = []

        def deliver(k, now=None):
            replicas[k % 2].hold(batches[k], time.monotonic() if now is None else now)
            for _ in range(2):
                for r in replicas:
                    cycle(r, published, now=now)

        for k in range(14):
            deliver(k)
        snapshot = client.hgetall(key)
        for k in range(14, 18):  # the window ending at message 15 is published
            deliver(k)
        client.delete(key)
        if loss == "behind":
            client.hset(key, mapping=snapshot)  # back at message 13
        start = time.monotonic()
        for k in range(18, 40):
            deliver(k, now=start)  # within reorder_wait: nothing may wait for it
        for r in replicas:
            cycle(r, published, now=start + 10)  # past it: nothing left to wait for
        assert sum(r.held for r in replicas) == 0
        assert sum(r.sequence.lost_samples for r in replicas) == 0
        assert sum(r.counts["store_behind"] for r in replicas) == 1
        _as_one_replica(published, tiny_model, batches)
        assert decode_record(client.hget(key, "b")).seq == 39
    finally:
        client.delete(key)
        client.close()
        for s in stores:
            s.close()


def test_a_version_numbered_again_after_lost_writes_is_not_taken_for_the_replicas_own(tiny_model):
    """A store that lost writes numbers its versions again: b's last commit was version 16 (seq 15); after
    the loss a goes on to version 16 with seq 19. b's next message must go on from a's state, not from
    b's own copy of the same version number (windows of 16-19 classified again, 40 samples counted lost,
    a's commit overwritten)."""
    import redis

    url = redis_or_skip()
    namespace = f"harstream-test:{uuid.uuid4().hex[:8]}"
    stores = [RedisStore(url, namespace, ttl=60) for _ in range(2)]
    client = redis.Redis.from_url(url)
    key = stores[0].key("dev")
    try:
        a, b = (replica(s, tiny_model, reorder_wait=5.0) for s in stores)
        batches = stream_of("dev", 24, seed=3)
        published: list = []

        def deliver(r, k, now=None):
            r.hold(batches[k], time.monotonic() if now is None else now)
            for _ in range(2):  # the second: after a commit refused by the store that lost writes
                cycle(r, published, now=now)

        for k in range(14):
            deliver(a, k)
        snapshot = client.hgetall(key)  # version 14, seq 13
        for k in (14, 15):
            deliver(b, k)  # b: version 16, seq 15; the window ending at message 15 is published
        for k in (16, 17):
            deliver(a, k)
        client.delete(key)
        client.hset(key, mapping=snapshot)  # back at version 14, seq 13
        start = time.monotonic()
        for k in (18, 19):
            deliver(a, k, now=start)  # a goes on from its own copy (seq 17): version 16, seq 19
        for k in range(20, 24):
            deliver(b, k, now=start)
        cycle(b, published, now=start + 10)  # past reorder_wait: nothing left to wait for
        assert b.held == 0 and a.sequence.lost_samples + b.sequence.lost_samples == 0
        _as_one_replica(published, tiny_model, batches)
        assert decode_record(client.hget(key, "b")).seq == 23
    finally:
        client.delete(key)
        client.close()
        for s in stores:
            s.close()
