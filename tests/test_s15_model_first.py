"""At its start a consumer publishes its model message before it says it is online (found by an upgrade probe,
session 15): the learner process took 3 s to start, more than 16 s on a loaded machine, and meanwhile
`harstream versions` showed the last life's retained list of versions beside "(online)"."""

from __future__ import annotations

import threading
import uuid

import orjson
import pytest

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.mqtt import connect
from tests.helpers import wait


@pytest.mark.broker
def test_the_model_message_comes_before_online(broker_url, tiny_model, tmp_path):
    prefix = f"mf{uuid.uuid4().hex[:8]}"
    got: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        with lock:
            got.append((msg.topic.rsplit("/", 1)[-1], msg.payload))

    watcher = connect(broker_url, f"mf-{uuid.uuid4().hex[:6]}", subscriptions=[(f"{prefix}/_consumer/+/+", 1)],
                      on_message=on_message)
    c = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, learn=True, state_dir=tmp_path / "state",
                                metrics_interval=0.5), StatefulClassifier(tiny_model, "t"))
    runner = threading.Thread(target=c.run)
    runner.start()
    try:
        assert wait(lambda: c.learner is not None and c.learner.alive, timeout=60)

        def kinds():
            with lock:
                return [k for k, _ in got]
        assert wait(lambda: "online" in [p.decode(errors="replace") for k, p in list(got) if k == "status"]
                    and "model" in kinds(), timeout=30)
        with lock:
            order = [(k, p) for k, p in got if k in ("status", "model")]
        first_online = next(i for i, (k, p) in enumerate(order) if k == "status" and p == b"online")
        models = [i for i, (k, _) in enumerate(order) if k == "model"]
        assert models and models[0] < first_online, [k for k, _ in order]
        body = orjson.loads(order[models[0]][1])
        assert body["serving"] == "t" and [v["version"] for v in body["versions"]] == ["t"]
    finally:
        c.stop()
        runner.join(30)
        watcher.disconnect()
        watcher.loop_stop()
    assert not runner.is_alive()
