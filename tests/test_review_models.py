"""A reviewer's findings in models/ (evaluate, state, rnn, checkpoint, metrics, data)."""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from models.evaluate import drift_alarms
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

