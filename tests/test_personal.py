"""Per-device adapters on the shared network (personal adaptation)."""

import numpy as np
import pytest
import torch

from models.checkpoint import default_model_path, load_checkpoint
from models.finetune import LearnerConfig
from models.personal import CUBE, AdapterConfig, DeviceAdapters
from models.state import StatefulClassifier
from simulators.workout import G_STANDARD, DeviceStream

TURN = torch.tensor([[0.0, -1.0, 0], [1.0, 0, 0], [0, 0, 1.0]])  # a quarter turn about z: clipped on sideways


def windows_of(seed: int, seconds: float, classes: list[str], turn: torch.Tensor | None = None):
    """Consecutive 2 s windows (n, 50, 3) at 25 Hz of one simulated person, and their labels."""
    chunk = DeviceStream("d", seed=seed, rate=25.0).read(seconds)
    acc = torch.from_numpy(chunk.acc * np.float32(G_STANDARD) if chunk.unit == "g" else chunk.acc)
    n = len(acc) // 50
    x = acc[: n * 50].reshape(n, 50, 3)
    if turn is not None:
        x = x @ turn.T
    labels = chunk.label[: n * 50].reshape(n, 50)
    index = {c: i for i, c in enumerate(classes)}
    y = torch.tensor([index.get(str(row[25]), -1) for row in labels])
    return x, y


def test_cube_rotations_are_the_24_proper_axis_turns():
    assert CUBE.shape == (24, 3, 3)
    assert torch.allclose(CUBE[0], torch.eye(3))
    for m in CUBE:
        assert torch.allclose(m @ m.T, torch.eye(3)) and torch.det(m) > 0
    assert len({tuple(m.flatten().tolist()) for m in CUBE}) == 24


def test_adapter_learns_a_turned_sensor_and_leaves_other_devices_alone():
    torch.manual_seed(0)
    model, _ = load_checkpoint(default_model_path())
    classes = list(model.config.classes)
    x, y = windows_of(seed=11, seconds=240.0, classes=classes, turn=TURN)
    adapters = DeviceAdapters(len(classes), AdapterConfig())
    served = StatefulClassifier(model)
    served.adapters = adapters
    plain = StatefulClassifier(model)

    def accuracy(classifier, device, xs, ys):
        probs = np.concatenate([classifier.classify([device], xs[i : i + 1]) for i in range(len(xs))])
        keep = ys >= 0
        return float((probs.argmax(1)[keep.numpy()] == ys[keep].numpy()).mean())

    half = len(x) // 2
    before = accuracy(plain, "turned", x[half:], y[half:])
    # learn from the first half, four windows at a time, from the state serving had before them
    learner_view = StatefulClassifier(model)
    reports = []
    for i in range(0, half - 3, 4):
        state = tuple(s[:, 0] for s in learner_view.bank.get("turned")) if "turned" in learner_view.bank else \
            tuple(s[:, 0] for s in model.initial_state(1))
        reports.append(adapters.learn(model, "turned", x[i : i + 4], y[i : i + 4], state))
        learner_view.classify(["turned"] * 1, x[i : i + 1])
        for j in range(i + 1, i + 4):
            learner_view.classify(["turned"], x[j : j + 1])
    assert adapters.jumps >= 1  # the half turn was found by the search, not by a gradient
    assert "turned" in adapters.devices()
    assert all(np.isfinite(r["grad_norm"]) for r in reports if r and not r["skipped"])
    # the served path (adapter applied in the batched pass) on the second half, state carried
    for i in range(half):
        served.classify(["turned"], x[i : i + 1])
    after = accuracy(served, "turned", x[half:], y[half:])
    print(f"turned sensor: {before:.3f} without its adapter, {after:.3f} with it")
    assert before < 0.6 and after >= 0.85, (before, after)

    # another device in the same batch is classified exactly as without adapters
    other, _ = windows_of(seed=12, seconds=20.0, classes=classes)
    both = served.classify(["other", "turned"], torch.stack([other[0], x[0]]).numpy())
    alone = plain.classify(["other"], other[:1].numpy())
    np.testing.assert_allclose(both[0], alone[0], atol=1e-5)


def test_an_adapter_that_only_ties_with_the_plain_network_is_not_served():
    """A device worn as in training: its adapter gets the same windows right as no adapter, so the
    device is served by the plain network (serving ties cost such devices, docs/personal.md)."""
    torch.manual_seed(0)
    model, _ = load_checkpoint(default_model_path())
    classes = list(model.config.classes)
    x, y = windows_of(seed=21, seconds=120.0, classes=classes)
    adapters = DeviceAdapters(len(classes))
    state = tuple(s[:, 0] for s in model.initial_state(1))
    ties = 0
    for i in range(0, len(x) - 3, 4):
        r = adapters.learn(model, "d", x[i:i + 4], y[i:i + 4], state)
        if r is None:
            continue
        enough = len(adapters._adapters["d"].scores) >= adapters.config.compare_windows // 2
        assert r["active"] == (enough and r["adapted_accuracy"] > r["plain_accuracy"]), r
        assert ("d" in adapters.devices()) == r["active"]
        ties += enough and r["adapted_accuracy"] == r["plain_accuracy"]
    assert ties >= 3  # the rule was put to the test: ties happened, and none was served


