"""The drift monitor's label-fed detectors: a per-device error baseline and orientation by true class."""

import numpy as np

from stream.monitor import Monitor, window_motion


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


def _turned(vector, degrees, axis=0):
    c, s = np.cos(np.radians(degrees)), np.sin(np.radians(degrees))
    turn = np.roll(np.array([[1, 0, 0], [0, c, -s], [0, s, c]]), axis, axis=(0, 1))
    return turn @ vector


def test_a_sensor_turned_in_the_middle_of_a_first_set_shows_within_the_set():
    """A class never seen before on the device, turned on its fifth window, before the per-class check
    trusts a direction for it (5 windows): the set's own first windows are the reference, and the turn
    shows on its second turned window."""
    rng = np.random.default_rng(8)
    mon = Monitor()
    usual = np.array([2.0, 9.0, 3.0])
    events = []
    for k in range(12):  # a set of squats; the strap turns 90° about the forearm (x) at window 4
        mean = _turned(usual, 90 if k >= 4 else 0) + rng.normal(0, 0.3, 3)
        events += mon.labelled("d", 2.0 * k, "squat", "squat", mean, motion=float(rng.uniform(2.5, 3.5)))
    fired = [e for e in events if e.signal == "orientation"]
    assert len(fired) == 1 and fired[0].detector == "set" and fired[0].t == 2.0 * 5
    assert fired[0].value > 60 and not fired[0].needs_labels


def test_within_a_set_a_turn_that_moves_differently_is_the_person_not_the_sensor():
    """Lying down on the bench under the set's label: gravity turns, but the windows move unlike the
    set's others (a turn of the sensor leaves window_motion as it was); where the caller gives no motion,
    the same windows are taken for a turn."""
    rng = np.random.default_rng(9)
    usual = np.array([2.0, 9.0, 3.0])
    for motions, expected in (((3.0, 12.0), []), ((3.0, 3.5), ["set"]), ((None, None), ["set"])):
        mon = Monitor()
        events = []
        for k in range(12):
            mean = _turned(usual, 120 if k >= 4 else 0) + rng.normal(0, 0.3, 3)
            events += mon.labelled("d", 2.0 * k, "chest_fly", "chest_fly", mean, motion=motions[k >= 4])
        assert [e.detector for e in events if e.signal == "orientation"] == expected


def test_a_posture_held_still_is_never_an_orientation_reference():
    """Sitting a little differently from one bout to the next (UCI HAPT: 20–46° apart, the phone never
    moved) is not drift; the same windows moving are a turned sensor for the per-class check."""
    rng = np.random.default_rng(10)
    for motion, expected in ((0.1, []), (3.0, ["labelled"])):
        mon = Monitor()
        events = []
        for bout in range(4):
            mean = _turned(np.array([9.5, 1.0, 2.0]), 35 * (bout % 2), axis=2)
            for k in range(10):
                t = 100.0 * bout + 2.0 * k  # bouts 80 s apart: separate sets
                mean_acc = mean + rng.normal(0, 0.05, 3)
                events += mon.labelled("d", t, "sitting", "sitting", mean_acc, motion=motion)
        assert [e.detector for e in events if e.signal == "orientation"] == expected


def test_window_motion_is_what_moves_not_where_gravity_points():
    rng = np.random.default_rng(11)
    still = np.array([0.0, 0.0, 9.81]) + rng.normal(0, 0.05, (50, 3))
    reps = still + np.sin(np.linspace(0, 4 * np.pi, 50))[:, None] * np.array([3.0, 0.0, 1.0])
    assert window_motion(still) < 0.15 < 1.5 < window_motion(reps)
    turned = reps @ np.array([[0, 1, 0], [-1, 0, 0], [0, 0, 1.0]])  # the sensor turned: the same motion
    assert np.isclose(window_motion(turned), window_motion(reps))
    six = np.hstack([reps, rng.normal(0, 5, (50, 3))])  # a gyroscope's channels after the accelerometer's
    assert np.isclose(window_motion(six), window_motion(reps))


def test_without_labels_a_turn_within_a_run_of_steady_motion_is_drift():
    """No labels: windows the model does not call rest, moving alike, are one set as far as can be told;
    the sensor turned within it shows on the second turned window."""
    rng = np.random.default_rng(12)
    mon = Monitor()
    usual = np.array([2.0, 9.0, 3.0])
    events = []
    for k in range(12):
        mean = _turned(usual, 90 if k >= 5 else 0) + rng.normal(0, 0.3, 3)
        events += mon.observe("d", 2.0 * k, 9.81, 0.9, mean, "squat", motion=float(rng.uniform(2.6, 3.2)))
    fired = [e for e in events if e.signal == "orientation"]
    assert len(fired) == 1 and fired[0].detector == "run" and fired[0].t == 2.0 * 6 and fired[0].needs_labels


