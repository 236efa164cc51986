"""Supervision of the learner process, session 13: one that ends unexpectedly (the OOM killer, a crash, an
operator's kill -9) is started again from what the serving side serves then; before, labels were never learnt
again for the rest of the consumer's life. A clean stop starts none; quick ends in a row give up."""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time

import numpy as np
import orjson
import pytest
import torch

from models.finetune import LearnerConfig
from models.learner_process import LearnerProcess
from stream.mqtt import connect
from tests.helpers import wait
from tests.test_dashboard import app_feed, app_test, prefix  # noqa: F401 (fixtures)
from tests.test_learner_review import _model, _sequence


def _poll_until(learner: LearnerProcess, condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        learner.poll()
        time.sleep(0.01)
    return True


def _learners() -> list:
    return [p for p in multiprocessing.active_children() if p.name == "harstream-learner"]


def test_a_killed_learner_process_is_started_again_from_what_is_served_and_learns(tmp_path):
    """kill -9 of the learner process: it is started again (after RESTART_DELAY) from the weights served then (a
    promotion's, not the start's), the version served, the serving side's copy of the adapters; it learns the
    labels submitted after, and its counters go on from the first life's."""
    rng = np.random.default_rng(0)
    promoted, reports, answers = [], [], []
    config = LearnerConfig(adapt="both", versions_dir=tmp_path / "models", serving_version="start",
                           below_serving=False, cpu_share=1.0)
    learner = LearnerProcess(_model(), config, on_promote=lambda m, v: promoted.append((m, v)),
                             on_update=reports.append)
    learner.RESTART_DELAY = 0.05
    learner.start()
    try:
        for _ in range(2):
            learner.submit(_sequence("d", rng))
        assert _poll_until(learner, lambda: learner.updates >= 2 and learner.adapters.updates >= 2)
        learner.promote({"forced": True}, answer=lambda m, v, why: answers.append((v, why)))
        assert _poll_until(learner, lambda: answers)
        (served, why), = answers
        assert why is None and served != "start" and learner.version == served
        weights = {k: v.clone() for k, v in promoted[-1][0].state_dict().items()}
        scores = len(learner.adapters.entry("d")["scores"])
        updates, first_pid = learner.updates, learner._process.pid

        os.kill(first_pid, signal.SIGKILL)
        assert _poll_until(learner, lambda: learner._process.pid != first_pid and learner.alive, timeout=30), \
            "the killed learner process was not started again"
        assert learner.restarts == 1 and learner.version == served and not learner.restarting
        assert len(_learners()) == 1

        # the weights it trains from are the promotion's: promoted unchanged, they are that version again
        answers.clear()
        learner.promote({"forced": True}, answer=lambda m, v, why: answers.append((v, why)))
        assert _poll_until(learner, lambda: answers)
        assert answers == [(served, None)], "the learner process started again from other weights"
        for k, v in promoted[-1][0].state_dict().items():
            torch.testing.assert_close(v, weights[k])

        before = len(reports)
        learner.submit(_sequence("d", rng))
        assert _poll_until(learner, lambda: learner.updates > updates and len(reports) > before), \
            "the learner process started again learns nothing"
        new = reports[before:]
        assert {r.version for r in new} == {served, f"{served}+adapter:d"}, [r.version for r in new]
        assert learner.updates == updates + 1  # counted on from the first life's
        # the device's adapter went on from the serving side's copy (its comparison too), not from a fresh one
        assert _poll_until(learner, lambda: len(learner.adapters.entry("d")["scores"]) > scores)
    finally:
        learner.stop(timeout=10)
    assert not learner.alive and not learner.restarting and not _learners()


def test_a_device_turned_while_the_learner_process_is_started_again_is_turned_in_it():
    """The adapters a restarted learner process starts with are copied off the serving thread; a device turned
    after its copy (Orienter.on_turn) has its adapter, as served, sent to the new learner, else it learnt on from
    the map of the old turn and the serving side took that back."""
    rng = np.random.default_rng(5)
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False, cpu_share=1.0))
    learner.RESTART_DELAY = 0.0
    learner.start()
    try:
        learner.submit(_sequence("d", rng))
        assert _poll_until(learner, lambda: learner.adapters.updates >= 1)
        before = learner.adapters.entry("d")["M"].clone()
        spawning, turned = threading.Event(), threading.Event()
        spawn = learner._spawn

        def spawn_after_a_turn(*args):  # the adapters are copied: the serving thread turns the device now
            spawning.set()
            assert turned.wait(30)
            return spawn(*args)

        learner._spawn = spawn_after_a_turn
        os.kill(learner._process.pid, signal.SIGKILL)
        assert _poll_until(learner, spawning.is_set)
        learner.turn("d", np.array([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]))  # 90 degrees about z
        turned.set()
        served = learner.adapters.entry("d")["M"].clone()
        assert not torch.allclose(served, before, atol=0.5)
        assert _poll_until(learner, lambda: learner.alive and learner.restarts == 1)
        updates = learner.adapters.updates
        learner.submit(_sequence("d", rng))
        assert _poll_until(learner, lambda: learner.adapters.updates > updates)
        learnt = learner.adapters.entry("d")["M"]  # one sequence more, from the map served
        assert torch.allclose(learnt, served, atol=0.3), (learnt, served, before)
    finally:
        learner.stop(timeout=10)


