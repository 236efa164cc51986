"""The simulator's publisher through a real broker: every message arrives, labels go out, the truth is
written to a recording file on request."""

import threading
import time
import uuid

import orjson
import pytest

from simulators.publisher import Simulator, SimulatorConfig
from stream.mqtt import connect
from stream.recording import read_recording

pytestmark = pytest.mark.broker


def test_publisher_messages_labels_and_recorded_truth(broker_url, tmp_path):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    got: dict[str, list] = {"imu": [], "label": [], "status": []}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        with lock:
            got[msg.topic.split("/")[-1]].append(msg.payload)

    watch = connect(broker_url, "test-watch", on_message=on_message,
                    subscriptions=[(f"{prefix}/+/imu", 1), (f"{prefix}/+/label", 1), (f"{prefix}/+/status", 1)])
    sim = Simulator(SimulatorConfig(broker=broker_url, devices=3, duration=4.0, speed=0, prefix=prefix,
                                    label_fraction=1.0, record=str(tmp_path / "truth.csv")))
    sim.run()
    deadline = time.monotonic() + 10
    while len(got["imu"]) < sim.published_messages and time.monotonic() < deadline:
        time.sleep(0.05)
    watch.disconnect()
    watch.loop_stop()
    assert sim.published_messages == 3 * 20 and len(got["imu"]) == sim.published_messages
    assert sum(len(orjson.loads(p)["t"]) for p in got["imu"]) == sim.published_samples
    assert len(got["label"]) >= 3 and {orjson.loads(p)["label"] for p in got["label"]}
    assert got["status"].count(b"online") == 3 and got["status"].count(b"offline") == 3
    rec = read_recording(tmp_path / "truth.csv")
    assert len(rec) == sim.published_samples and set(rec.device) == {"sim-000", "sim-001", "sim-002"}
    assert (rec.label != "").all() and rec.gyro is None  # the gyroscope only with record_gyro
