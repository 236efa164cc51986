"""Shared device state (``stream.shared_state``) under the faults a review found: phone-format devices
beside a state store, a store that loses its last writes or all of them, records of another model,
failed commits. Redis where the test is about Redis (skipped when it does not answer, as
tests/test_scaleout.py does), the in-memory store where it is not.
"""

from __future__ import annotations

import time
from collections import Counter

import numpy as np
import orjson

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig


class _Capture:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic, payload=None, qos=0, retain=False):
        self.topics.append(topic)


def test_phone_format_devices_beside_a_state_store_get_their_predictions(tiny_model):
    """Phone formats go through Consumer._take, not the store: their windows must still be published
    in the cycles where native devices are committed."""
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="rv", learn=False, state_store="memory://",
                                adapters=("csv/+ = csv",)),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Capture()
    t0 = 1.7e9
    for k in range(20):  # 20 x 0.5 s at 50 Hz, a native device and a phone side by side
        t = t0 + k * 0.5 + np.arange(25) / 50
        acc = np.tile([0.1, 0.2, 9.81], (25, 1)) + np.random.default_rng(k).normal(0, 0.5, (25, 3))
        native = orjson.dumps({"seq": k, "t": t, "acc": acc}, option=orjson.OPT_SERIALIZE_NUMPY)
        csv = "\n".join(f"{a:.4f},{x:.4f},{y:.4f},{z:.4f}" for a, (x, y, z) in zip(t, acc, strict=True)).encode()
        now = time.monotonic()
        c.handle_many([("rv/watch1/imu", native, now), ("csv/phone1", csv, now)])
        c._classify()
    predictions = Counter(t.split("/")[1] for t in c._client.topics if t.endswith("/prediction"))
    assert predictions["watch1"] >= 10
    assert predictions["phone1"] == predictions["watch1"]
