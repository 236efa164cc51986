"""Session 15 (full disk, second look): the acknowledgement journal's start (carrying other generations' lines)
and ``rotate`` (opening the next generation's file) degrade on a full disk as its writes do (dc454de): nothing
raised, the lines kept, the messages held, written once the disk has room."""

from __future__ import annotations

import errno
import logging
import os

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


