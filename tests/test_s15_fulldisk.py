"""Session 15 (full disk, second look): the acknowledgement journal's start (carrying other generations' lines)
and ``rotate`` (opening the next generation's file) degrade on a full disk as its writes do (dc454de): nothing
raised, the lines kept, the messages held, written once the disk has room; forced acknowledgements are said in
the log; a restart's samples that never came at QoS 1 are named the broker's queue for the session."""

from __future__ import annotations

import errno
import logging
import os

import pytest

from stream import persist
from stream.persist import AckJournal, read_journal

_real_open = os.open
_real_write = os.write


class FullDisk:
    """``os.open`` (creating) and ``os.write`` as stream.persist calls them, failing with ENOSPC while ``full``."""

    def __init__(self, monkeypatch) -> None:
        self.full = True
        self.failed = 0
        monkeypatch.setattr(persist.os, "open", self.open)
        monkeypatch.setattr(persist.os, "write", self.write)

    def _fail(self):
        self.failed += 1
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def open(self, path, flags, *args, **kwargs):
        if self.full and flags & os.O_CREAT and not os.path.exists(path):
            self._fail()
        return _real_open(path, flags, *args, **kwargs)

    def write(self, fd, data):
        if self.full:
            self._fail()
        return _real_write(fd, data)


def _old_generation(directory, generation: int) -> None:
    """A journal another life left (a kill during rotate): a mark line and two predictions."""
    (directory / f"acked-{generation}.log").write_text(
        "d1\t1.0\t3\n=P\td1\t0.5\trest\t0.9\ttiny\t5.0\t100.0\n=P\td1\t1.0\twalk\t0.8\ttiny\t6.0\t101.0\n")


def test_a_journal_started_on_a_full_disk_raises_nothing_and_writes_once_it_can(tmp_path, monkeypatch, caplog):
    _old_generation(tmp_path, 0)
    disk = FullDisk(monkeypatch)
    caplog.set_level(logging.INFO, logger="stream.persist")
    journal = AckJournal(tmp_path, 1)  # raised ENOSPC out of the consumer's run() before
    assert disk.failed and journal.failing
    assert (tmp_path / "acked-0.log").exists()  # not carried: not deleted unread
    assert not journal.write([("d2", 2.0, 7)], [("d2", 2.0, "squat", 0.7, "tiny", 4.0, 102.0)])
    assert not journal.written
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "acked-1.log" in warned[0].getMessage(), [r.getMessage() for r in warned]
    disk.full = False
    assert journal.write([("d2", 3.0, 9)], [])
    assert not journal.failing and journal.written
    assert any("written again" in r.getMessage() for r in caplog.records)
    assert not (tmp_path / "acked-0.log").exists()  # carried now, then deleted
    journal.close()
    marks, seqs, _, predictions = read_journal(tmp_path, 1)
    assert marks == {"d2": 3.0} and seqs == {"d2": 9}
    assert sorted(p[1] for p in predictions) == [0.5, 1.0, 2.0]


def test_a_journal_whose_carrying_fails_keeps_the_old_file_and_carries_it_later(tmp_path, monkeypatch):
    _old_generation(tmp_path, 0)
    (tmp_path / "acked-1.log").write_text("d2\t2.0\t5\n")  # this generation's file exists: opened, not created
    disk = FullDisk(monkeypatch)
    journal = AckJournal(tmp_path, 1)
    assert disk.failed == 1 and journal.failing and journal.written
    assert (tmp_path / "acked-0.log").exists()
    assert (tmp_path / "acked-1.log").read_text() == "d2\t2.0\t5\n"  # nothing glued to it
    disk.full = False
    assert journal.write([("d2", 3.0, 6)], [])
    assert not (tmp_path / "acked-0.log").exists()
    journal.close()
    marks, _, _, predictions = read_journal(tmp_path, 1)
    assert marks == {"d2": 3.0} and sorted(p[1] for p in predictions) == [0.5, 1.0]


