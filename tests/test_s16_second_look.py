"""Second look (session 16) at three changes of session 15: the learner process's start through its inbox
(4c48a80), the model message before "online" (b35455c), and an unreadable consumer state never overwritten
(330b0bf)."""

from __future__ import annotations

import errno
import gc
import logging
import os
import signal
import socket
import threading
import uuid
import weakref

import orjson
import pytest
import torch

import stream.persist
from models.finetune import LearnerConfig
from models.learner_process import LearnerProcess
from models.personal import _Adapter
from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.persist import STATE_FILE, load_state
from tests.helpers import ConsumerTopics, wait
from tests.test_persist_faults import _life, _send
from tests.test_s13_labels2 import _stopped
from tests.test_s13_supervise import _learners, _poll_until
from tests.test_s13_versions import _model

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


def test_an_unreadable_state_is_said_in_one_line_without_torchs_advice(tiny_model, tmp_path, caplog):
    """330b0bf appended where the unreadable file is kept to the warning, after torch's own message: for a file
    that is not a pickle of weights, a paragraph of five lines advising to load it with weights_only=False
    (which would run code from the file), so that what the consumer did with it came last. It is one line now,
    torch's first sentence, as load_checkpoint says it."""
    _stopped(tmp_path, tiny_model)
    (tmp_path / STATE_FILE).write_bytes(b"not a torch file")
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        second = _life(tmp_path, tiny_model)
    second.store.close()
    said = [r.getMessage() for r in caplog.records if "not restoring device state" in r.getMessage()]
    assert len(said) == 1 and "\n" not in said[0] and "weights_only" not in said[0], said
    assert "UnpicklingError: Weights only load failed" in said[0] and "kept as consumer-state.pt.unreadable-" in said[0]


def test_an_unreadable_serving_model_or_adapters_file_is_kept_aside_not_overwritten(tiny_model, tmp_path):
    """330b0bf kept an unreadable consumer-state.pt, never overwritten; serving.pt (the fine-tuned model) and
    adapters.pt (every device's adapter) beside it were warned about and overwritten all the same, serving.pt at
    the first checkpoint, adapters.pt at the first after an adapter changed: a downgraded harstream (adapters.pt
    version 3, say) lost them so. They are renamed aside too."""
    from models.personal import FILE_FORMAT
    from stream.persist import ADAPTERS_FILE, SERVING_MODEL
    _stopped(tmp_path, tiny_model)
    (tmp_path / SERVING_MODEL).write_bytes(b"a newer harstream's checkpoint")
    newer = {"format": FILE_FORMAT, "version": 99, "classes": 3, "adapters": {}}  # a newer harstream's
    torch.save(newer, tmp_path / ADAPTERS_FILE)
    adapters = (tmp_path / ADAPTERS_FILE).read_bytes()
    second = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path, learn=True,
                                     learner=LearnerConfig(adapt="device")), StatefulClassifier(tiny_model, "tiny"))
    try:
        from tests.test_persist_faults import _Broker
        second._client = _Broker()
        second.learner.adapters._adapters["dev"] = _Adapter(3, second.learner.adapters.config)
        second.learner.adapters._changes += 1  # an adapter learnt: adapters.pt is written at the checkpoint
        assert second.checkpoint(final=True)
    finally:
        second.store.close()
    kept = {p.name.split(".unreadable-")[0]: p.read_bytes() for p in tmp_path.glob("*.unreadable-*")}
    assert kept == {SERVING_MODEL: b"a newer harstream's checkpoint", ADAPTERS_FILE: adapters}


