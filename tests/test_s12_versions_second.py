"""Model versions, second look at c915b98 / 828e8b2: each command's answer reaches the one who sent it, with
several in flight and with a learner process killed while it wrote."""

import os
import signal
import struct
import time
import uuid

import orjson
import pytest
import torch

from models.finetune import LearnerConfig, OnlineLearner
from models.learner_process import LearnerProcess
from models.rnn import HARNet, ModelConfig
from tests.helpers import wait
from tests.test_s12_versions import paused_learner_with_a_promote


def _model() -> HARNet:
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=("down", "up"), hidden=16, layers=1, window=10, hop=10, patch=5, front="linear"))


def _folder_with_two_versions(tmp_path) -> tuple:
    """A versions folder holding 'start' and a version promoted from it; returns (folder, promoted)."""
    versions = tmp_path / "models"
    local = OnlineLearner(_model(), LearnerConfig(versions_dir=versions, serving_version="start"))
    with torch.no_grad():
        for p in local.challenger.parameters():
            p.add_(0.05)
    return versions, local.promote({"forced": True})


def test_two_rollbacks_in_a_row_are_each_served_and_answered_in_turn(tmp_path):
    """The consumer takes the learner's weights in poll (on_promote: one swap slot) and serves them after it, once
    a cycle. Two rollbacks the learner carried out before one poll both came in it: the second's weights replaced
    the first's unserved, so the first version's model message was never published and `harstream versions
    --rollback` to it waited its whole --timeout (so did an automatic promotion just before a command: never
    served nor recorded). Each cycle now gets one version."""
    versions, promoted = _folder_with_two_versions(tmp_path)
    swap = []
    served, answered = [], []
    learner = LearnerProcess(_model(), LearnerConfig(versions_dir=versions, serving_version="start",
                                                     below_serving=False),
                             on_promote=lambda m, v: swap.append(v)).start()
    try:
        learner.rollback(promoted, answer=lambda m, v, why: answered.append((v, why)))
        learner.rollback("start", answer=lambda m, v, why: answered.append((v, why)))
        # both carried out and all they said on our side of the pipe before one poll ("command", "model",
        # "answered", "counters" each)
        assert wait(lambda: learner._received.qsize() >= 8, timeout=60), learner._received.qsize()
        for _ in range(10):  # the consumer's cycles: poll, then serve the newest weights handed over
            learner.poll()
            if swap:
                served.append(swap[-1])
                swap.clear()
        assert served == [promoted, "start"], served
        assert answered == [(promoted, None), ("start", None)], answered
    finally:
        learner.stop(timeout=10)


def test_a_learner_killed_while_writing_still_answers_the_commands_pending(tmp_path):
    """A learner process killed (kill -9, out of memory) in the middle of writing a message (weights are written a
    part at a time) left the reader waiting for the rest for ever: our own end for writing the pipe kept it
    open, so no end of file came, and the commands pending were never answered (nor was stop's reader)."""
    with paused_learner_with_a_promote(tmp_path) as (learner, got):
        # what the learner leaves when killed while writing a message of 100,000 bytes: its length and a first part
        os.write(learner._outbox._writer.fileno(), struct.pack("!i", 100_000) + b"\x80\x04")
        os.kill(learner._process.pid, signal.SIGKILL)
        learner._process.join(30)
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            learner.poll()
            time.sleep(0.02)
        assert got == [(None, None, "the learner process stopped (exit code -9) before carrying it out")], got
        assert not learner._reader.is_alive()


@pytest.fixture
def fake_consumer(broker_url):
    """A consumer on the broker that serves 'v1' (listing 'v0' and 'v1') and answers a command with the model
    messages set in the list it yields (each published as a consumer does, retained). Yields (prefix, id, list)."""
    from stream.mqtt import connect
    prefix, consumer = f"hart{uuid.uuid4().hex[:8]}", "fake"
    model_topic = f"{prefix}/_consumer/{consumer}/model"
    listed = [{"version": "v0", "parent": None, "path": "v0.pt"}, {"version": "v1", "parent": "v0", "path": "v1.pt"}]
    answers: list[dict] = []

    def answer(client, userdata, msg) -> None:
        for body in answers:
            client.publish(model_topic, orjson.dumps(body), qos=1, retain=True)

    fake = connect(broker_url, f"test-fake-{uuid.uuid4().hex[:6]}",
                   subscriptions=[(f"{prefix}/_consumer/{consumer}/command", 1)], on_message=answer)
    try:
        fake.publish(f"{prefix}/_consumer/{consumer}/status", b"online", qos=1, retain=True).wait_for_publish(5)
        fake.publish(model_topic, orjson.dumps({"serving": "v1", "versions": listed}), qos=1,
                     retain=True).wait_for_publish(5)
        yield prefix, consumer, listed, answers
    finally:
        for kind in ("model", "status"):
            fake.publish(f"{prefix}/_consumer/{consumer}/{kind}", b"", qos=1, retain=True).wait_for_publish(5)
        fake.disconnect()
        fake.loop_stop()


def test_a_promote_is_not_taken_as_done_by_another_commands_rollback(fake_consumer, broker_url):
    """`harstream versions --promote` took any model message after the command that refused nothing for its
    answer: the swap of a rollback the dashboard sent just before (to a version listed already) was reported as
    the promotion done ('serves v0'), while the promotion was still to come."""
    from stream.versions import send_command
    prefix, consumer, listed, answers = fake_consumer
    rolled_back = {"serving": "v0", "versions": listed}
    answers.append(rolled_back)
    with pytest.raises(TimeoutError, match="did not confirm the promote"):
        send_command(broker_url, prefix, consumer, "promote", timeout=3)


def test_a_promote_answers_with_its_own_message(fake_consumer, broker_url):
    """The promotion's own model message (a version not listed before, or the one served after another's
    rollback when the challenger learnt nothing since) is the answer, and what is returned is what it says,
    not a later message's."""
    from stream.versions import send_command
    prefix, consumer, listed, answers = fake_consumer
    promoted = {"serving": "v2", "versions": [*listed, {"version": "v2", "parent": "v1", "path": "v2.pt"}],
                "updates": 7}
    answers += [{"serving": "v0", "versions": listed}, promoted, {"serving": "v1", "versions": promoted["versions"]}]
    after = send_command(broker_url, prefix, consumer, "promote", timeout=30)
    assert after.serving == "v2" and after.updates == 7 and after.status == "online"
    answers[:] = [{"serving": "v0", "versions": listed}, {"serving": "v0", "versions": listed, "updates": 3}]
    assert send_command(broker_url, prefix, consumer, "promote", timeout=30).updates == 3
