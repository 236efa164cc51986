"""A consumer state the consumer cannot read is never overwritten (found by an upgrade probe, session 15): one
written by a newer harstream makes ``consume`` refuse to start, naming what to do; any other unreadable one is
set aside under another name before the devices start afresh. Both used to be warned about in one vague line
("not a harstream consumer state of version 3") and overwritten at the first checkpoint."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from stream.persist import STATE_FILE, VERSION, NewerState, load_state
from tests.test_persist_faults import _life, _send
from tests.test_s13_labels2 import _resave, _stopped

ROOT = Path(__file__).resolve().parents[1]


def test_a_state_of_a_newer_harstream_is_refused_and_left_as_it_is(tiny_model, tmp_path):
    _stopped(tmp_path, tiny_model)
    _resave(tmp_path, lambda blob: blob.update(format_version=VERSION + 1))
    before = (tmp_path / STATE_FILE).read_bytes()
    with pytest.raises(NewerState, match="newer harstream"):
        load_state(tmp_path)
    with pytest.raises(NewerState, match=f"version {VERSION + 1}.*move {STATE_FILE} away"):
        _life(tmp_path, tiny_model)
    assert (tmp_path / STATE_FILE).read_bytes() == before


def test_consume_on_a_state_of_a_newer_harstream_ends_with_one_line(tiny_model, tmp_path):
    _stopped(tmp_path, tiny_model)
    _resave(tmp_path, lambda blob: blob.update(format_version=VERSION + 1))
    before = (tmp_path / STATE_FILE).read_bytes()
    state_dir = tmp_path / "copy"  # this process holds tmp_path (lock_state_dir)
    state_dir.mkdir()
    (state_dir / STATE_FILE).write_bytes(before)
    done = subprocess.run([sys.executable, "-m", "stream.cli", "consume", "--state-dir", str(state_dir),
                           "--broker", "mqtt://127.0.0.1:1"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "harstream consume: error:" in done.stderr and "newer harstream" in done.stderr
    assert "Traceback" not in done.stderr
    assert (state_dir / STATE_FILE).read_bytes() == before


def test_an_unreadable_state_is_set_aside_before_the_first_checkpoint(tiny_model, tmp_path, caplog):
    _stopped(tmp_path, tiny_model)
    _resave(tmp_path, lambda blob: blob.update(devices="not a list of groups"))  # malformed
    before = (tmp_path / STATE_FILE).read_bytes()
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        second = _life(tmp_path, tiny_model)
    try:
        assert "not restoring device state" in caplog.text and "kept as consumer-state.pt.unreadable-" in caplog.text
        aside = list(tmp_path.glob(f"{STATE_FILE}.unreadable-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == before
        _send(second, "dev", 12)
        assert second.checkpoint(final=True)  # the new state in its place; the old one still beside it
        assert "dev" in load_state(tmp_path)["devices"] and aside[0].read_bytes() == before
    finally:
        second.store.close()


def test_a_state_of_an_older_unknown_format_is_set_aside_too(tiny_model, tmp_path):
    _stopped(tmp_path, tiny_model)
    torch.save({"format": "something else"}, tmp_path / STATE_FILE)
    second = _life(tmp_path, tiny_model)
    try:
        assert not (tmp_path / STATE_FILE).exists()
        assert len(list(tmp_path.glob(f"{STATE_FILE}.unreadable-*"))) == 1
    finally:
        second.store.close()
