"""Acknowledgement after the window: a consumer killed with SIGKILL loses no QoS 1 message and
classifies no window twice; the ack bookkeeping, the journal and the in-flight guards on their own."""

from __future__ import annotations

import os
import signal
import sqlite3
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

from models.checkpoint import save_checkpoint
from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig, _Acks
from stream.decode import Rejected, SampleBatch, SequenceCheck
from stream.mqtt import BrokerURL, connect
from stream.persist import AckJournal, load_state, read_journal, save_state
from tests.helpers import imu, wait

ROOT = Path(__file__).resolve().parents[1]


# -- the bookkeeping alone -------------------------------------------------------------------------
class FakeClient:
    def __init__(self) -> None:
        self.acked: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


def test_a_message_is_acknowledged_once_all_its_batches_are_in_published_windows():
    acks = _Acks(limit=100)
    acks.client = FakeClient()
    acks.hold(1, 1, "a", 1.0, 0)
    acks.hold(2, 1, "a", 2.0, 1)
    acks.hold(3, 1, "b", 1.5, None)  # one message, two devices' batches (an adapter)
    acks.hold(3, 1, "c", 1.5, None)
    acks.covered("a", 1.5)
    assert acks.client.acked == [1] and acks.safe_seq("a", 1) == 0
    acks.covered("b", 2.0)
    assert acks.client.acked == [1]  # 3 still has c's batch
    acks.covered("c", 1.5)
    assert acks.client.acked == [1, 3]
    acks.drop_device("a")  # evicted: its partial window goes, and is acknowledged
    assert acks.client.acked == [1, 3, 2] and len(acks) == 0
    assert acks.counts == {"after_window": 2, "dropped": 1}
    assert acks.safe_seq("a", 1) == 1


def test_beyond_the_limit_the_oldest_is_acknowledged_and_counted():
    acks = _Acks(limit=3)
    acks.client = FakeClient()
    for mid in range(1, 6):
        acks.hold(mid, 1, "a", float(mid), mid)
        acks.enforce_limit()
    assert acks.client.acked == [1, 2, 3] and list(acks.held) == [4, 5]
    assert acks.counts["forced"] == 3
    acks.covered("a", 10.0)  # forced ones are not acknowledged twice
    assert acks.client.acked == [1, 2, 3, 4, 5]


def test_a_late_message_that_fills_a_counted_gap_is_taken_off_lost_samples():
    check = SequenceCheck()
    batch = lambda seq, n=10: SampleBatch("d", np.zeros(n), np.zeros((n, 3), np.float32), seq=seq)  # noqa: E731
    check.check(batch(0))
    assert check.check(batch(5)) == 40  # 1-4 missing
    assert check.check(batch(3)) == -10 and check.lost_samples == 30
    assert check.check(batch(1)) == -10 and check.lost_samples == 20
    for seq, reason in ((3, "backwards_seq"), (5, "repeated_seq")):  # filled already / the last one
        with pytest.raises(Rejected) as info:
            check.check(batch(seq))
        assert info.value.reason == reason
    assert check.check(batch(2)) == -10 and check.check(batch(4)) == -10
    assert check.lost_samples == 0 and check.filled_samples == 40
    no_fill = SequenceCheck(fill_gaps=False)
    no_fill.check(batch(0))
    no_fill.check(batch(5))
    with pytest.raises(Rejected):
        no_fill.check(batch(3))


