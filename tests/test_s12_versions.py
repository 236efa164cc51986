"""Model versions: every rollback or promote command is answered, refused inside the learner process too, and
one carried out is in serving.pt before the consumer says it serves it."""

import contextlib
import os
import signal
import threading
import time
import uuid

import orjson
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.finetune import LearnerConfig, OnlineLearner
from models.learner_process import LearnerProcess
from models.rnn import HARNet, ModelConfig
from tests.helpers import wait


def _model() -> HARNet:
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=("down", "up"), hidden=16, layers=1, window=10, hop=10, patch=5, front="linear"))


def _newer_harstream(directory, model) -> str:
    """A version a newer harstream left in the folder: listed, of the same architecture (the serving side's
    check passes), but not a checkpoint this one loads (the learner's rollback refuses it)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "newer.pt"
    save_checkpoint(path, model, {"parent": None, "online": {}})
    blob = torch.load(path, map_location="cpu", weights_only=True)
    blob["format_version"] = 99
    torch.save(blob, path)
    return "newer"


def _answers(learner: LearnerProcess, got: list, n: int) -> bool:
    deadline = time.monotonic() + 60
    while len(got) < n and time.monotonic() < deadline:
        learner.poll()
        time.sleep(0.02)
    return len(got) >= n


def test_a_rollback_the_learner_process_refuses_is_answered_with_its_reason(tmp_path):
    """A rollback refused inside the learner process (its version's file unreadable there) was logged in the
    learner and answered by nothing. Now its answer comes back through poll with the reason; one carried out
    is answered with the weights on_promote got just before."""
    versions = tmp_path / "models"
    model = _model()
    newer = _newer_harstream(versions, model)
    events = []
    learner = LearnerProcess(model, LearnerConfig(versions_dir=versions, serving_version="start",
                                                  below_serving=False),
                             on_promote=lambda m, v: events.append(("promoted", v))).start()
    try:
        assert newer in [v.version for v in learner.versions]
        learner.rollback(newer, answer=lambda m, v, why: events.append(("answer", m, v, why)))
        assert _answers(learner, events, 1), "never answered"
        assert len(events) == 1, events  # no weights came
        _, m, v, why = events[0]
        assert m is None and v is None and "checkpoint format version 99" in why, why
        assert learner.version == "start"

        events.clear()
        learner.rollback("start", answer=lambda m, v, why: events.append(("answer", m, v, why)))
        assert _answers(learner, events, 2)
        assert events[0] == ("promoted", "start")  # the swap, then its answer, in the same poll
        _, m, v, why = events[1]
        assert why is None and v == "start" and isinstance(m, HARNet)
    finally:
        learner.stop(timeout=10)


def test_a_promotion_the_learner_cannot_save_is_answered_as_refused(tmp_path):
    """A forced promotion whose version could not be written (the versions folder replaced by a file, a full
    disk) was logged in the learner only; its answer now says why."""
    import queue
    import shutil

    from models.learner_process import learner_loop
    config = LearnerConfig(versions_dir=tmp_path / "models", serving_version="start", cpu_share=1.0)
    learner = OnlineLearner(_model(), config)
    serving_side = LearnerProcess(_model(), config)  # not started: fed what the loop reports
    shutil.rmtree(tmp_path / "models")
    (tmp_path / "models").write_text("not a folder")
    got = []
    serving_side.promote({"forced": True}, answer=lambda m, v, why: got.append((m, v, why)))
    inbox, outbox = queue.Queue(), queue.Queue()
    inbox.put(serving_side._early.pop())  # not started: kept to go after the start message (188f883)
    inbox.put(("stop",))
    learner_loop(learner, inbox, outbox)
    while not outbox.empty():
        serving_side._apply(outbox.get_nowait())
    assert len(got) == 1 and got[0][:2] == (None, None), got
    # since 9a31e58 the learner says which version it could not save, where, and why
    assert got[0][2].startswith("model version ") and "not saved as" in got[0][2] and "File exists" in got[0][2], got
    assert learner.version == "start"


@contextlib.contextmanager
def paused_learner_with_a_promote(tmp_path):
    """A learner process paused (SIGSTOP: it takes nothing more) with a promote sent to it; yields (learner, the
    answers got). Never left stopped: exiting would wait for it."""
    learner = LearnerProcess(_model(), LearnerConfig(versions_dir=tmp_path / "models", serving_version="start",
                                                     below_serving=False)).start()
    got = []
    try:
        assert wait(lambda: learner.alive)
        os.kill(learner._process.pid, signal.SIGSTOP)
        learner.promote({"forced": True}, answer=lambda m, v, why: got.append((m, v, why)))
        yield learner, got
    finally:
        if learner._process is not None and learner._process.is_alive():
            os.kill(learner._process.pid, signal.SIGKILL)
        learner.stop(timeout=5)


def test_a_command_to_a_learner_process_that_ends_before_taking_it_is_answered(tmp_path):
    """A command accepted while the learner process ran, which then ended (killed, out of memory) before taking
    it, was never answered."""
    with paused_learner_with_a_promote(tmp_path) as (learner, got):
        os.kill(learner._process.pid, signal.SIGKILL)
        learner._process.join(30)
        assert _answers(learner, got, 1), "never answered"
        assert got == [(None, None, "the learner process stopped (exit code -9) before carrying it out")]


@pytest.fixture(scope="module")
def consumer(tmp_path_factory, broker_url):
    """A consumer running in a thread with --state-dir and shared fine-tuning, its folder keeping 'tiny' (its
    starting model), a promoted version and one a newer harstream left; checkpoints far apart (only what a
    command writes at once is in serving.pt). Yields (consumer, prefix, promoted, newer)."""
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    model = _model()
    tmp_path = tmp_path_factory.mktemp("consumer")
    versions = tmp_path / "models"
    local = OnlineLearner(model, LearnerConfig(adapt="shared", versions_dir=versions, serving_version="tiny"))
    with torch.no_grad():
        for p in local.challenger.parameters():
            p.add_(0.05)
    promoted = local.promote({"forced": True})
    newer = _newer_harstream(versions, model)
    prefix = f"hart{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(broker=broker_url, prefix=prefix, consumer_id=f"c{uuid.uuid4().hex[:6]}",
                            state_dir=tmp_path, checkpoint_interval=3600.0,
                            learner=LearnerConfig(adapt="shared", below_serving=False))
    c = Consumer(config, StatefulClassifier(model, "tiny"))
    runner = threading.Thread(target=c.run)
    runner.start()
    try:
        assert wait(lambda: c._client is not None and c._client.is_connected())
        assert wait(lambda: c.learner.alive, timeout=30)
        yield c, prefix, promoted, newer
    finally:
        c.stop()
        runner.join(30)


def test_a_rollback_refused_in_the_learner_fails_the_command_at_once_with_the_reason(consumer, broker_url):
    """`harstream versions --rollback` to a version the serving side's check passes but the learner cannot load
    waited its whole --timeout, then pointed at the log; it now fails with the learner's reason."""
    from stream.versions import send_command
    c, prefix, _, newer = consumer
    refused, serving = c.stats.rejected["bad_command"], c.pipeline.classifier.version
    with pytest.raises(ValueError, match="refused the rollback: .*checkpoint format version 99"):
        send_command(broker_url, prefix, c.config.consumer_id, "rollback", newer, timeout=30)
    assert c.stats.rejected["bad_command"] == refused + 1 and c.pipeline.classifier.version == serving


def test_a_rollback_is_in_serving_pt_when_the_consumer_confirms_it(consumer, broker_url):
    """A rollback reached serving.pt (what a restarted consumer serves) only at the next periodic checkpoint:
    a consumer killed in between came back serving the version rolled back from."""
    from stream.versions import send_command
    c, prefix, promoted, _ = consumer
    state = c.config.state_dir
    for version in (promoted, "tiny"):
        after = send_command(broker_url, prefix, c.config.consumer_id, "rollback", version, timeout=60)
        assert after.serving == version
        _, info = load_checkpoint(state / "serving.pt")  # no checkpoint in between (an hour apart)
        served = load_checkpoint(state / "models" / f"{version}.pt")[1]["version"]
        assert info["version"] == served


def test_a_promote_is_not_taken_as_done_by_the_refusal_of_another_command(broker_url):
    """`harstream versions --promote` took the consumer's first model message after the command for its answer,
    even one that refused another command (a rollback from the dashboard): it reported the promotion done (and
    'the challenger had learnt nothing') while it was refused or still to come."""
    from stream.mqtt import connect
    from stream.versions import send_command
    prefix, consumer = f"hart{uuid.uuid4().hex[:8]}", "fake"
    model_topic = f"{prefix}/_consumer/{consumer}/model"

    def answer(client, userdata, msg) -> None:  # a consumer answering a promote: another refusal comes first
        body = {"serving": "v1", "versions": [{"version": "v1", "path": "v1.pt"}]}
        client.publish(model_topic, orjson.dumps({**body, "refused": {
            "action": "rollback", "version": "v0", "reason": "unknown model version 'v0'", "t": 1.0}}),
            qos=1, retain=True)
        client.publish(model_topic, orjson.dumps({**body, "refused": {
            "action": "promote", "version": None, "reason": "disk full", "t": 2.0}}), qos=1, retain=True)

    fake = connect(broker_url, "test-fake-consumer",
                   subscriptions=[(f"{prefix}/_consumer/{consumer}/command", 1)], on_message=answer)
    try:
        with pytest.raises(ValueError, match="refused the promote: disk full"):
            send_command(broker_url, prefix, consumer, "promote", timeout=30)
    finally:
        fake.publish(model_topic, b"", qos=1, retain=True).wait_for_publish(5)
        fake.disconnect()
        fake.loop_stop()
