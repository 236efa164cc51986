"""Commands and rejected messages under adversarial input (session 16's probe, /tmp/s16/fuzz): a retained command
was carried out again at every start, a flood of bad commands wrote a WARNING and published a retained model
message for each (16 MB of log and +320 MB of RSS in 20 s), a rejected sensor message was either invisible (a
count in the minute's summary) or, with -v, logged unthrottled, and a rollback without a version was refused as
"unknown model version 'None'"."""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
import uuid

import orjson
import pytest
import torch

from models.finetune import LearnerConfig, OnlineLearner
from models.rnn import HARNet, ModelConfig
from models.state import StatefulClassifier
from stream.consumer import COMMAND_ANSWERS, REJECTION_WARNINGS, Consumer, ConsumerConfig
from stream.mqtt import connect
from tests.helpers import imu, wait

pytestmark = pytest.mark.broker


def _model() -> HARNet:
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=("down", "up"), hidden=16, layers=1, window=10, hop=10, patch=5, front="linear"))


@contextlib.contextmanager
def _running(config: ConsumerConfig, version: str = "tiny"):
    c = Consumer(config, StatefulClassifier(_model(), version))
    runner = threading.Thread(target=c.run)
    runner.start()
    try:
        assert wait(lambda: c._client is not None and c._client.is_connected())
        yield c
    finally:
        c.stop()
        runner.join(30)


@contextlib.contextmanager
def _watch(broker_url, topics: list[str]):
    """A subscriber: yields a queue of (topic, body or raw payload, retain) of every message on ``topics``."""
    got: queue.Queue = queue.Queue()

    def on_message(client, userdata, msg) -> None:
        try:
            body = orjson.loads(msg.payload) if msg.payload else b""
        except orjson.JSONDecodeError:
            body = msg.payload
        got.put((msg.topic, body, msg.retain))

    client = connect(broker_url, f"s16w-{uuid.uuid4().hex[:6]}", subscriptions=[(t, 1) for t in topics],
                     on_message=on_message)
    try:
        yield got
    finally:
        client.disconnect()
        client.loop_stop()


def _drain(got: queue.Queue) -> list:
    out = []
    with contextlib.suppress(queue.Empty):
        while True:
            out.append(got.get_nowait())
    return out


def _until(got: queue.Queue, predicate, timeout: float = 30.0) -> list:
    """Messages from ``got`` up to and including the first for which ``predicate`` holds."""
    seen, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            item = got.get(timeout=0.2)
        except queue.Empty:
            continue
        seen.append(item)
        if predicate(item):
            return seen
    raise AssertionError(f"no such message in {timeout} s; seen {seen[-5:]}")


def _publisher(broker_url):
    return connect(broker_url, f"s16p-{uuid.uuid4().hex[:6]}")


