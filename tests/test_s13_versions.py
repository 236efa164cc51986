"""Model versions, session 13: each command's answer names the command (``answers``: the id it came with), a
command whose weights never reached serving is answered, and an automatic promotion is in serving.pt before the
consumer says it serves it."""

import contextlib
import copy
import logging
import queue
import threading
import uuid
from multiprocessing.reduction import ForkingPickler

import orjson
import pytest
import torch

from models.checkpoint import checkpoint_bytes, load_checkpoint
from models.finetune import LearnerConfig, OnlineLearner
from models.rnn import HARNet, ModelConfig
from tests.helpers import wait


def _model() -> HARNet:
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=("down", "up"), hidden=16, layers=1, window=10, hop=10, patch=5, front="linear"))


def _promoted(versions, model: HARNet, serving: str, by: float) -> tuple[HARNet, str]:
    """A version promoted from ``serving`` in the folder ``versions`` (weights nudged by ``by``): (weights, id)."""
    local = OnlineLearner(model, LearnerConfig(adapt="shared", versions_dir=versions, serving_version=serving))
    with torch.no_grad():
        for p in local.challenger.parameters():
            p.add_(by)
    version = local.promote({"forced": True})
    return copy.deepcopy(local.serving), version


@pytest.fixture(scope="module")
def consumer(tmp_path_factory, broker_url):
    """A learning consumer running in a thread with --state-dir (checkpoints an hour apart), its folder keeping
    'tiny' (its starting model) and a promoted version. Yields (consumer, prefix, promoted)."""
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    tmp_path = tmp_path_factory.mktemp("consumer")
    _, promoted = _promoted(tmp_path / "models", _model(), "tiny", 0.05)
    prefix = f"hart{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(broker=broker_url, prefix=prefix, consumer_id=f"c{uuid.uuid4().hex[:6]}",
                            state_dir=tmp_path, checkpoint_interval=3600.0,
                            learner=LearnerConfig(adapt="shared", below_serving=False))
    c = Consumer(config, StatefulClassifier(_model(), "tiny"))
    runner = threading.Thread(target=c.run)
    runner.start()
    try:
        assert wait(lambda: c._client is not None and c._client.is_connected())
        assert wait(lambda: c.learner.alive, timeout=30)
        yield c, prefix, promoted
    finally:
        c.stop()
        runner.join(30)


@contextlib.contextmanager
def learner_says(c):
    """The consumer's commands kept from its (idle) learner process, whose part the test plays: ``say(message)``
    puts a message on the pipe from the learner as the learner process writes it (raw bytes: one that cannot be
    read). Yields say."""
    real, c.learner._inbox = c.learner._inbox, queue.Queue()
    outbox = c.learner._outbox

    def say(message) -> None:
        data = message if isinstance(message, bytes) else bytes(ForkingPickler.dumps(message))
        outbox._sem.acquire()  # as put does: get releases it
        with outbox._wlock:
            outbox._writer.send_bytes(data)

    try:
        yield say
    finally:
        c.learner._inbox = real


