"""The learner process, session 15: ``start()`` after a ``stop()`` that left a restart under way."""

from __future__ import annotations

import os
import signal
import threading

import pytest

from models.finetune import LearnerConfig
from models.learner_process import LearnerProcess
from tests.helpers import wait
from tests.test_s13_supervise import _learners, _poll_until
from tests.test_s13_versions import _model
from tests.test_s14_learner import _held_spawn


def test_a_stopped_learner_process_is_not_started_again_and_leaves_no_orphan():
    """stop(timeout) returns while a restarter is still inside Process.start (test_s14_learner); the restarter stops
    the process it started because the learner is halted. A start() meanwhile cleared that halt: the restarter
    then kept its process as if it were to be taken up, no one took it up, and start()'s own process wrote to
    pipes stop had closed (a second learner process, learning nothing, until the consumer ended). start() of a
    stopped LearnerProcess is now refused: the restarter stops what it started, and none is left."""
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False))
    learner.RESTART_DELAY = 0.0
    spawn = learner._spawn
    slow_spawn, spawning, go = _held_spawn(learner)
    learner.start()
    with pytest.raises(RuntimeError, match="started already"):
        learner.start()
    try:
        assert _poll_until(learner, lambda: learner.alive)
        learner._spawn = slow_spawn
        os.kill(learner._process.pid, signal.SIGKILL)
        assert _poll_until(learner, spawning.is_set)
        learner.stop(timeout=0.2)  # returns with the restarter still starting a process
        assert [t for t in threading.enumerate() if t.name == "harstream-learner-restarter"]
        learner._spawn = spawn
        with pytest.raises(RuntimeError, match="was stopped"):
            learner.start()
    finally:
        go.set()
    # the restarter stops the process it started once Process.start returns, and ends: no learner is left
    assert wait(lambda: not [t for t in threading.enumerate() if t.name == "harstream-learner-restarter"],
                timeout=30)
    assert wait(lambda: not _learners(), timeout=30), _learners()
    assert not learner.alive
