"""A reviewer's findings in models/ (evaluate, state, rnn, checkpoint, metrics, data)."""

from __future__ import annotations

import numpy as np
import torch
from scipy.spatial.transform import Rotation

from models.checkpoint import load_checkpoint, save_checkpoint
from models.evaluate import drift_alarms, evaluate, stream_recording
from models.rnn import HARNet, ModelConfig
from stream.pipeline import Prediction
from stream.recording import Recording


def test_evaluates_drift_report_is_not_raised_by_the_orienters_own_turn():
    """The consumer tells the monitor when a device's windows are turned anew (``Prediction.reoriented``
    -> ``Monitor.reoriented``); ``evaluate`` feeds the monitor "as the consumer feeds it", so the
    orienter's own turn must not count as an orientation drift there either."""
    rate, window, n = 25.0, 25, 60
    t = np.arange(n * window) / rate
    rec = Recording(device=np.full(len(t), "d"), t=t, acc=np.zeros((len(t), 3), np.float32),
                    label=np.full(len(t), "squat"))
    rng = np.random.default_rng(0)
    upside_down = Rotation.from_euler("x", 180, degrees=True).as_matrix()
    predictions = []
    for i in range(n):  # a moving set, served turned back from window 20 on (the orienter's choice)
        g = Rotation.from_rotvec(rng.normal(0, np.radians(2), 3)).as_matrix() @ [0.0, 0.0, 9.81]
        if i >= 20:
            g = upside_down @ g
        predictions.append(Prediction("d", float(t[(i + 1) * window - 1]), "squat", 0.9, np.array([0.1, 0.9]),
                                      0.0, np.zeros((window, 3), np.float32), magnitude=9.81,
                                      mean_acc=g.astype(np.float32), reoriented=i == 20, motion=2.0))
    report = drift_alarms(rec, predictions, rate, window)
    for mode in ("with_labels", "without_labels"):
        assert not [k for k in report[mode]["by_detector"] if k.endswith(":orientation")], report


def test_a_checkpoint_saved_before_the_conv_front_end_existed_still_loads(tmp_path):
    """Checkpoints written before ``ModelConfig.front`` existed (3f4e6c6; the interim shipped model of
    f241672 is one) have no ``front`` key and are all of the linear front end; the field's default is now
    ``conv``, and filling it in made such a file load as another network (missing conv weights)."""
    torch.manual_seed(0)
    old = HARNet(ModelConfig(classes=("a", "b"), hidden=8, layers=1, window=20, hop=20, patch=5,
                             front="linear")).eval()
    path = tmp_path / "old.pt"
    save_checkpoint(path, old)
    blob = torch.load(path, weights_only=True)
    for key in ("front", "conv_channels", "conv_kernel", "conv_layers"):  # as such a file has it
        del blob["config"][key]
    torch.save(blob, path)
    model, _ = load_checkpoint(path)
    assert model.config.front == "linear"
    x = torch.randn(2, 20, 3) * 3
    torch.testing.assert_close(model(x)[0], old(x)[0])


def test_evaluate_drops_samples_no_sensor_reads_as_the_consumer_does_instead_of_going_nan(caplog):
    """A recording file may hold a value no body-worn sensor reads (1e30 m/s²: the reader refuses only
    float32's overflow). The consumer rejects such a batch (``out_of_range``, DESIGN.md) because it would
    leave the device's state NaN for good; ``evaluate`` fed it to the network, every later window of the
    device came out NaN, and argmax of NaN named class 0: scored, silently, as a prediction."""
    torch.manual_seed(0)
    model = HARNet(ModelConfig(classes=("a", "b"), hidden=8, layers=1, window=25, hop=25, patch=5)).eval()
    n = 25 * 20
    t = np.arange(n) / 25.0
    acc = (np.random.default_rng(0).normal(size=(n, 3)) * 3 + [0, 0, 9.81]).astype(np.float32)
    clean = Recording(device=np.full(n, "d"), t=t, acc=acc.copy(), label=np.full(n, "a"))
    acc[100, 0] = 1e30
    rec = Recording(device=np.full(n, "d"), t=t, acc=acc, label=np.full(n, "a"))
    predictions = stream_recording(model, rec)
    assert len(predictions) >= 15
    assert all(np.isfinite(p.probs).all() for p in predictions)
    assert "out_of_range" in caplog.text
    # the windows before the dropped second are as without it
    expected = stream_recording(model, clean)
    np.testing.assert_allclose(predictions[0].probs, expected[0].probs, atol=1e-6)
    report = evaluate(model, rec)
    assert report["windows"] == len(predictions)


def test_training_streams_leave_out_samples_no_sensor_reads_instead_of_making_the_normalisation_nan(caplog):
    """One sample of 1e30 m/s² in a training file (the reader refuses only float32's overflow) went into
    the training streams as it was: the input normalisation fitted on them (``HARNet.feature_stats``) came
    out inf and NaN, every training step was skipped as non-finite and the model saved served NaN. The
    consumer rejects such samples (``out_of_range``); the training streams leave them out (the gap they
    leave is interpolated as any short gap)."""
    from models.data import labelled_streams

    n = 25 * 20
    t = np.arange(n) / 25.0
    acc = (np.random.default_rng(0).normal(size=(n, 3)) * 3 + [0, 0, 9.81]).astype(np.float32)
    acc[100, 0] = 1e30
    gyro = np.zeros((n, 3), np.float32)
    gyro[300, 2] = 5e3
    rec = Recording(device=np.full(n, "d"), t=t, acc=acc, label=np.full(n, "a"), gyro=gyro)
    for with_gyro in (False, True):
        streams = labelled_streams(rec, ["a"], 25.0, gyro=with_gyro)
        assert sum(len(s.x) for s in streams) == n  # one run: the gaps are short
        x = np.concatenate([s.x for s in streams])
        assert np.abs(x[:, :3]).max() < 100 and np.abs(x[:, 3:]).max(initial=0) < 100
        mean, std = HARNet.feature_stats(torch.from_numpy(x))
        assert torch.isfinite(mean).all() and torch.isfinite(std).all()
    assert "out_of_range" in caplog.text
