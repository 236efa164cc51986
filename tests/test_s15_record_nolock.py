"""harstream record on a file system without locks (some network and FUSE mounts; session 15). The spool's
``flock`` (cec1eab) refused to start there, where the recorder had recorded before, and a spool left there
could never be recovered ("in use by a harstream record running now"). Now a warning, and both work. And Ctrl-C
during --recover."""

from __future__ import annotations

import errno
import fcntl
import logging

import pytest

from stream.recording import read_recording
from tests.test_s15_record2 import _left_behind


@pytest.fixture
def no_locks(monkeypatch):
    import stream.record

    def flock(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")
    monkeypatch.setattr(stream.record.fcntl, "flock", flock)


def test_a_recording_and_its_recovery_on_a_file_system_without_locks(tmp_path, no_locks, caplog, capsys):
    from stream.cli import main
    out = tmp_path / "o.csv"
    with caplog.at_level(logging.WARNING, logger="stream.record"):
        _left_behind(out)  # recorded, then killed: before, the spool could not even be made
    assert any("cannot be locked on this file system" in r.getMessage() for r in caplog.records)
    assert main(["record", "--out", str(out)]) == 2  # a spool left behind: refused, and told to recover
    assert "--recover" in capsys.readouterr().err
    assert main(["record", "--out", str(out), "--recover"]) == 0, capsys.readouterr().err
    assert "wrote 300 samples" in capsys.readouterr().out
    assert len(read_recording(out)) == 300 and not out.with_name("o.csv.spool").exists()


def test_a_spool_in_use_is_still_refused_where_there_are_locks(tmp_path, capsys):
    from stream.cli import main
    out = tmp_path / "o.csv"
    _left_behind(out)
    holder = open(out.with_name("o.csv.spool"), "rb")  # a recorder running: its lock
    try:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX)
        assert main(["record", "--out", str(out), "--recover"]) == 2
        assert "in use by a harstream record running now" in capsys.readouterr().err
    finally:
        holder.close()


def test_ctrl_c_during_recover_lets_it_write_the_file_whole(tmp_path, monkeypatch, capsys):
    """Ctrl-C during --recover ended it with a KeyboardInterrupt traceback, the spool left; it now writes the
    file whole first, as a recording's end does (a second look at the spool found it)."""
    import os
    import signal

    import stream.record
    from stream.cli import main
    out = tmp_path / "o.csv"
    _left_behind(out)
    write = stream.record.Recorder.write

    def interrupted(self, *a, **kw):  # the user presses Ctrl-C as the file is written
        os.kill(os.getpid(), signal.SIGINT)
        return write(self, *a, **kw)
    monkeypatch.setattr(stream.record.Recorder, "write", interrupted)
    previous = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    try:
        assert main(["record", "--out", str(out), "--recover"]) == 0
    finally:
        signal.signal(signal.SIGINT, previous[0])
        signal.signal(signal.SIGTERM, previous[1])
    assert "wrote 300 samples" in capsys.readouterr().out
    assert len(read_recording(out)) == 300 and not out.with_name("o.csv.spool").exists()
