"""The gyroscope as a model input (issue 4): buffers, training, evaluation, serving, checkpoints."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

from models.checkpoint import load_checkpoint, save_checkpoint
from models.evaluate import evaluate
from models.finetune import LearnerConfig, OnlineLearner, Sequence
from models.personal import DeviceAdapters, affine
from models.rnn import HARNet, ModelConfig
from models.state import StatefulClassifier
from models.train import TrainConfig, augment, train
from stream.buffers import DeviceBuffer
from stream.decode import Rejected, SampleBatch
from stream.pipeline import Pipeline
from stream.recording import Recording, read_recording, write_recording


def test_buffer_resamples_every_channel_alike():
    """Six channels (acc, then gyro) are cut into the same windows as the accelerometer alone, and
    each channel is interpolated as it would be alone."""
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.uniform(0.015, 0.025, 400))  # irregular, about 50 Hz
    values = rng.normal(0, 1, (400, 6))
    three, six = DeviceBuffer("d", 25.0, 20), DeviceBuffer("d", 25.0, 20, channels=6)
    gyro_only = DeviceBuffer("d", 25.0, 20)
    w3, w6, wg = [], [], []
    for a in range(0, 400, 17):  # odd-sized batches, so windows complete mid-batch
        w3 += three.push(t[a:a + 17], values[a:a + 17, :3], 0.0)
        w6 += six.push(t[a:a + 17], values[a:a + 17], 0.0)
        wg += gyro_only.push(t[a:a + 17], values[a:a + 17, 3:], 0.0)
    assert len(w6) == len(w3) > 5
    for a, b, g in zip(w3, w6, wg, strict=True):
        assert b.samples.shape == (20, 6) and a.t_end == b.t_end
        np.testing.assert_array_equal(b.samples[:, :3], a.samples)
        np.testing.assert_array_equal(b.samples[:, 3:], g.samples)


# -- training and evaluation ---------------------------------------------------------------------
RATE = 25.0
FAST_MODEL = dict(hidden=16, layers=1, rate=RATE, window=25, hop=25, patch=5)
FAST_TRAIN = dict(epochs=5, steps_per_epoch=30, min_epochs=3, patience=3, batch=16, warmup_steps=10, lr=5e-3,
                  ema=0.0, refit=False, seed=0)


def twisting_recording(people: int = 4, minutes: float = 1.5, seed: int = 0) -> Recording:
    """Bouts of "twist" (the forearm turned to and fro about the vertical: gyro z swings at 1 Hz) and
    "hold" (still); gravity stays on z in both and the accelerometer's noise is the same, so only the
    gyroscope tells them apart."""
    rng = np.random.default_rng(seed)
    devices, ts, accs, gyros, labels, subjects = [], [], [], [], [], []
    for p in range(people):
        t0 = 0.0
        while t0 < minutes * 60:
            label = ("twist", "hold")[rng.integers(2)]
            n = int(rng.uniform(6, 12) * RATE)
            t = t0 + np.arange(n) / RATE
            acc = np.array([0.0, 0.0, 9.81]) + rng.normal(0, 0.4, (n, 3))
            gyro = rng.normal(0, 0.05, (n, 3))
            if label == "twist":
                gyro[:, 2] += 3.0 * np.sin(2 * np.pi * rng.uniform(0.8, 1.2) * t)
            devices += [f"dev{p}"] * n
            subjects += [f"person{p}"] * n
            labels += [label] * n
            ts.append(t)
            accs.append(acc)
            gyros.append(gyro)
            t0 += n / RATE
    return Recording(device=np.asarray(devices), t=np.concatenate(ts),
                     acc=np.concatenate(accs).astype(np.float32), label=np.asarray(labels),
                     gyro=np.concatenate(gyros).astype(np.float32), subject=np.asarray(subjects))


@pytest.fixture(scope="module")
def twists():
    rec = twisting_recording()
    test = rec.subject == "person3"
    model, report = train(rec.take(~test), ModelConfig(input_channels=6, **FAST_MODEL),
                          TrainConfig(**FAST_TRAIN), progress=False)
    return rec.take(~test), rec.take(test), model, report


def test_a_gyro_model_learns_what_only_the_gyroscope_shows(twists):
    train_rec, test_rec, model, report = twists
    assert model.config.input_channels == 6 and model.feature_mean.shape == (8,)
    assert report["best"]["accuracy"] >= 0.9, report["history"]
    # streamed through the same Pipeline as live data, gyro and all
    scored = evaluate(model, test_rec)
    assert scored["windows"] > 50 and scored["accuracy"] >= 0.9, scored
    # the same data without the gyroscope: the accelerometer alone cannot tell them apart
    _, blind = train(train_rec, ModelConfig(**FAST_MODEL), TrainConfig(**FAST_TRAIN), progress=False)
    assert blind["best"]["accuracy"] <= 0.75, blind["history"]


def test_augmentation_turns_both_sensors_together():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    y = np.zeros(300, dtype=np.int64)
    cfg = TrainConfig(max_scale=0.0, max_warp=0.0, p_flip=1.0, max_rotation_deg=180)
    out, _ = augment(x, y, np.random.default_rng(1), cfg)
    # one rotation for both: it maps acc onto out_acc and gyro onto out_gyro alike
    turn, *_ = np.linalg.lstsq(x[:299, :3], out[:, :3], rcond=None)
    np.testing.assert_allclose(x[:299, 3:] @ turn, out[:, 3:], atol=1e-4)
    np.testing.assert_allclose(turn.T @ turn, np.eye(3), atol=1e-4)
    # the accelerometer's channels get what a three-channel stream gets from the same draws
    three, _ = augment(x[:, :3], y, np.random.default_rng(1), cfg)
    np.testing.assert_allclose(out[:, :3], three, atol=1e-5)


def test_cli_reads_the_gyroscope_when_every_file_has_it(tmp_path, capsys):
    from stream.cli import main
    rec = twisting_recording(people=3, minutes=0.5)
    test = rec.subject == "person2"
    write_recording(tmp_path / "train.csv", rec.take(~test))
    write_recording(tmp_path / "test.csv", rec.take(test))
    small = ["--hidden", "8", "--layers", "1", "--window", "25", "--epochs", "1", "--quiet"]
    train_csv, test_csv = str(tmp_path / "train.csv"), str(tmp_path / "test.csv")
    assert main(["train", "--data", train_csv, "--out", str(tmp_path / "g.pt"), *small]) == 0
    assert main(["train", "--data", train_csv, "--out", str(tmp_path / "a.pt"), "--no-gyro", *small]) == 0
    gyro_model, _ = load_checkpoint(tmp_path / "g.pt")
    acc_model, _ = load_checkpoint(tmp_path / "a.pt")
    assert gyro_model.config.input_channels == 6 and acc_model.config.input_channels == 3
    capsys.readouterr()
    assert main(["evaluate", "--model", str(tmp_path / "g.pt"), "--data", test_csv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["windows"] > 10
    # a file without the gyroscope: one clear error for the gyro model, fine for the other
    plain = read_recording(tmp_path / "test.csv")
    plain.gyro = None
    write_recording(tmp_path / "plain.csv", plain)
    assert main(["evaluate", "--model", str(tmp_path / "g.pt"), "--data", str(tmp_path / "plain.csv")]) == 2
    assert "gyroscope" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "a.pt"), "--data", str(tmp_path / "plain.csv"),
                 "--json"]) == 0
    # training on a file without gyro (mixed with one that has it) gives an accelerometer model
    assert main(["train", "--data", str(tmp_path / "plain.csv"), train_csv,
                 "--out", str(tmp_path / "m.pt"), *small]) == 0
    assert load_checkpoint(tmp_path / "m.pt")[0].config.input_channels == 3


def test_simulated_training_keeps_to_the_accelerometer(tmp_path):
    """Simulated people have a gyroscope, but the simulator's devices publish none and the model made
    from them (the shipped default) must serve every device."""
    from stream.cli import main
    assert main(["train", "--simulated", "--sim-devices", "2", "--sim-minutes", "0.3", "--out",
                 str(tmp_path / "s.pt"), "--hidden", "8", "--layers", "1", "--epochs", "1", "--quiet"]) == 0
    assert load_checkpoint(tmp_path / "s.pt")[0].config.input_channels == 3


def test_old_checkpoint_without_input_channels_loads_as_accelerometer_only(tmp_path, tiny_model):
    save_checkpoint(tmp_path / "m.pt", tiny_model)
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    del blob["config"]["input_channels"]  # as checkpoints written before the field existed
    torch.save(blob, tmp_path / "old.pt")
    model, _ = load_checkpoint(tmp_path / "old.pt")
    assert model.config.input_channels == 3
    x = torch.randn(2, 20, 3)
    torch.testing.assert_close(model(x)[0], tiny_model(x)[0])
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.randn(2, 20, 6))


# -- serving -------------------------------------------------------------------------------------
@pytest.fixture
def gyro_model():
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=("hold", "twist"), input_channels=6, **FAST_MODEL)).eval()


def test_pipeline_serves_a_gyro_model_and_refuses_a_device_without_gyro(gyro_model, caplog):
    pipeline = Pipeline(StatefulClassifier(gyro_model, "g"))
    rng = np.random.default_rng(0)
    t = np.arange(100) / 50.0
    acc = (rng.normal(0, 1, (100, 3)) + [0, 0, 9.81]).astype(np.float32)
    gyro = rng.normal(0, 1, (100, 3)).astype(np.float32)
    assert pipeline.add(SampleBatch("with", t, acc, gyro), 0.0) == 2
    with caplog.at_level(logging.WARNING, logger="stream.pipeline"):
        for _ in range(2):
            with pytest.raises(Rejected) as info:
                pipeline.add(SampleBatch("without", t, acc), 0.0)
            assert info.value.reason == "no_gyro"
    assert "without" not in pipeline.buffers
    assert sum("sends samples without the gyroscope" in r.getMessage() for r in caplog.records) == 1  # once per device
    out = pipeline.classify_ready()
    assert [p.device for p in out] == ["with", "with"]
    assert out[0].window.shape == (25, 6) and out[0].mean_acc.shape == (3,)
    # the drift detectors' figures are the accelerometer's
    assert out[0].magnitude == pytest.approx(np.linalg.norm(out[0].window[:, :3], axis=1).mean(), rel=1e-5)
    # the same windows as the model run over the resampled stream at once
    grid = np.arange(50) / 25.0
    both = np.stack([np.interp(grid, t, np.concatenate([acc, gyro], 1)[:, i]) for i in range(6)], 1)
    with torch.no_grad():
        logits, _ = gyro_model(torch.from_numpy(both[:25].astype(np.float32))[None])
    np.testing.assert_allclose(out[0].probs, torch.softmax(logits, -1)[0].numpy(), rtol=1e-4, atol=1e-5)


def test_consumer_counts_a_gyroless_device_and_serves_the_others(gyro_model):
    from stream.consumer import Consumer, ConsumerConfig
    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=False),
                        StatefulClassifier(gyro_model, "g"))
    rng = np.random.default_rng(0)
    acc = (rng.normal(0, 1, (50, 3)) + [0, 0, 9.81]).round(3).tolist()
    gyro = rng.normal(0, 1, (50, 3)).round(3).tolist()
    for seq in range(2):
        base = {"seq": seq, "t0": 2.0 * seq, "rate": 25.0, "acc": acc}
        consumer.handle("har/phone/imu", json.dumps(base).encode(), 0.0)
        consumer.handle("har/watch/imu", json.dumps({**base, "gyro": gyro}).encode(), 0.0)
    assert consumer.stats.rejected["no_gyro"] == 2
    assert [p.device for p in consumer.pipeline.classify_ready()] == ["watch"] * 4  # 4 s, 1 s windows
    assert consumer.stats.samples == 100  # the watch's alone


def test_adapters_turn_the_gyroscope_with_the_accelerometer(gyro_model):
    turn = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    b = torch.tensor([0.1, 0.2, 0.3])
    x = torch.randn(4, 25, 6)
    out = affine(x, turn, b)
    torch.testing.assert_close(out[..., :3], x[..., :3] @ turn.T + b)
    torch.testing.assert_close(out[..., 3:], x[..., 3:] @ turn.T)  # turned, no offset
    adapters = DeviceAdapters(2)
    state = tuple(s[:, 0] for s in gyro_model.initial_state(1))
    report = adapters.learn(gyro_model, "d", torch.randn(3, 25, 6), torch.tensor([0, 1, 0]), state)
    assert report is not None and np.isfinite(report["loss"])


def test_online_learner_fine_tunes_a_gyro_model(gyro_model):
    learner = OnlineLearner(gyro_model, LearnerConfig())
    state = tuple(s[:, 0] for s in gyro_model.initial_state(1))
    reports = learner.learn(Sequence("d", torch.randn(4, 25, 6), torch.tensor([0, 1, 1, 0]), state))
    assert reports and all(np.isfinite(r.loss) for r in reports)


def test_a_restarted_consumer_resumes_a_gyro_device_with_both_sensors(gyro_model):
    """After a restart the consumer drops what published windows held and goes on on the same grid
    (``_skip_published``); for a gyro model the gyroscope must come along."""
    from stream.consumer import Consumer, ConsumerConfig
    consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=False),
                        StatefulClassifier(gyro_model, "g"))
    consumer._resume = {"watch": 1.96}  # the last published window ended at 1.96 s
    t = np.arange(200) / 50.0
    gyro = np.stack([np.sin(t), np.cos(t), t], axis=1).round(4)
    payload = {"seq": 3, "t": t.tolist(), "acc": np.tile([0.0, 0.0, 9.81], (200, 1)).tolist(),
               "gyro": gyro.tolist()}
    consumer.handle("har/watch/imu", json.dumps(payload).encode(), 0.0)
    out = consumer.pipeline.classify_ready()
    assert [round(p.t_end, 2) for p in out] == [2.96, 3.96]  # from 2.0 s on: windows of 1 s
    grid = 2.0 + np.arange(25) / 25.0
    np.testing.assert_allclose(out[0].window[:, 5], np.interp(grid, t, gyro[:, 2]), atol=1e-4)


@pytest.mark.broker
def test_a_replayed_gyro_recording_through_a_consumer_equals_evaluate(broker_url, twists):
    """End to end: a recording with gx, gy, gz replayed over MQTT (gyro in the payload) to a consumer
    serving a gyro model gives the predictions `harstream evaluate` gives."""
    from tests.helpers import replay_through_consumer_matches_evaluate
    _, test_rec, model, _ = twists
    consumer = replay_through_consumer_matches_evaluate(test_rec, model, "g", broker_url)
    assert consumer.stats.rejected.get("no_gyro", 0) == 0