def test_a_clean_stop_starts_no_learner_process_again():
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False))
    learner.RESTART_DELAY = 0.0
    learner.start()
    try:
        assert wait(lambda: learner.alive)
    finally:
        learner.stop(timeout=10)
    for _ in range(20):
        learner.poll()
    assert not learner.alive and not learner.restarting and learner.restarts == 0 and not _learners()
    learner.submit(_sequence("d", np.random.default_rng(1)))
    assert learner.dropped == 1  # sent to none


def test_a_stop_while_a_restart_waits_starts_none():
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False))
    learner.RESTART_DELAY = 30.0
    learner.start()
    try:
        assert wait(lambda: learner.alive)
        os.kill(learner._process.pid, signal.SIGKILL)
        assert _poll_until(learner, lambda: learner._restarter is not None)
        assert learner.restarting
        with pytest.raises(ValueError, match="learner process has stopped .*started again"):
            learner.promote({"forced": True})
        learner.submit(_sequence("d", np.random.default_rng(2)))  # waits for the one started again
        assert learner.dropped == 0 and len(learner._pending) == 1
        started = time.monotonic()
    finally:
        learner.stop(timeout=10)
    assert time.monotonic() - started < 5, "stop waited for the restart's delay"
    assert not learner.restarting and learner.restarts == 0 and not _learners()


def test_quick_ends_in_a_row_give_up_with_an_error(caplog):
    """A learner process that ends soon after every start (here killed as soon as it runs) is started again
    after a delay doubled each time, and after MAX_QUICK_ENDS in a row no more: an ERROR says so."""
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False))
    learner.RESTART_DELAY, learner.MAX_QUICK_ENDS = 0.01, 3
    killed: set[int] = set()
    caplog.set_level(logging.WARNING, logger="models.learner_process")
    learner.start()
    try:
        def kill_each() -> bool:
            if learner.alive and learner._process.pid not in killed:
                killed.add(learner._process.pid)
                os.kill(learner._process.pid, signal.SIGKILL)
            return learner.gave_up
        assert _poll_until(learner, kill_each), (learner.restarts, killed)
        for _ in range(20):
            learner.poll()
        assert len(killed) == 3 and learner.restarts == 2 and not learner.alive and not learner.restarting
        assert not _learners()
        ended = [r for r in caplog.records if r.levelno == logging.ERROR and "ended" in r.getMessage()]
        assert [r.args[0] for r in ended] == [-signal.SIGKILL] * 3  # the exit code
        assert [r.args[2] for r in ended[:2]] == [0.01, 0.02]  # the delays
        assert "not started again" in ended[-1].getMessage()
        learner.submit(_sequence("d", np.random.default_rng(3)))
        assert learner.dropped >= 1 and not learner._pending
    finally:
        learner.stop(timeout=10)


def learner_metrics(pub, topic: str, feed, t: float, **learner) -> None:
    """Publish a consumer's retained metrics at ``t`` with a learner part (``learner`` over a few defaults) and wait
    until the dashboard's feed holds them."""
    body = {"t": t, "model": "v1", "learner": {"updates": 4, "skipped": 0, "dropped": 7, "adapter_updates": 1,
                                               "windows": 0, "serving_accuracy": None,
                                               "challenger_accuracy": None, **learner}}
    pub.publish(f"{topic}/metrics", orjson.dumps(body), qos=1, retain=True).wait_for_publish(5)
    assert wait(lambda: ((feed.store.consumers() or [None])[0] is not None
                         and (feed.store.consumers()[0].metrics or {}).get("t") == t))


@pytest.mark.broker
def test_the_model_page_tells_a_learner_being_started_again_from_one_given_up(broker_url, prefix,  # noqa: F811
                                                                              app_feed):  # noqa: F811
    pub = connect(broker_url, "test-supervise-pub")
    topic = f"{prefix}/_consumer/c1"

    def metrics(t: float, **learner) -> None:
        learner_metrics(pub, topic, app_feed, t, **learner)

    try:
        pub.publish(f"{topic}/status", b"online", qos=1, retain=True).wait_for_publish(5)
        metrics(1.0, alive=False, restarting=True, restarts=1)
        at = app_test().run()
        at.switch_page("pages/model.py").run()
        assert not at.exception and not at.error
        (warning,) = at.warning
        assert "being started again (restart 2)" in warning.value
        metrics(2.0, alive=False, restarting=False, restarts=7)
        at.run()
        assert not at.exception and not at.warning
        (error,) = at.error
        assert "started again 7 times" in error.value and "not started again" in error.value
        metrics(3.0, alive=True, restarting=False, restarts=2)
        at.run()
        assert not at.exception and not at.error and not at.warning
        assert any("started again 2 times" in c.value for c in at.caption)
    finally:
        for kind in ("status", "metrics"):
            pub.publish(f"{topic}/{kind}", b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
