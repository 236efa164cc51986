"""A full disk under the acknowledgement journal (``acked-N.log``): the consumer keeps serving, holds the
acknowledgements of what the journal could not record, warns once, writes the lines once it can, and leaves no
torn line for the next write to glue itself to (an ops probe: the consumer stopped with ENOSPC, and again 6 s after
each restart on the still-full disk)."""

from __future__ import annotations

import errno
import logging
import os
import shutil
import threading
import uuid

import orjson

from models.state import StatefulClassifier
from stream import persist
from stream.consumer import Consumer, ConsumerConfig
from stream.mqtt import connect
from stream.persist import AckJournal, read_journal
from tests.helpers import imu, wait

_real_write = os.write


class FullDisk:
    """``os.write`` as stream.persist calls it, failing on the journal's file while ``full``: the first write
    then goes in part (a short write, as at the end of a disk's room), the rest with ENOSPC."""

    def __init__(self) -> None:
        self.fd: int | None = None
        self.full = False
        self.failed = 0

    def __call__(self, fd: int, data) -> int:
        if self.full and fd == self.fd:
            self.failed += 1
            if self.failed == 1 and len(data) > 8:
                return _real_write(fd, bytes(data[:len(data) // 2]))  # a torn line
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return _real_write(fd, data)


def test_a_failed_write_is_cut_back_and_written_later_whole(tmp_path, monkeypatch):
    """Even where the cut itself fails at first (it is done before the next write)."""
    fake = FullDisk()
    monkeypatch.setattr(persist.os, "write", fake)
    journal = AckJournal(tmp_path, 0)
    fake.fd = journal._fd
    assert journal.write([("d1", 1.0, 3)], [("d1", 1.0, "rest", 0.9, "tiny", 5.0)])
    fake.full = True
    real_truncate = os.ftruncate
    monkeypatch.setattr(persist.os, "ftruncate", lambda fd, n: (_ for _ in ()).throw(OSError(errno.EIO, "cut")))
    assert not journal.write([("d1", 2.0, 7)], [("d1", 2.0, "squat", 0.8, "tiny", 6.0)])
    assert not (tmp_path / "acked-0.log").read_bytes().endswith(b"\n")  # a torn line, not cut back yet
    monkeypatch.setattr(persist.os, "ftruncate", real_truncate)
    assert not journal.write([("d2", 2.5, 1)], [])
    assert journal.errors == 2 and journal.failing
    fake.full = False
    assert journal.write([("d1", 3.0, 9)], [("d1", 3.0, "walk", 0.7, "tiny", 7.0)])
    assert not journal.failing
    journal.close()
    marks, seqs, _, predictions = read_journal(tmp_path, 0)
    assert marks == {"d1": 3.0, "d2": 2.5} and seqs == {"d1": 9, "d2": 1}
    assert [p[1] for p in predictions] == [1.0, 2.0, 3.0]


def test_a_full_disk_under_the_journal_holds_acknowledgements_and_serving_goes_on(
        broker_url, needs_full_broker, tiny_model, tmp_path, monkeypatch, caplog):
    fake = FullDisk()
    monkeypatch.setattr(persist.os, "write", fake)
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    consumer = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, state_dir=state, learn=False,
                                       consumer_id=f"s14-journal-{uuid.uuid4().hex[:6]}", ack="after-window",
                                       ack_stall=600.0, checkpoint_interval=600.0,
                                       metrics_interval=0.5),
                        StatefulClassifier(tiny_model, "tiny"))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    received: list[tuple] = []
    watcher = connect(broker_url, "test-s14-journal-watch",
                      subscriptions=[(f"{prefix}/+/prediction", 0)],
                      on_message=lambda c, u, m: received.append((orjson.loads(m.payload)["device"],
                                                                  orjson.loads(m.payload)["t"])))
    pub = connect(broker_url, "test-s14-journal-pub")
    acked = lambda: consumer._paho_acks["after_window"]  # noqa: E731
    k = 0

    def send(messages: int) -> None:
        nonlocal k
        for _ in range(messages):  # 0.2 s each, two devices: a 0.8 s window every 4 messages
            for d in ("a", "b"):
                pub.publish(f"{prefix}/dev-{d}/imu", imu(k, 50.0 + 0.2 * k), qos=1)
            k += 1

    try:
        assert wait(lambda: consumer._client is not None and consumer._client.is_connected()
                    and consumer.journal is not None, 20)
        assert consumer.after_window and consumer.protocol == "5"
        fake.fd = consumer.journal._fd
        send(8)
        assert wait(lambda: consumer.stats.windows >= 2 * 2 and acked() > 0, 20), consumer.stats.windows
        before_acked = acked()
        caplog.set_level(logging.INFO, logger="stream.persist")
        fake.full = True
        for _ in (1, 2):  # two cycles at least fail: warned once
            windows = consumer.stats.windows
            send(8)
            assert wait(lambda w=windows: consumer.stats.windows >= w + 2 * 2, 20), consumer.stats.windows
        assert thread.is_alive() and consumer.journal.failing and consumer.journal.errors >= 2
        assert acked() == before_acked and consumer._unjournalled  # held with the broker
        assert wait(lambda: (consumer.last_metrics.get("journal") or {}).get("errors", 0) >= 2, 20)
        assert consumer.last_metrics["journal"]["failing"] and consumer.last_metrics["journal"]["held"] > 0
        warned = [r for r in caplog.records if r.levelno == logging.WARNING and "not written" in r.message]
        assert len(warned) == 1, [r.message for r in warned]
        fake.full = False
        windows = consumer.stats.windows
        send(8)
        assert wait(lambda: consumer.stats.windows >= windows + 2 * 2 and not consumer._unjournalled
                    and acked() > before_acked, 20)
        assert not consumer.journal.failing
        assert any("written again" in r.message for r in caplog.records)
        assert wait(lambda: len(received) >= consumer.stats.windows, 20)
        # a kill -9 now: the next life reads this journal (a copy, the running one holds the directory)
        copy = tmp_path / "copy"
        copy.mkdir()
        for f in state.glob("acked-*.log"):
            shutil.copy(f, copy / f.name)
        data = (copy / f"acked-{consumer.journal.generation}.log").read_bytes()
        assert data.endswith(b"\n")
        marks, seqs, _, predictions = read_journal(copy, consumer.journal.generation)
        assert marks == consumer._watermarks and set(marks) == {"dev-a", "dev-b"}
        assert sorted((p[0], p[1]) for p in predictions) == sorted(received)  # none glued, none lost
        assert len(predictions) == consumer.stats.windows
        assert len(data.split(b"\n")) - 1 == len(predictions) + sum(1 for line in data.split(b"\n")
                                                                     if line and not line.startswith(b"="))
    finally:
        consumer.stop()
        thread.join(20)
        for client in (pub, watcher):
            client.disconnect()
            client.loop_stop()
    assert not thread.is_alive()
