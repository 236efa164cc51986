"""Second look at the learner process's supervision (session 13): a learner process started again must not be
tied to a thread that ends at once. The kernel kills the learner process when the thread that started it ends
(PR_SET_PDEATHSIG, set by the child once it runs); a restart is started from a thread of its own."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np

from models.finetune import LearnerConfig
from models.learner_process import LearnerProcess
from tests.test_learner_review import _model, _sequence
from tests.test_s13_supervise import _learners, _poll_until


def test_a_learner_process_started_again_lives_on_when_its_restarter_thread_is_slow_to_end():
    """The restarter thread that started the process ended right after Process.start() returned: whenever the
    child got to PR_SET_PDEATHSIG first (a parent thread waiting for the GIL, a slow exit), the kernel killed the
    learner started again at once (exit code -9), a quick end after which it was started again, and so on. Here
    the thread returns from its start only once the child answers from its loop (past PR_SET_PDEATHSIG)."""
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False, cpu_share=1.0))
    learner.RESTART_DELAY = 0.0
    started: list = []
    spawn = learner._spawn

    def spawn_until_it_runs(model, config, adapters, versions, inbox, outbox):
        process = spawn(model, config, adapters, versions, inbox, outbox)
        # answered by counters once the child runs learner_loop (the version has no file: it stays on it)
        inbox.put(("resync", config.serving_version, config.serving_version))
        assert outbox._reader.poll(60), "the learner process started again never ran"
        started.append(process)
        return process

    learner.start()
    try:
        assert _poll_until(learner, lambda: learner.alive)
        learner._spawn = spawn_until_it_runs
        os.kill(learner._process.pid, signal.SIGKILL)
        assert _poll_until(learner, lambda: started and learner.restarts >= 1)
        process = started[0]
        learner.submit(_sequence("d", np.random.default_rng(0)))
        # it takes the sequence (counters say so), or ends first
        assert _poll_until(learner, lambda: learner._taken >= 1 or not process.is_alive())
        assert process.is_alive(), f"the learner process started again ended (exit code {process.exitcode})"
        assert learner.restarts == 1 and learner.alive and learner._process is process
    finally:
        learner.stop(timeout=10)
    assert not learner.alive and not _learners()
    # the thread that started it ends with it
    assert not [t for t in threading.enumerate() if t.name == "harstream-learner-restarter"]


def test_a_stop_while_the_restarter_starts_a_process_stops_it_and_its_thread():
    """stop() while the restarter thread is inside Process.start(): the process it starts is stopped and no
    thread or process is left (the restarter now stays while its process runs: stop must not wait for it)."""
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False))
    learner.RESTART_DELAY = 0.0
    spawning = threading.Event()
    spawn = learner._spawn

    def signalled_spawn(*args):
        spawning.set()
        return spawn(*args)

    learner.start()
    try:
        assert _poll_until(learner, lambda: learner.alive)
        learner._spawn = signalled_spawn
        os.kill(learner._process.pid, signal.SIGKILL)
        assert _poll_until(learner, spawning.is_set)
    finally:
        began = time.monotonic()
        learner.stop(timeout=10)
    assert time.monotonic() - began < 20
    assert not learner.alive and not learner.restarting and not _learners()
    assert not [t for t in threading.enumerate() if t.name == "harstream-learner-restarter"]
