"""The simulator's physics and streams: simulators.motion and simulators.workout."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

from models.labels import SIMULATED
from simulators import motion, workout
from simulators.motion import UNSEEN
from simulators.workout import G_STANDARD, SCENARIOS, DeviceStream, simulate_recording

RATE = 50.0


def _dominant_frequency(acc: np.ndarray, rate: float, low: float = 0.15) -> float:
    """Peak of the summed power spectra of the three axes (mean removed), above ``low`` Hz."""
    x = acc - acc.mean(axis=0)
    power = (np.abs(np.fft.rfft(x * np.hanning(len(x))[:, None], axis=0)) ** 2).sum(axis=1)
    freq = np.fft.rfftfreq(len(x), 1.0 / rate)
    keep = freq >= low
    return float(freq[keep][np.argmax(power[keep])])


def _quiet_person(seed: int = 0, **changes) -> motion.Person:
    person = motion.sample_person(np.random.default_rng(seed))
    for name, value in changes.items():
        setattr(person, name, value)
    return person


# -- physics --------------------------------------------------------------------------------------


def test_still_sensor_with_z_up_reads_plus_g_on_z():
    f, gyro = motion.specific_force(np.zeros((12, 3)), np.tile([1.0, 0.0, 0.0, 0.0], (12, 1)), 0.02)
    np.testing.assert_allclose(f, np.tile([0.0, 0.0, 9.81], (10, 1)), atol=1e-9)
    np.testing.assert_allclose(gyro, 0.0, atol=1e-9)


def test_free_fall_reads_zero():
    t = np.arange(-1, 11) * 0.02
    pos = np.c_[0 * t, 0 * t, 10.0 - 0.5 * 9.81 * t * t]
    f, _ = motion.specific_force(pos, np.tile([1.0, 0.0, 0.0, 0.0], (len(t), 1)), 0.02)
    np.testing.assert_allclose(f, 0.0, atol=1e-9)


def test_pure_rotation_about_vertical_reads_gyro_and_centripetal_force():
    w, r, dt = 3.0, 0.5, 0.001
    angle = w * np.arange(-1, 1001) * dt
    zero = np.zeros_like(angle)
    pos = np.c_[r * np.cos(angle), r * np.sin(angle), zero]  # on a turntable, body x pointing outwards
    quat = np.c_[np.cos(angle / 2), zero, zero, np.sin(angle / 2)]
    f, gyro = motion.specific_force(pos, quat, dt)
    np.testing.assert_allclose(gyro, np.tile([0.0, 0.0, w], (1000, 1)), atol=1e-5)
    np.testing.assert_allclose(f, np.tile([-w * w * r, 0.0, 9.81], (1000, 1)), atol=1e-4)


def test_tumbling_in_place_turns_gravity_in_the_sensor_frame():
    w, dt = 2.0, 0.001
    angle = w * np.arange(-1, 1001) * dt
    zero = np.zeros_like(angle)
    quat = np.c_[np.cos(angle / 2), np.sin(angle / 2), zero, zero]  # about x
    f, gyro = motion.specific_force(np.zeros((len(angle), 3)), quat, dt)
    inner = angle[1:-1]
    np.testing.assert_allclose(f, np.c_[0 * inner, 9.81 * np.sin(inner), 9.81 * np.cos(inner)], atol=1e-4)
    np.testing.assert_allclose(gyro, np.tile([w, 0.0, 0.0], (1000, 1)), atol=1e-5)


def test_watch_reads_gravity_through_the_body_chain():
    person = _quiet_person()
    to_sensor, _ = motion.sensor_axes("wrist", "left", np.eye(3))
    stand = motion.standing_pose(person)
    # forearm level in front, back of the wrist (the watch face) up: +g on z
    face_up = motion._arm(stand, person, (0.3, 0.0, -1.0), (1.0, 0.0, 0.0), (0.0, 0.0, 1.0))
    f, gyro = motion.segment_signals(np.tile(face_up, (5, 1)), person, "wrist", 0.02)
    np.testing.assert_allclose(f @ to_sensor.T, np.tile([0.0, 0.0, 9.81], (3, 1)), atol=1e-6)
    np.testing.assert_allclose(gyro, 0.0, atol=1e-9)
    # arm hanging: x runs towards the hand, so it reads −g
    hanging = motion._arm(stand, person, (0.0, 0.0, -1.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))
    f, _ = motion.segment_signals(np.tile(hanging, (5, 1)), person, "wrist", 0.02)
    np.testing.assert_allclose(f @ to_sensor.T, np.tile([-9.81, 0.0, 0.0], (3, 1)), atol=1e-6)


def test_right_side_is_the_mirror_image():
    mount = motion.rotation(0, 0.3)
    left_acc, left_gyro = motion.sensor_axes("wrist", "left", mount)
    right_acc, right_gyro = motion.sensor_axes("wrist", "right", mount)
    # the axis across the body flips for the force, the other two for the (axial) angular velocity
    np.testing.assert_allclose(right_acc, mount.T @ np.diag([1.0, -1.0, 1.0]) @ mount @ left_acc, atol=1e-12)
    axial = np.diag([-1.0, 1.0, -1.0])
    np.testing.assert_allclose(right_gyro, mount.T @ axial @ mount @ left_gyro, atol=1e-12)


def test_hop_height_is_free_fall_in_flight():
    period, contact = 0.4, 0.24
    s = np.linspace(0.0, period, 4001)
    z = motion.hop_height(s, period, contact)
    acc = np.diff(z, 2) / (s[1] - s[0]) ** 2
    flight = (s[1:-1] > contact / 2 + 0.005) & (s[1:-1] < period - contact / 2 - 0.005)
    np.testing.assert_allclose(acc[flight], -9.81, atol=1e-3)
    assert acc[~flight].max() > 9.81  # pushes off harder than gravity at mid-stance
    np.testing.assert_allclose(np.gradient(z, s)[[0, -1]], 0.0, atol=1e-3)


def test_overhead_press_points_the_forearm_up_and_curl_turns_it_by_about_130_degrees():
    person = _quiet_person()
    press = motion.template(person, "overhead_press")
    fk = motion.forward_kinematics(press.poses, person)
    forearm_up = fk["wrist"][2] - fk["elbow"][2]
    assert np.all(forearm_up > 0.9 * person.forearm)  # racked and overhead
    assert fk["wrist"][2][1] > fk["shoulder"][2][1] + 0.8 * (person.upper_arm + person.forearm)
    curl = motion.template(person, "biceps_curl")
    fk = motion.forward_kinematics(curl.poses[:2], person)
    direction = np.stack([np.array(fk["wrist"])[:, i] - np.array(fk["elbow"])[:, i] for i in range(2)])
    cos = direction[0] @ direction[1] / np.linalg.norm(direction, axis=1).prod()
    assert 115 < math.degrees(math.acos(cos)) < 145


def test_push_up_bottom_is_horizontal_and_hands_stay_put():
    person = _quiet_person(1)
    tpl = motion.template(person, "push_up")
    fk = motion.forward_kinematics(tpl.poses, person)
    bottom = int(np.argmin(fk["shoulder"][2]))
    assert abs(tpl.poses[bottom, motion.PELVIS_PITCH] - math.pi / 2) < math.radians(12)
    wrists = np.array(fk["wrist"]).T
    assert np.ptp(wrists, axis=0).max() < 0.03


# -- streams --------------------------------------------------------------------------------------


def test_rest_mean_magnitude_is_g():
    chunk = DeviceStream("sim-000", seed=11, exercises=["rest"]).read(90.0)
    magnitude = np.linalg.norm(chunk.acc, axis=1)
    assert set(chunk.label.tolist()) == {"rest"}
    assert abs(magnitude.mean() - 9.81) < 0.25
    assert np.median(np.abs(magnitude - 9.81)) < 0.3


@pytest.mark.parametrize(
    ("exercise", "placement", "low", "high"),
    [
        ("walking", "waist", 1.6, 2.2),
        ("running", "waist", 2.4, 3.2),
        ("squat", "wrist", 0.3, 0.7),
        ("jumping_jack", "wrist", 0.9, 1.6),
        ("biceps_curl", "wrist", 0.25, 0.6),
        ("sit_up", "waist", 0.18, 0.5),
        ("lunge", "waist", 0.2, 0.55),
        ("bench_press", "wrist", 0.25, 0.6),
    ],
)
def test_dominant_frequency_in_expected_band(exercise, placement, low, high):
    peaks = []
    for seed in range(3):
        chunk = DeviceStream("d", seed=seed, placement=placement, exercises=[exercise]).read(70.0)
        acc = chunk.acc[len(chunk) // 3:]  # past the first set's lead-in
        peaks.append(_dominant_frequency(acc, RATE))
    assert low <= float(np.median(peaks)) <= high, peaks


def test_same_seed_is_bit_for_bit_reproducible_however_read():
    a = DeviceStream("d", seed=5, scenario="loss_burst", scenario_start=10.0).read(40.0)
    stream = DeviceStream("d", seed=5, scenario="loss_burst", scenario_start=10.0)
    parts = [stream.read(d) for d in (0.2, 3.7, 0.05, 16.05, 20.0)]
    for field in ("t", "acc", "gyro", "label"):
        joined = np.concatenate([getattr(p, field) for p in parts])
        assert np.array_equal(getattr(a, field), joined), field


def test_different_seeds_differ():
    a = DeviceStream("d", seed=1).read(20.0)
    b = DeviceStream("d", seed=2).read(20.0)
    n = min(len(a), len(b))
    assert not np.allclose(a.acc[:n], b.acc[:n])


def test_read_is_continuous():
    stream = DeviceStream("d", seed=3, person=_quiet_person(3, drop_rate=0.0))
    chunks = [stream.read(d) for d in (0.2, 0.2, 1.0, 0.37, 2.23, 0.0, 6.0)]
    t = np.concatenate([c.t for c in chunks])
    assert np.all(np.diff(t) > 0)
    for before, after in zip(chunks[:-1], chunks[1:], strict=False):
        if len(before) and len(after):
            assert after.t[0] > before.t[-1]
    assert len(t) == round(10.0 * RATE)
    assert np.abs(np.diff(t) - 1 / RATE).max() < 0.8 / RATE
    assert all(c.unit == "m/s2" and c.scenario is None for c in chunks)


def test_dropped_sample_fraction_is_as_configured():
    person = _quiet_person(4, drop_rate=0.05)
    chunk = DeviceStream("d", seed=4, person=person).read(200.0)
    missing = 1.0 - len(chunk) / (200.0 * RATE)
    assert 0.04 < missing < 0.06


def test_truth_label_agrees_with_chunk_labels():
    stream = DeviceStream("d", seed=8)
    chunk = stream.read(120.0)
    assert np.array_equal(stream.truth_label(chunk.t), chunk.label)
    assert stream.truth_label(float(chunk.t[-1])) == chunk.label[-1]


def test_workout_has_sets_and_rests():
    chunk = DeviceStream("d", seed=9).read(600.0)
    labels = chunk.label
    changes = np.flatnonzero(labels[1:] != labels[:-1]) + 1
    runs = np.split(labels, changes)
    exercises = [r[0] for r in runs if r[0] != "rest"]
    assert len(set(exercises)) >= 4
    names = [r[0] for r in runs]
    assert all(a == "rest" or b == "rest" for a, b in zip(names[:-1], names[1:], strict=True))
    set_lengths = [len(r) / RATE for r in runs if r[0] not in ("rest", "walking", "running")]
    assert 5.0 < np.median(set_lengths) < 80.0


def test_exercise_subset_and_no_rest():
    chunk = DeviceStream("d", seed=10, exercises=["squat", "row"]).read(120.0)
    assert set(chunk.label.tolist()) <= {"squat", "row"}


# -- drift scenarios ------------------------------------------------------------------------------


def test_other_wrist_changes_the_signal_but_not_the_motion():
    plain = DeviceStream("d", seed=12).read(60.0)
    moved = DeviceStream("d", seed=12, scenario="other_wrist", scenario_start=0.0).read(60.0)
    assert moved.scenario == "other_wrist" and plain.scenario is None
    assert np.array_equal(plain.t, moved.t)
    assert np.abs(plain.acc - moved.acc).mean() > 2.0
    magnitude = [np.linalg.norm(c.acc, axis=1) for c in (plain, moved)]
    assert np.abs(magnitude[0] - magnitude[1]).mean() < 0.3


def test_strap_rotated_changes_the_signal_from_its_start():
    plain = DeviceStream("d", seed=13).read(60.0)
    turned = DeviceStream("d", seed=13, scenario="strap_rotated", scenario_start=30.0).read(60.0)
    before = plain.t < 30.0 - 0.5 / RATE  # stamps are jittered by less than half a period
    assert np.array_equal(plain.acc[before], turned.acc[before])
    assert np.abs(plain.acc[~before] - turned.acc[~before]).mean() > 2.0


def test_units_g_divides_by_standard_gravity():
    stream = DeviceStream("d", seed=14, scenario="units_g", scenario_start=5.0)
    plain = DeviceStream("d", seed=14)
    first, second = stream.read(4.0), stream.read(6.0)
    plain_first, plain_second = plain.read(4.0), plain.read(6.0)
    assert first.unit == "m/s2" and first.scenario is None
    assert second.unit == "g" and second.scenario == "units_g"
    np.testing.assert_array_equal(first.acc, plain_first.acc)
    np.testing.assert_allclose(second.acc * G_STANDARD, plain_second.acc, rtol=1e-6, atol=1e-5)
    assert stream.scenario_onset == pytest.approx(5.0)


def test_clock_skew_stretches_the_device_clock():
    start = 20.0
    plain = DeviceStream("d", seed=15)
    skewed = DeviceStream("d", seed=15, scenario="clock_skew", scenario_start=start)
    plain.read(200.0)
    chunk = skewed.read(180.0)
    kappa = skewed._skew
    assert 0.02 <= abs(kappa) <= 0.05
    # what the skewed device stamps τ happened at true time start + (τ − start) / (1 + κ)
    tau = chunk.t[chunk.t > start + 1.0]
    true = start + (tau - start) / (1.0 + kappa)
    agree = np.mean(skewed.truth_label(tau) == plain.truth_label(true))
    assert agree > 0.97
    assert np.mean(skewed.truth_label(tau) == plain.truth_label(tau)) < agree


def test_loss_burst_loses_whole_stretches():
    person = _quiet_person(16, drop_rate=0.0)
    chunk = DeviceStream("d", seed=16, person=person, scenario="loss_burst", scenario_start=10.0).read(130.0)
    gaps = np.diff(chunk.t)
    assert gaps[chunk.t[:-1] < 10.0].max() < 2.0 / RATE
    assert gaps.max() > 0.25 and (gaps > 0.25).sum() >= 3


def test_new_person_and_fatigue_and_unseen_exercise_take_effect():
    stream = DeviceStream("d", seed=17, scenario="new_person", scenario_start=30.0)
    chunk = stream.read(240.0)
    people = stream.people
    assert len(people) == 2 and people[0][1] is stream.person and people[1][1] is not stream.person
    assert people[1][0] == pytest.approx(stream.scenario_onset)
    assert stream.scenario_onset is not None and stream.scenario_onset >= 30.0
    assert chunk.scenario == "new_person"

    stream = DeviceStream("d", seed=18, scenario="unseen_exercise", scenario_start=20.0)
    labels = set(stream.read(400.0).label.tolist())
    assert labels & set(UNSEEN)

    def squat_sets(scenario):
        """(seconds per repetition, depth of the pelvis) of each set of squats."""
        stream = DeviceStream("d", seed=19, exercises=["rest", "squat"], scenario=scenario)
        moves = len(motion.template(stream.person, "squat").fractions)
        found = {}
        for _ in range(20):
            stream.read(20.0)
            found.update({seg.start: seg for seg in stream._timeline.segments if seg.label == "squat"})
        out = []
        for seg in found.values():
            reps = (len(seg.track.knots) - 1) // moves
            z = seg.track.poses[:, motion.PZ]
            out.append(((seg.end - seg.start) / reps, z.max() - z.min()))
        assert len(out) >= 3
        return np.array(out)

    tired, fresh = squat_sets("fatigue"), squat_sets(None)
    assert tired[:, 0].mean() > 1.15 * fresh[:, 0].mean()
    assert tired[:, 1].mean() < 0.95 * fresh[:, 1].mean()


def test_every_scenario_runs_at_every_placement():
    for placement in motion.PLACEMENTS:
        for scenario in SCENARIOS:
            stream = DeviceStream("d", seed=20, placement=placement, scenario=scenario, scenario_start=3.0)
            chunk = stream.read(8.0)
            assert np.isfinite(chunk.acc).all() and np.isfinite(chunk.gyro).all()
            if scenario in ("fatigue", "new_person", "unseen_exercise"):  # from the next set or rest on
                assert chunk.scenario in (scenario, None)
            else:
                assert chunk.scenario == scenario


def test_invalid_arguments_are_rejected():
    with pytest.raises(ValueError, match="placement"):
        DeviceStream("d", seed=0, placement="ankle")
    with pytest.raises(ValueError, match="scenario"):
        DeviceStream("d", seed=0, scenario="earthquake")
    with pytest.raises(ValueError, match="exercises"):
        DeviceStream("d", seed=0, exercises=["yoga"])


# -- recordings and separability ------------------------------------------------------------------


def test_simulate_recording_is_in_si_units_with_gyro():
    rec = simulate_recording(3, 20.0, seed=1, scenario="units_g", scenario_start=0.0)
    assert sorted(set(rec.device.tolist())) == ["sim-000", "sim-001", "sim-002"]
    assert np.array_equal(rec.subject, rec.device)
    assert rec.gyro is not None and rec.gyro.shape == rec.acc.shape
    assert 9.0 < np.linalg.norm(rec.acc, axis=1).mean() < 12.0
    assert set(rec.classes) <= set(SIMULATED)
    again = simulate_recording(3, 20.0, seed=1, scenario="units_g", scenario_start=0.0)
    assert np.array_equal(rec.acc, again.acc)


def _features(acc: np.ndarray, gyro: np.ndarray) -> np.ndarray:
    """Orientation-free summary of a window: magnitudes, rhythm and how far gravity turns."""
    mag = np.linalg.norm(acc, axis=1)
    rot = np.linalg.norm(gyro, axis=1)
    mean = acc.mean(axis=0)
    cos = (acc @ mean) / (np.linalg.norm(acc, axis=1) * np.linalg.norm(mean) + 1e-9)
    angle = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    axes = np.sort(np.abs(mean))
    return np.array([
        mag.mean(), mag.std(), np.percentile(mag, 95), rot.mean(), rot.std(),
        _dominant_frequency(acc, RATE), angle.mean(), angle.std(), *axes,
    ])


def test_exercises_are_separable_across_people():
    """A nearest-centroid classifier on simple features, trained on some people, tested on others."""
    window = int(5 * RATE)
    rows, labels, people = [], [], []
    for exercise in SIMULATED:
        for seed in range(8):
            stream = DeviceStream("d", seed=100 + seed, exercises=[exercise])
            chunk = stream.read(40.0)
            keep = chunk.label == exercise
            acc, gyro = chunk.acc[keep][window:], chunk.gyro[keep][window:]  # past the lead-in
            for a in range(0, len(acc) - window + 1, window):
                rows.append(_features(acc[a:a + window], gyro[a:a + window]))
                labels.append(exercise)
                people.append(seed)
    x, y, people = np.array(rows), np.array(labels), np.array(people)
    train = people < 5
    mu, sd = x[train].mean(axis=0), x[train].std(axis=0) + 1e-9
    z = (x - mu) / sd
    classes = sorted(set(labels))
    centroids = np.array([z[train & (y == c)].mean(axis=0) for c in classes])
    predicted = np.array(classes)[np.argmin(((z[~train, None, :] - centroids) ** 2).sum(axis=2), axis=1)]
    accuracy = float(np.mean(predicted == y[~train]))
    assert accuracy > 4.0 / len(classes), accuracy  # chance is 1 / 14


def test_doctests():
    for module in (motion, workout):
        result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module.__name__