def test_rotate_on_a_full_disk_raises_nothing_and_holds_the_lines_until_it_can_write(tmp_path, monkeypatch):
    journal = AckJournal(tmp_path, 0)
    assert journal.write([("d1", 1.0, 3)], [("d1", 1.0, "rest", 0.9, "tiny", 5.0, 100.0)])
    disk = FullDisk(monkeypatch)
    journal.rotate(1)  # raised ENOSPC out of the consumer's checkpoint() before
    assert disk.failed and journal.failing and journal.generation == 1
    assert not (tmp_path / "acked-0.log").exists()  # the checkpoint naming 1 holds what it said
    assert not journal.write([("d1", 2.0, 4)], [("d1", 2.0, "walk", 0.8, "tiny", 6.0, 101.0)])
    disk.full = False
    assert journal.write([("d1", 3.0, 5)], [])
    assert not journal.failing
    journal.close()
    marks, seqs, _, predictions = read_journal(tmp_path, 1)
    assert marks == {"d1": 3.0} and seqs == {"d1": 5} and [p[1] for p in predictions] == [2.0]


def test_a_journal_closed_while_its_file_cannot_be_opened_raises_nothing(tmp_path, monkeypatch):
    FullDisk(monkeypatch)
    journal = AckJournal(tmp_path, 0)
    assert not journal.write([("d1", 1.0, 3)], [])
    journal.close()
    assert journal.write([("d1", 2.0, 4)], [])  # closed: nothing more to keep
    assert not (tmp_path / "acked-0.log").exists()



# -- messages acknowledged by force: a warning, at most once a minute ---------------------------------------------

class _Acking:
    """A connected broker stand-in that takes what the consumer publishes and acknowledges."""

    def __init__(self) -> None:
        self.acked: list[int] = []

    def publish(self, topic, payload=b"", *args, **kwargs):
        return _Published()

    def is_connected(self) -> bool:
        return True

    def ack(self, mid: int, qos: int) -> None:
        self.acked.append(mid)


class _Published:
    rc = 0
    mid = 0

    def is_published(self) -> bool:
        return True


def _after_window(**config):
    from tests.test_consumer_monitor import _consumer
    c = _consumer(progress_interval=0, **config)
    c._client = c.acks.client = _Acking()
    c.after_window = True
    return c


def _forced_warnings(caplog, level: int = logging.INFO) -> list[str]:
    """What was said of acknowledgements forced: INFO for those held in partial windows (a device that stops
    mid-window, at every phone's stop), a WARNING for those the journal could not record."""
    return [r.getMessage() for r in caplog.records
            if r.levelno == level and "acknowledged by force" in r.getMessage()]


def test_messages_acknowledged_by_force_are_said_at_most_once_a_minute(caplog):
    """--ack-stall forced 20,000 held acknowledgements at once in an ops probe with nothing in the log."""
    import time

    from tests.helpers import imu
    c = _after_window(ack_stall=0.5, max_unacked=5)
    mid = 0

    def hold(devices: int, seq: int) -> None:
        nonlocal mid
        for d in range(devices):  # 5 samples of a 20-sample window: held, a partial window
            mid += 1
            c.handle(f"har/dev-{d}/imu", imu(seq, 10.0 + seq * 0.2, n=5, rate=25.0), time.monotonic(), mid, 1)

    with caplog.at_level(logging.INFO, logger="stream.consumer"):
        hold(3, 0)
        assert len(c.acks) == 3 and not c._client.acked
        c._last_arrival = c._connected_at = time.monotonic() - 10.0  # nothing arrived for 10 s
        c._check_stall()
        assert len(c._client.acked) == 3 and c.acks.counts["forced"] == 3
        warned = _forced_warnings(caplog)
        assert len(warned) == 1, warned
        assert warned[0].startswith("3 held messages acknowledged by force (3 since start, acks.forced)")
        assert "nothing had arrived for 0.5 s (--ack-stall" in warned[0]
        hold(4, 1)
        hold(4, 2)  # 8 held for a limit of 5: the oldest go
        assert c.acks.counts["forced"] > 3
        c._publish_metrics()
        assert len(_forced_warnings(caplog)) == 1  # within the minute: counted, not said
        c._forced_warnings.reset()  # the minute over
        c._publish_metrics()
        warned = _forced_warnings(caplog)
        forced = c.acks.counts["forced"]
        assert len(warned) == 2 and warned[1].startswith(f"{forced - 3} held messages acknowledged by force "
                                                         f"({forced} since start")
        assert "beyond --max-unacked (5 held" in warned[1]
        c._forced_warnings.reset()
        c._publish_metrics()
        assert len(_forced_warnings(caplog)) == 2  # none forced since: nothing more
        assert not _forced_warnings(caplog, logging.WARNING)  # partial windows only: INFO
        c._forced["journal"] += 4  # as _acks_due counts those the journal could not record
        c._forced_warnings.reset()
        c._publish_metrics()
        (warned,) = _forced_warnings(caplog, logging.WARNING)
        assert warned.startswith("4 held messages acknowledged by force") and "journal could not record" in warned


