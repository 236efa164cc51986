"""Second look (session 16) at three changes of session 15: the learner process's start through its inbox
(4c48a80), the model message before "online" (b35455c), and an unreadable consumer state never overwritten
(330b0bf)."""

from __future__ import annotations

import errno
import os

import pytest
import torch

import stream.persist
from stream.persist import STATE_FILE, load_state
from tests.test_persist_faults import _life, _send
from tests.test_s13_labels2 import _stopped

# absent before this session's fixes: a class the old code never raises, so that their tests fail, not error
StateRefused = getattr(stream.persist, "StateRefused", type("StateRefused", (Exception,), {}))


def test_a_state_that_cannot_be_read_now_is_refused_not_set_aside(tiny_model, tmp_path, monkeypatch):
    """330b0bf: a consumer-state.pt that cannot be read NOW (EACCES: written by another user; EIO; too many files
    open) is not unreadable content. load_state wrapped every error of torch.load, OSError too, in a ValueError,
    so the consumer renamed a good file '.unreadable-<UTC>' and started every device afresh. It is refused, as
    it is, naming it and what to do."""
    _stopped(tmp_path, tiny_model)
    before = (tmp_path / STATE_FILE).read_bytes()
    load = torch.load

    def denied(path, *args, **kwargs):  # as open() fails on a file of another user's (tests run as root here)
        if str(path).endswith(STATE_FILE):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(stream.persist.torch, "load", denied)
    with pytest.raises(StateRefused, match=f"{STATE_FILE} could not be read .*PermissionError.*move it away"):
        _life(tmp_path, tiny_model)
    assert not list(tmp_path.glob(f"{STATE_FILE}.unreadable-*"))
    monkeypatch.setattr(stream.persist.torch, "load", load)
    assert (tmp_path / STATE_FILE).read_bytes() == before and load_state(tmp_path) is not None  # readable again


def test_an_unreadable_state_that_cannot_be_renamed_is_refused_not_overwritten(tiny_model, tmp_path, monkeypatch):
    """330b0bf: an unreadable consumer-state.pt that could not be renamed aside (a read-only or full file system
    then, an immutable file) was warned about and the consumer started afresh all the same: its first checkpoint
    that could write overwrote the file. It is refused, saying why."""
    _stopped(tmp_path, tiny_model)
    (tmp_path / STATE_FILE).write_bytes(b"not a torch file")
    replace = os.replace

    def full(src, dst, *args, **kwargs):  # the rename aside fails; the checkpoint's own would not
        if ".unreadable-" in str(dst):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(dst))
        return replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(stream.persist.os, "replace", full)
    try:
        with pytest.raises(StateRefused, match="could not be renamed aside .*No space left"):
            second = _life(tmp_path, tiny_model)
            try:  # before: started afresh, and this checkpoint overwrote the file
                _send(second, "dev", 12)
                second.checkpoint(final=True)
            finally:
                second.store.close()
    finally:
        assert (tmp_path / STATE_FILE).read_bytes() == b"not a torch file"
