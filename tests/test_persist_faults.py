"""Persistence under faults: an event store that cannot write for a while (locked, disk full), unreadable
state files, journals cut short, paths SQLite's URIs would misread, an empty consumer-id file."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.persist import AckJournal, load_state, read_journal, save_state
from stream.store import EventStore
from tests.helpers import imu, wait
from tests.test_consumer_restart import _NoBroker

ROOT = Path(__file__).resolve().parents[1]
_connect = sqlite3.connect


@pytest.fixture
def fast_busy_timeout(monkeypatch):
    """Every SQLite connection opened during the test waits 0.2 s for another's lock, not 10 s."""
    def connect(*args, **kwargs):
        kwargs["timeout"] = 0.2
        return _connect(*args, **kwargs)
    monkeypatch.setattr(sqlite3, "connect", connect)


class _Locked:
    """Another connection holding ``path``'s write lock until released."""

    def __init__(self, path: Path) -> None:
        self.db = _connect(path, isolation_level=None, timeout=5)
        self.db.execute("BEGIN EXCLUSIVE")

    def release(self) -> None:
        if self.db is not None:
            self.db.execute("COMMIT")
            self.db.close()
            self.db = None


def _failing(store: EventStore) -> bool:
    """Whether the store's writer has failed to write (before the fix, its thread ended)."""
    return getattr(store, "failing", False) or not store._thread.is_alive()


def _count(path: Path) -> int:
    with _connect(path) as db:
        return db.execute("SELECT COUNT(*) FROM predictions").fetchone()[0]


class _Broker(_NoBroker):
    """``_NoBroker`` that also takes acknowledgements (a consumer acknowledging after the window)."""

    def ack(self, mid, qos):
        pass


def _life(tmp_path, model, journal: bool = True, **config) -> Consumer:
    """A consumer on ``tmp_path`` without a broker; with ``journal``, acknowledging after the window
    and journalling as ``run()`` sets it up with a broker that speaks MQTT 5."""
    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path, learn=False, **config),
                        StatefulClassifier(model, "tiny"))
    consumer._client = _Broker()
    if journal:
        consumer.after_window = True
        consumer.journal = AckJournal(tmp_path, consumer._journal_generation)
    return consumer


def _send(consumer, device, seq):
    consumer.handle(f"har/{device}/imu", imu(seq, 100.0 + seq, n=25, rate=25.0), time.monotonic())
    consumer._classify()


# -- 1. the event store's writer ---------------------------------------------------------------------------
def test_the_store_writer_outlives_a_lock_held_beyond_its_busy_timeout(tmp_path, fast_busy_timeout):
    path = tmp_path / "events.db"
    store = EventStore(path)
    try:
        store.prediction("d", 1.0, "squat", 0.9, "v", 1.0)
        assert store.flush(5)
        lock = _Locked(path)
        try:
            store.prediction("d", 2.0, "squat", 0.9, "v", 1.0)
            time.sleep(1.0)  # the writer's tries time out (0.2 s each)
            assert store._thread.is_alive()
            assert store.errors >= 1 and store.failing
        finally:
            lock.release()
        for t in range(3, 8):
            store.prediction("d", float(t), "squat", 0.9, "v", 1.0)
        assert store.flush(5), store.pending
        assert _count(path) == 7 and not store.failing
    finally:
        store.close()


