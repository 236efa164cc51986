"""A second look at 934f2db: device adapters and the windows kept to learn from follow a device the
orientation step turns anew (``Orienter.on_turn``), in every path a turn can take."""

from __future__ import annotations

import time

import numpy as np
import orjson
import torch

from models.finetune import LearnerConfig
from models.orientation import Orienter
from models.personal import DeviceAdapters
from models.rnn import HARNet, ModelConfig
from models.state import StatefulClassifier
from stream.consumer import ADAPTERS_FILE, Consumer, ConsumerConfig
from tests.test_consumer_restart import _NoBroker
from tests.test_orientation import TWO_STAGES, _Scripted, _windows

UPSIDE_DOWN = np.diag([1.0, -1.0, -1.0])
CLASSES = ("a", "b")


def _model(gains) -> HARNet:
    """An untrained 6-channel model whose orientation step turns a device upside down at stages that
    gain ``gains`` (TWO_STAGES: after 5 and 15 windows of 25 samples at 25 Hz)."""
    torch.manual_seed(0)
    model = HARNet(ModelConfig(classes=CLASSES, input_channels=6, hidden=8, layers=1, window=25, hop=25, patch=5,
                               rate=25.0))
    model.orientation = _Scripted(gains, TWO_STAGES)
    return model


def _consumer(model, state_dir=None) -> Consumer:
    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=True, state_dir=state_dir,
                                       learner=LearnerConfig(adapt="device")), StatefulClassifier(model, "v"))
    consumer._client = _NoBroker()
    return consumer


def _send(consumer, device: str, seq: int, rng) -> np.ndarray:
    """One message of a window's worth of samples (1 s); the raw samples (25, 6)."""
    t = seq + np.arange(25) / 25.0
    acc = rng.normal(0, 1, (25, 3))
    acc[:, 2] += 9.81
    gyro = rng.normal(0, 1, (25, 3))
    consumer.handle(f"har/{device}/imu", orjson.dumps(
        {"seq": seq, "t": t.tolist(), "acc": acc.tolist(), "gyro": gyro.tolist()}), time.monotonic())
    return np.concatenate([acc, gyro], axis=1)


def _adapter_file(path, M: torch.Tensor) -> None:
    adapters = DeviceAdapters(len(CLASSES), names=CLASSES)
    adapters.load_state_dict({"d": {"M": M, "b": torch.tensor([0.3, -0.1, 0.2]), "c": torch.zeros(2),
                                    "active": True}})
    adapters.save(path / ADAPTERS_FILE)


def test_a_turned_device_dropped_from_the_parked_ones_is_reported_turned_back():
    """A settled device's turn is kept after eviction up to MAX_PARKED devices; beyond, the oldest is
    dropped and comes back as a new device, unturned: what follows its turn (its adapter) must be told."""
    seen = []
    orienter = Orienter(_Scripted([3.5, 3.5, 3.5, 3.5], TWO_STAGES))
    orienter.MAX_PARKED = 1
    w = _windows(15)
    for device in ("x", "y"):
        for i in range(15):
            orienter.apply([device], w[i:i + 1])
    assert orienter.decided == {"x", "y"} and set(orienter.turns) == {"x", "y"}
    R = orienter.turns["x"]
    orienter.on_turn = lambda device, Q: seen.append((device, Q))
    orienter.evict("x")
    assert seen == []  # parked: it comes back turned as it was
    orienter.evict("y")  # x is dropped from the parked ones
    assert [d for d, _ in seen] == ["x"]
    np.testing.assert_allclose(seen[0][1], R.T, atol=1e-9)
    out = orienter.apply(["x"], w[:1])  # back as a new device: unturned
    np.testing.assert_array_equal(out, w[:1])


def test_an_adapter_turned_with_its_device_after_a_restart_is_saved(tmp_path):
    """A restarted consumer loads a device's adapter; the device, not yet settled, is turned anew and its
    adapter with it, and no label arrives (no adapter update in this life). The checkpoint must keep the
    turned adapter beside the orienter's turn: adapters.pt was not written without an update, so the next
    life served the device through an adapter of its old turn on top of the new one (turned twice)."""
    M = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) * 1.1
    _adapter_file(tmp_path, M)
    second = _consumer(_model([3.5]), tmp_path)
    torch.testing.assert_close(second.learner.adapters.entry("d")["M"], M)
    rng = np.random.default_rng(1)
    for seq in range(5):
        _send(second, "d", seq, rng)
        second._classify()
    assert second.learner.adapters.updates == 0
    np.testing.assert_allclose(second.pipeline.classifier.orienter.turns["d"], UPSIDE_DOWN)
    turned = second.learner.adapters.entry("d")["M"]
    torch.testing.assert_close(turned, M @ torch.from_numpy(UPSIDE_DOWN).float().T)
    second.checkpoint(final=True)
    second.store.close()
    third = _consumer(_model([]), tmp_path)
    try:
        np.testing.assert_allclose(third.pipeline.classifier.orienter.turns["d"], UPSIDE_DOWN)  # unsettled
        torch.testing.assert_close(third.learner.adapters.entry("d")["M"], turned)
    finally:
        third.store.close()


def test_windows_served_before_the_turn_in_the_same_pass_are_kept_as_the_turned_ones():
    """Two windows of a device ready in one cycle (a backlog): the orientation step turns it at the second
    (its 5th window). The first, served before the turn in the same call, waits for its label as the
    adapter now sees the device's windows: turned like the rest (it was kept as it came, upside down to
    its adapter and to every other window of its sequence)."""
    consumer = _consumer(_model([3.5, 0.0]))
    consumer.handle("har/d/label", orjson.dumps({"label": "a", "t": 0.0}), time.monotonic())
    rng = np.random.default_rng(0)
    raw = {}
    for seq in range(3):
        raw[seq] = _send(consumer, "d", seq, rng)
        consumer._classify()
    raw[3] = _send(consumer, "d", 3, rng)
    raw[4] = _send(consumer, "d", 4, rng)
    consumer._classify()  # windows 4 and 5 in one call: the turn comes with the 5th
    raw[5] = _send(consumer, "d", 5, rng)
    consumer._classify()
    assert "d" in consumer.pipeline.classifier.orienter.turns
    kept = {int(w.t_end): w.samples for w in consumer.history.waiting("d")}
    assert 3 in kept and 4 in kept, sorted(kept)  # the 4th window (t_end 3.96) and the 5th
    for k, samples in kept.items():
        want = np.concatenate([raw[k][:, :3] @ UPSIDE_DOWN.T, raw[k][:, 3:] @ UPSIDE_DOWN.T], axis=1)
        np.testing.assert_allclose(samples, want, atol=1e-3, err_msg=f"window ending at {k}.96")