def test_the_journal_carries_what_was_acknowledged_since_the_checkpoint(tmp_path):
    journal = AckJournal(tmp_path, 0)
    journal.write([("a", 10.5, 4), ("b", 3.0, None)])
    journal.write([("a", 11.3, 6)])
    assert read_journal(tmp_path, 0) == ({"a": 11.3, "b": 3.0}, {"a": 6}, {}, [])
    save_state(tmp_path, "v", {}, {"a": 6}, {}, watermarks={"a": 11.3, "b": 3.0}, journal=1)
    journal.rotate(1)
    journal.write([("b", 4.0, 2, (3.98, [0.5, 0.25, 9.75])),  # with the last sample acknowledged
                   ("P", 7.5, 3, (7.48, [1.0, 2.0, 3.0]))],  # a device called P: not a prediction line
                  [("b", 4.0, "squat", 0.875, "v1", 12.5), ("P", 7.5, "rest", 0.5, "v1", 3.25)])
    with open(tmp_path / "acked-1.log", "ab") as f:
        f.write(b"a\t99.0")  # a kill in the middle of a line: ignored
    journal.close()
    assert not (tmp_path / "acked-0.log").exists()
    state = load_state(tmp_path)
    assert state["journal"] == 1 and state["watermarks"] == {"a": 11.3, "b": 3.0}
    assert read_journal(tmp_path, 1) == ({"b": 4.0, "P": 7.5}, {"b": 2, "P": 3},
                                         {"b": (3.98, [0.5, 0.25, 9.75]), "P": (7.48, [1.0, 2.0, 3.0])},
                                         [("b", 4.0, "squat", 0.875, "v1", 12.5), ("P", 7.5, "rest", 0.5, "v1", 3.25)])


def test_a_restarted_consumer_stores_what_the_killed_one_journalled(tmp_path, tiny_model):
    """Predictions journalled before they were published (and before the store's writer got them) are
    put into the event store by the next life, once: the store already had one of them."""
    save_state(tmp_path, "tiny", {}, {}, {}, watermarks={}, journal=0)
    journal = AckJournal(tmp_path, 0)
    journal.write([("d1", 2.0, 5)], [("d1", 1.0, "squat", 0.9, "tiny", 10.0), ("d1", 2.0, "rest", 0.8, "tiny", 11.0)])
    journal.close()
    from stream.store import EventStore
    store = EventStore(tmp_path / "events.db")
    store.prediction("d1", 1.0, "squat", 0.9, "tiny", 10.0)  # written before the kill
    store.close()
    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path, learn=False),
                        StatefulClassifier(tiny_model, "tiny"))
    assert consumer._resume == {"d1": 2.0} and consumer.sequence.last("d1") == 5
    assert consumer.store.flush(10)
    consumer.store.close()
    rows = sqlite3.connect(tmp_path / "events.db").execute("SELECT device, t, label FROM predictions ORDER BY t")
    assert rows.fetchall() == [("d1", 1.0, "squat"), ("d1", 2.0, "rest")]


@pytest.mark.parametrize("first_seq, messages", [(0, 5), (1, 41)])
def test_copies_the_broker_sends_again_after_a_kill_are_no_new_session(tmp_path, tiny_model, first_seq, messages):
    """Killed after publishing windows and before their PUBACKs left: the broker sends the copies again
    (DUP). A copy of the session's seq 0, or a copy more than 30 s behind the last published window, was
    taken for a restarted device: the windows were classified again (all of them from seq 0; one off the
    grid, overlapping, from a copy 30 s behind). The next life skips them and goes on on the same grid."""
    from tests.test_persist_faults import _life

    def message(seq):  # 1 s of 25 Hz per message: windows of 0.8 s end inside messages
        return imu(seq, 100.0 + seq, n=25, rate=25.0)

    first = _life(tmp_path, tiny_model)
    first.acks.client = first._client
    for seq in range(first_seq, first_seq + messages):
        first.handle("har/dev/imu", message(seq), time.monotonic(), 1000 + seq, 1)
        first._classify()
    published = [t for _, t in first._client.windows]
    assert len(published) >= 4 and len(first.acks) > 0  # a partial window held
    first.store._abandon.set()  # killed: no checkpoint, the journal is all the next life has
    first.journal.close()
    second = _life(tmp_path, tiny_model)
    second.acks.client = second._client
    try:
        for seq in range(first_seq, first_seq + messages + 3):  # the copies again, then new messages
            copy = seq < first_seq + messages
            second.handle("har/dev/imu", message(seq), time.monotonic(), 1000 + seq, 1, copy)
            second._classify()
        again = [t for _, t in second._client.windows]
        assert again and min(again) > max(published)  # no window classified twice
        step = tiny_model.config.window / tiny_model.config.rate
        assert all(abs((t - published[0]) / step - round((t - published[0]) / step)) < 1e-3 for t in again), again
        assert second.stats.rejected == {} and second.sequence.lost_samples == 0
        assert second.acks.counts["redelivered"] == messages - 1  # the last one reaches past the mark
    finally:
        second.journal.close()
        second.store.close()