def test_the_store_writer_outlives_a_full_disk(tmp_path):
    """A full disk (the file size limit: writes beyond it fail with EFBIG), then space again: the batches
    kept are written on a new connection. In a process of its own (the limit is the process's)."""
    script = f"""
import resource, signal, sqlite3, sys, time
from stream.store import EventStore
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
store = EventStore({str(tmp_path / 'events.db')!r})
soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))
for i in range(20000):
    store.prediction("d1", float(i), "squat", 0.9, "v", 1.0)
deadline = time.monotonic() + 5
while time.monotonic() < deadline and store._thread.is_alive() and not getattr(store, "errors", 0):
    time.sleep(0.05)
resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
store.prediction("d2", 1.0, "squat", 0.9, "v", 1.0)
ok = store.flush(10)
print(ok, sqlite3.connect({str(tmp_path / 'events.db')!r}).execute("select count(*) from predictions").fetchone()[0])
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.split() == ["True", "20001"], out.stdout + out.stderr[-2000:]


def test_store_failures_reach_the_metrics_and_a_checkpoint_does_not_wait_for_a_failing_store(
        tmp_path, tiny_model, fast_busy_timeout):
    consumer = _life(tmp_path, tiny_model)
    lock = None
    try:
        for seq in range(3):
            _send(consumer, "dev", seq)
        assert consumer.checkpoint()
        lock = _Locked(tmp_path / "events.db")
        for seq in range(3, 6):
            _send(consumer, "dev", seq)
        assert wait(lambda: _failing(consumer.store), timeout=5)
        started = time.monotonic()
        assert not consumer.checkpoint()  # the journal holds what the store has not written: it waits
        assert time.monotonic() - started < 1.0  # without waiting for the store (it waited 10 s)
        consumer._publish_metrics()
        store = consumer.last_metrics["store"]
        assert store["errors"] >= 1 and store["failing"] and store["pending"] >= 3
        lock.release()
        assert wait(lambda: not consumer.store.failing, timeout=5)
        assert consumer.checkpoint()
        consumer._publish_metrics()
        assert consumer.last_metrics["store"]["pending"] == 0
        assert _count(tmp_path / "events.db") == consumer.stats.windows
    finally:
        if lock is not None:
            lock.release()
        consumer.journal.close()
        consumer.store.close()


def test_a_checkpoint_that_must_wait_is_tried_again_seconds_later_not_at_every_pass(
        broker_url, tiny_model, tmp_path, monkeypatch):
    consumer = Consumer(ConsumerConfig(broker=broker_url, prefix="hartestckpt", state_dir=tmp_path, learn=False,
                                       checkpoint_interval=0.5, ack_stall=600.0),
                        StatefulClassifier(tiny_model, "tiny"))
    calls = []
    real = consumer.checkpoint

    def checkpoint(final: bool = False) -> bool:  # the store behind: every non-final checkpoint must wait
        calls.append(final)
        return real(final) if final else False
    monkeypatch.setattr(consumer, "checkpoint", checkpoint)
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        assert wait(lambda: calls, timeout=10)
        time.sleep(1.5)
    finally:
        consumer.stop()
        thread.join(20)
    assert calls.count(False) <= 5, len(calls)  # every 0.5 s (the retry delay here), not at every pass


def test_a_final_checkpoint_keeps_the_journal_the_store_has_not_written(tmp_path, tiny_model, fast_busy_timeout):
    first = _life(tmp_path, tiny_model)
    lock = None
    try:
        for seq in range(3):
            _send(first, "dev", seq)
        assert first.checkpoint()
        generation, stored = first.journal.generation, first.stats.windows
        lock = _Locked(tmp_path / "events.db")
        for seq in range(3, 6):
            _send(first, "dev", seq)
        assert wait(lambda: _failing(first.store), timeout=5)
        first.checkpoint(final=True)  # stopping with the store still failing
        first.journal.close()
        first.store.close(timeout=0.5)
    finally:
        if lock is not None:
            lock.release()
    assert first.stats.windows > stored == _count(tmp_path / "events.db")
    state = load_state(tmp_path)
    assert state["journal"] == generation and (tmp_path / f"acked-{generation}.log").exists()
    second = _life(tmp_path, tiny_model)  # the next life puts the journal's predictions into the store
    try:
        assert second.store.flush(5)
        assert second._resume == {"dev": state["watermarks"]["dev"]}
        rows = second.store.query("SELECT t FROM predictions ORDER BY t")
        assert len(rows) == first.stats.windows == len({t for t, in rows})
    finally:
        second.journal.close()
        second.store.close()


# -- 2. unreadable files --------------------------------------------------------------------------------
def _torch_bytes(obj) -> bytes:
    import io
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


STATE = {"format": "harstream.consumer-state", "format_version": 2}
BAD_STATES = {
    "empty": b"",
    "truncated": _torch_bytes({**STATE, "devices": {}})[:200],
    "pickle": __import__("pickle").dumps({"a": 1}),
    "no keys": _torch_bytes(STATE),
    "wrong types": _torch_bytes({**STATE, "saved_at": 1.0, "model_version": "v", "devices": [1, 2],
                                 "evicted": {}, "sequences": {}}),
    "not tensors": _torch_bytes({**STATE, "saved_at": 1.0, "model_version": "v", "devices": {"d": [1, 2]},
                                 "evicted": {}, "sequences": {}}),
}


@pytest.mark.parametrize("kind", sorted(BAD_STATES))
def test_an_unreadable_consumer_state_is_a_value_error_naming_the_file(tmp_path, kind):
    (tmp_path / "consumer-state.pt").write_bytes(BAD_STATES[kind])
    with pytest.raises(ValueError, match="consumer-state.pt"):
        load_state(tmp_path)


@pytest.mark.parametrize("content", [b"", _torch_bytes(torch.zeros(3)),
                                     _torch_bytes({"format": "harstream.adapters", "classes": 3, "adapters": [1]})])
def test_an_unreadable_adapters_file_is_warned_about_and_no_adapter_is_loaded(tmp_path, content, caplog):
    from models.personal import DeviceAdapters
    (tmp_path / "adapters.pt").write_bytes(content)
    adapters = DeviceAdapters(3)
    assert adapters.load(tmp_path / "adapters.pt") == 0
    assert "adapters.pt" in caplog.text


def test_an_event_store_that_is_no_database_is_a_one_line_error_naming_it(tmp_path, capsys):
    from stream.cli import main
    (tmp_path / "events.db").write_bytes(os.urandom(5000))
    assert main(["consume", "--state-dir", str(tmp_path), "--broker", "mqtt://127.0.0.1:1", "--no-learn",
                 "--duration", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(tmp_path / "events.db") in err


def test_an_unreadable_state_leaves_no_journal_unread(tmp_path, tiny_model):
    """The checkpoint that named the journal cannot be read: the journals on disk are read all the same,
    their predictions stored, and the one the next life continues holds the others' predictions."""
    path = save_state(tmp_path, "tiny", {}, {"dev": 4}, {}, watermarks={"dev": 10.0}, journal=7)
    path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])  # a power cut before the rename was synced
    (tmp_path / "acked-6.log").write_text("=P\tdev\t8.0\tsquat\t0.9\ttiny\t3.0\n")  # a kill during rotate
    (tmp_path / "acked-7.log").write_text("dev\t12.0\t5\n=P\tdev\t12.0\tsquat\t0.9\ttiny\t3.0\n")
    consumer = _life(tmp_path, tiny_model)
    try:
        assert consumer._journal_generation == 7 and consumer._resume == {"dev": 12.0}
        assert consumer.sequence.last("dev") == 5
        assert consumer.store.flush(5)
        assert consumer.store.query("SELECT t FROM predictions ORDER BY t") == [(8.0,), (12.0,)]
        assert not (tmp_path / "acked-6.log").exists()
        assert sorted(p[1] for p in read_journal(tmp_path, 7)[3]) == [8.0, 12.0]
    finally:
        consumer.journal.close()
        consumer.store.close()