@pytest.mark.broker
def test_a_consumer_says_its_model_then_online_again_after_a_reconnection(broker_url, tiny_model):
    """b35455c orders the model message before 'online' at the start; neither was said again at a reconnection.
    A connection lost uncleanly (a network cut, a keep-alive missed) makes the broker publish the consumer's last
    will, 'offline', retained: the consumer reconnected and served on, while its status said 'offline' until it
    stopped (`harstream versions` refused its commands: "consumer ... is offline"; the dashboard listed it
    offline), and a broker restarted without persistence had neither message again. At every reconnection the
    consumer says its model message, then 'online'."""
    prefix = f"rc{uuid.uuid4().hex[:8]}"
    watcher = ConsumerTopics(broker_url, prefix, "rc")
    said = watcher.said
    c = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, learn=False, metrics_interval=60.0),
                 StatefulClassifier(tiny_model, "t"))
    runner = threading.Thread(target=c.run)
    runner.start()
    try:
        assert wait(lambda: ("status", b"online") in said(), timeout=30)
        # their acknowledgements in: else paho sends them again after the reconnection (in flight), as if said anew
        assert wait(lambda: not c._client._out_messages, timeout=10)
        at = c._connected_at
        c._client.socket().shutdown(socket.SHUT_RDWR)  # the connection lost without a DISCONNECT: the will
        assert wait(lambda: ("status", b"offline") in said(), timeout=30)
        assert wait(lambda: c._connected_at != at and c._client.is_connected(), timeout=30)
        cut = said().index(("status", b"offline"))
        assert wait(lambda: ("status", b"online") in said()[cut:], timeout=10), said()[cut:]
        after = said()[cut + 1:]
        models = [i for i, (k, _) in enumerate(after) if k == "model"]
        assert models and models[0] < after.index(("status", b"online")), [k for k, _ in after]
        assert orjson.loads(after[models[0]][1])["serving"] == "t"
    finally:
        c.stop()
        runner.join(30)
        watcher.close()
    assert not runner.is_alive()


def test_the_restarter_keeps_no_copy_of_what_it_started_the_learner_process_from():
    """The restarter thread stays for the life of the learner process it started again (its end would kill it:
    PR_SET_PDEATHSIG), and kept what it started it from: its copy of every device's adapter (10 MB for 10,000
    devices, /tmp/s16/look2) and the model's bytes, the whole life long, beside the serving copy. Once sent (the
    start message of 4c48a80), they are let go."""
    learner = LearnerProcess(_model(), LearnerConfig(adapt="device", below_serving=False))
    learner.RESTART_DELAY = 0.0
    for i in range(50):  # the serving copy's adapters (the learner process's, copied at each start)
        learner.adapters._adapters[f"d{i}"] = _Adapter(learner.adapters.k, learner.adapters.config)
    copies: list = []
    copy = learner._adapter_copy

    def watched() -> dict:
        adapters = copy()
        copies.append(weakref.ref(adapters["d0"]["M"]))  # one array of the copy: alive while the copy is
        return adapters

    learner._adapter_copy = watched
    learner.start()
    try:
        assert _poll_until(learner, lambda: learner.alive)
        os.kill(learner._process.pid, signal.SIGKILL)
        assert _poll_until(learner, lambda: learner.restarts == 1 and learner.alive, timeout=60)
        assert len(copies) == 2 and learner._keeper is not None and learner._keeper.is_alive()
        # once the inbox's feeder thread has pickled the start message (it lets go of it then)
        assert wait(lambda: gc.collect() >= 0 and copies[0]() is None, timeout=10)  # the first start's
        assert wait(lambda: gc.collect() >= 0 and copies[1]() is None, timeout=10), \
            "the restarter thread holds its copy of the adapters"
    finally:
        learner.stop(timeout=10)
    assert not learner.alive and not _learners()


def test_a_command_before_the_learner_process_starts_is_carried_out_after_it_not_taken_for_its_start():
    """4c48a80: what the learner process starts from is the first message of its inbox. A command given before
    start() (rollback, promote) was put there first: the child unpacked it as its start message and ended
    (ValueError: not enough values to unpack), an ERROR 'ended unexpectedly', a restart, the command answered
    as not carried out (/tmp/s16/look2/before_start2.py). As before 4c48a80, it is carried out after the start.
    One after stop() is refused (it went into an inbox no one read: never answered)."""
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False))
    learner.RESTART_DELAY = 0.0
    answers: list = []
    learner.promote(answer=lambda *a: answers.append(a))
    learner.start()
    try:
        assert _poll_until(learner, lambda: answers or learner.restarts, timeout=60)
        assert learner.restarts == 0 and learner.alive, answers
        (_, _, why), = answers
        assert why is None or "stopped" not in why, why  # carried out, or refused by the learner: not lost
    finally:
        learner.stop(timeout=10)
    with pytest.raises(ValueError, match="was stopped"):
        learner.promote(answer=lambda *a: answers.append(a))
    assert len(answers) == 1
    assert not _learners()
