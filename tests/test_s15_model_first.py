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
from tests.helpers import ConsumerTopics, wait


@pytest.mark.broker
def test_the_model_message_comes_before_online(broker_url, tiny_model, tmp_path):
    prefix = f"mf{uuid.uuid4().hex[:8]}"
    watcher = ConsumerTopics(broker_url, prefix, "mf")
    c = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, learn=True, state_dir=tmp_path / "state",
                                metrics_interval=0.5), StatefulClassifier(tiny_model, "t"))
    runner = threading.Thread(target=c.run)
    runner.start()
    try:
        assert wait(lambda: c.learner is not None and c.learner.alive, timeout=60)

        assert wait(lambda: ("status", b"online") in watcher.said()
                    and "model" in [k for k, _ in watcher.said()], timeout=30)
        order = watcher.said()
        first_online = next(i for i, (k, p) in enumerate(order) if k == "status" and p == b"online")
        models = [i for i, (k, _) in enumerate(order) if k == "model"]
        assert models and models[0] < first_online, [k for k, _ in order]
        body = orjson.loads(order[models[0]][1])
        assert body["serving"] == "t" and [v["version"] for v in body["versions"]] == ["t"]
    finally:
        c.stop()
        runner.join(30)
        watcher.close()
    assert not runner.is_alive()