@pytest.mark.parametrize("restart_at", [110.013, 95.537])
def test_a_device_restarted_on_a_new_clock_near_the_mark_loses_no_window(tmp_path, tiny_model, restart_at):
    """A device that restarts (seq 0, its clock back to within 30 s of the last published window) as the
    consumer is killed: its first message was taken, not classified, and comes again as a copy (DUP). It is
    no copy of the old session's seq 0 (its samples are off the old grid), so every window of the new session
    is published."""
    from tests.test_persist_faults import _life

    first = _life(tmp_path, tiny_model)
    first.acks.client = first._client
    for seq in range(20):  # the old session: 20 s
        first.handle("har/dev/imu", imu(seq, 100.0 + seq, n=25, rate=25.0), time.monotonic(), 1000 + seq, 1)
        first._classify()
    first.handle("har/dev/imu", imu(0, restart_at, n=25, rate=25.0), time.monotonic(), 2000, 1)  # the new one
    first.store._abandon.set()  # killed before a cycle ran
    first.journal.close()
    second = _life(tmp_path, tiny_model)
    second.acks.client = second._client
    try:
        for seq in range(30):
            second.handle("har/dev/imu", imu(seq, restart_at + seq, n=25, rate=25.0), time.monotonic(), 3000 + seq,
                          1, seq == 0)
            second._classify()
        again = sorted(t for _, t in second._client.windows)
        assert len(again) == 30 * 25 // 20 and again[0] < restart_at + 1, again[:3]
        assert second.stats.rejected == {} and second.acks.counts["redelivered"] == 0
    finally:
        second.journal.close()
        second.store.close()