def test_state_adapter_and_model_files_are_synced_before_the_rename(tmp_path, tiny_model, monkeypatch):
    from models.checkpoint import save_checkpoint
    from models.personal import DeviceAdapters
    events = []
    fsync, replace = os.fsync, os.replace

    def synced(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return fsync(fd)

    def replaced(src, dst, *args, **kwargs):
        events.append(("replace", str(src)))
        return replace(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "fsync", synced)
    monkeypatch.setattr(os, "replace", replaced)
    for write in (lambda: save_state(tmp_path, "v", {}, {}, {}),
                  lambda: save_checkpoint(tmp_path / "serving.pt", tiny_model),
                  lambda: DeviceAdapters(3).save(tmp_path / "adapters.pt")):
        events.clear()
        write()
        tmp = next(src for kind, src in events if kind == "replace")
        assert events == [("fsync", tmp), ("replace", tmp), ("fsync", str(tmp_path))]


# -- 3. paths -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd space ünï", "sd#1", "sd?x", "sd%41"])
def test_the_store_and_the_dashboard_read_a_state_dir_whatever_its_name(tmp_path, name):
    from dashboard.live import LiveStore, load_history
    path = tmp_path / name / "events.db"
    store = EventStore(path)
    store.prediction("d", 1.0, "squat", 0.9, "v", 1.0)
    assert store.flush(5)
    try:
        assert store.query("SELECT device FROM predictions") == [("d",)]
    finally:
        store.close()
    assert load_history(LiveStore("har"), str(path)) == 1


# -- 4. the consumer's id ---------------------------------------------------------------------------------
@pytest.mark.parametrize("content", ["", "  \n"])
def test_an_empty_consumer_id_file_is_replaced_by_one_id_kept_for_good(tmp_path, content):
    (tmp_path / "consumer-id").write_text(content)
    first = ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path, learn=False).consumer_id
    second = ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path, learn=False).consumer_id
    assert first.startswith("harstream-consumer-") and second == first
    assert (tmp_path / "consumer-id").read_text() == first
    assert [p.name for p in tmp_path.iterdir()] == ["consumer-id"]


