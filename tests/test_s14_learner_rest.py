"""The learner's rest (``Pacer``: up to 1 / cpu_share - 1 times what the last sequence took) is awake to what
comes meanwhile. Before, a stop or a command waited for the rest to end: at the end of a demo with --adapt shared
the consumer's 5 s wait ran out ("the learner process did not stop within 5 s; terminating it", a WARNING a
newcomer saw), and a rollback waited as long."""

from __future__ import annotations

import queue
import threading
import time

import numpy as np

from models.finetune import LearnerConfig, OnlineLearner
from models.learner_process import _arrays, learner_loop
from tests.test_online import toy_model, toy_sequence
from tests.test_s14_version_save import _until


class Burner(OnlineLearner):
    def learn(self, sequence):  # 50 ms of CPU per sequence: at cpu_share 0.001 a rest of 50 s follows
        end = time.thread_time() + 0.05
        while time.thread_time() < end:
            pass
        self.updates += 1
        return []


def test_a_stop_and_a_command_are_taken_while_the_learner_rests():
    learner = Burner(toy_model(), LearnerConfig(adapt="shared", cpu_share=0.001))
    inbox, outbox = queue.Queue(), queue.Queue()
    loop = threading.Thread(target=learner_loop, args=(learner, inbox, outbox), daemon=True)
    loop.start()
    seen: list = []
    try:
        inbox.put(("sequence", _arrays(toy_sequence(np.random.default_rng(0)))))
        # its counters are sent before it rests, so the serving side knows at once what was learnt
        assert _until(outbox, seen, lambda m: m[0] == "counters" and m[1]["learnt"] == 1, timeout=30)
        inbox.put(("promote", {"forced": True}))
        assert _until(outbox, seen, lambda m: m[0] == "answered", timeout=20), \
            "a command waited for the learner's 50 s rest to end"
        inbox.put(("stop",))
        loop.join(20)
        assert not loop.is_alive(), "a stop waited for the learner's 50 s rest to end"
        assert _until(outbox, seen, lambda m: m == ("stopped",), timeout=5)
    finally:
        inbox.put(("stop",))