# -- through the broker ------------------------------------------------------------------------------
class Watcher:
    """Every prediction and metrics message of one prefix."""

    def __init__(self, url: BrokerURL, prefix: str) -> None:
        self.predictions: list[tuple[str, float]] = []
        self.metrics: list[dict] = []
        self.status: list[bytes] = []
        self.client = connect(url, "test-acks-watch", on_message=self._on_message,
                              subscriptions=[(f"{prefix}/+/prediction", 1),
                                             (f"{prefix}/_consumer/+/metrics", 0),
                                             (f"{prefix}/_consumer/+/status", 1)])

    def _on_message(self, client, userdata, msg) -> None:
        if msg.topic.endswith("/prediction"):
            body = orjson.loads(msg.payload)
            self.predictions.append((body["device"], round(body["t"], 6)))
        elif msg.topic.endswith("/metrics"):
            self.metrics.append(orjson.loads(msg.payload))
        else:
            self.status.append(msg.payload)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_kill_9_loses_no_message_and_classifies_no_window_twice(broker_url, needs_full_broker, tiny_model,
                                                                tmp_path):
    """The consumer is killed twice (SIGKILL, no clean shutdown) while devices publish QoS 1 batches,
    once in steady state and once while its successor eats the backlog the broker kept; after the last
    restart every window of every device has been classified, each exactly once."""
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    model_path = tmp_path / "tiny.pt"
    save_checkpoint(model_path, tiny_model)
    rate, window = tiny_model.config.rate, tiny_model.config.window
    state_dir = tmp_path / "state"
    cmd = [sys.executable, "-m", "stream.cli", "consume", "--broker", str(broker_url), "--prefix", prefix,
           "--model", str(model_path), "--state-dir", str(state_dir), "--checkpoint-interval", "1",
           "--metrics-interval", "0.5", "--no-learn", "--ack-stall", "600"]
    devices, messages, t0 = [f"dev-{d}" for d in range(4)], 150, 1000.0  # 30 s of 50 Hz per device
    watcher = Watcher(broker_url, prefix)
    procs: list[subprocess.Popen] = []
    logs = []

    def start() -> subprocess.Popen:
        log = open(tmp_path / f"consumer-{len(procs)}.log", "wb")  # noqa: SIM115
        logs.append(log)
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    def kill9(proc: subprocess.Popen) -> None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(20)

    pub = connect(broker_url, "test-acks-pub")
    published = threading.Event()
    infos = []

    def publish() -> None:
        for k in range(messages):
            for device in devices:
                infos.append(pub.publish(f"{prefix}/{device}/imu", imu(k, t0 + 0.2 * k), qos=1))
            time.sleep(0.03)
        published.set()

    try:
        first = start()
        assert wait(lambda: b"online" in watcher.status, timeout=60), "the consumer did not come online"
        feeder = threading.Thread(target=publish)
        feeder.start()
        # steady state: a few windows published, then SIGKILL
        assert wait(lambda: len(watcher.predictions) >= 3 * len(devices), timeout=60)
        kill9(first)
        seen = len(watcher.predictions)
        second = start()
        # its first prediction: it is eating the backlog the broker kept for the session; SIGKILL again
        assert wait(lambda: len(watcher.predictions) > seen, timeout=60)
        kill9(second)
        start()
        feeder.join()
        for info in infos:
            info.wait_for_publish(10)
        assert all(info.is_published() for info in infos)  # PUBACKed by the broker
        expected = {(d, round(t0 + (window * (m + 1) - 1) / rate, 6))
                    for d in devices for m in range(int(messages * 10 / 50 * rate) // window)}
        def classified() -> set:
            # predictions are QoS 0: those a killed process had written to its socket can go down with
            # the socket (reset, as it still held unread input); its event store has them
            with sqlite3.connect(state_dir / "events.db") as db:
                stored = {(d, round(t, 6)) for d, t in db.execute("SELECT device, t FROM predictions")}
            return set(watcher.predictions) | stored

        assert wait(lambda: expected <= classified(), timeout=120), sorted(expected - classified())[:5]
        time.sleep(1.0)  # a window classified twice would come now, if at all
        # the second life may have classified everything before it was killed: the last one must be up
        # (its signal handlers set, as before it says online) before it is asked to stop
        assert wait(lambda: watcher.status.count(b"online") >= len(procs), timeout=60)
        procs[-1].send_signal(signal.SIGTERM)
        assert procs[-1].wait(30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        for log in logs:
            log.close()
        watcher.close()
        pub.disconnect()
        pub.loop_stop()
    db = sqlite3.connect(state_dir / "events.db")
    stored = Counter((d, round(t, 6)) for d, t in db.execute("SELECT device, t FROM predictions"))
    db.close()
    watched = Counter(watcher.predictions)
    published_windows = set(stored) | set(watched)
    twice = {k for k in published_windows if max(stored[k], watched[k]) > 1}
    assert twice == set()  # no window classified twice (the same window again, on the same grid)
    assert published_windows == expected  # every window classified: no message lost, nothing extra
    assert [p.returncode for p in procs] == [-signal.SIGKILL, -signal.SIGKILL, 0]
    last = [m for m in watcher.metrics if m["acks"]["mode"] == "after-window"]
    assert last and last[-1]["acks"]["protocol"] == "5"
    assert last[-1]["rejected"] == {} and last[-1]["acks"]["forced"] == 0 and last[-1]["dropped"] == 0
    assert last[-1]["lost_samples"] == 0  # the journal's seq: no false gap after a restart


# -- in-process: the guards -------------------------------------------------------------------------
def start_consumer(config, model):
    consumer = Consumer(config, StatefulClassifier(model, "tiny"))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    assert wait(lambda: consumer._client is not None and consumer._client.is_connected(), 20)
    return consumer, thread


def test_acknowledging_after_the_window_never_stalls_under_a_small_limit(broker_url, needs_full_broker,
                                                                       tiny_model, tmp_path):
    """20 devices, 3 messages each in flight, and the consumer may hold only 10 unacknowledged (as
    under Mosquitto's default in-flight limit): no window completes within them, so the guard must
    acknowledge the oldest (counted) for the windows to go on."""
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    consumer, thread = start_consumer(ConsumerConfig(broker=broker_url, prefix=prefix, state_dir=tmp_path,
                                                     learn=False, max_unacked=10, ack_stall=600.0),
                                      tiny_model)
    pub = connect(broker_url, "test-acks-pub")
    try:
        assert consumer.after_window
        for k in range(20):
            for d in range(20):
                pub.publish(f"{prefix}/dev-{d}/imu", imu(k, 50.0 + 0.2 * k), qos=1)
        # 4 s of samples per device: 5 windows of 0.8 s each, all of them classified
        assert wait(lambda: consumer.stats.windows >= 20 * 5, timeout=60), consumer.stats.windows
        assert consumer.acks.counts["forced"] > 0 and len(consumer.acks) < 10
    finally:
        consumer.stop()
        thread.join(20)
        pub.disconnect()
        pub.loop_stop()


def test_a_quiet_spell_acknowledges_what_is_held(broker_url, needs_full_broker, tiny_model, tmp_path):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    consumer, thread = start_consumer(ConsumerConfig(broker=broker_url, prefix=prefix, state_dir=tmp_path,
                                                     learn=False, ack_stall=0.3), tiny_model)
    pub = connect(broker_url, "test-acks-pub")
    try:
        for k in range(3):  # less than a window: held, until nothing arrives for ack_stall
            pub.publish(f"{prefix}/dev-q/imu", imu(k, 10.0 + 0.2 * k), qos=1)
        assert wait(lambda: consumer.acks.counts["forced"] == 3, 20), consumer.acks.counts
        assert len(consumer.acks) == 0
    finally:
        consumer.stop()
        thread.join(20)
        pub.disconnect()
        pub.loop_stop()


def test_oversize_payloads_are_refused_before_queueing_and_acknowledged(broker_url, tiny_model, tmp_path):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    consumer, thread = start_consumer(ConsumerConfig(broker=broker_url, prefix=prefix, learn=False,
                                                     max_payload=1000, metrics_interval=0.2), tiny_model)
    pub = connect(broker_url, "test-acks-pub")
    try:
        for _ in range(5):
            pub.publish(f"{prefix}/dev-o/imu", b"x" * 5000, qos=1).wait_for_publish(5)
        pub.publish(f"{prefix}/dev-o/imu", imu(0, 5.0), qos=1).wait_for_publish(5)
        assert wait(lambda: consumer.stats.samples == 10, 20)
        assert wait(lambda: consumer.last_metrics.get("rejected") == {"oversize": 5}, 20)
        assert consumer.stats.messages == 1  # the refused ones never reached the queue
    finally:
        consumer.stop()
        thread.join(20)
        pub.disconnect()
        pub.loop_stop()


def test_mqtt5_receive_maximum_lifts_the_brokers_in_flight_limit(broker_url, needs_full_broker):
    """What the consumer relies on: a subscriber that acknowledges nothing gets as many QoS 1 messages
    as its Receive Maximum, whatever the broker's ``max_inflight_messages`` (20 by default: the
    3.1.1 subscriber gets that many, or all where the broker sets no limit)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    def unacked_received(protocol, receive_maximum=None) -> int:
        topic = f"hartest{uuid.uuid4().hex[:8]}/inflight"
        got = []
        sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-inflight-{uuid.uuid4().hex[:6]}",
                          protocol=protocol, manual_ack=True)
        sub.on_message = lambda c, u, m: got.append(m.mid)
        subscribed = threading.Event()
        sub.on_subscribe = lambda *args: subscribed.set()
        if protocol == mqtt.MQTTv5:
            props = Properties(PacketTypes.CONNECT)
            props.ReceiveMaximum = receive_maximum
            sub.connect(broker_url.host, broker_url.port, properties=props)
        else:
            sub.connect(broker_url.host, broker_url.port)
        sub.loop_start()
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                          client_id=f"test-inflight-pub-{uuid.uuid4().hex[:6]}")
        pub.max_inflight_messages_set(1000)
        pub.connect(broker_url.host, broker_url.port)
        pub.loop_start()
        try:
            wait(lambda: sub.is_connected(), 10)
            sub.subscribe(topic, 1)
            assert subscribed.wait(10)
            for info in [pub.publish(topic, b"x", qos=1) for _ in range(150)]:
                info.wait_for_publish(10)
            wait(lambda: len(got) >= 150, 2.0)  # what can come has come by then
            return len(got)
        finally:
            for client in (sub, pub):
                client.disconnect()
                client.loop_stop()

    v311 = unacked_received(mqtt.MQTTv311)
    assert v311 in (20, 150)  # Mosquitto's default in-flight limit, or none (max_inflight_messages 0)
    assert unacked_received(mqtt.MQTTv5, 100) == 100
    assert unacked_received(mqtt.MQTTv5, 150) == 150