# -- 5. the journal -------------------------------------------------------------------------------------
def test_a_journal_line_cut_short_by_a_kill_takes_no_line_of_the_next_life(tmp_path):
    journal = AckJournal(tmp_path, 3)
    journal.write([("devA", 10.0, 4)], [("devA", 10.0, "squat", 0.9, "v1", 12.0)])
    os.write(journal._fd, b"devA\t12.0\t")  # killed in the middle of a write
    os.close(journal._fd)
    journal._fd = None
    journal = AckJournal(tmp_path, 3)  # the next life, from the checkpoint that names generation 3
    journal.write([("devB", 50.0, 20)], [("devB", 50.0, "lunge", 0.8, "v1", 9.0)])
    journal.close()
    marks, seqs, _, predictions = read_journal(tmp_path, 3)
    assert marks == {"devA": 10.0, "devB": 50.0} and seqs == {"devA": 4, "devB": 20}
    assert [p[0] for p in predictions] == ["devA", "devB"]


def test_a_short_write_is_completed(tmp_path, monkeypatch):
    write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: write(fd, bytes(data[:7])))  # 7 bytes at most each time
    journal = AckJournal(tmp_path, 0)
    journal.write([("devA", 10.0, 4), ("devB", 3.0, None)], [("devA", 10.0, "squat", 0.9, "v1", 12.0)])
    journal.close()
    assert read_journal(tmp_path, 0)[:2] == ({"devA": 10.0, "devB": 3.0}, {"devA": 4})
    assert len(read_journal(tmp_path, 0)[3]) == 1


