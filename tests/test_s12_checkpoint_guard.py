"""A fault of the drift monitor's snapshot costs the checkpoint the monitor only, never the devices' state
(before, any error in Monitor.snapshot ended the consumer's serving loop and saved nothing)."""

from __future__ import annotations

import logging

from stream.persist import load_state
from tests.test_s12_monitor_restart import _labelled_life


def test_a_monitor_that_cannot_be_snapshotted_leaves_the_devices_checkpointed(tiny_model, tmp_path, caplog,
                                                                           monkeypatch):
    consumer = _labelled_life(tmp_path, tiny_model)
    try:
        def broken():
            raise KeyError("a fault of the monitor")
        monkeypatch.setattr(consumer.monitor, "snapshot", broken)
        with caplog.at_level(logging.ERROR, logger="stream.consumer"):
            assert consumer.checkpoint(final=True)
        assert "the drift monitor is not in this checkpoint" in caplog.text
    finally:
        consumer.store.close()
    state = load_state(tmp_path)
    assert "dev" in state["devices"] and state.get("monitor") is None