def test_adapter_checkpoint_round_trip_and_no_labels_no_adapter():
    model, _ = load_checkpoint(default_model_path())
    k = len(model.config.classes)
    adapters = DeviceAdapters(k)
    state = tuple(s[:, 0] for s in model.initial_state(1))
    assert adapters.learn(model, "d", torch.randn(4, 50, 3), torch.full((4,), -1), state) is None
    assert len(adapters) == 0
    # a sensor clipped on sideways: its adapter beats the plain network and is served
    xs, ys = windows_of(seed=11, seconds=120.0, classes=list(model.config.classes), turn=TURN)
    for i in range(0, len(xs) - 3, 4):
        adapters.learn(model, "d", xs[i:i + 4], ys[i:i + 4], state)
    assert adapters.devices() == ["d"]
    restored = DeviceAdapters(k)
    restored.load_state_dict(adapters.state_dict())
    assert restored.devices() == ["d"]
    a, _ = adapters.apply(["d"], xs[:4])
    b, _ = restored.apply(["d"], xs[:4])
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, xs[:4])  # and it does change what the network sees
    # the serving copy follows the learner's adapter as it goes: withdrawn once it no longer helps
    withdrawn = {d: {**e, "active": False} for d, e in adapters.state_dict().items()}
    restored.load_state_dict(withdrawn)
    assert restored.devices() == [] and "d" in restored.state_dict()
    c, _ = restored.apply(["d"], xs[:4])
    torch.testing.assert_close(c, xs[:4])


@pytest.mark.broker
def test_consumer_learns_adapters_from_labels_over_mqtt_and_keeps_them(broker_url, tmp_path):
    """Through a real broker: a turned sensor and its labels in; adapter updates published on the
    training topic; the adapter saved with the consumer's checkpoint and restored by the next one."""
    import threading
    import time
    import uuid

    import orjson

    from stream.consumer import Consumer, ConsumerConfig
    from stream.mqtt import connect

    model, _ = load_checkpoint(default_model_path())
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    # the learner's defaults, but at the test's priority: SCHED_IDLE starves it on a machine whose cores
    # other work fills (tests/test_online.py checks the priority)
    config = ConsumerConfig(broker=broker_url, prefix=prefix, consumer_id=f"c{uuid.uuid4().hex[:6]}",
                            state_dir=tmp_path, metrics_interval=1.0,
                            learner=LearnerConfig(below_serving=False))
    consumer = Consumer(config, StatefulClassifier(model, "base"))
    assert consumer.learner is not None and consumer.learner.adapters is not None  # the default
    training, lock = [], threading.Lock()

    def on_message(client, userdata, msg):
        with lock:
            training.append(orjson.loads(msg.payload))

    watch = connect(broker_url, "test-watch-training", on_message=on_message,
                    subscriptions=[(f"{prefix}/_consumer/+/training", 1)])
    runner = threading.Thread(target=consumer.run)
    runner.start()
    try:
        time.sleep(1.5)
        pub = connect(broker_url, "test-pub-turned")
        chunk = DeviceStream("turned", seed=11).read(120.0)
        acc = (chunk.acc * np.float32(G_STANDARD) if chunk.unit == "g" else chunk.acc) @ TURN.numpy().T
        changes = [0] + [i for i in range(1, len(chunk.label)) if chunk.label[i] != chunk.label[i - 1]]
        for i in changes:  # each label holds until the next
            pub.publish(f"{prefix}/turned/label", orjson.dumps({"label": str(chunk.label[i]),
                                                               "t": float(chunk.t[i])}), qos=1)
        for seq, start in enumerate(range(0, len(chunk.t), 25)):
            body = {"seq": seq, "t": chunk.t[start : start + 25].tolist(),
                    "acc": acc[start : start + 25].tolist()}
            pub.publish(f"{prefix}/turned/imu", orjson.dumps(body), qos=1)
            time.sleep(0.002)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if sum("+adapter:turned" in m["version"] for m in training) >= 5:
                    break
            time.sleep(0.2)
        pub.disconnect()
    finally:
        consumer.stop()
        runner.join(30)
        watch.disconnect()
    updates = [m for m in training if "+adapter:turned" in m["version"]]
    assert len(updates) >= 5, training[:3]
    assert all(np.isfinite(m["loss"]) and np.isfinite(m["grad_norm"]) for m in updates if not m["skipped"])
    assert (tmp_path / "adapters.pt").exists()
    again = Consumer(config, StatefulClassifier(model, "base"))
    assert "turned" in again.learner.adapters._adapters  # restored, served once it has shown it helps