# -- 6. the store's key -----------------------------------------------------------------------------------
def test_a_device_whose_clock_restarts_has_its_new_sessions_predictions_stored_each_once(tmp_path, tiny_model):
    """The same recording twice (seq and clock start again): both sessions' windows are stored. A killed
    life's journal put into the store again adds no row; a journal line of an older harstream (without
    its publication time) is stored only where its window has no row."""
    first = _life(tmp_path, tiny_model)
    for _ in range(2):  # 40 s of one device, twice
        for seq in range(40):
            _send(first, "dev", seq)
    assert first.store.flush(5)
    windows = first.stats.windows
    rows = first.store.query("SELECT t, COUNT(*) FROM predictions GROUP BY t")
    assert sum(n for _, n in rows) == windows and {n for _, n in rows} == {2}
    first.journal.close()  # killed: no checkpoint, the journal holds every prediction
    first.store.close()
    t_old, t_new = rows[0][0], 1000.0
    with open(tmp_path / "acked-0.log", "a") as f:
        for t in (t_old, t_new):
            f.write(f"=P\tdev\t{t!r}\tsquat\t0.9\ttiny\t3.0\n")
    second = _life(tmp_path, tiny_model)
    try:
        assert second.store.flush(5)
        assert second.store.query("SELECT COUNT(*) FROM predictions") == [(windows + 1,)]
        assert second.store.query("SELECT COUNT(*) FROM predictions WHERE t = ?", (t_new,)) == [(1,)]
    finally:
        second.journal.close()
        second.store.close()


def test_a_store_keyed_by_window_alone_is_rekeyed(tmp_path):
    path = tmp_path / "events.db"
    with sqlite3.connect(path) as db:  # as the store was created before
        db.executescript("CREATE TABLE predictions (id INTEGER PRIMARY KEY, received REAL NOT NULL, device TEXT "
                         "NOT NULL, t REAL NOT NULL, label TEXT NOT NULL, confidence REAL NOT NULL, model TEXT "
                         "NOT NULL, latency_ms REAL); CREATE UNIQUE INDEX predictions_window ON predictions "
                         "(device, t); INSERT INTO predictions VALUES (1, 5.0, 'd', 1.0, 'squat', 0.9, 'v', 1.0)")
    db.close()
    store = EventStore(path)
    store.prediction("d", 1.0, "rest", 0.9, "v", 1.0, received=50.0)  # the same window, a new session
    store.prediction("d", 1.0, "rest", 0.9, "v", 1.0, received=50.0)  # the same prediction again
    store.prediction("d", 1.0, "walking", 0.9, "v", 1.0)  # without its time: the window has rows
    assert store.flush(5)
    assert store.query("SELECT received, label FROM predictions ORDER BY id") == [(5.0, "squat"), (50.0, "rest")]
    store.close()


# -- 4. what the event store's full queue dropped ---------------------------------------------------------
@pytest.fixture
def small_store_queue(monkeypatch):
    """The consumer's event store queues 4 events (100,000 in service): a failing store drops at once."""
    import stream.consumer
    monkeypatch.setattr(stream.consumer, "EventStore", lambda path: EventStore(path, queue_size=4))


def _fail_and_drop(consumer, path: Path) -> _Locked:
    """The store locked until released, and more windows than its queue holds: some are dropped."""
    lock = _Locked(path)
    for seq in range(3):
        for device in ("a", "b", "c", "d"):
            _send(consumer, device, seq)
    assert wait(lambda: _failing(consumer.store), timeout=5)
    assert consumer.store.dropped > 0 and consumer.stats.windows > consumer.store.pending
    return lock


def test_a_journal_is_not_rotated_away_while_the_store_lacks_what_its_full_queue_dropped(
        tmp_path, tiny_model, fast_busy_timeout, small_store_queue):
    consumer = _life(tmp_path, tiny_model)
    lock = None
    try:
        lock = _fail_and_drop(consumer, tmp_path / "events.db")
        generation = consumer.journal.generation
        assert not consumer.checkpoint()  # the store failing: the journal is kept, device state saved
        state = load_state(tmp_path)
        assert state["journal"] == generation and state["sequences"] == consumer.sequence.snapshot()
        lock.release()
        assert wait(lambda: not consumer.store.pending and not consumer.store.failing, timeout=5)
        assert _count(tmp_path / "events.db") < consumer.stats.windows  # the dropped ones
        assert not consumer.checkpoint()  # writing again, but it dropped some: the journal's put in again
        assert consumer.journal.generation == generation and load_state(tmp_path)["journal"] == generation
        assert consumer.store.flush(5)
        assert consumer.checkpoint()  # nothing dropped since: rotated
        assert consumer.journal.generation == generation + 1
        assert _count(tmp_path / "events.db") == consumer.stats.windows
    finally:
        if lock is not None:
            lock.release()
        consumer.journal.close()
        consumer.store.close()


