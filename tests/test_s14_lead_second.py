"""The learner's rest takes what comes meanwhile (330aba8): what taking it costs is work, and the learner keeps to
its CPU share all the same. Before, that CPU went uncounted (the pacer marked its start after the rest) and the
rest ended at its first deadline however much of it a command had taken: a 40 ms command every 200 ms took the
learner to 0.385 of a core at --learn-cpu 0.25 (0.248 before the rest took messages)."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np
import pytest

from models.finetune import LearnerConfig, OnlineLearner, Pacer
from models.learner_process import _arrays, learner_loop
from tests.test_online import toy_model, toy_sequence


def _burn(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_the_pacer_counts_the_work_its_wait_does_in_the_next_rest():
    waited: list[float] = []

    def wait(seconds: float) -> None:  # a rest that takes a command costing 50 ms of CPU
        waited.append(seconds)
        _burn(0.05)

    pacer = Pacer(0.5, wait=wait)
    _burn(0.02)
    pacer.rest()
    pacer.rest()  # nothing done since but the wait's own work: that is rested for too
    assert len(waited) == 2 and waited[0] >= 0.02
    assert waited[1] >= 0.05, "the CPU a rest's wait used went uncounted"


class _Burner(OnlineLearner):
    """20 ms of CPU per sequence, 300 ms per promotion; when each learn began and ended (monotonic) and its CPU."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.learns: list[tuple[float, float]] = []
        self.cpu = {"learn": 0.0, "promote": 0.0}

    def learn(self, sequence):
        began, cpu = time.monotonic(), time.thread_time()
        _burn(0.02)
        self.cpu["learn"] += time.thread_time() - cpu
        self.learns.append((began, time.monotonic()))
        self.updates += 1
        return []

    def promote(self, metrics=None):
        cpu = time.thread_time()
        _burn(0.3)
        self.cpu["promote"] += time.thread_time() - cpu


def _until(outbox: queue.Queue, predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            message = outbox.get(timeout=0.1)
        except queue.Empty:
            continue
        if predicate(message):
            return message
    pytest.fail("the learner did not say so within 30 s")


def test_a_command_taken_while_the_learner_rests_makes_the_rest_longer_and_is_rested_for():
    share = 0.02  # a rest 49 times the CPU before it: about 1 s after a 20 ms sequence
    learner = _Burner(toy_model(), LearnerConfig(adapt="shared", cpu_share=share))
    inbox, outbox = queue.Queue(), queue.Queue()
    loop = threading.Thread(target=learner_loop, args=(learner, inbox, outbox), daemon=True)
    loop.start()
    sequence = _arrays(toy_sequence(np.random.default_rng(0)))
    try:
        inbox.put(("sequence", sequence))
        _until(outbox, lambda m: m[0] == "counters" and m[1]["learnt"] == 1)  # sent right before it rests
        first_cpu = learner.cpu["learn"]
        inbox.put(("promote", {"forced": True}))  # taken in the rest: 300 ms of CPU
        _until(outbox, lambda m: m[0] == "answered")
        inbox.put(("sequence", sequence))
        _until(outbox, lambda m: m[0] == "counters" and m[1]["learnt"] == 2)
        inbox.put(("stop",))
        last = _until(outbox, lambda m: m[0] == "counters" and m[1]["learnt"] == 2)  # after it stopped
        _until(outbox, lambda m: m == ("stopped",))
    finally:
        inbox.put(("stop",))
        loop.join(30)
    # the rest's deadline moved on by the CPU the promotion took (a lower bound: a busy machine only adds to it)
    gap = learner.learns[1][0] - learner.learns[0][1]
    assert gap >= (1 / share - 1) * first_cpu + learner.cpu["promote"], \
        "the rest ended at its deadline although a command had taken much of it"
    # and the next rest was for the promotion's CPU too, not only the second sequence's
    work = learner.cpu["learn"] + learner.cpu["promote"]
    assert last[1]["rested"] >= (1 / share - 1) * work, "the CPU taken by a command during a rest went unrested"
