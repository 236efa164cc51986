"""The learner process's start does not hold its caller while the child starts up (session 15, found by a full-disk
probe: a restarted consumer classified nothing for 13 s). Process.start() writes the child's arguments into its
pipe and returns once the child has read them all; the model's 280 kB are more than the pipe holds, so start()
waited until the child had imported torch and read them (5 s measured with the machine loaded). What the child
starts from now goes through its inbox."""

from __future__ import annotations

import threading
from pathlib import Path

from models.checkpoint import load_checkpoint
from models.finetune import LearnerConfig
from models.learner_process import LearnerProcess
from tests.helpers import wait
from tests.test_s13_supervise import _learners, _poll_until

GATE = '''import os, time
gate = os.environ.get("HARSTREAM_TEST_GATE")
while gate and os.path.exists(gate):  # a child starting up slowly: held until the test removes the file
    time.sleep(0.02)
'''


def test_start_returns_while_the_child_is_still_starting_up(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GATE)  # read by a new interpreter only: the spawned child
    gate = tmp_path / "gate"
    gate.write_text("held")
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("HARSTREAM_TEST_GATE", str(gate))
    model, _ = load_checkpoint(Path(__file__).resolve().parents[1] / "models" / "default.pt")  # 280 kB
    learner = LearnerProcess(model, LearnerConfig(below_serving=False))
    assert len(learner._model) > 1 << 16  # more than a pipe holds: what made start() wait
    starter = threading.Thread(target=learner.start, daemon=True)
    try:
        starter.start()
        starter.join(30)  # the child is held before it reads anything; before, start() waited for it
        assert not starter.is_alive(), "start() waits for the child to start up"
        assert learner.alive and not learner.updates
    finally:
        gate.unlink()
        starter.join(60)
    try:
        # the child, let go, starts from the model sent through its inbox and answers a command
        answers = []
        assert wait(lambda: learner.alive, timeout=60)
        learner.promote(answer=lambda *a: answers.append(a))
        assert _poll_until(learner, lambda: answers, timeout=120)
        assert len(answers) == 1 and len(answers[0]) == 3  # carried out or refused: the child runs the commands
    finally:
        learner.stop(timeout=30)
    assert wait(lambda: not _learners(), timeout=30)