def _in_thread(call) -> tuple[threading.Thread, dict]:
    """``call()`` in a thread; the dict gets its "result" or its "error"."""
    out = {}

    def run() -> None:
        try:
            out["result"] = call()
        except Exception as exc:
            out["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    return thread, out


def test_a_promote_is_not_answered_by_an_automatic_promotion_that_lands_first(consumer, broker_url):
    """`harstream versions --promote` matched its answer on what the model message said: an automatic promotion
    whose message came just before the command's answer (a version not listed before) was taken for it, reported
    as the promotion done, and the refusal after it was never seen. It now waits for the message that names the
    id its command carried."""
    from stream.versions import send_command
    c, prefix, _ = consumer
    refused = c.stats.rejected["bad_command"]
    automatic, version = _promoted(c.config.state_dir / "models", _model(), "tiny", 0.2)
    listed = [v.to_dict() for v in c.learner.versions]
    listed.append({**listed[-1], "version": version, "parent": "tiny", "path": None})
    with learner_says(c) as say:
        thread, out = _in_thread(lambda: send_command(broker_url, prefix, c.config.consumer_id, "promote",
                                                      timeout=20))
        assert wait(lambda: len(c.learner._answers) == 1), "the consumer never took the command"
        # the learner promoted by itself, then took the command and could not carry it out
        say(("model", checkpoint_bytes(automatic)[0], version, listed))
        say(("command", "promote"))
        say(("answered", "promote", "the versions folder is full"))
        thread.join(30)
    assert "error" in out, f"the automatic promotion was taken for the command's answer: {out}"
    assert isinstance(out["error"], ValueError), out
    assert "refused the promote: the versions folder is full" in str(out["error"])
    assert c.pipeline.classifier.version == version  # the automatic promotion is served all the same
    assert c.stats.rejected["bad_command"] == refused + 1


def _model_messages(broker_url, prefix: str, consumer: str):
    """A subscriber to the consumer's model topic: (client, queue of the bodies it says live)."""
    from stream.mqtt import connect
    got: queue.Queue = queue.Queue()

    def on_message(client, userdata, msg) -> None:
        if not msg.retain and msg.payload:
            got.put(orjson.loads(msg.payload))

    client = connect(broker_url, "test-model-watch", subscriptions=[(f"{prefix}/_consumer/{consumer}/model", 1)],
                     on_message=on_message)
    return client, got


def _next(got: queue.Queue, timeout: float = 30.0) -> dict:
    return got.get(timeout=timeout)


def test_the_model_message_names_the_command_it_answers(consumer, broker_url):
    """Each answer names the command's id (`answers`), carried out or refused; a command without id still works
    (answers null), one with an id that is not a short string or an integer is refused."""
    c, prefix, promoted = consumer
    topic = f"{prefix}/_consumer/{c.config.consumer_id}/command"
    client, got = _model_messages(broker_url, prefix, c.config.consumer_id)
    try:
        def send(body: dict) -> dict:
            client.publish(topic, orjson.dumps(body), qos=1).wait_for_publish(5)
            return _next(got)

        said = send({"action": "rollback", "version": promoted, "id": "mine-1"})
        assert said["answers"] == "mine-1" and said["serving"] == promoted and "refused" not in said
        assert load_checkpoint(c.config.state_dir / "serving.pt")[1]["version"] == promoted
        said = send({"action": "rollback", "version": "nowhere", "id": 7})
        assert said["answers"] == 7 and said["refused"]["reason"] == "unknown model version 'nowhere'"
        said = send({"action": "rollback", "version": "tiny"})  # as the dashboard sends it
        assert said["answers"] is None and said["serving"] == "tiny" and "refused" not in said
        refused = c.stats.rejected["bad_command"]
        said = send({"action": "promote", "id": {"not": "an id"}})
        assert said["answers"] is None and said["refused"]["reason"].startswith("invalid command id")
        assert c.stats.rejected["bad_command"] == refused + 1 and c.pipeline.classifier.version == "tiny"
    finally:
        client.disconnect()
        client.loop_stop()


def test_a_command_whose_weights_could_not_be_read_is_answered(consumer, broker_url):
    """The learner carried out a promote but its weights could not be read on the serving side (a message that
    cannot be unpickled is skipped): the command got `answered(None, None, None)`, which published nothing, and
    `harstream versions` waited its whole --timeout. It is now refused with the reason, at once."""
    from stream.versions import send_command
    c, prefix, _ = consumer
    refused, serving = c.stats.rejected["bad_command"], c.pipeline.classifier.version
    with learner_says(c) as say:
        thread, out = _in_thread(lambda: send_command(broker_url, prefix, c.config.consumer_id, "promote",
                                                      timeout=10))
        assert wait(lambda: len(c.learner._answers) == 1), "the consumer never took the command"
        say(("command", "promote"))
        say(b"\x80\x04cno_such_module\nWeights\n.")  # the weights, as the serving side could not read them
        say(("answered", "promote", None))
        thread.join(30)
    assert isinstance(out.get("error"), ValueError), out
    assert "refused the promote: the learner process carried out the promote, but its weights could not be " \
           "read here (ModuleNotFoundError" in str(out["error"]), out
    assert c.stats.rejected["bad_command"] == refused + 1 and c.pipeline.classifier.version == serving


class Client:
    """What a consumer publishes, without a broker; ``on_publish(topic, body)`` is called at each."""

    def __init__(self, on_publish=lambda topic, body: None) -> None:
        self.sent = []
        self.on_publish = on_publish

    def publish(self, topic, payload, qos=0, retain=False):
        self.sent.append((topic, orjson.loads(payload)))
        self.on_publish(topic, self.sent[-1][1])


def _still(state_dir, client=None):
    """A learning consumer on ``state_dir`` that is not run (its learner process not started), with a stub
    client: what its service thread would do is called by the test."""
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=state_dir, learn=True,
                                learner=LearnerConfig(adapt="shared")),
                 StatefulClassifier(_model(), "tiny"))
    c._client = client or Client()
    return c


