"""A consumer's state directory is held on a full disk: writing the pid into ``consumer.lock`` failed with a bare
'[Errno 28] No space left on device' and ended the start (a disk-full probe, fresh state directory)."""

from __future__ import annotations

import errno
import logging
import os

import stream.persist as persist


def test_the_state_directory_is_held_when_the_pid_cannot_be_written(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.WARNING, logger="stream.persist")

    def full(*args):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(persist.os, "pwrite", full)
    directory = tmp_path / "state"
    persist.lock_state_dir(directory)
    try:
        assert directory.resolve() in persist._held
        said = [r.getMessage() for r in caplog.records]
        assert len(said) == 1 and "consumer.lock" in said[0] and "held all the same" in said[0], said
    finally:
        os.close(persist._held.pop(directory.resolve()))
