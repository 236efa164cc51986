"""A recording replayed through a running consumer gives the predictions `harstream evaluate` gives."""

import threading
import time
import uuid

import numpy as np
import orjson
import pytest

from models.checkpoint import default_model_path, load_checkpoint
from models.evaluate import stream_recording
from models.state import StatefulClassifier
from simulators.replay import replay
from simulators.workout import simulate_recording
from stream.consumer import Consumer, ConsumerConfig
from stream.mqtt import connect

pytestmark = pytest.mark.broker


def test_replay_through_consumer_equals_evaluate(broker_url):
    model, info = load_checkpoint(default_model_path())
    rec = simulate_recording(2, 40.0, seed=7)
    expected = stream_recording(model, rec, info["version"])
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    got = []
    watch = connect(broker_url, "test-watch", subscriptions=[(f"{prefix}/+/prediction", 1)],
                    on_message=lambda c, u, m: got.append(orjson.loads(m.payload)))
    consumer = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, learn=False),
                        StatefulClassifier(model, info["version"]))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not (consumer._client and consumer._client.is_connected()) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)
        sent = replay(rec, broker_url, prefix=prefix, speed=0, qos=1)
        assert sent["samples"] == len(rec)
        deadline = time.monotonic() + 30
        while len(got) < len(expected) and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        consumer.stop()
        thread.join(20)
        watch.disconnect()
        watch.loop_stop()
    assert len(got) == len(expected) > 30
    by_key = {(p["device"], round(p["t"], 3)): p for p in got}
    classes = list(model.config.classes)
    for e in expected:
        p = by_key[(e.device, round(e.t_end, 3))]
        assert p["label"] == e.label
        np.testing.assert_allclose([p["probs"][c] for c in classes], e.probs, atol=2e-3)