def test_a_next_life_puts_a_journal_bigger_than_the_store_queue_into_it_without_dropping(
        tmp_path, tiny_model, fast_busy_timeout, small_store_queue):
    first = _life(tmp_path, tiny_model)
    lock = None
    try:
        lock = _fail_and_drop(first, tmp_path / "events.db")
        first.checkpoint()
        windows = first.stats.windows
        first.store._abandon.set()  # killed: no final checkpoint
        first.journal.close()
    finally:
        if lock is not None:
            lock.release()
    second = _life(tmp_path, tiny_model)
    try:
        assert second.store.dropped == 0
        assert second.store.flush(5)
        assert second.checkpoint() and not (tmp_path / f"acked-{second.journal.generation - 1}.log").exists()
        assert _count(tmp_path / "events.db") == windows
    finally:
        second.journal.close()
        second.store.close()


def test_a_start_up_does_not_wait_for_good_on_a_store_that_cannot_take_the_journal(
        tmp_path, tiny_model, fast_busy_timeout, small_store_queue, monkeypatch):
    """A journal bigger than the store's queue, the store still locked at start-up: the start-up waits
    JOURNAL_REPLAY_WAIT, not for good; what the store could not take keeps the journal for later."""
    import stream.consumer
    monkeypatch.setattr(stream.consumer, "JOURNAL_REPLAY_WAIT", 1.0)
    first = _life(tmp_path, tiny_model)
    lock = _fail_and_drop(first, tmp_path / "events.db")
    try:
        first.checkpoint()
        first.store._abandon.set()  # killed: no final checkpoint
        first.journal.close()
        started = time.monotonic()
        second = _life(tmp_path, tiny_model)
        assert time.monotonic() - started < 10
        try:
            assert second.store.dropped > 0
            assert not second.checkpoint()  # the journal is kept: the store lacks what it dropped
            assert sorted(p.name for p in tmp_path.glob("acked-*.log"))
        finally:
            second.journal.close()
            second.store._abandon.set()
    finally:
        lock.release()


def test_a_kept_journal_is_put_in_again_in_slices_that_resume_and_then_rotated(
        tmp_path, tiny_model, fast_busy_timeout, small_store_queue, monkeypatch):
    """After an outage the kept journal goes into the store again a slice per checkpoint, each slice
    resuming where the last stopped, and is rotated once it is all in: putting it all again from its
    first line at every checkpoint (serving waiting meanwhile) never ended for a journal bigger than what
    one slice takes. Drops of labels or drift events do not make it start again."""
    import stream.consumer
    monkeypatch.setattr(stream.consumer, "REPUT_BUDGET", 0.0)  # a slice: what the queue takes at once
    consumer = _life(tmp_path, tiny_model)
    lock = _fail_and_drop(consumer, tmp_path / "events.db")
    try:
        assert not consumer.checkpoint()
    finally:
        lock.release()
    windows, starts, rotated = consumer.stats.windows, [], False
    real, taken = consumer.store.prediction, [0]

    def three_per_slice(*row, **kwargs):  # the queue takes 3 of a re-put per checkpoint, as if full then
        if kwargs.get("count") is False:
            if taken[0] >= 3:
                return False
            taken[0] += 1
        return real(*row, **kwargs)
    consumer.store.prediction = three_per_slice
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the writer backs off after its failure: checkpoints come meanwhile
        taken[0] = 0
        consumer.store.label("x", "squat", 0.0, None)  # labels dropped meanwhile do not restart the re-put
        if consumer.checkpoint():
            rotated = True
            break
        starts.append(consumer._reput)
        time.sleep(0.05)
    try:
        assert rotated and _count(tmp_path / "events.db") == windows
        resumed = [s for s in starts if s]  # byte offsets into the journal where each slice stopped
        assert resumed == sorted(set(resumed)) and len(resumed) == (windows - 1) // 3, starts
    finally:
        consumer.journal.close()
        consumer.store.close()


