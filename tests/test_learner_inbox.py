"""A starved learner process must never make the serving process grow: what is in flight to it is
bounded, the rest is dropped (oldest waiting first) and counted."""

import os
import signal
import time

import numpy as np
import torch

from models.finetune import LearnerConfig, Sequence
from models.learner_process import LearnerProcess
from models.rnn import HARNet, ModelConfig


def _sequence(rng) -> Sequence:
    y = torch.from_numpy(rng.integers(0, 2, 4))
    x = torch.from_numpy(rng.normal(0, 1, (4, 10, 3)).astype(np.float32))
    return Sequence("d", x, y, (torch.zeros(1, 16), torch.zeros(1, 16)))


def _wait(condition, learner: LearnerProcess, seconds: float = 60.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition() and time.monotonic() < deadline:
        learner.poll()
        time.sleep(0.02)
    return condition()


def test_a_stopped_learner_keeps_the_serving_side_bounded_and_counts_what_it_drops():
    torch.manual_seed(0)
    model = HARNet(ModelConfig(classes=("down", "up"), hidden=16, layers=1, window=10, hop=10, patch=5,
                               front="linear"))
    size, flood = 8, 2000
    # at its parent's priority: SCHED_IDLE could starve it for real on a busy machine; here SIGSTOP does
    learner = LearnerProcess(model, LearnerConfig(queue_size=size, cpu_share=1.0, below_serving=False)).start()
    rng = np.random.default_rng(0)
    submitted = 0
    stopped = False
    try:
        learner.submit(_sequence(rng))
        submitted += 1
        assert _wait(lambda: learner.adapters.updates >= 1, learner), "the learner never learnt"
        os.kill(learner._process.pid, signal.SIGSTOP)  # starved: no CPU at all
        stopped = True
        for _ in range(flood):
            learner.submit(_sequence(rng))  # never blocks
            submitted += 1
        time.sleep(0.2)  # the queue's feeder thread moves what it can into the pipe
        held = len(learner._inbox._buffer) + len(getattr(learner, "_pending", ()))
        assert held <= 2 * size, f"the serving process holds {held} sequences for a stopped learner"
        assert learner.dropped >= flood - 2 * size

        os.kill(learner._process.pid, signal.SIGCONT)
        stopped = False
        # resumed, it learns what reached it; every sequence is either learnt or counted as dropped
        assert _wait(lambda: learner.adapters.updates + learner.dropped == submitted, learner), \
            (learner.adapters.updates, learner.dropped, submitted)
        assert learner.adapters.updates > 1 + size // 2
    finally:
        if stopped:
            os.kill(learner._process.pid, signal.SIGCONT)
        learner.stop(timeout=10)
    assert not learner.alive
