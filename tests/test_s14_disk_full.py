"""A consumer started on a full disk (an ops probe: a learning consumer's --state-dir on a full 25 MB tmpfs, restarted
there): it starts and serves. Before, its start stopped at the event store ('disk I/O error': SQLite in WAL mode
cannot make its -shm file; the error said to move the store away), at the labels read back from it, and at the
starting model's save to the versions folder. What the tests are not about is faked: the write errors."""

from __future__ import annotations

import errno
import logging
import os
import sqlite3

import pytest

from models import finetune
from models.finetune import LearnerConfig, OnlineLearner, starting_versions
from models.learner_process import LearnerProcess
from models.state import StatefulClassifier
from stream import consumer as consumer_module
from stream import store as store_module
from stream.consumer import Consumer, ConsumerConfig
from stream.store import EventStore


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _warnings(caplog, logger: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and r.name == logger]


def test_a_starting_model_that_cannot_be_saved_is_served_with_one_warning(tiny_model, tmp_path, monkeypatch,
                                                                           caplog):
    monkeypatch.setattr(finetune, "save_checkpoint", _enospc)
    caplog.set_level(logging.INFO)
    config = LearnerConfig(adapt="shared", versions_dir=tmp_path / "models", serving_version="tiny")
    learner = LearnerProcess(tiny_model, config)  # the consumer's side: raised OSError ENOSPC
    assert [(v.version, v.path) for v in learner.versions] == [("tiny", None)]
    assert learner.version == "tiny"
    warned = _warnings(caplog, "models.finetune")
    assert len(warned) == 1 and "tiny" in warned[0] and "served all the same" in warned[0], warned
    # the learner process tries again, unsaid: its consumer said it
    online = OnlineLearner(tiny_model, config, warn_start=False)
    assert [(v.version, v.path) for v in online.versions] == [("tiny", None)]
    assert len(_warnings(caplog, "models.finetune")) == 1
    monkeypatch.undo()  # room again: the next start saves it
    versions = starting_versions(tiny_model, config)
    assert [v.version for v in versions] == ["tiny"] and versions[0].path == str(tmp_path / "models" / "tiny.pt")


def test_an_event_store_opened_on_a_full_disk_writes_once_it_can(tmp_path, monkeypatch, caplog):
    EventStore(tmp_path / "events.db").close()  # a store of the last life
    real = EventStore._connect
    fails = []

    def full_once(self, *args):  # what SQLite says where it cannot make its -shm file
        if not fails:
            fails.append(1)
            raise sqlite3.OperationalError("disk I/O error")
        return real(self, *args)

    monkeypatch.setattr(EventStore, "_connect", full_once)
    monkeypatch.setattr(store_module, "_free_bytes", lambda directory: 0)  # a full disk: with room, an I/O error
    caplog.set_level(logging.INFO, logger="stream.store")
    store = EventStore(tmp_path / "events.db")  # raised StoreError: 'move it away to start a new one'
    try:
        assert store.failing and store.errors == 1
        assert len(_warnings(caplog, "stream.store")) == 1
        assert store.prediction("d1", 2.0, "rest", 0.9, "tiny", 5.0, received=1.0)
        assert store.flush(timeout=15)
        assert not store.failing
        assert store.query("SELECT device, t FROM predictions") == [("d1", 2.0)]
    finally:
        store.close()


def test_a_store_that_is_not_a_database_is_still_refused(tmp_path):
    (tmp_path / "events.db").write_bytes(b"not a database, long enough to be read as one" * 100)
    with pytest.raises(store_module.StoreError, match="move it away"):
        EventStore(tmp_path / "events.db")


def test_a_consumer_starts_where_its_event_store_cannot_be_read(tiny_model, tmp_path, monkeypatch, caplog):
    """Labels and drift events of the last life are not read back (each a WARNING); the start goes on."""
    state = tmp_path / "state"
    EventStore(state / "events.db").close()

    def unreadable(self, sql, params=()):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(EventStore, "query", unreadable)
    caplog.set_level(logging.INFO)
    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=state, learn=False,
                                       consumer_id="s14-disk-full"),
                        StatefulClassifier(tiny_model, "tiny"))  # raised sqlite3.OperationalError
    try:
        warned = _warnings(caplog, "stream.consumer")
        assert any("labels are not put back" in w for w in warned), warned
    finally:
        consumer.store.close()


def test_checkpoints_that_fail_are_in_the_metrics_and_said_when_written_again(tiny_model, tmp_path, monkeypatch,
                                                                              caplog):
    """Before, the metrics had journal, store and learner.save_failures, not the checkpoints (only a WARNING once
    a minute), and nothing said when one was written again."""
    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path / "state", learn=False,
                                       consumer_id="s14-disk-full-cp"),
                        StatefulClassifier(tiny_model, "tiny"))
    try:
        caplog.set_level(logging.INFO, logger="stream.consumer")
        real = consumer_module.save_state
        monkeypatch.setattr(consumer_module, "save_state", _enospc)
        assert not consumer.checkpoint() and not consumer.checkpoint()
        assert len([w for w in _warnings(caplog, "stream.consumer") if "checkpoint not written" in w]) == 1
        consumer._publish_metrics()
        assert consumer.last_metrics["checkpoint"] == {"failures": 2, "failing": True}
        monkeypatch.setattr(consumer_module, "save_state", real)
        assert consumer.checkpoint()
        assert any("checkpoint written to" in r.getMessage() and "again" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.INFO)
        consumer._publish_metrics()
        assert consumer.last_metrics["checkpoint"] == {"failures": 2, "failing": False}
    finally:
        consumer.store.close()
