"""Offline training on a small synthetic recording: fast (seconds), no real data needed."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import models.train as train_module
from models.data import IGNORE, LabelledStream
from models.rnn import HARNet, ModelConfig
from models.train import StreamSampler, TrainConfig, augment, split_streams, stream_predictions, train
from stream.recording import Recording, write_recording

RATE = 25.0
CLASSES = ("curl", "rest", "squat")


def synthetic_recording(people: int = 5, minutes: float = 2.0, seed: int = 0) -> Recording:
    """Each person does bouts of three activities that differ in gravity direction and rhythm:
    rest (still, z up), curl (y up, 1.5 Hz swing on x), squat (x up, 0.7 Hz bounce on x); each person
    wears the device a little differently (up to 15° off) and moves at their own pace."""
    rng = np.random.default_rng(seed)
    devices, ts, accs, labels, subjects = [], [], [], [], []
    for p in range(people):
        tilt = train_module._rotation(rng, 15.0)
        pace = rng.uniform(0.85, 1.15)
        t0, parts = 0.0, []
        while t0 < minutes * 60:
            label = CLASSES[rng.integers(3)]
            n = int(rng.uniform(10, 20) * RATE)
            t = t0 + np.arange(n) / RATE
            a = np.zeros((n, 3))
            if label == "rest":
                a[:, 2] = 9.81
            elif label == "curl":
                a[:, 1] = 9.81
                a[:, 0] = 4.0 * np.sin(2 * np.pi * 1.5 * pace * t)
            else:
                a[:, 0] = 9.81 + 3.0 * np.sin(2 * np.pi * 0.7 * pace * t)
            a = a @ tilt.T + rng.normal(0, 0.3, size=a.shape)
            parts.append((t, a, label))
            t0 += n / RATE
        for t, a, label in parts:
            devices += [f"dev{p}"] * len(t)
            subjects += [f"person{p}"] * len(t)
            labels += [label] * len(t)
            ts.append(t)
            accs.append(a)
    return Recording(device=np.asarray(devices), t=np.concatenate(ts),
                     acc=np.concatenate(accs).astype(np.float32), label=np.asarray(labels),
                     subject=np.asarray(subjects))


# small and quick: a few hundred optimiser steps in all
FAST_MODEL = dict(hidden=24, layers=1, rate=RATE, window=25, hop=25, patch=5)
FAST_TRAIN = dict(epochs=6, steps_per_epoch=40, min_epochs=3, patience=3, batch=16, warmup_steps=20, lr=5e-3,
                  ema=0.0, refit=True, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.manual_seed(0)
    rec = synthetic_recording()
    model, report = train(rec, ModelConfig(classes=("_",), **FAST_MODEL), TrainConfig(**FAST_TRAIN),
                          progress=False)
    return rec, model, report


def test_training_learns_synthetic_activities(trained):
    _, model, report = trained
    assert report["classes"] == list(CLASSES)
    assert report["best"]["accuracy"] >= 0.9, report["history"]
    assert report["grad_norm"]["median"] is not None and report["grad_norm"]["clipped_share"] <= 1
    assert all("grad_norm_median" in epoch for epoch in report["history"])
    assert "refit" in report  # the returned model was retrained on everyone


def test_checkpoint_round_trips_through_evaluate_json(trained, tmp_path, capsys):
    from models.checkpoint import save_checkpoint
    from stream.cli import main
    rec, model, _ = trained
    mask = rec.subject == "person0"
    write_recording(tmp_path / "test.csv", rec.take(mask))
    save_checkpoint(tmp_path / "m.pt", model, {"note": "test"})
    argv = ["evaluate", "--model", str(tmp_path / "m.pt"), "--data", str(tmp_path / "test.csv"), "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["windows"] > 50
    assert report["accuracy"] >= 0.85 and report["macro_f1"] >= 0.8
    assert set(report["recall"]) == set(CLASSES)
    assert len(report["confusion"]) == len(report["labels"]) == 3
    drift = report["drift"]
    assert drift["device_hours"] > 0 and set(drift) == {"device_hours", "with_labels", "without_labels"}
    assert all(isinstance(drift[m]["alarms"], int) for m in ("with_labels", "without_labels"))


def test_evaluate_reports_the_drift_monitors_alarms_on_a_sensor_turned_mid_set(trained):
    """The consumer's monitor runs over the evaluated windows: a person whose sensor turns 90° six
    seconds into a set (and stays turned) raises an orientation alarm when the labels are fed; the same
    person unturned raises none."""
    from models.evaluate import evaluate
    rec, model, _ = trained
    person = rec.take(rec.subject == "person0")
    t, label = person.t, person.label
    starts = np.flatnonzero(np.r_[True, label[1:] != label[:-1]])
    ends = np.r_[starts[1:], len(label)]
    first = next(a for a, b in zip(starts, ends, strict=True) if label[a] != "rest" and t[b - 1] - t[a] > 10)
    turned = Recording(device=person.device, t=t, acc=person.acc.copy(), label=label, subject=person.subject)
    after = t >= t[first] + 6.0
    turned.acc[after] = turned.acc[after] @ np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=np.float32).T
    steady = evaluate(model, person)["drift"]["with_labels"]["by_detector"]
    moved = evaluate(model, turned)["drift"]["with_labels"]["by_detector"]
    assert not any(k.endswith(":orientation") for k in steady), steady
    assert any(k in moved for k in ("set:orientation", "labelled:orientation")), moved


def test_person_split_holds_people_out():
    rec = synthetic_recording(people=6, minutes=0.5)
    from models.data import labelled_streams
    streams = labelled_streams(rec, list(CLASSES), RATE)
    train_streams, val_streams, how = split_streams(streams, 0.2, seed=0)
    train_people = {s.subject for s in train_streams}
    val_people = {s.subject for s in val_streams}
    assert how.startswith("people") and len(val_people) == 1 and len(train_people) == 5
    assert not train_people & val_people
    # one person: whole devices are held out instead
    one = [LabelledStream(f"set{i}", "me", s.x, s.y) for i, s in enumerate(streams)]
    train_streams, val_streams, how = split_streams(one, 0.2, seed=0)
    assert how.startswith("devices")
    assert not {s.device for s in train_streams} & {s.device for s in val_streams}
    # one device of one person: the end of the stream
    train_streams, val_streams, how = split_streams(one[:1], 0.2, seed=0)
    assert how == "time" and len(val_streams[0].x) == len(one[0].x) - len(train_streams[0].x)


def test_augmentation_keeps_shapes_and_magnitude():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 3)).astype(np.float32) + np.array([0, 0, 9.81], dtype=np.float32)
    y = np.repeat(np.arange(5), 100)
    turned = TrainConfig(max_scale=0.0, max_warp=0.0, p_flip=1.0, max_rotation_deg=180)
    out, labels = augment(x, y, rng, turned)
    assert out.shape == (499, 3) and labels.shape == (499,) and out.dtype == np.float32
    np.testing.assert_array_equal(labels, y[:499])
    # half turns and rotations keep every sample's magnitude, and change the samples
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), np.linalg.norm(x[:499], axis=1), rtol=1e-4)
    assert not np.allclose(out, x[:499], atol=0.5)
    # a faster tempo gives fewer samples, a slower one more; labels follow the samples
    fast, fast_labels = augment(x, y, rng, TrainConfig(max_warp=0.3))
    assert abs(len(fast) - 500) <= 0.3 * 500 + 1 and len(fast_labels) == len(fast)
    assert (np.diff(fast_labels) >= 0).all() and set(fast_labels) == set(y)
    same, same_labels = augment(x, y, rng, TrainConfig(augment=False))
    np.testing.assert_array_equal(same, x)

    streams = [LabelledStream("a", "p", x, y % 3), LabelledStream("b", "p", x[:120], y[:120] % 3)]
    sampler = StreamSampler(streams, 25, 4, 3, TrainConfig())
    resets = 0
    for _ in range(20):
        xs, ys, reset = sampler.next()
        assert xs.shape == (3, 100, 3) and ys.shape == (3, 100) and reset.shape == (3,)
        assert xs.dtype == np.float32 and ((ys == IGNORE) | ((ys >= 0) & (ys < 3))).all()
        resets += int(reset.sum())
    assert resets > 3  # rows move on to new streams when theirs end


def test_early_stopping_stops(monkeypatch):
    rec = synthetic_recording(people=4, minutes=0.7)
    # a validation score that never improves after the first epoch
    monkeypatch.setattr(train_module, "stream_predictions", lambda model, streams: ([0, 1], [0, 0]))
    cfg = TrainConfig(**{**FAST_TRAIN, "epochs": 30, "steps_per_epoch": 5, "min_epochs": 2, "patience": 2,
                         "refit": False})
    _, report = train(rec, ModelConfig(classes=("_",), **FAST_MODEL), cfg, progress=False)
    assert report["epochs_run"] == 3 and report["best"]["epoch"] == 1


def test_mid_start_begins_streams_at_random_windows_from_a_fresh_state():
    """p_mid_start: that share of the streams start at a random point, with the state reset, as a device that
    connects in the middle of a set; without it every stream starts at its first sample."""
    n = 400
    x = np.zeros((n, 3), dtype=np.float32)
    x[:, 0] = np.arange(n)  # each sample says where in the stream it is
    streams = [LabelledStream("a", "p", x, np.zeros(n, dtype=np.int64))]

    def starts(p: float) -> list[int]:
        sampler = StreamSampler(streams, 25, 2, 4, TrainConfig(augment=False, p_mid_start=p, seed=3))
        found = []
        for _ in range(60):
            xs, _, reset = sampler.next()
            found += [int(xs[r, 0, 0]) for r in np.flatnonzero(reset)]
        return found

    assert set(starts(0.0)) == {0}
    late = starts(1.0)
    assert len(late) > 20 and len(set(late)) > 5 and max(late) <= n - 25
    with pytest.raises(ValueError, match="p_mid_start"):
        TrainConfig(p_mid_start=1.5)


def test_cli_train_bptt_segment_is_a_setting(tmp_path):
    """`harstream train --tbptt K`: K windows per optimiser step; the default is 8, and the checkpoint says
    which was used."""
    from models.checkpoint import load_checkpoint
    from stream.cli import main
    write_recording(tmp_path / "train.csv", synthetic_recording(people=3, minutes=0.5))
    small = ["--data", str(tmp_path / "train.csv"), "--hidden", "8", "--layers", "1", "--window", "25",
             "--epochs", "1", "--quiet", "--no-gyro"]
    assert main(["train", *small, "--out", str(tmp_path / "d.pt")]) == 0
    assert main(["train", *small, "--out", str(tmp_path / "k2.pt"), "--tbptt", "2"]) == 0
    reports = [load_checkpoint(tmp_path / f)[1]["metadata"]["report"] for f in ("d.pt", "k2.pt")]
    assert [r["tbptt"] for r in reports] == [8, 2]
    assert main(["train", *small, "--out", str(tmp_path / "m.pt"), "--mid-start", "0.5"]) == 0
    assert load_checkpoint(tmp_path / "m.pt")[1]["metadata"]["report"]["train_config"]["p_mid_start"] == 0.5
    assert main(["train", *small, "--out", str(tmp_path / "r.pt"), "--max-rotation", "10"]) == 0
    assert load_checkpoint(tmp_path / "r.pt")[1]["metadata"]["report"]["train_config"]["max_rotation_deg"] == 10
    assert load_checkpoint(tmp_path / "d.pt")[1]["metadata"]["report"]["train_config"]["max_rotation_deg"] == 30
    with pytest.raises(ValueError, match="max_rotation_deg"):
        TrainConfig(max_rotation_deg=-1)


def test_stream_predictions_match_window_by_window():
    torch.manual_seed(0)
    model = HARNet(ModelConfig(classes=CLASSES, hidden=8, layers=1, window=20, hop=20, patch=5)).eval()
    rng = np.random.default_rng(0)
    streams = [LabelledStream(f"d{i}", "p", rng.normal(size=(n, 3)).astype(np.float32) * 3,
                              np.zeros(n, dtype=np.int64)) for i, n in enumerate((100, 163, 60))]
    _, y_pred = stream_predictions(model, streams)
    expected = []
    for s in sorted(streams, key=lambda s: len(s.x)):
        state = None
        for k in range(len(s.x) // 20):
            with torch.no_grad():
                logits, state = model(torch.from_numpy(s.x[k * 20:(k + 1) * 20][None]), state)
            expected.append(int(logits.argmax()))
    assert y_pred == expected


@pytest.mark.parametrize("front", ["conv", "linear"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_front_ends_carry_state_across_windows(front, cell):
    torch.manual_seed(0)
    model = HARNet(ModelConfig(classes=CLASSES, cell=cell, hidden=12, layers=2, window=20, hop=20, patch=5,
                               front=front)).eval()
    x = torch.randn(2, 6 * 20, 3) * 3
    with torch.no_grad():
        steps, _ = model.step_logits(x)
        whole = steps.reshape(2, 6, 4, -1).mean(dim=2)
        state, windowed = None, []
        for k in range(6):
            logits, state = model(x[:, k * 20:(k + 1) * 20], state)
            windowed.append(logits)
    torch.testing.assert_close(torch.stack(windowed, dim=1), whole, atol=1e-5, rtol=1e-5)
    assert all(s.shape[1] == 2 for s in state)  # batch is dimension 1 of every state tensor


def test_model_config_loads_from_a_dict():
    cfg = ModelConfig(classes=CLASSES, front="conv", conv_layers=3)
    assert ModelConfig(**cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="front"):
        ModelConfig(classes=CLASSES, front="transformer")


def test_any_orientation_turns_streams_every_way_and_keeps_magnitudes():
    rng = np.random.default_rng(3)
    x = np.tile(np.array([[0.0, 0.0, 9.81]], dtype=np.float32), (100, 1))
    y = np.zeros(100, dtype=np.int64)
    cfg = TrainConfig(p_any_orientation=1.0, max_warp=0.0, max_scale=0.0)
    gravity = np.array([augment(x, y, rng, cfg)[0][0] for _ in range(400)])
    np.testing.assert_allclose(np.linalg.norm(gravity, axis=1), 9.81, rtol=1e-4)
    # uniform over the sphere: every axis's mean near 0, and as many pointing down as up
    assert np.abs(gravity.mean(axis=0)).max() < 1.5
    assert 0.35 < (gravity[:, 2] < 0).mean() < 0.65
    small = np.array([augment(x, y, rng, TrainConfig(max_warp=0.0, max_scale=0.0))[0][0] for _ in range(100)])
    assert (small[:, 2] > 9.81 * np.cos(np.radians(30)) - 1e-3).all()  # the default: within 30 degrees
    with pytest.raises(ValueError):
        TrainConfig(p_any_orientation=1.5)