def test_without_labels_a_new_exercise_or_a_rest_starts_a_new_run():
    """Gravity turns where the motion changes too (the next exercise), where the model says rest in
    between, or in windows held still: no drift."""
    rng = np.random.default_rng(13)
    usual = np.array([2.0, 9.0, 3.0])
    cases = {  # windows 5 on: (motion, predicted) of the turned windows; the first 5 move 3 m/s² as squats
        "another exercise": [(8.0, "squat")] * 7,
        "after a rest": [(3.0, "rest")] + [(3.0, "lunge")] * 6,
        "held still": [(0.2, "squat")] * 7,
    }
    for name, turned in cases.items():
        mon = Monitor()
        events = []
        for k, (motion, predicted) in enumerate([(3.0, "squat")] * 5 + turned):
            mean = _turned(usual, 90 if k >= 5 else 0) + rng.normal(0, 0.3, 3)
            events += mon.observe("d", 2.0 * k, 9.81, 0.9, mean, predicted, motion=motion)
        assert [e for e in events if e.signal == "orientation"] == [], name


def test_the_pipeline_gives_each_prediction_its_windows_motion(tiny_model):
    """Prediction.motion (batched in the pipeline) is window_motion of the window the model saw."""
    from models.state import StatefulClassifier
    from stream.decode import SampleBatch
    from stream.pipeline import Pipeline

    rng = np.random.default_rng(14)
    pipeline = Pipeline(StatefulClassifier(tiny_model))
    t = np.arange(100) / 25.0
    for device, amplitude in (("still", 0.0), ("moving", 3.0)):
        acc = np.array([2.0, 9.0, 3.0]) + amplitude * np.sin(2 * np.pi * 2.0 * t)[:, None] * [1.0, 0.5, 0.0]
        noisy = (acc + rng.normal(0, 0.05, acc.shape)).astype(np.float32)
        pipeline.add(SampleBatch(device, t, noisy), arrival=0.0)
    predictions = pipeline.classify_ready()
    assert {p.device for p in predictions} == {"still", "moving"}
    for p in predictions:
        assert np.isclose(p.motion, window_motion(p.window), atol=1e-3)
        assert (p.motion < 0.2) == (p.device == "still")


# -- review findings: a clock that goes back, the overall cooldown, who needs labels, the summary --------
def _labelled_then_confidence_falls(t_labels: float, t_after: float) -> list:
    """A device labels 10 windows, then, labelling no more, its confidence collapses from its
    100th window on; returns the device's confidence events."""
    mon = Monitor()
    t = t_labels
    for _ in range(10):
        mon.observe("d", t, 9.81, 0.95)
        mon.labelled("d", t, "squat", "squat")
        t += 2.0
    events, t = [], t_after
    for i in range(300):
        events += mon.observe("d", t, 9.81, 0.95 if i < 100 else 0.3)
        t += 2.0
    return [e for e in events if e.signal == "confidence" and e.device == "d"]


def test_a_device_whose_clock_went_back_is_not_taken_for_one_still_labelling():
    """A phone's time since boot: after a restart its clock is hours behind the last label, which must not
    make it a device "with recent labels" (whose confidence falls are not reported) for hours."""
    same_clock = _labelled_then_confidence_falls(20000.0, 20140.0)
    assert len(same_clock) == 1 and same_clock[0].needs_labels
    restarted = _labelled_then_confidence_falls(20000.0, 100.0)
    assert len(restarted) == 1 and restarted[0].needs_labels


def test_the_cooldown_of_a_restarted_device_starts_afresh():
    """A magnitude drift (a sensor sending g as m/s²) in the old session, then again after the clock went
    back: the second is reported (a negative elapsed time is not "within the cooldown")."""
    mon = Monitor()
    fired = []
    for t0 in (20000.0, 100.0):
        for i in range(200):
            fired += [e for e in mon.observe("d", t0 + 2.0 * i, 9.81 if i < 100 else 1.0, 0.9)
                      if e.signal == "input_magnitude" and e.device == "d"]
    assert len(fired) == 2 and fired[1].t < fired[0].t


