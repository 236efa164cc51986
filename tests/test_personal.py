"""Per-device adapters on the shared network (personal adaptation)."""

import numpy as np
import torch

from models.checkpoint import default_model_path, load_checkpoint
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


def test_adapter_checkpoint_round_trip_and_no_labels_no_adapter():
    model, _ = load_checkpoint(default_model_path())
    k = len(model.config.classes)
    adapters = DeviceAdapters(k)
    x = torch.randn(4, 50, 3)
    state = tuple(s[:, 0] for s in model.initial_state(1))
    assert adapters.learn(model, "d", x, torch.full((4,), -1), state) is None
    assert len(adapters) == 0
    for _ in range(5):
        adapters.learn(model, "d", x, torch.zeros(4, dtype=torch.long), state)
    restored = DeviceAdapters(k)
    restored.load_state_dict(adapters.state_dict())
    assert restored.devices() == adapters.devices()
    a, _ = adapters.apply(["d"], x)
    b, _ = restored.apply(["d"], x)
    torch.testing.assert_close(a, b)