def _clear(broker_url, prefix: str, consumer: str) -> None:
    """Take what the consumer retained off the broker (it keeps its id: a state directory)."""
    client = _publisher(broker_url)
    for kind in ("model", "metrics", "status", "command"):
        info = client.publish(f"{prefix}/_consumer/{consumer}/{kind}", b"", qos=1, retain=True)
    info.wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def test_a_retained_command_is_not_carried_out_at_the_start_and_is_cleared(tmp_path, broker_url, caplog):
    """A rollback published retained was carried out at every start (and reconnection) of the consumer: the broker
    sends its stored copy at every subscription, undoing every promotion since. It is now refused (not carried out,
    not answered), said once at WARNING with how to clear it, and cleared from the broker by the consumer."""
    caplog.set_level(logging.INFO, logger="stream.consumer")
    local = OnlineLearner(_model(), LearnerConfig(adapt="shared", versions_dir=tmp_path / "models",
                                                  serving_version="tiny"))
    with torch.no_grad():
        for p in local.challenger.parameters():
            p.add_(0.05)
    promoted = local.promote({"forced": True})
    prefix, consumer = f"s16r{uuid.uuid4().hex[:8]}", f"c{uuid.uuid4().hex[:6]}"
    command = f"{prefix}/_consumer/{consumer}/command"
    publisher = _publisher(broker_url)
    publisher.publish(command, orjson.dumps({"action": "rollback", "version": promoted, "id": "ret"}), qos=1,
                      retain=True).wait_for_publish(5)
    config = ConsumerConfig(broker=broker_url, prefix=prefix, consumer_id=consumer, state_dir=tmp_path,
                            checkpoint_interval=3600.0, learner=LearnerConfig(adapt="shared", below_serving=False))
    try:
        with _watch(broker_url, [f"{prefix}/_consumer/{consumer}/model"]) as got, _running(config) as c:
            assert wait(lambda: c.learner.alive, timeout=30)
            # commands are taken in order, and carried out by the learner in order: once this one is answered, the
            # retained one was carried out (before) or refused
            publisher.publish(command, orjson.dumps({"action": "rollback", "version": "tiny", "id": "after"}),
                              qos=1).wait_for_publish(5)
            said = _until(got, lambda m: isinstance(m[1], dict) and m[1].get("answers") == "after")
            models = [m[1] for m in said if isinstance(m[1], dict)]
            assert [m for m in models if m["answers"] == "ret"] == [], "the retained command was answered"
            assert all(m["serving"] == "tiny" for m in models), f"rolled back at the start: {models}"
            assert c.pipeline.classifier.version == "tiny"
            assert c.stats.rejected["bad_command"] == 1
        warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                  and "retained command" in r.getMessage()]
        assert len(warned) == 1 and "mosquitto_pub" in warned[0] and "-r -n" in warned[0], warned
        # cleared: a new subscriber gets no retained command
        with _watch(broker_url, [command]) as got:
            time.sleep(1.0)
            assert [m for m in _drain(got) if m[2] and m[1]] == []
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        _clear(broker_url, prefix, consumer)


def test_a_rollback_without_a_version_says_so(broker_url):
    """It was refused as "unknown model version 'None'". Sent with the retain flag while the consumer is connected,
    a command comes to it live (no flag) and is taken as any."""
    prefix = f"s16v{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(broker=broker_url, prefix=prefix, learn=False)
    with _running(config) as c, _watch(broker_url, [f"{prefix}/_consumer/{c.config.consumer_id}/model"]) as got:
        command = f"{prefix}/_consumer/{c.config.consumer_id}/command"
        publisher = _publisher(broker_url)
        publisher.publish(command, orjson.dumps({"action": "rollback", "id": "nv"}), qos=1,
                          retain=True).wait_for_publish(5)
        said = _until(got, lambda m: isinstance(m[1], dict) and m[1].get("answers") == "nv")[-1][1]
        publisher.publish(command, b"", qos=1, retain=True).wait_for_publish(5)
        publisher.disconnect()
        publisher.loop_stop()
    assert said["refused"]["reason"].startswith("a rollback names no version"), said["refused"]