def test_labelled_windows_of_an_ended_session_do_not_mark_the_new_one_as_labelled():
    """Labels come late: the old session's last labelled windows are resolved after the device's first
    window in its new clock; they are scored, but the new session has no labels yet."""
    mon = Monitor()
    for i in range(10):
        mon.observe("d", 20000.0 + 2 * i, 9.81, 0.95)
    mon.observe("d", 100.0, 9.81, 0.95)  # restarted
    mon.labelled("d", 20018.0, "squat", "squat")  # the old session's last window, resolved now
    assert mon.device_summary("d")["labelled_windows"] == 1
    events = []
    for i in range(300):
        events += mon.observe("d", 102.0 + 2 * i, 9.81, 0.95 if i < 100 else 0.3)
    assert [e.needs_labels for e in events if e.signal == "confidence" and e.device == "d"] == [True]


def test_the_overall_cooldown_runs_on_the_consumers_clock_not_a_devices():
    """Device A counts from the epoch, B from boot: the overall detectors' alarm through A must not mute
    the next one through B for 10 minutes of the consumer's time."""
    now = [0.0]
    mon = Monitor(clock=lambda: now[0])
    overall = []
    for device, t0 in (("a", 1.7e9), ("b", 500.0)):
        for i in range(200):
            overall += [e for e in mon.observe(device, t0 + 2.0 * i, 9.81 if i < 100 else 1.0, 0.9)
                        if e.device == "_all" and e.signal == "input_magnitude"]
            now[0] += 4.0  # the consumer's clock: 800 s from a's fall to b's
    assert [e.t for e in overall] == [1.7e9 + 210.0, 710.0]  # each fall, 5 windows on


def test_a_devices_own_drift_without_labels_asks_for_labels_until_it_labels():
    mon = Monitor()
    for i in range(200):
        mon.observe("a", 2.0 * i, 9.81 if i < 100 else 1.0, 0.9)  # a's own magnitude drift, no labels
        mon.observe("b", 2.0 * i, 9.81, 0.9)
    mon._all.needs_labels = False  # the overall detector's flag alone: a's own drift must still show
    summary = mon.summary()
    assert summary["needs_labels"] and summary["needing_labels"] == ["a"] and summary["devices_needing_labels"] == 1
    mon.labelled("b", 400.0, "squat", "squat")  # another device's label clears nothing of a's
    assert mon.summary()["needing_labels"] == ["a"]
    mon.labelled("a", 400.0, "squat", "squat")
    assert not mon.summary()["needs_labels"] and mon.summary()["needing_labels"] == []


def test_the_summary_reads_the_confusion_matrix_without_growing_it():
    mon = Monitor()
    for k in range(30):
        mon.labelled(f"d{k}", 0.0, f"class{k}", "squat")
    before = sum(len(row) for row in mon.confusion.data.values())
    summary = mon.summary()
    assert len(summary["confusion"]["labels"]) == 31
    assert sum(len(row) for row in mon.confusion.data.values()) == before == 30


def test_a_non_finite_confidence_is_not_fed_to_the_detectors():
    mon = Monitor()
    for i in range(50):
        mon.observe("d", 2.0 * i, 9.81, float("nan") if i == 10 else 0.9)
    assert np.isfinite(mon._all.confidence.estimation) and np.isfinite(mon._get("d").confidence.estimation)


def test_after_a_confirmed_turn_the_next_turn_is_confirmed_afresh():
    """A turn of rows is reported; 15 minutes later, with no window of a known class in between, curls turn
    too: reported as well (the count of turned windows was left at the first alarm's and the curls' turn
    was swallowed, their direction forgotten unconfirmed)."""
    rng = np.random.default_rng(3)
    mon = Monitor()
    row, curl = np.array([9.3, 1.5, 2.7]), np.array([1.0, 9.5, 2.0])
    c, s = np.cos(np.radians(120)), np.sin(np.radians(120))
    turn = np.array([[1, 0, 0], [0, c, -s], [0, s, c]])
    events, t = [], 0.0
    for k in range(40):
        label, mean = ("row", row) if (k // 10) % 2 else ("curl", curl)
        events += mon.labelled("d", t, label, label, mean + rng.normal(0, 0.3, 3))
        t += 2.0
    for _ in range(2):
        events += mon.labelled("d", t, "row", "row", turn @ row + rng.normal(0, 0.3, 3))
        t += 2.0
    t += 900.0
    for _ in range(2):
        events += mon.labelled("d", t, "curl", "curl", np.array([9.5, 1.0, -2.0]) + rng.normal(0, 0.3, 3))
        t += 2.0
    fired = [e for e in events if e.detector == "labelled"]
    assert [round(e.t) for e in fired] == [82, 986]