def test_an_answer_without_weights_nor_reason_is_a_refusal(tmp_path):
    """`answered(None, None, None)` (nothing to serve came, whatever the reason) published nothing."""
    c = _still(tmp_path)
    try:
        c._command(orjson.dumps({"action": "promote", "id": "p1"}))
        answer = c.learner._answers[0]
        answer(None, None, None)
        topic, body = c._client.sent[-1]
        assert topic.endswith("/model") and body["answers"] == "p1", c._client.sent
        assert body["refused"]["action"] == "promote"
        assert body["refused"]["reason"].startswith("the learner carried out the promote but its weights did not")
        assert c.stats.rejected["bad_command"] == 1
    finally:
        c.store.close()


def test_an_automatic_promotion_is_in_serving_pt_before_it_is_said_served(tmp_path):
    """An automatic promotion (on_promote, then the swap) reached serving.pt only at the next periodic checkpoint:
    a consumer killed in between came back serving the older version, while its versions list and events said
    the new one was served. It is now written at the swap, before the model message."""
    from stream.consumer import SERVING_MODEL

    def in_serving_pt(topic, body):
        if topic.endswith("/model"):
            seen.append(load_checkpoint(tmp_path / SERVING_MODEL)[1]["version"])

    seen = []
    first = _still(tmp_path, Client(in_serving_pt))
    try:
        weights, version = _promoted(tmp_path / "models", _model(), "tiny", 0.1)
        first._on_promote(weights, version)  # as LearnerProcess.poll hands it over, no command
        first._apply_swap()
        assert first.pipeline.classifier.version == version
        assert seen == [version]  # written before the message said it
        assert first._client.sent[-1][1]["answers"] is None
    finally:
        first.store.close()
    again = _still(tmp_path)  # the first killed before any checkpoint
    try:
        assert again.pipeline.classifier.version == version
    finally:
        again.store.close()


def test_a_swap_serving_pt_cannot_take_is_a_warning_and_the_checkpoint_writes_it(tmp_path, caplog):
    """serving.pt not writable at the swap (a full disk; here a directory in its place): serving and the model
    message go on, with a warning; the next checkpoint writes it."""
    from stream.consumer import SERVING_MODEL
    c = _still(tmp_path)
    try:
        (tmp_path / SERVING_MODEL).mkdir()
        weights, version = _promoted(tmp_path / "models", _model(), "tiny", 0.1)
        c._on_promote(weights, version)
        with caplog.at_level(logging.WARNING, logger="stream.consumer"):
            c._apply_swap()
        assert c.pipeline.classifier.version == version and c._client.sent[-1][1]["serving"] == version
        assert any(f"serving model {version} is not in {SERVING_MODEL} yet" in r.getMessage()
                   for r in caplog.records), caplog.text
        (tmp_path / SERVING_MODEL).rmdir()
        c.checkpoint(final=True)
        assert load_checkpoint(tmp_path / SERVING_MODEL)[1]["version"] == version
    finally:
        c.store.close()
