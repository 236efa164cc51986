"""A SIGTERM to the consumer's whole process group (systemd's default KillMode, the demo's killpg) reached the
learner process too, which died of it before the consumer stopped it: "the learner process ended unexpectedly
(exit code -15)", an ERROR at the end of a demo, and a restart under way while the consumer stopped. It ignores
SIGTERM now; the consumer stops it."""

from __future__ import annotations

import os
import signal
import time

import numpy as np

from models.finetune import LearnerConfig
from models.learner_process import LearnerProcess
from tests.test_learner_review import _sequence
from tests.test_s13_supervise import _learners, _poll_until
from tests.test_s13_versions import _model


def test_a_sigterm_to_the_group_leaves_the_learner_process_to_the_consumer():
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False))
    learner.start()
    try:
        learner.submit(_sequence("d", np.random.default_rng(0)))  # taken: it runs its loop, past its start
        assert _poll_until(learner, lambda: learner._taken == 1)
        process = learner._process
        os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        while process.is_alive() and time.monotonic() < deadline:
            learner.poll()
            time.sleep(0.05)
        assert process.is_alive(), f"the learner process died of a SIGTERM (exit code {process.exitcode})"
        assert learner.restarts == 0 and not learner.restarting
    finally:
        learner.stop(timeout=10)
    assert not process.is_alive() and not _learners()