def test_a_flood_of_bad_commands_is_neither_logged_nor_answered_one_by_one(broker_url, caplog):
    """One WARNING and one retained QoS 1 model message for each refused command: the probe's 7,850 bad payloads a
    second wrote 16 MB of log in 20 s and took the consumer from 421 to 745 MB. Now what is not a command at all is
    not answered, refusals are answered at most COMMAND_ANSWERS a second, and logged once, then in one line a
    minute saying how many."""
    caplog.set_level(logging.INFO, logger="stream.consumer")
    prefix = f"s16f{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(broker=broker_url, prefix=prefix, learn=False, metrics_interval=0.3)
    with _running(config) as c, _watch(broker_url, [f"{prefix}/_consumer/{c.config.consumer_id}/model"]) as got:
        command = f"{prefix}/_consumer/{c.config.consumer_id}/command"
        publisher = _publisher(broker_url)
        junk = [b"{bad", b'{"seq":"x"}', b'{"seq":1,"t":[0],"acc":[[1,2]]}', b"[]", b'{"action": 5}']
        for i in range(300):  # not commands: not answered
            publisher.publish(command, junk[i % len(junk)], qos=1)
        assert wait(lambda: c.stats.rejected["bad_command"] == 300)
        time.sleep(0.5)
        assert [m for m in _drain(got) if not m[2]] == [], "a payload that is no command was answered"
        for _ in range(300):  # commands, refused: answered at most COMMAND_ANSWERS a second
            publisher.publish(command, orjson.dumps({"action": "rollback", "version": "nope"}), qos=1)
        assert wait(lambda: c.stats.rejected["bad_command"] == 600)
        time.sleep(1.1)  # a refusal after the flood is answered
        publisher.publish(command, orjson.dumps({"action": "promote", "id": "last"}), qos=1).wait_for_publish(5)
        said = _until(got, lambda m: isinstance(m[1], dict) and m[1].get("answers") == "last")
        refusals = [m for m in said if not m[2] and isinstance(m[1], dict) and "refused" in m[1]]
        assert len(refusals) <= 2 * COMMAND_ANSWERS + 1, len(refusals)  # the flood may span two seconds
        warned = [r.getMessage() for r in caplog.records
                  if r.levelno == logging.WARNING and "refused" in r.getMessage()]
        assert len(warned) == 1, warned[:5]  # the first; the next line comes a minute later
        c._refusal_warnings._since -= 3600  # that minute passed: the next metrics say how many since
        assert wait(lambda: any(re.search(r"600 commands refused in the last", r.getMessage())
                                for r in caplog.records), timeout=5)
        publisher.disconnect()
        publisher.loop_stop()
    summary = next(r.getMessage() for r in caplog.records if "commands refused in the last" in r.getMessage())
    assert "not answered" in summary and "the last: command promote refused" in summary, summary


def test_the_first_rejection_of_each_device_and_reason_is_a_warning_naming_it(broker_url, caplog):
    """A rejected sensor message was counted in the metrics and the minute's progress line only, without device or
    topic (each at DEBUG with -v, unthrottled): no one could tell which sensor was broken. The first rejection of
    each (device, reason) is now a WARNING naming both, at most REJECTION_WARNINGS a minute (the rest counted in one
    line), each still at DEBUG."""
    caplog.set_level(logging.DEBUG, logger="stream.consumer")
    prefix = f"s16j{uuid.uuid4().hex[:8]}"
    config = ConsumerConfig(broker=broker_url, prefix=prefix, learn=False, metrics_interval=0.3)
    with _running(config) as c:
        publisher = _publisher(broker_url)
        for _ in range(20):
            publisher.publish(f"{prefix}/broken/imu", b"{not json", qos=1)
        publisher.publish(f"{prefix}/sane/imu", imu(0, 0.0), qos=1)
        publisher.publish(f"{prefix}/sane/imu", imu(0, 0.2), qos=1)  # its seq repeated
        for i in range(30):
            publisher.publish(f"{prefix}/many{i}/imu", b"[]", qos=1)
        assert wait(lambda: sum(c.stats.rejected.values()) == 51)
        assert wait(lambda: any("more rejected messages" in r.getMessage() for r in caplog.records), timeout=5)
        publisher.disconnect()
        publisher.loop_stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and r.getMessage().startswith("rejected")]
    assert len(warnings) == REJECTION_WARNINGS, warnings
    assert "device broken: bad_json" in warnings[0] and "b'{not json'" in warnings[0], warnings[0]
    assert "device sane: repeated_seq" in warnings[1], warnings[1]
    summary = next(r.getMessage() for r in caplog.records if "more rejected messages" in r.getMessage())
    assert summary.startswith(f"{30 - (REJECTION_WARNINGS - 2)} more rejected messages (not_object"), summary
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and r.getMessage().startswith("rejected")]
    assert len(debug) == 51
