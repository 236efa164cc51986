"""The learner process and its versions, session 14: three faults the last session noticed and left alone.
``keep_versions`` deleted the file of the version served when the learner had drifted from it; sequences a learner
process had taken but not learnt when it died were lost uncounted; ``stop`` outlasted its timeout while a restart
was under way."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import threading
from pathlib import Path

import numpy as np

from models.checkpoint import checkpoint_bytes
from models.finetune import LearnerConfig, OnlineLearner
from models.learner_process import LearnerProcess, learner_loop
from tests.helpers import wait
from tests.test_learner_review import _sequence
from tests.test_s13_supervise import _learners, _poll_until
from tests.test_s13_versions import _model
from tests.test_s13_versions2 import _Alive, _nudge


class _Unreadable:
    """Pickled, it unpickles to an import of a module that does not exist (as weights whose class is unknown)."""

    def __reduce__(self):
        return importlib.import_module, ("no_such_module",)


def _unreadable(lp: LearnerProcess) -> None:
    """A message on the learner's pipe that the serving side cannot read. Put as every other message is (the
    queue's feeder thread writes them in order): written to the pipe at once, it overtook the learner's
    "command" message still in the feeder, which then cleared what it said (a flaky failure under load)."""
    lp._outbox.put(_Unreadable())


def _wired(config: LearnerConfig, on_promote=None):
    """A serving side (LearnerProcess, not started: its reader thread reads the pipe) and a learner loop in a thread
    beside it, wired as the learner process wires them; ``unreadable[0] = True`` makes the next weights the learner
    hands over unreadable here. Returns (lp, learner, loop, unreadable); the caller stops them (``_unwire``)."""
    lp = LearnerProcess(_model(), config, on_promote=on_promote)
    unreadable = [False]

    def promoted(model, version: str) -> None:  # as the learner process's own on_promote
        lp.handed = getattr(lp, "handed", 0) + 1  # weights handed over so far (a test may wait for one)
        if unreadable[0]:
            unreadable[0] = False
            _unreadable(lp)
            return
        lp._outbox.put(("model", checkpoint_bytes(model)[0], version, [v.to_dict() for v in learner.versions]))

    learner = OnlineLearner(_model(), config, on_promote=promoted)
    lp._process = _Alive()
    lp._reading.set()
    lp._reader = threading.Thread(target=lp._read, args=(lp._process, lp._outbox, lp._reading), daemon=True)
    lp._reader.start()
    loop = threading.Thread(target=learner_loop, args=(learner, lp._inbox, lp._outbox), daemon=True)
    loop.start()
    return lp, learner, loop, unreadable


def _unwire(lp: LearnerProcess, loop: threading.Thread) -> None:
    lp._inbox.put(("stop",))
    loop.join(10)
    lp._reading.clear()
    lp._reader.join(5)


def test_keep_versions_never_deletes_the_version_served_when_the_learner_drifted_from_it(tmp_path):
    """The learner forgot the oldest promoted versions but its own: with ``keep_versions`` 1, a promotion whose
    weights the serving side could not read (the learner then trains from a version never served) deleted the
    file of the version served, a promoted one. The serving side's resync could not send it back there (it
    stayed on weights never served), and a rollback to it was refused. The version served is now kept, and a
    later promotion, once served, frees it."""
    config = LearnerConfig(adapt="shared", versions_dir=tmp_path / "models", serving_version="tiny",
                           below_serving=False, keep_versions=1)
    served: list[str] = []
    lp, learner, loop, unreadable = _wired(config, on_promote=lambda model, version: served.append(version))
    answers = []
    try:
        _nudge(learner, 0.1)
        lp.promote({"forced": True}, answer=lambda model, version, reason: answers.append((version, reason)))
        assert wait(lambda: lp.poll() >= 0 and len(answers) == 1, timeout=10)
        v1 = answers[0][0]
        assert v1 is not None and served == [v1] and lp.version == v1
        v1_file = Path(next(v.path for v in lp.versions if v.version == v1))

        _nudge(learner, 0.2)
        unreadable[0] = True
        lp.promote({"forced": True}, answer=lambda model, version, reason: answers.append((version, reason)))
        assert wait(lambda: lp.poll() >= 0 and len(answers) == 2, timeout=10)
        assert answers[1][0] is None and "could not be read here" in answers[1][1]
        assert v1_file.exists(), "the file of the version served was deleted by keep_versions"
        # the resync (its counters name a version never served) takes it back to v1, served as any rollback
        assert wait(lambda: lp.poll() >= 0 and learner.version == v1, timeout=10), \
            f"the learner trains from {learner.version}, never served (serving {lp.version})"
        assert wait(lambda: lp.poll() >= 0 and served == [v1, v1], timeout=10)
        rolled = []
        lp.rollback(v1, answer=lambda model, version, reason: rolled.append((version, reason)))
        assert wait(lambda: lp.poll() >= 0 and rolled, timeout=10)
        assert rolled == [(v1, None)]

        # a promotion served frees it: keep_versions bounds them again
        _nudge(learner, 0.3)
        lp.promote({"forced": True}, answer=lambda model, version, reason: answers.append((version, reason)))
        assert wait(lambda: lp.poll() >= 0 and len(answers) == 3, timeout=10)
        v3 = answers[2][0]
        assert v3 is not None and lp.version == v3
        _nudge(learner, 0.4)
        lp.promote({"forced": True}, answer=lambda model, version, reason: answers.append((version, reason)))
        assert wait(lambda: lp.poll() >= 0 and len(answers) == 4, timeout=10)
        assert not v1_file.exists()  # v3 stays: served until the serving side reads v4
        assert {v.version for v in learner.versions} == {"tiny", v3, answers[3][0]}
    finally:
        _unwire(lp, loop)


def test_sequences_a_killed_learner_process_had_taken_but_not_learnt_are_counted(caplog):
    """A learner process killed with sequences in its inbox that it had taken (off the pipe) but not learnt: they
    were counted nowhere (sent and not taken were counted in ``dropped``). They now count in ``dropped`` and in
    ``lost_sequences``, with a warning; every sequence submitted is learnt or counted."""
    caplog.set_level(logging.WARNING, logger="models.learner_process")
    rng = np.random.default_rng(7)
    # at 0.05 of a core it rests 19 times as long as each sequence took: killed while it rests, it has taken all
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False, cpu_share=0.05))
    learner.RESTART_DELAY = 0.0
    submitted = 6
    learner.start()
    try:
        for _ in range(submitted):  # sent while the process still starts: it takes them all at once
            learner.submit(_sequence("d", rng))
        first = learner._process.pid
        assert _poll_until(learner, lambda: learner._taken == submitted)
        os.kill(first, signal.SIGKILL)
        assert _poll_until(learner, lambda: learner.restarts == 1 and learner.alive, timeout=30)
        learnt = learner.adapters.updates
        assert learnt < submitted
        assert learner.dropped == submitted - learnt, "sequences taken and not learnt were counted nowhere"
        assert learner.lost_sequences == submitted - learnt
        said = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "lost_sequences" in r.getMessage()]
        assert len(said) == 1 and f"{submitted - learnt} labelled sequences" in said[0], said
        learner.submit(_sequence("d", rng))  # the one started again learns on, and nothing more is lost
        assert _poll_until(learner, lambda: learner.adapters.updates > learnt)
        assert learner.lost_sequences == submitted - learnt
    finally:
        learner.stop(timeout=10)


def _held_spawn(learner: LearnerProcess):
    """A ``_spawn`` for ``learner`` that starts the process only once ``go`` is set, as Process.start on a loaded
    machine; ``spawning`` is set as it begins. Returns (slow_spawn, spawning, go)."""
    spawning, go = threading.Event(), threading.Event()
    spawn = learner._spawn

    def slow_spawn(*args):
        spawning.set()
        go.wait(60)
        return spawn(*args)
    return slow_spawn, spawning, go


def test_stop_keeps_to_its_timeout_while_a_restart_starts_a_process():
    """stop(timeout) waited up to 30 s for a restarter thread inside Process.start (a second at best, longer on a
    loaded machine), whatever its timeout. It now waits until its timeout, and the restarter stops the process it
    started once it has started it: none is left."""
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False))
    learner.RESTART_DELAY = 0.0
    slow_spawn, spawning, go = _held_spawn(learner)
    learner.start()
    stopper = threading.Thread(target=learner.stop, kwargs={"timeout": 0.5}, daemon=True)
    try:
        assert _poll_until(learner, lambda: learner.alive)
        learner._spawn = slow_spawn
        os.kill(learner._process.pid, signal.SIGKILL)
        assert _poll_until(learner, spawning.is_set)
        stopper.start()
        stopper.join(20)  # 40 times its timeout: it waited 30 s
        assert not stopper.is_alive(), "stop(timeout=0.5) still waits for the restarter"
    finally:
        go.set()
        if stopper.ident is None:
            stopper.start()
        stopper.join(60)
    # the restarter stops the process it started once Process.start returns, and ends
    assert wait(lambda: not [t for t in threading.enumerate() if t.name == "harstream-learner-restarter"],
                timeout=30)
    assert not _learners() and not learner.alive and not learner.restarting


def test_the_consumer_metrics_show_the_sequences_lost(tmp_path):
    """``learner.lost_sequences`` is in the consumer's metrics, beside ``learner.restarts``."""
    from tests.test_s13_versions import _still
    c = _still(tmp_path)
    c.learner.lost_sequences = 3
    c._publish_metrics()
    learner = c.last_metrics["learner"]
    assert learner["lost_sequences"] == 3 and learner["restarts"] == 0