def test_a_kept_journal_brings_no_device_forgotten_beyond_max_evicted_back(
        tmp_path, tiny_model, fast_busy_timeout, small_store_queue):
    """The store failing keeps the journal; devices classified in it are then evicted and forgotten (beyond
    max_evicted). The next life took their marks and seqs back from the journal's lines, and, the devices being
    neither served nor evicted, kept them in every checkpoint for good. One that came back since keeps its mark."""
    first = _life(tmp_path, tiny_model, idle_timeout=0.0, max_evicted=0)
    lock = _fail_and_drop(first, tmp_path / "events.db")  # devices a, b, c, d, 3 messages each
    try:
        assert not first.checkpoint()  # the journal is kept
        time.sleep(0.01)
        first._evict_idle()  # idle: evicted, and forgotten (max_evicted 0)
        assert not first._watermarks and not first.sequence.snapshot()
        _send(first, "a", 3)  # a comes back
        assert not first.checkpoint()
        assert set(load_state(tmp_path)["watermarks"]) == {"a"}
    finally:
        first.store._abandon.set()  # killed
        first.journal.close()
        lock.release()
    second = _life(tmp_path, tiny_model)
    try:
        assert set(second._resume) == set(second.sequence.snapshot()) == {"a"}
        assert set(second._anchors) <= {"a"}
        assert second.store.flush(5)
        assert second.checkpoint()  # rotated: the next checkpoint holds what this life knows
        state = load_state(tmp_path)
        assert set(state["watermarks"]) == set(state["sequences"]) == {"a"}
    finally:
        second.journal.close()
        second.store.close()


# -- 5. an event store locked by another connection at start-up ------------------------------------------
def _old_keyed_store(path: Path) -> None:
    """An events.db of the previous release: predictions keyed by (device, t), re-keyed when opened."""
    EventStore(path).close()
    with _connect(path) as db:
        db.execute("DROP INDEX predictions_window")
        db.execute("CREATE UNIQUE INDEX predictions_window ON predictions (device, t)")
    db.close()


def _locked_for(path: Path, seconds: float) -> threading.Thread:
    lock = _connect(path, isolation_level=None, check_same_thread=False)
    lock.execute("BEGIN IMMEDIATE")
    lock.execute("INSERT INTO labels (received, device, label, start) VALUES (1, 'd', 'x', 0)")
    thread = threading.Thread(target=lambda: (time.sleep(seconds), lock.execute("COMMIT"), lock.close()))
    thread.start()
    return thread


def test_the_rekeying_of_an_older_store_waits_for_another_connections_write_lock(tmp_path, monkeypatch):
    import stream.store
    monkeypatch.setattr(stream.store, "BUSY_TIMEOUT", 0.2)  # the writer's: the opening waits longer
    path = tmp_path / "events.db"
    _old_keyed_store(path)
    holder = _locked_for(path, 1.0)
    try:
        EventStore(path).close()
    finally:
        holder.join()
    with _connect(path) as db:
        assert [row[2] for row in db.execute("PRAGMA index_info(predictions_window)")] == ["device", "t", "received"]
    db.close()


def test_a_store_locked_beyond_the_opening_timeout_is_not_called_unusable(tmp_path, monkeypatch):
    import stream.store
    monkeypatch.setattr(stream.store, "BUSY_TIMEOUT", 0.2)
    monkeypatch.setattr(stream.store, "OPEN_BUSY_TIMEOUT", 0.2, raising=False)
    path = tmp_path / "events.db"
    _old_keyed_store(path)
    holder = _locked_for(path, 1.0)
    try:
        with pytest.raises(ValueError) as error:
            EventStore(path)
    finally:
        holder.join()
    assert "locked" in str(error.value) and "move it away" not in str(error.value)
    EventStore(path).close()  # released: it opens
