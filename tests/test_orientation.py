"""How a device is worn, found without labels (models/orientation.py): a sensor worn turned is served
turned back; one worn as in training is left alone."""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import models.orientation
from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.data import labelled_streams
from models.evaluate import evaluate
from models.orientation import OrientationConfig, Orienter, window_features
from models.rnn import HARNet, ModelConfig
from models.train import TrainConfig, orientation_reference, train
from stream.recording import Recording
from tests.test_gyro import FAST_MODEL, FAST_TRAIN, twisting_recording

QUARTER_X = Rotation.from_euler("x", 90, degrees=True).as_matrix()  # gravity (z) onto y, a z axis onto y


def turned(rec: Recording, R: np.ndarray) -> Recording:
    """The same recording from a sensor worn turned by R (both sensors sit on one board)."""
    out = rec.take(np.ones(len(rec), dtype=bool))
    out.acc = (rec.acc @ R.T).astype(np.float32)
    out.gyro = (rec.gyro @ R.T).astype(np.float32)
    return out


def angle(R: np.ndarray) -> float:
    return float(np.degrees(np.linalg.norm(Rotation.from_matrix(R).as_rotvec())))


def test_doctests():
    assert doctest.testmod(models.orientation).failed == 0


@pytest.fixture(scope="module")
def people():
    """Training people's reference, and a held-out person's windows (B, 25, 6)."""
    rec = twisting_recording(people=4, minutes=1.5, seed=3)
    test = rec.subject == "person3"
    streams = labelled_streams(rec.take(~test), ["hold", "twist"], 25.0, gyro=True)
    ref = orientation_reference(streams, 25)
    held = labelled_streams(rec.take(test), ["hold", "twist"], 25.0, gyro=True)
    windows = np.concatenate([s.x[:len(s.x) // 25 * 25].reshape(-1, 25, 6) for s in held])
    return ref, windows


def test_the_fit_finds_the_turn_that_undoes_a_sensor_worn_turned(people):
    ref, windows = people
    odd = Rotation.from_euler("zyx", [40, 70, -20], degrees=True).as_matrix()
    for R0 in (QUARTER_X, np.diag([1.0, -1.0, -1.0]), odd):
        w = windows[:15].copy()
        w[:, :, :3] = w[:, :, :3] @ R0.T
        w[:, :, 3:] = w[:, :, 3:] @ R0.T
        R, gain = ref.fit(*window_features(w))
        assert gain >= 1.0
        # the turn that matters is the one gravity and the twisting axis show: (R R0) may still turn
        # about an axis that is both (z), which no window of this person can show
        undone = R @ R0
        assert np.degrees(np.arccos(np.clip(undone[:, 2] @ [0, 0, 1], -1, 1))) < 15, undone
    # the same person worn as the training people wore it: nothing to gain
    _, gain = ref.fit(*window_features(windows[:15]))
    assert gain < 0.5


def test_the_orienter_turns_only_the_device_worn_turned(people):
    ref, windows = people
    orienter = Orienter(ref)
    bad = windows.copy()
    bad[:, :, :3] = windows[:, :, :3] @ QUARTER_X.T
    bad[:, :, 3:] = windows[:, :, 3:] @ QUARTER_X.T
    first, last = ref.config.stages[0][0], ref.config.windows
    for i in range(last + 3):
        batch = np.stack([windows[i], bad[i]]).astype(np.float32)
        out = orienter.apply(["good", "bad"], batch)
        np.testing.assert_array_equal(out[0], batch[0])  # never touched
        if i + 1 < first:
            assert out is batch  # nothing turned yet: no copy
        if i + 1 >= last:  # settled: the turned device is served as it would be worn right
            z = np.array([0.0, 0.0, 1.0])
            tilt = np.degrees(np.arccos(np.clip((orienter.turns["bad"] @ QUARTER_X @ z) @ z, -1, 1)))
            assert tilt < 15
            assert np.abs(out[1, :, :3].mean(0) - windows[i, :, :3].mean(0)).max() < 0.25 * 9.81
    assert orienter.decided == {"good", "bad"} and "good" not in orienter.turns
    orienter.evict("bad")
    assert "bad" not in orienter.turns and "bad" not in orienter.decided


def test_config_is_validated():
    with pytest.raises(ValueError, match="stages"):
        OrientationConfig(stages=((15, 1.0), (5, 3.0)))
    with pytest.raises(ValueError, match="stages"):
        OrientationConfig(stages=())
    with pytest.raises(ValueError, match="margin"):
        OrientationConfig(stages=((5, -1.0),))
    with pytest.raises(ValueError, match="windows"):
        window_features(np.zeros((2, 10, 3)))


@pytest.fixture(scope="module")
def trained():
    rec = twisting_recording(people=4, minutes=1.5, seed=4)
    test = rec.subject == "person3"
    model, report = train(rec.take(~test), ModelConfig(input_channels=6, **FAST_MODEL),
                          TrainConfig(**FAST_TRAIN), progress=False)
    return model, report, rec.take(test), rec.take(~test)


def test_a_gyro_model_keeps_a_reference_and_serves_a_turned_person_turned_back(trained, tmp_path):
    model, report, test, _ = trained
    assert model.orientation is not None and report["orientation_windows"] == len(model.orientation.g) > 50
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, _ = load_checkpoint(tmp_path / "m.pt")
    np.testing.assert_allclose(loaded.orientation.g, model.orientation.g, atol=1e-6)
    upright = evaluate(loaded, test)
    upside_down = turned(test, np.diag([1.0, -1.0, -1.0]))
    served = evaluate(loaded, upside_down)
    loaded.orientation = None  # the same model without the reference: served as the sensor reads
    blind = evaluate(loaded, upside_down)
    assert upright["accuracy"] >= 0.9, upright
    # the first windows are served before the turn is chosen; every later one as if worn upright
    assert served["accuracy"] >= upright["accuracy"] - 0.1, (served, upright)
    assert served["accuracy"] > blind["accuracy"] + 0.2, (served, blind)


def test_the_reference_is_optional_and_only_for_gyro_models(trained, tmp_path):
    model, _, _, rec = trained
    plain, report = train(rec, ModelConfig(input_channels=6, **FAST_MODEL),
                          TrainConfig(**{**FAST_TRAIN, "epochs": 1, "min_epochs": 1}, orientation=False),
                          progress=False)
    assert plain.orientation is None and "orientation_windows" not in report
    save_checkpoint(tmp_path / "plain.pt", plain)
    assert load_checkpoint(tmp_path / "plain.pt")[0].orientation is None  # and files without one load
    # a reference in the file of a model that reads the accelerometer alone is refused, clearly
    save_checkpoint(tmp_path / "m.pt", model)
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    blob["config"]["input_channels"] = 3
    acc_only = HARNet(ModelConfig(**blob["config"]))
    blob["state_dict"] = acc_only.state_dict()
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="orientation reference needs a model that reads the gyroscope"):
        load_checkpoint(tmp_path / "bad.pt")


def _payloads(rec: Recording, seconds: float = 1.0):
    """``imu`` payloads of a one-device recording, ``seconds`` of samples each."""
    import orjson
    edges = np.searchsorted(rec.t, np.arange(rec.t[0], rec.t[-1] + seconds, seconds))
    for seq, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
        if b > a:
            yield orjson.dumps({"seq": seq, "t": rec.t[a:b].tolist(), "acc": rec.acc[a:b].tolist(),
                                "gyro": rec.gyro[a:b].tolist()})


def test_a_restarted_consumer_keeps_serving_a_turned_device_turned_back(trained, tmp_path):
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    model, _, test, _ = trained
    device = turned(test.take(test.device == test.device[0]), np.diag([1.0, -1.0, -1.0]))
    config = ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=False, state_dir=tmp_path)
    consumer = Consumer(config, StatefulClassifier(model, "o"))
    for payload in _payloads(device):
        consumer.handle(f"har/{device.device[0]}/imu", payload, 0.0)
        consumer.pipeline.classify_ready()
    orienter = consumer.pipeline.classifier.orienter
    assert device.device[0] in orienter.turns  # upside down, seen as such
    assert consumer.checkpoint(final=True)
    again = Consumer(config, StatefulClassifier(model, "o")).pipeline.classifier.orienter
    assert again.decided == orienter.decided
    np.testing.assert_allclose(again.turns[device.device[0]], orienter.turns[device.device[0]])


@pytest.mark.broker
def test_a_turned_device_replayed_over_mqtt_is_served_as_evaluate_serves_it(broker_url, trained):
    """End to end through a real broker: the consumer turns the device exactly as ``evaluate`` does."""
    from tests.helpers import replay_through_consumer_matches_evaluate
    model, _, test, _ = trained
    upside_down = turned(test, np.diag([1.0, -1.0, -1.0]))
    consumer = replay_through_consumer_matches_evaluate(upside_down, model, "o", broker_url)
    assert set(consumer.pipeline.classifier.orienter.turns) == set(np.unique(upside_down.device))


def test_cli_train_keeps_the_reference_unless_told_not_to(tmp_path, capsys):
    from stream.cli import main
    from stream.recording import write_recording
    write_recording(tmp_path / "train.csv", twisting_recording(people=3, minutes=0.5))
    small = ["--data", str(tmp_path / "train.csv"), "--hidden", "8", "--layers", "1", "--window", "25",
             "--epochs", "1", "--quiet"]
    assert main(["train", *small, "--out", str(tmp_path / "o.pt")]) == 0
    assert "served turned back" in capsys.readouterr().out
    assert main(["train", *small, "--out", str(tmp_path / "n.pt"), "--no-orientation"]) == 0
    assert load_checkpoint(tmp_path / "o.pt")[0].orientation is not None
    assert load_checkpoint(tmp_path / "n.pt")[0].orientation is None
