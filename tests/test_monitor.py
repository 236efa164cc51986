"""The drift monitor's label-fed detectors: a per-device error baseline and orientation by true class."""

import numpy as np

from stream.monitor import Monitor


def _errors(events):
    return [e for e in events if e.signal == "error" and e.device != "_all"]


def test_a_class_the_model_always_gets_wrong_for_this_person_is_not_drift():
    """Squats right, then sets of lunges the model names squats from their first window on: a person the
    model is worse on, not a change; no error drift on the device."""
    mon = Monitor()
    events, t = [], 0.0
    for _ in range(6):
        for _ in range(15):
            events += mon.labelled("d", t, "squat", "squat")
            t += 2.0
        for _ in range(15):
            events += mon.labelled("d", t, "lunge", "squat")
            t += 2.0
    assert _errors(events) == []
    assert mon.device_summary("d")["accuracy"] == 0.5


def test_a_class_the_model_got_right_turning_wrong_is_drift():
    mon = Monitor()
    events, t = [], 0.0
    for k in range(60):
        label = "squat" if (k // 15) % 2 else "row"
        events += mon.labelled("d", t, label, label)
        t += 2.0
    assert _errors(events) == []
    for _ in range(15):  # rows, known to be right on this device, now named squats
        events += mon.labelled("d", t, "row", "squat")
        t += 2.0
    fired = _errors(events)
    assert len(fired) == 1 and fired[0].t <= 120.0 + 2.0 * 10 and fired[0].detector == "HDDMA"
    assert not fired[0].needs_labels


def test_labelled_orientation_sees_a_small_turn_of_a_tightly_held_exercise():
    """Gravity near the forearm's axis: a strap turned 120° about it moves the gravity direction by about
    35°, far below the 75° a loosely held class needs, but far beyond how this person holds the row."""
    rng = np.random.default_rng(6)
    mon = Monitor()
    usual = np.array([9.3, 1.5, 2.7])  # mostly along x, the forearm
    events = []
    for k in range(300):
        label = ("row", "rest")[(k // 15) % 2]
        mean = rng.normal(0, 6, 3) if label == "rest" else usual + rng.normal(0, 0.3, 3)
        events += mon.labelled("d", 2.0 * k, label, label, mean)
    assert [e for e in events if e.signal == "orientation"] == []
    c, s = np.cos(np.radians(120)), np.sin(np.radians(120))
    turn = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    for k in range(300, 306):
        events += mon.labelled("d", 2.0 * k, "row", "row", turn @ usual + rng.normal(0, 0.3, 3))
    fired = [e for e in events if e.signal == "orientation"]
    assert len(fired) == 1 and fired[0].t <= 2.0 * 301 and fired[0].detector == "labelled"


def test_rest_is_never_an_orientation_reference():
    """The first rest of a session held one way, the next another: not drift."""
    mon = Monitor()
    events = []
    for k in range(10):
        events += mon.labelled("d", 2.0 * k, "rest", "rest", np.array([9.8, 0.0, 0.0]))
    for k in range(10, 20):
        events += mon.labelled("d", 2.0 * k, "rest", "rest", np.array([0.0, 0.0, 9.8]))
    assert [e for e in events if e.signal == "orientation"] == []


def test_confidence_falls_are_reported_only_for_devices_without_labels():
    rng = np.random.default_rng(7)
    mon = Monitor()
    events = []
    for k in range(400):
        confidence = float(rng.uniform(0.85, 0.99)) if k < 300 else float(rng.uniform(0.3, 0.5))
        for device in ("labelled", "silent"):
            events += mon.observe(device, 2.0 * k, 9.81, confidence)
        events += mon.labelled("labelled", 2.0 * k, "squat", "squat")
    fired = {e.device for e in events if e.signal == "confidence"}
    assert "silent" in fired and "labelled" not in fired
