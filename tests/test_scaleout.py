"""Scale-out: per-device state in a shared store, so consumer replicas in an MQTT shared subscription
each take any device's next message, in seq order and exactly once; a replica killed with SIGKILL
leaves its devices' state to the others.

The in-process tests run the replicas' logic (``SharedDevices``) against every store (in memory, and
Redis when it answers); the broker test runs real ``harstream consume --shared`` processes against
Mosquitto and Redis.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pytest

from models.state import StatefulClassifier
from stream.buffers import DeviceBuffer
from stream.decode import SampleBatch, SequenceCheck
from stream.mqtt import connect
from stream.pipeline import Pipeline
from stream.shared_state import (
    DeviceRecord,
    MemoryStore,
    RedisStore,
    SharedDevices,
    buffer_state,
    decode_record,
    encode_record,
    restore_buffer,
)
from tests.helpers import wait

REDIS_URL = os.environ.get("HARSTREAM_TEST_REDIS", "redis://127.0.0.1:6379/0")
ROOT = Path(__file__).resolve().parents[1]


def redis_or_skip() -> str:
    try:
        import redis
    except ImportError:
        pytest.skip("the redis package is not installed (pip install redis)")
    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
    except (redis.RedisError, OSError) as exc:
        pytest.skip(f"Redis does not answer at {REDIS_URL}: {exc}")
    return REDIS_URL


def stream_of(device: str, messages: int, seed: int, n: int = 10, rate: float = 50.0) -> list[SampleBatch]:
    """``messages`` consecutive batches of ``n`` samples of one device, seq 0, 1, ..."""
    rng = np.random.default_rng(seed)
    t0 = 100.0 + seed
    out = []
    for k in range(messages):
        t = t0 + (k * n + np.arange(n)) / rate
        acc = np.stack([np.sin(3 * t + seed), np.cos(2 * t), 9.81 + np.sin(5 * t)], axis=1)
        acc += rng.normal(0, 0.3, acc.shape)
        out.append(SampleBatch(device, t, acc.astype(np.float32), seq=k))
    return out


def offline(model, batches: list[SampleBatch]) -> list[tuple[float, np.ndarray]]:
    """What a single consumer that never stopped gives: (t_end, probs) per window."""
    classifier = StatefulClassifier(model)
    cfg = model.config
    buffer = DeviceBuffer(batches[0].device, cfg.rate, cfg.window)
    out = []
    for b in batches:
        for w in buffer.push(b.t, b.acc, 0.0):
            out.append((w.t_end, classifier.classify([w.device], w.samples[None])[0]))
    return out


@pytest.fixture(params=["memory", "redis"])
def store_factory(request):
    """A fresh namespace of one store, shared by every replica the test makes."""
    if request.param == "memory":
        store = MemoryStore()
        yield lambda: store
        return
    url = redis_or_skip()
    namespace = f"harstream-test:{uuid.uuid4().hex[:8]}"
    stores = []

    def make():
        stores.append(RedisStore(url, namespace, ttl=60))
        return stores[-1]
    yield make
    for s in stores:
        s.close()


def replica(store, model, reorder_wait=60.0) -> SharedDevices:
    return SharedDevices(store, Pipeline(StatefulClassifier(model)), SequenceCheck(), reorder_wait)


def cycle(shared: SharedDevices, published: list, now=None):
    samples, rejected = shared.apply(now)
    published += shared.commit(shared.pipeline.classify_ready())
    return rejected


def test_record_round_trip():
    buffer = DeviceBuffer("d", 25.0, 20)
    b = stream_of("d", 3, seed=1)
    for x in b:
        buffer.push(x.t, x.acc, 0.0)
    rng = np.random.default_rng(0)
    record = DeviceRecord(seq=41, buffer=buffer_state(buffer, 0.0),
                          recurrent=(rng.normal(size=(2, 16)).astype(np.float32),
                                     rng.normal(size=(2, 16)).astype(np.float32)))
    back = decode_record(encode_record(record))
    assert back.seq == 41 and back.buffer.k == buffer._k and back.buffer.last_t == buffer.last_t
    np.testing.assert_array_equal(back.buffer.pending, buffer._pending[: buffer._fill])
    for a, c in zip(record.recurrent, back.recurrent, strict=True):
        np.testing.assert_array_equal(a, c)
    fresh = decode_record(encode_record(DeviceRecord(seq=None, buffer=None)))
    assert fresh.seq is None and fresh.buffer is None and fresh.recurrent == ()
    with pytest.raises(ValueError):
        decode_record(encode_record(record)[:-3])


@pytest.mark.parametrize("reorder", [0.0, 0.3])
def test_a_buffer_restored_midway_cuts_the_same_windows(reorder):
    batches = stream_of("d", 30, seed=2, n=7)
    batches[4], batches[5] = batches[5], batches[4]  # out of order: held back when reorder > 0
    whole = DeviceBuffer("d", 25.0, 20, reorder=reorder)
    expected = [w for k, b in enumerate(batches) for w in whole.push(b.t, b.acc, float(k))]
    expected += whole.flush()
    got, buffer = [], DeviceBuffer("d", 25.0, 20, reorder=reorder)
    for k, b in enumerate(batches):  # a different replica for every message, each from the stored state
        stored = decode_record(encode_record(DeviceRecord(k, buffer_state(buffer, now=k))))
        buffer = restore_buffer("d", stored.buffer, now=k + 1000.0)  # another replica's clock
        got += buffer.push(b.t, b.acc, k + 1000.0)
    got += buffer.flush()
    assert [w.t_end for w in got] == [w.t_end for w in expected]
    np.testing.assert_array_equal(np.stack([w.samples for w in got]), np.stack([w.samples for w in expected]))
    assert buffer.late_samples == whole.late_samples and buffer.duplicates == whole.duplicates


def test_replicas_in_round_robin_classify_every_window_once_in_order(store_factory, tiny_model):
    devices = {f"dev-{k}": stream_of(f"dev-{k}", 24, seed=k) for k in range(4)}
    replicas = [replica(store_factory(), tiny_model) for _ in range(3)]
    published: list = []
    rng = np.random.default_rng(0)
    # round-robin over the replicas in publishing order; each replica's cycle takes what it has
    order = [b for k in range(24) for b in (devices[d][k] for d in devices)]
    for i, b in enumerate(order):
        replicas[i % 3].hold(b, time.monotonic())
        if rng.random() < 0.5:  # replicas run their cycles at their own pace: messages meet out of order
            cycle(replicas[int(rng.integers(3))], published)
    for _ in range(30):
        for r in replicas:
            cycle(r, published)
        if not any(r.held for r in replicas):
            break
    assert not any(r.held for r in replicas)
    assert sum(r.sequence.lost_samples for r in replicas) == 0
    counts = Counter((p.device, p.t_end) for p in published)
    assert max(counts.values()) == 1
    for device, batches in devices.items():
        expected = offline(tiny_model, batches)
        got = sorted((p.t_end, p.probs) for p in published if p.device == device)
        assert [t for t, _ in got] == [t for t, _ in expected]
        np.testing.assert_allclose(np.stack([p for _, p in got]), np.stack([p for _, p in expected]),
                                   atol=1e-5)
    assert sum(r.counts["reads"] for r in replicas) > 0


def test_more_devices_than_the_state_bank_starts_with(tiny_model):
    """The bank grows inside a forward pass; restoring state into it afterwards must still work."""
    store = MemoryStore()
    replicas = [replica(store, tiny_model) for _ in range(2)]
    devices = {f"dev-{k}": stream_of(f"dev-{k}", 8, seed=k) for k in range(100)}
    published: list = []
    for k in range(8):
        for i, d in enumerate(devices):
            replicas[(i + k) % 2].hold(devices[d][k], time.monotonic())
        for r in replicas:
            cycle(r, published)
    assert not any(r.held for r in replicas)
    assert len(published) == len({(p.device, p.t_end) for p in published}) == 100 * 2


def test_a_message_delivered_twice_is_classified_once(store_factory, tiny_model):
    a, b = replica(store_factory(), tiny_model), replica(store_factory(), tiny_model)
    batches = stream_of("dev", 8, seed=3)
    published: list = []
    for x in batches:  # both replicas get every message at once: a duplicate delivery each time
        a.hold(x, time.monotonic())
        b.hold(x, time.monotonic())
        a.apply()
        b.apply()
        published += a.commit(a.pipeline.classify_ready())  # a commits first
        published += b.commit(b.pipeline.classify_ready())  # b's write is refused: stale version
        for r in (a, b):
            cycle(r, published)
    assert not a.held and not b.held
    assert b.counts["conflicts"] > 0
    assert Counter((p.device, p.t_end) for p in published).most_common(1)[0][1] == 1
    assert [p.t_end for p in published] == [t for t, _ in offline(tiny_model, batches)]


def test_a_lost_message_is_waited_for_then_counted(store_factory, tiny_model):
    r = replica(store_factory(), tiny_model, reorder_wait=0.5)
    batches = stream_of("dev", 6, seed=4)
    published: list = []
    start = time.monotonic()
    for x in batches[:2] + batches[3:]:  # seq 2 never comes
        r.hold(x, start)
    cycle(r, published, now=start)
    assert r.sequence.snapshot()["dev"] == 1 and r.held == 3  # 3, 4, 5 wait for 2
    cycle(r, published, now=start + 0.6)
    assert r.sequence.snapshot()["dev"] == 5 and r.held == 0
    assert r.sequence.lost_samples == 10


def test_a_new_device_waits_for_its_first_message(store_factory, tiny_model):
    a, b = replica(store_factory(), tiny_model), replica(store_factory(), tiny_model)
    batches = stream_of("dev", 4, seed=5)
    now = time.monotonic()
    b.hold(batches[1], now)  # seq 1 reaches b before seq 0 reaches a
    cycle(b, [], now=now)
    assert b.held == 1
    a.hold(batches[0], now)
    cycle(a, [], now=now)
    cycle(b, [], now=now)
    assert b.held == 0 and b.sequence.snapshot()["dev"] == 1 and b.sequence.lost_samples == 0


# -- real replicas through Mosquitto and Redis ------------------------------------------------------
class Collector:
    def __init__(self, url, topics):
        self.messages: list[tuple[str, bytes]] = []
        self.lock = threading.Lock()
        self.client = connect(url, "test-collect", subscriptions=[(t, 1) for t in topics],
                              on_message=self.on_message)

    def on_message(self, client, userdata, msg):
        with self.lock:
            self.messages.append((msg.topic, msg.payload))

    def predictions(self) -> list[dict]:
        with self.lock:
            return [orjson.loads(p) for t, p in self.messages if t.endswith("/prediction")]

    def latest(self, suffix: str) -> dict[str, bytes]:
        """The last payload of every topic ending with ``suffix``."""
        with self.lock:
            return {t: p for t, p in self.messages if t.endswith(suffix)}

    def wait_for(self, predicate, timeout=30.0) -> bool:
        return wait(predicate, timeout)

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def shared_subscriptions(broker_url):
    """The broker, if it dispatches $share/ subscriptions among their members (Mosquitto does)."""
    topic = f"hartest{uuid.uuid4().hex[:8]}/probe"
    got = [Counter(), Counter()]
    members = [connect(broker_url, "test-share", subscriptions=[(f"$share/probe/{topic}", 1)],
                       on_message=lambda c, u, m, k=k: got[k].update([m.payload])) for k in range(2)]
    pub = connect(broker_url, "test-pub")
    time.sleep(0.3)
    for k in range(8):
        pub.publish(topic, str(k).encode(), qos=1).wait_for_publish(5)
    time.sleep(0.5)
    for c in [*members, pub]:
        c.disconnect()
        c.loop_stop()
    if not (got[0] and got[1] and sum(got[0].values()) + sum(got[1].values()) == 8):
        pytest.skip(f"the broker at {broker_url} does not share $share/ subscriptions among members "
                    f"(counts {sum(got[0].values())}, {sum(got[1].values())})")
    return broker_url


@pytest.mark.broker
@pytest.mark.slow
def test_replicas_split_devices_exactly_once_and_survive_sigkill(shared_subscriptions, tiny_model, tmp_path):
    from models.checkpoint import save_checkpoint
    redis_url = redis_or_skip()
    broker_url = shared_subscriptions
    model_path = tmp_path / "tiny.pt"
    save_checkpoint(model_path, tiny_model, {"test": True})
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    ids = [f"{prefix}-replica-{k}" for k in range(3)]
    replicas, logs = [], []
    for consumer_id in ids:
        logs.append(open(tmp_path / f"{consumer_id}.log", "wb"))
        replicas.append(subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "consume", "--broker", str(broker_url), "--prefix", prefix,
             "--model", str(model_path), "--id", consumer_id, "--shared", "harstream-test",
             "--state-store", redis_url, "--reorder-wait", "5", "--metrics-interval", "0.5", "--no-learn"],
            cwd=ROOT, stdout=logs[-1], stderr=subprocess.STDOUT))
    watch = Collector(broker_url, [f"{prefix}/+/prediction", f"{prefix}/_consumer/+/status",
                                   f"{prefix}/_consumer/+/metrics"])
    pub = connect(broker_url, "test-pub")
    # 5 devices: prime to 3 and 2 replicas, so round-robin sends each device's next message elsewhere
    devices = {f"dev-{k}": stream_of(f"dev-{k}", 80, seed=k) for k in range(5)}
    expected = {d: offline(tiny_model, b) for d, b in devices.items()}

    def send(first: int, last: int, pause: float = 0.0) -> None:
        for k in range(first, last):
            for device, batches in devices.items():
                b = batches[k]
                body = {"seq": b.seq, "t": b.t.tolist(), "acc": b.acc.tolist()}
                pub.publish(f"{prefix}/{device}/imu", orjson.dumps(body), qos=1)
            time.sleep(pause)

    def log_tail() -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in sorted(tmp_path.glob("*.log")))

    try:
        online = lambda: sum(p == b"online" for p in watch.latest("/status").values()) == 3  # noqa: E731
        assert watch.wait_for(online, timeout=60), log_tail()
        time.sleep(0.5)  # their subscriptions are acknowledged after the status goes out
        # 1. three replicas, round-robin: every window exactly once, as one consumer that never stopped
        send(0, 40)
        in_phase1 = {d: [(t, p) for t, p in e if t <= devices[d][39].t[-1]] for d, e in expected.items()}
        total1 = sum(len(v) for v in in_phase1.values())
        assert watch.wait_for(lambda: len(watch.predictions()) >= total1), (len(watch.predictions()), total1,
                                                                            log_tail())
        time.sleep(0.5)
        preds = watch.predictions()
        assert len(preds) == total1 and len({(p["device"], p["t"]) for p in preds}) == total1
        metrics = {t.split("/")[2]: orjson.loads(p) for t, p in watch.latest("/metrics").items()}
        assert sum(m["lost_samples"] for m in metrics.values()) == 0, metrics
        assert not any(m["rejected"] for m in metrics.values()), metrics
        classes = tiny_model.config.classes
        for device, want in in_phase1.items():
            got = sorted((p["t"], [p["probs"][c] for c in classes]) for p in preds if p["device"] == device)
            assert [t for t, _ in got] == pytest.approx([t for t, _ in want])
            np.testing.assert_allclose(np.array([p for _, p in got]), np.stack([p for _, p in want]),
                                       atol=2e-4)
        assert all(metrics[i]["windows"] > 0 for i in ids), metrics  # every replica took a share
        # and took devices over from each other: a read of the store wherever its copy was stale
        assert sum(m["shared"]["reads"] for m in metrics.values()) > 40 * len(devices) / 2, metrics

        # 2. SIGKILL one replica mid-stream: the others take its devices over from the stored state
        sender = threading.Thread(target=send, args=(40, 80, 0.03))
        sender.start()
        time.sleep(0.4)
        replicas[0].send_signal(signal.SIGKILL)
        replicas[0].wait(10)
        sender.join(30)
        last_t = {d: e[-1][0] for d, e in expected.items()}
        done = lambda: all(any(p["device"] == d and p["t"] == pytest.approx(t) for p in watch.predictions())  # noqa: E731
                           for d, t in last_t.items())
        assert watch.wait_for(done, timeout=30), log_tail()
        time.sleep(1.5)  # anything late (a gap waits --reorder-wait) would show up now
        preds = watch.predictions()
        counts = Counter((p["device"], round(p["t"], 4)) for p in preds)
        assert max(counts.values()) == 1, [k for k, n in counts.items() if n > 1]  # never twice
        total = sum(len(e) for e in expected.values())
        # at most a window per device lost: one the killed replica committed but never published
        assert total - len(devices) <= len(counts) <= total, (len(counts), total)
        for r in replicas[1:]:
            assert r.poll() is None, log_tail()
            r.send_signal(signal.SIGTERM)
        assert all(r.wait(20) == 0 for r in replicas[1:]), log_tail()
    finally:
        for r in replicas:
            if r.poll() is None:
                r.kill()
                r.wait(10)
        for f in logs:
            f.close()
        pub.disconnect()
        pub.loop_stop()
        watch.close()
        import redis
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(f"harstream:{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_a_backlog_is_classified_in_batches_not_one_window_at_a_time(tiny_model):
    """Behind a backlog, messages arrived long ago: the cycle still gathers up to max_wait of work."""
    from stream.consumer import Consumer, ConsumerConfig
    from stream.mqtt import BrokerURL
    config = ConsumerConfig(broker=BrokerURL.parse("mqtt://127.0.0.1:1"), learn=False, max_wait=0.05)
    consumer = Consumer(config, StatefulClassifier(tiny_model))
    long_ago = time.monotonic() - 10.0
    for k in range(200):  # each message completes one window of its device
        b = stream_of(f"dev-{k}", 1, seed=k, n=40)[0]
        body = {"seq": 0, "t": b.t.tolist(), "acc": b.acc.tolist()}
        consumer._queue.put((f"har/dev-{k}/imu", orjson.dumps(body), long_ago))
    consumer._drain(timeout=0.05)
    assert consumer.pipeline.pending > 20
