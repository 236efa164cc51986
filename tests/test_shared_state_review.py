"""Shared device state (``stream.shared_state``) under the faults a review found: phone-format devices
beside a state store, a store that loses its last writes or all of them, records of another model,
failed commits. Redis where the test is about Redis (skipped when it does not answer, as
tests/test_scaleout.py does), the in-memory store where it is not.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter

import numpy as np
import orjson

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.decode import SequenceCheck
from stream.pipeline import Pipeline
from stream.shared_state import MemoryStore, RedisStore, SharedDevices, StoreError, decode_record
from tests.test_scaleout import cycle, redis_or_skip, replica, stream_of


class _Capture:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic, payload=None, qos=0, retain=False):
        self.topics.append(topic)


def test_phone_format_devices_beside_a_state_store_get_their_predictions(tiny_model):
    """Phone formats go through Consumer._take, not the store: their windows must still be published
    in the cycles where native devices are committed."""
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="rv", learn=False, state_store="memory://",
                                adapters=("csv/+ = csv",)),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Capture()
    t0 = 1.7e9
    for k in range(20):  # 20 x 0.5 s at 50 Hz, a native device and a phone side by side
        t = t0 + k * 0.5 + np.arange(25) / 50
        acc = np.tile([0.1, 0.2, 9.81], (25, 1)) + np.random.default_rng(k).normal(0, 0.5, (25, 3))
        native = orjson.dumps({"seq": k, "t": t, "acc": acc}, option=orjson.OPT_SERIALIZE_NUMPY)
        csv = "\n".join(f"{a:.4f},{x:.4f},{y:.4f},{z:.4f}" for a, (x, y, z) in zip(t, acc, strict=True)).encode()
        now = time.monotonic()
        c.handle_many([("rv/watch1/imu", native, now), ("csv/phone1", csv, now)])
        c._classify()
    predictions = Counter(t.split("/")[1] for t in c._client.topics if t.endswith("/prediction"))
    assert predictions["watch1"] >= 10
    assert predictions["phone1"] == predictions["watch1"]


def _redis_store(ttl: float = 60):
    url = redis_or_skip()
    return RedisStore(url, f"harstream-test:{uuid.uuid4().hex[:8]}", ttl=ttl)


def _reference(model, batches):
    """What one replica that never met a fault publishes: {t_end: probs}."""
    r, out = replica(MemoryStore(), model), []
    for b in batches:
        r.hold(b, time.monotonic())
        cycle(r, out)
    return {round(p.t_end, 6): p.probs for p in out}


def test_a_store_that_lost_its_last_writes_gets_the_replicas_copy_back(tiny_model):
    """Redis loses its last commits (appendfsync everysec and a crash, a failover to a lagging replica):
    the replica keeps its newer copy and writes it back: no window twice, no false lost samples, the
    same predictions as without the loss."""
    import redis

    store = _redis_store()
    client = redis.Redis.from_url(store.url)
    try:
        a = replica(store, tiny_model, reorder_wait=5.0)
        batches = stream_of("dev", 30, seed=3)
        published: list = []
        for b in batches[:12]:
            a.hold(b, time.monotonic())
            cycle(a, published)
        snapshot = client.hgetall(store.key("dev"))  # what the lost writes leave
        for b in batches[12:16]:
            a.hold(b, time.monotonic())
            cycle(a, published)
        client.hset(store.key("dev"), mapping=snapshot)  # the store comes back 4 commits behind
        start = time.monotonic()
        for b in batches[16:]:
            a.hold(b, start)
        for _ in range(3):  # within reorder_wait: nothing may wait for it
            cycle(a, published, now=start)
        assert a.held == 0
        counts = Counter(round(p.t_end, 6) for p in published)
        assert max(counts.values()) == 1
        assert a.sequence.lost_samples == 0
        assert a.counts["store_behind"] == 1
        expected = _reference(tiny_model, batches)
        assert sorted(counts) == sorted(expected)
        for p in published:
            np.testing.assert_allclose(p.probs, expected[round(p.t_end, 6)], atol=1e-5)
        assert decode_record(client.hget(store.key("dev"), "b")).seq == 29
    finally:
        client.delete(store.key("dev"))
        client.close()
        store.close()


def test_a_window_at_or_before_the_last_one_published_is_never_handed_out(tiny_model):
    """The safety net under exactly once, whatever state a replica was made to take."""
    store = MemoryStore()
    a = replica(store, tiny_model)
    batches = stream_of("dev", 12, seed=3)
    published: list = []
    for b in batches[:8]:
        a.hold(b, time.monotonic())
        cycle(a, published)
    old = dict(store._records)
    for b in batches[8:]:
        a.hold(b, time.monotonic())
        cycle(a, published)
    # the store went back to an older state under a higher version (another replica wrote on top of a
    # store that had lost writes): this replica cannot tell it from another replica's progress
    store._records.update({d: (v + 10, blob) for d, (v, blob) in old.items()})
    for b in batches[8:]:  # its messages delivered again
        a.hold(b, time.monotonic())
        cycle(a, published)
    assert max(Counter(round(p.t_end, 6) for p in published).values()) == 1
    assert a.counts["repeats_dropped"] >= 1


def test_a_store_that_lost_every_record_gets_the_replicas_copy_back(tiny_model):
    """Redis restarted empty while a replica holds its devices' current state: no reorder wait, no
    LSTM state started afresh; the replica writes its copy (expected version 0)."""
    import redis

    store = _redis_store()
    client = redis.Redis.from_url(store.url)
    try:
        a = replica(store, tiny_model, reorder_wait=5.0)
        batches = stream_of("dev", 40, seed=3)
        published: list = []
        for b in batches[:20]:
            a.hold(b, time.monotonic())
            cycle(a, published)
        client.delete(store.key("dev"))  # the store's data is gone
        start = time.monotonic()
        for b in batches[20:]:
            a.hold(b, start)
            for _ in range(2):
                cycle(a, published, now=start)  # within reorder_wait: nothing may wait for it
        assert a.held == 0 and a.sequence.lost_samples == 0
        expected = _reference(tiny_model, batches)
        assert sorted(round(p.t_end, 6) for p in published) == sorted(expected)
        for p in published:  # the recurrent state went on
            np.testing.assert_allclose(p.probs, expected[round(p.t_end, 6)], atol=1e-5)
        assert decode_record(client.hget(store.key("dev"), "b")).seq == 39
    finally:
        client.delete(store.key("dev"))
        client.close()
        store.close()


def _other_model(seed: int):
    import torch

    from models.rnn import HARNet, ModelConfig
    torch.manual_seed(seed)
    return HARNet(ModelConfig(classes=("rest", "squat", "walking"), hidden=16, layers=2, window=20, hop=20,
                              patch=5, rate=25.0)).eval()


def test_records_are_written_in_format_1():
    """Records stay in format 1, which replicas of the previous release read (they refuse any other: during
    a rolling upgrade every handover to one would drop the device's state)."""
    from stream.shared_state import DeviceRecord, encode_record

    rng = np.random.default_rng(0)
    record = DeviceRecord(seq=5, buffer=None, recurrent=(rng.normal(size=(2, 16)).astype(np.float32),))
    blob = encode_record(record)
    assert blob[0] == 1  # the format byte an older harstream checks
    back = decode_record(blob)
    assert back.seq == 5 and np.array_equal(back.recurrent[0], record.recurrent[0])


def test_the_model_version_is_kept_beside_the_record_and_names_no_model_once_an_older_replica_wrote(
        tiny_model):
    """In Redis the record ('b') is what an older harstream reads and writes (with 'v'); the model version
    is a field of its own ('m'), stamped with the version it was written with: an older replica's write
    (which leaves 'm' as it was) makes the record's model unknown, not the last one named."""
    import redis

    from stream.shared_state import _HEADER

    store = _redis_store()
    client = redis.Redis.from_url(store.url)
    try:
        a = SharedDevices(store, Pipeline(StatefulClassifier(tiny_model, "v1")), SequenceCheck(), 60.0)
        published: list = []
        for b in stream_of("dev", 4, seed=3):
            a.hold(b, time.monotonic())
            cycle(a, published)
        version, blob = client.hmget(store.key("dev"), "v", "b")  # what an older replica reads
        assert _HEADER.unpack_from(blob)[0] == 1 and decode_record(blob).seq == 3
        assert store.load_records(["dev"])["dev"] == (4, blob, "v1", None)
        client.hset(store.key("dev"), mapping={"v": 5, "b": blob})  # an older replica's commit
        assert store.load_records(["dev"])["dev"] == (5, blob, "", None)
    finally:
        client.delete(store.key("dev"))
        client.close()
        store.close()


def test_recurrent_state_of_another_model_starts_afresh_but_a_promotion_keeps_it(tiny_model):
    """A replica serving other weights (a rolling upgrade, another --model) takes the device's buffer
    and seq, not a recurrent state that means nothing to its model; a replica promoted from the model
    that made the state keeps it, as a single consumer keeps its devices' state across a promotion."""
    store = MemoryStore()
    batches = stream_of("dev", 12, seed=3)
    a = SharedDevices(store, Pipeline(StatefulClassifier(tiny_model, "v1")), SequenceCheck(), 60.0)
    published: list = []
    for b in batches[:8]:
        a.hold(b, time.monotonic())
        cycle(a, published)
    state_a = [t.clone() for t in a.pipeline.classifier.bank.get("dev")]

    other = SharedDevices(store, Pipeline(StatefulClassifier(_other_model(1), "v9")), SequenceCheck(), 60.0)
    other.hold(batches[8], time.monotonic())
    other.apply()
    assert other.counts["model_resets"] == 1
    assert "dev" not in other.pipeline.classifier.bank  # the model's initial state
    assert other.sequence.last("dev") == 8 and "dev" in other.pipeline.buffers

    c = SharedDevices(store, Pipeline(StatefulClassifier(tiny_model, "v1")), SequenceCheck(), 60.0)
    c.pipeline.classifier.set_model(_other_model(2), "v2")  # fine-tuned weights promoted (_apply_swap)
    c.hold(batches[8], time.monotonic())
    c.apply()
    assert c.counts["model_resets"] == 0
    for x, y in zip(c.pipeline.classifier.bank.get("dev"), state_a, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


class _Flaky(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail = 0

    def commit(self, updates):
        if self.fail:
            self.fail -= 1
            raise StoreError("Redis commit failed: Timeout reading from socket")
        return super().commit(updates)


def test_a_failed_commit_counts_samples_and_lost_samples_once(tiny_model):
    """The consumer adds apply()'s samples to its throughput; a failed commit applies the same messages
    again, and the gap they reveal is counted again: both count only once the commit succeeds."""
    store = _Flaky()
    a = replica(store, tiny_model, reorder_wait=0.5)
    batches = stream_of("dev", 10, seed=3)
    total = 0
    for b in batches[:4]:
        a.hold(b, time.monotonic())
        total += a.apply()[0]
        a.commit(a.pipeline.classify_ready())
    start = time.monotonic()
    for b in batches[5:8]:  # seq 4 lost on the way
        a.hold(b, start)
    total += a.apply(start + 1)[0]  # the gap accepted: 10 samples lost, 30 applied
    store.fail = 1
    a.commit(a.pipeline.classify_ready())  # the write fails: the messages are held again
    for _ in range(2):
        total += a.apply(start + 1)[0]
        a.commit(a.pipeline.classify_ready())
    assert a.held == 0 and a.sequence.last("dev") == 7
    assert total == 70
    assert a.sequence.lost_samples == 10


def test_the_replica_that_loses_a_duplicate_delivery_does_not_count_its_samples(tiny_model):
    store = MemoryStore()
    a, b = replica(store, tiny_model), replica(store, tiny_model)
    batches = stream_of("dev", 10, seed=3)
    totals = Counter()
    for x in batches[:6]:  # both replicas get every message: a commits first, b's write is refused
        for r in (a, b):
            r.hold(x, time.monotonic())
        totals["a"] += a.apply()[0]
        totals["b"] += b.apply()[0]
        a.commit(a.pipeline.classify_ready())
        b.commit(b.pipeline.classify_ready())
        for name, r in (("a", a), ("b", b)):
            totals[name] += r.apply()[0]
            r.commit(r.pipeline.classify_ready())
    assert b.counts["conflicts"] > 0
    for x in batches[6:]:  # then b alone: what it reported for the refused writes comes off
        b.hold(x, time.monotonic())
        totals["b"] += b.apply()[0]
        b.commit(b.pipeline.classify_ready())
    assert totals["a"] + totals["b"] == 100


def test_a_store_restarted_empty_gets_no_stale_copy_back_after_a_handover(tiny_model):
    """A replica's own last commit is not the device's latest where another replica took some of its
    messages since (a rebalance, a reconnect): after the store restarted empty, writing that copy back
    would publish the other replica's windows again. It starts the device afresh instead."""
    store = MemoryStore()
    a, b = replica(store, tiny_model, reorder_wait=5.0), replica(store, tiny_model, reorder_wait=5.0)
    batches = stream_of("dev", 40, seed=3)
    published: list = []
    for batch in batches[:22]:
        a.hold(batch, time.monotonic())
        cycle(a, published)
    for batch in batches[22:24]:  # handed over to b for two messages
        b.hold(batch, time.monotonic())
        cycle(b, published)
    store._records.clear()  # the store restarted without its data
    start = time.monotonic()
    for batch in batches[24:]:
        a.hold(batch, start)
        cycle(a, published, now=start)
    cycle(a, published, now=start + 10)  # past reorder_wait
    assert a.held == 0
    assert max(Counter(round(p.t_end, 6) for p in published).values()) == 1
    assert a.counts["store_behind"] == 0


def test_store_behind_is_counted_once_per_write_back(tiny_model):
    """The store restarted empty and the replica's next message arrives before the one that follows on
    from its copy: its copy is written back once that one is there (counted once), not at every cycle."""
    store = MemoryStore()
    a = replica(store, tiny_model, reorder_wait=5.0)
    batches = stream_of("dev", 30, seed=3)
    published: list = []
    for batch in batches[:20]:
        a.hold(batch, time.monotonic())
        cycle(a, published)
    store._records.clear()
    start = time.monotonic()
    a.hold(batches[21], start)  # seq 20 is still on its way
    for _ in range(4):
        cycle(a, published, now=start)
    a.hold(batches[20], start)
    for batch in batches[22:]:
        a.hold(batch, start)
        cycle(a, published, now=start)
    assert a.held == 0 and a.sequence.lost_samples == 0
    assert a.counts["store_behind"] == 1
    expected = _reference(tiny_model, batches)
    assert sorted(round(p.t_end, 6) for p in published) == sorted(expected)
    for p in published:  # the recurrent state went on
        np.testing.assert_allclose(p.probs, expected[round(p.t_end, 6)], atol=1e-5)


def test_a_device_clock_gone_back_just_beyond_its_clock_reset_has_its_new_session_published(tiny_model):
    """A device clock going back slightly more than the buffer's clock_reset (30 s) starts a new session
    (DeviceBuffer counts a clock reset): its windows are not repeats for the safety net."""
    from stream.decode import SampleBatch

    def batch(seq, t0):
        t = t0 + np.arange(10) / 50
        return SampleBatch("dev", t, np.stack([np.sin(3 * t), np.cos(2 * t), 9.81 + np.sin(5 * t)], 1)
                           .astype(np.float32), seq=seq)

    batches = [batch(k, 100.0 + 0.2 * k) for k in range(25)]  # 5 s of one session
    back = batches[-1].t[-1] + 0.02 - 30.5  # the clock goes back 30.5 s; seq goes on
    batches += [batch(25 + k, back + 0.2 * k) for k in range(60)]
    a = replica(MemoryStore(), tiny_model)
    published: list = []
    for b in batches:
        a.hold(b, time.monotonic())
        cycle(a, published)
    assert a.pipeline.buffers["dev"].clock_resets == 1
    assert a.counts["repeats_dropped"] == 0
    assert sorted(round(p.t_end, 6) for p in published) == sorted(_reference(tiny_model, batches))