# -- the broker's queue for an offline session: what a restart loses at QoS 1 is named -----------------------------

def test_samples_lost_at_qos1_by_a_persistent_consumer_name_the_brokers_queue(caplog):
    import time

    from tests.helpers import imu
    from tests.test_consumer_monitor import _consumer
    c = _consumer(progress_interval=0, consumer_id=f"s15-fd-{os.getpid()}")  # an id: a persistent session
    assert c.config.persistent
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        for mid, seq in enumerate([0, 1, 2, 5], 1):  # 3 and 4 never came: 50 samples
            c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic(), mid, 1)
        c._publish_metrics()
    warned = [r.getMessage() for r in caplog.records if "never came" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("50 samples never came (50 since start"), warned
    assert "50 of them in gaps that messages published at QoS 1 showed" in warned[0]
    assert "max_queued_messages (1,000 by default)" in warned[0] and "unacknowledged at its stop" in warned[0]


@pytest.mark.broker
def test_what_a_stopped_consumer_leaves_unacknowledged_counts_against_the_brokers_queue(
        broker_url, needs_full_broker, tiny_model, tmp_path, caplog):
    """Stock Mosquitto (1,000 max_queued_messages) keeps at most 1,000 messages for an offline session, counting
    those it had sent and the consumer had not acknowledged (its partial windows): 600 held at the stop leave room
    for 400 of the 600 published while it is down (measured on 2.0.11; the ops probe's restarts lost 260 and 1,625
    samples so). The stop says how many it leaves, the next life names the broker's queue for what never came."""
    import uuid

    from stream.consumer import ConsumerConfig
    from stream.mqtt import connect
    from tests.helpers import imu, wait
    from tests.test_acks import start_consumer
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    config = dict(broker=broker_url, prefix=prefix, state_dir=tmp_path, learn=False, ack_stall=600.0,
                  metrics_interval=0.5, checkpoint_interval=600.0)
    devices = 300
    caplog.set_level(logging.INFO, logger="stream.consumer")
    pub = connect(broker_url, "test-s15-fd-pub")

    def send(seq: int) -> None:
        infos = [pub.publish(f"{prefix}/dev-{d}/imu", imu(seq, 10.0 + seq * 0.2, n=5, rate=25.0), qos=1)
                 for d in range(devices)]
        for info in infos:
            info.wait_for_publish(10)

    consumer, thread = start_consumer(ConsumerConfig(**config), tiny_model)
    try:
        assert consumer.after_window
        send(0)
        send(1)  # 10 samples a device: partial windows, all held
        assert wait(lambda: len(consumer.acks) == 2 * devices, 30), len(consumer.acks)
        consumer.stop()
        thread.join(30)
        said = [r for r in caplog.records if "unacknowledged with the broker" in r.getMessage()]
        assert len(said) == 1 and said[0].getMessage().startswith(
            f"leaving {2 * devices} messages unacknowledged with the broker for the next life "
            f"({2 * devices} in partial windows)"), [r.getMessage() for r in said]
        send(2)
        send(3)  # 600 more while it is down: the broker keeps 1,000 - 600 of them
        consumer, thread = start_consumer(ConsumerConfig(**config), tiny_model)
        assert wait(lambda: consumer.stats.messages >= 4 * devices - 200, 30), consumer.stats.messages
        send(4)  # shows the gaps: the last 200 of seq 3 were dropped by the broker
        assert wait(lambda: consumer.sequence.lost_samples == 200 * 5, 30), consumer.sequence.lost_samples
        assert wait(lambda: any("never came" in r.getMessage() for r in caplog.records), 10)
        warned = [r.getMessage() for r in caplog.records if "never came" in r.getMessage()]
        assert "1000 of them in gaps that messages published at QoS 1 showed" in warned[0], warned
    finally:
        consumer.stop()
        thread.join(30)
        pub.disconnect()
        pub.loop_stop()
