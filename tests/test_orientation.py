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
from models.orientation import OrientationConfig, Orienter, Reference, window_features
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


def _counting(ref: Reference, monkeypatch) -> list[int]:
    """Record how many windows each scoring call of ``ref`` is given."""
    scored: list[int] = []
    sums = ref._sums

    def counted(turns, g, a, e):
        scored.append(len(g))
        return sums(turns, g, a, e)

    monkeypatch.setattr(ref, "_sums", counted)
    return scored


def test_a_fit_kept_between_stages_scores_only_the_new_windows_and_finds_the_same_turn(people, monkeypatch):
    ref, windows = people
    # worn as in training for 15 windows, then a quarter turn about the arm: the best turn of the grid
    # moves between stages, and the small turns round a new best are scored on every window again
    w = windows[:45].copy()
    w[15:, :, :3] = w[15:, :, :3] @ QUARTER_X.T
    w[15:, :, 3:] = w[15:, :, 3:] @ QUARTER_X.T
    g, a, e = window_features(w)
    scored = _counting(ref, monkeypatch)
    cache: dict = {}
    previous, bases, kinds = 0, {}, set()
    for n in (5, 15, 30, 45):
        scored.clear()
        R, gain = ref.fit(g[:n], a[:n], e[:n], cache)
        assert scored[0] == n - previous  # the grid's turns: the new windows only
        for k, count in enumerate(scored[1:]):  # each round: the new windows only while its base stays
            base = cache[f"near{k}"][0]
            kept = f"near{k}" in bases and np.array_equal(bases[f"near{k}"], base)
            assert count == (n - previous if kept else n), (n, k, count)
            kinds.add(kept)
            bases[f"near{k}"] = base
        R0, gain0 = ref.fit(g[:n], a[:n], e[:n])  # from scratch
        assert abs(gain - gain0) < 1e-6 * max(1.0, abs(gain0)), (n, gain, gain0)
        assert angle(R.T @ R0) < 0.1, n
        previous = n
    assert kinds == {True, False}  # both paths were taken


def test_the_orienter_keeps_a_devices_sums_between_stages_and_drops_them_once_settled(people, monkeypatch):
    ref, windows = people
    scored = _counting(ref, monkeypatch)
    orienter = Orienter(ref)
    for i in range(ref.config.windows):
        orienter.apply(["d"], windows[i:i + 1])
    assert scored[0::3] == [5, 10, 15, 15]  # the grid at each stage: the windows added since the last
    assert "d" in orienter.decided and "d" not in orienter._pending


class _Forgetful(Orienter):
    """Fits every stage from scratch: the sums are thrown away before each fit."""

    def _decide(self, device, features, margin, last, cache):
        super()._decide(device, features, margin, last, {})


def test_an_orienter_with_kept_sums_decides_as_one_fitting_from_scratch_under_a_budget(people):
    ref, windows = people
    bad = windows.copy()
    bad[:, :, :3] = windows[:, :, :3] @ QUARTER_X.T
    bad[:, :, 3:] = windows[:, :, 3:] @ QUARTER_X.T
    kept, fresh = Orienter(ref, budget=0.0), _Forgetful(ref, budget=0.0)  # one fit a call: others wait
    devices = ["good", "bad", "late"]
    for i in range(ref.config.windows + 10):
        batch = np.stack([windows[i], bad[i], bad[max(i - 7, 0)]]).astype(np.float32)
        np.testing.assert_allclose(kept.apply(devices, batch), fresh.apply(devices, batch), atol=1e-4)
        assert kept.changed == fresh.changed
        assert set(kept.turns) == set(fresh.turns)
        for d in kept.turns:
            assert angle(kept.turns[d].T @ fresh.turns[d]) < 0.1
        assert kept.gains.keys() == fresh.gains.keys()
        for d in kept.gains:
            assert abs(kept.gains[d] - fresh.gains[d]) < 1e-6
    assert kept.decided == fresh.decided == set(devices) and "bad" in kept.turns


def test_directions_need_not_be_unit_vectors(people):
    ref, windows = people
    w = windows[:15].copy()
    w[:, :, :3] = w[:, :, :3] @ np.diag([1.0, -1.0, -1.0])
    w[:, :, 3:] = w[:, :, 3:] @ np.diag([1.0, -1.0, -1.0])
    g, a, e = window_features(w)
    R, gain = ref.fit(g, a, e)
    R9, gain9 = Reference(ref.g * 9.81, ref.a * 3.0, ref.e).fit(g * 9.81, a * 2.0, e)  # raw m/s², say
    assert np.isfinite(gain9) and abs(gain9 - gain) < 1e-4 and angle(R.T @ R9) < 0.1


def test_scores_stay_finite_where_every_term_is_far_below_float32s_range(people):
    ref, windows = people
    sharp = Reference(ref.g, ref.a, ref.e, OrientationConfig(kg=200.0))  # e^(-2 kg) underflows float32
    g, a, e = window_features(windows[:5])
    away = sharp.scores(np.diag([1.0, -1.0, -1.0])[None], g, a, e)  # every gravity turned away
    assert np.isfinite(away).all() and away[0] < -100


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
    assert again.snapshot()["decided"] == orienter.snapshot()["decided"]  # parked until it sends again
    window = np.random.default_rng(0).normal(0, 1, (1, model.config.window, 6)).astype(np.float32)
    out = again.apply([device.device[0]], window)  # its first window after the restart: turned back
    R = orienter.turns[device.device[0]]
    np.testing.assert_allclose(out[0, :, :3], window[0, :, :3] @ R.T, atol=1e-5)
    assert again.decided == orienter.decided


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


# -- review findings: both sensors turned, the pipeline's copy, stages, budget, eviction, drift ---------
class _Scripted(Reference):
    """A reference whose fit returns set gains (the turn: upside down), to test the stages alone."""

    def __init__(self, gains, config: OrientationConfig | None = None, turns=None):
        super().__init__(np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]), np.ones(1), config)
        self._gains = list(gains)
        self._fits = list(turns) if turns is not None else None
        self.fitted: list[int] = []
        self.features: list[np.ndarray] = []

    def fit(self, g, a, e, cache=None):
        self.fitted.append(len(g))
        self.features.append(np.asarray(g).copy())
        R = self._fits.pop(0) if self._fits is not None else np.diag([1.0, -1.0, -1.0])
        return R, self._gains.pop(0)


TWO_STAGES = OrientationConfig(stages=((5, 3.0), (15, 1.0)))  # the stage mechanics, on fewer windows


def _windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 1, (n, 25, 6)).astype(np.float32)
    w[:, :, 2] += 9.81
    return w


def test_both_sensors_are_turned_by_the_chosen_turn():
    orienter = Orienter(_Scripted([5.0, 5.0]))
    w = _windows(6)
    for i in range(5):
        out = orienter.apply(["d"], w[i:i + 1])
    R = orienter.turns["d"]
    np.testing.assert_allclose(out[0, :, :3], w[4, :, :3] @ R.T, atol=1e-5)
    np.testing.assert_allclose(out[0, :, 3:], w[4, :, 3:] @ R.T, atol=1e-5)
    assert out[0, 0, 4] == -w[4, 0, 4] and out[0, 0, 5] == -w[4, 0, 5]  # gyro y, z flipped too


def test_a_stage_turns_from_its_window_on_and_the_last_one_may_turn_back():
    ref = _Scripted([3.5, 0.2], TWO_STAGES)  # stage 5 fires (margin 3); stage 15 does not (margin 1): back
    orienter = Orienter(ref)
    w = _windows(16)
    for i in range(16):
        out = orienter.apply(["d"], w[i:i + 1])
        if i + 1 < 5 or i + 1 >= 15:
            assert out is w[i:i + 1] or np.array_equal(out, w[i:i + 1]), i
        else:
            assert not np.array_equal(out, w[i:i + 1]), i
        assert orienter.changed == (["d"] if i + 1 in (5, 15) else []), i
    assert ref.fitted == [5, 15] and orienter.decided == {"d"} and "d" not in orienter.turns


def _one_fit_per_call(calls: int, config: OrientationConfig | None = None):
    """Four devices, a window each per call, under a budget that lets one fit run per call."""
    ref = _Scripted([0.0] * 20, config)
    orienter = Orienter(ref, budget=0.0)
    devices = [f"d{i}" for i in range(4)]
    w = _windows(4 * calls)
    for k in range(calls):
        orienter.apply(devices, w[4 * k:4 * k + 4])
    return orienter, ref, devices, w


def test_a_budget_spreads_the_fits_over_calls_and_loses_none():
    orienter, ref, devices, w = _one_fit_per_call(20, TWO_STAGES)
    # all four due at windows 5 and 15, one fit per call: the later ones fit on the windows they have
    assert orienter.decided == set(devices) and len(ref.fitted) == 8
    assert ref.fitted[:4] == [5, 6, 7, 8] and ref.fitted[4:] == [15, 15, 15, 15]
    unlimited = Orienter(_Scripted([0.0] * 8, TWO_STAGES))
    for k in range(15):
        unlimited.apply(devices, w[4 * k:4 * k + 4])
    assert unlimited.reference.fitted == [5] * 4 + [15] * 4


def test_a_device_fitted_in_a_call_without_its_windows_is_reported_with_its_next_window():
    """Under a budget a device's fit may run in a call that holds none of its windows: it is listed in
    ``changed`` in the next call that holds one (the pipeline flags only the devices of the batch, and the
    drift monitor must learn of the turn before it sees the turned windows)."""
    orienter = Orienter(_Scripted([5.0, 5.0], TWO_STAGES), budget=0.0)
    w = _windows(12)
    for k in range(4):  # both devices reach 5 windows in one call: only "a" is fitted then
        orienter.apply(["a", "b"], w[2 * k:2 * k + 2])
    orienter.apply(["a", "b"], w[8:10])
    assert orienter.changed == ["a"] and "b" not in orienter.turns
    orienter.apply(["a"], w[10:11])  # "b" fitted here, without a window of its own
    assert "b" in orienter.turns and orienter.changed == []
    orienter.apply(["b"], w[11:12])
    assert orienter.changed == ["b"]
    orienter.apply(["b"], w[11:12])
    assert orienter.changed == []


def test_later_stages_fit_on_all_the_windows_and_may_change_the_turn():
    """The default stages: 5, 15, then 30 and 45 windows, each fit on every window so far (what the
    first 15 held may be one exercise only)."""
    assert [n for n, _ in OrientationConfig().stages] == [5, 15, 30, 45]
    ref = _Scripted([0.0, 0.5, 1.5, 0.2])  # nothing, nothing, turned at 30, back at 45 (margin 1)
    orienter = Orienter(ref)
    w = _windows(46)
    g = window_features(w)[0]
    for i in range(46):
        out = orienter.apply(["d"], w[i:i + 1])
        assert orienter.changed == (["d"] if i + 1 in (30, 45) else []), i
        assert np.array_equal(out, w[i:i + 1]) == (not 30 <= i + 1 < 45), i
    assert ref.fitted == [5, 15, 30, 45] and orienter.decided == {"d"} and "d" not in orienter.turns
    np.testing.assert_allclose(ref.features[-1], g[:45], atol=1e-6)  # as they came, not turned


def test_a_new_fit_is_reported_only_when_it_moves_the_turn():
    """Each stage that clears its margin takes its fit; ``changed`` (which resets the device's drift
    checks) lists the device only when the turn moved by more than ``CHANGE_DEG``."""
    upside = np.diag([1.0, -1.0, -1.0])
    nudge = Rotation.from_euler("x", 180 + 4, degrees=True).as_matrix()  # 4 degrees from upside down
    quarter = QUARTER_X
    ref = _Scripted([3.5, 1.2, 1.3, 1.4], turns=[upside, nudge, nudge, quarter])
    orienter = Orienter(ref)
    w = _windows(45)
    changes = {}
    for i in range(45):
        orienter.apply(["d"], w[i:i + 1])
        if orienter.changed:
            changes[i + 1] = orienter.turns["d"]
    assert sorted(changes) == [5, 45]  # not at 15 (4 degrees) nor at 30 (the same turn again)
    assert changes[5] is upside and changes[45] is quarter
    assert orienter.decided == {"d"} and orienter.turns["d"] is quarter


def test_a_restart_keeps_a_turn_chosen_before_the_device_was_settled():
    ref = _Scripted([3.5] + [0.0] * 4, TWO_STAGES)
    orienter = Orienter(ref)
    w = _windows(23)
    for i in range(8):  # turned at 5, not settled (15)
        orienter.apply(["d"], w[i:i + 1])
    assert "d" in orienter.turns and "d" not in orienter.decided
    snapshot = orienter.snapshot()
    assert snapshot["decided"] == [] and "d" in snapshot["turns"]
    back = Orienter(ref)
    back.restore(snapshot)
    out = back.apply(["d"], w[8:9])  # served turned from the first window after the restart
    np.testing.assert_allclose(out[0, :, :3], w[8, :, :3] @ orienter.turns["d"].T, atol=1e-5)
    assert "d" not in back.decided
    for i in range(9, 23):  # it collects again and the last stage decides: margin 1 not met, back
        back.apply(["d"], w[i:i + 1])
    assert back.decided == {"d"} and "d" not in back.turns


def test_settled_devices_come_back_from_a_restart_parked_within_max_parked(monkeypatch):
    ref = _Scripted([3.5] + [0.0] * 4, TWO_STAGES)
    monkeypatch.setattr(Orienter, "MAX_PARKED", 2)
    back = Orienter(ref)
    back.restore({"decided": ["a", "b", "c"], "turns": {"c": QUARTER_X.reshape(-1).tolist()}})
    assert back.decided == set() and list(back._parked) == ["b", "c"]  # the oldest beyond the bound go
    out = back.apply(["c"], _windows(1))  # a parked one that sends again is settled, and turned
    assert back.decided == {"c"} and np.allclose(back.turns["c"], QUARTER_X)
    np.testing.assert_allclose(out[0, :, :3], _windows(1)[0, :, :3] @ QUARTER_X.T, atol=1e-5)


def test_a_budget_with_the_default_stages_loses_no_fit():
    orienter, ref, devices, _ = _one_fit_per_call(50)
    # every device fitted once per stage; a device kept waiting is fitted on the windows it has by then
    assert orienter.decided == set(devices) and len(ref.fitted) == 16
    assert ref.fitted[:4] == [5, 6, 7, 8] and ref.fitted[-4:] == [45, 45, 45, 45]
    assert ref.fitted[4:8] == [15, 16, 17, 18] and ref.fitted[8:12] == [30, 31, 32, 33]  # at most 45 kept
    assert orienter._pending == {} and not orienter.turns


def test_the_pipeline_keeps_the_turned_window_and_flags_the_turn(people):
    from models.state import StatefulClassifier
    from stream.decode import SampleBatch
    from stream.pipeline import Pipeline
    ref, windows = people
    torch.manual_seed(0)
    model = HARNet(ModelConfig(classes=("hold", "twist"), input_channels=6, **FAST_MODEL)).eval()
    model.orientation = ref
    pipeline = Pipeline(StatefulClassifier(model, "o"))
    upside = np.diag([1.0, -1.0, -1.0])
    samples = windows[:20].reshape(-1, 6).astype(np.float64)
    t = np.arange(len(samples)) / 25.0
    acc, gyro = samples[:, :3] @ upside.T, samples[:, 3:] @ upside.T
    out, turns = [], []
    for a in range(0, len(t), 25):
        pipeline.add(SampleBatch("d", t[a:a + 25], acc[a:a + 25], gyro[a:a + 25]), 0.0)
        out += pipeline.classify_ready()
        turns.append(pipeline.classifier.orienter.turns.get("d"))
    assert len(out) == 20
    # upside down shows at the first stage; the second, on 15 windows, refines the turn, by less than
    # Orienter.CHANGE_DEG: taken, not flagged as a new turn
    assert [i for i, p in enumerate(out) if p.reoriented] == [4]
    assert turns[3] is None and turns[4] is not None and turns[14] is not turns[4]
    assert angle(turns[4].T @ turns[14]) < Orienter.CHANGE_DEG
    raw = np.concatenate([acc, gyro], axis=1).astype(np.float32)
    for i, p in enumerate(out):
        block, R = raw[i * 25:(i + 1) * 25], turns[i]  # the buffer's grid is the samples' own here
        expected = block if R is None else np.concatenate([block[:, :3] @ R.T, block[:, 3:] @ R.T], axis=1)
        np.testing.assert_allclose(p.window, expected, atol=1e-4)
        if R is not None:
            assert p.window.base is None  # a turned window owns its copy
            np.testing.assert_allclose(p.window[:, :3].mean(0), windows[i, :, :3].mean(0), atol=0.2 * 9.81)
    # evicted, and back: the settled turn comes back with the device, no new fit
    for a in range(len(t), len(t) + 25 * 27, 25):  # settle it first (the last stage, 45)
        pipeline.add(SampleBatch("d", a / 25.0 + np.arange(25) / 25.0, acc[:25], gyro[:25]), 0.0)
        pipeline.classify_ready()
    orienter = pipeline.classifier.orienter
    assert "d" in orienter.decided
    R = orienter.turns["d"]
    pipeline.evict("d")
    assert "d" not in orienter.turns and "d" not in orienter.decided
    assert orienter.snapshot()["turns"]["d"] == R.reshape(-1).tolist()  # kept across a restart too
    orienter.apply(["d"], raw[None, :25])
    assert "d" in orienter.decided and orienter.turns["d"] is R and orienter.changed == []


def test_the_orienters_own_turn_is_not_reported_as_drift(people):
    """Windows 1-14 served as they come teach the orientation checks one direction per class; the turn
    chosen at window 15 (and refined at 30 and 45) must not look like a strap turned (the consumer tells
    the monitor)."""
    from stream.monitor import Monitor
    rec = twisting_recording(people=4, minutes=3, seed=3)
    test = rec.subject == "person3"
    ref = orientation_reference(labelled_streams(rec.take(~test), ["hold", "twist"], 25.0, gyro=True), 25)
    held = max(labelled_streams(rec.take(test), ["hold", "twist"], 25.0, gyro=True), key=lambda s: len(s.x))
    n = len(held.x) // 25
    W = held.x[:n * 25].reshape(n, 25, 6).astype(np.float32)
    truth = np.array(["hold", "twist"])[held.y[:n * 25].reshape(n, 25)[:, 12]]
    R0 = Rotation.from_euler("x", 20, degrees=True).as_matrix()  # a small misfit, turned at window 15
    bad = W.copy()
    bad[:, :, :3], bad[:, :, 3:] = W[:, :, :3] @ R0.T, W[:, :, 3:] @ R0.T
    for tell in (False, True):
        orienter, monitor, events, changes = Orienter(ref), Monitor(), [], []
        for i in range(n):
            x = orienter.apply(["dev"], bad[i:i + 1])
            changes += [i + 1] * len(orienter.changed)
            if tell and orienter.changed:
                monitor.reoriented("dev", float(i))
            mean = x[0, :, :3].mean(0)
            events += monitor.observe("dev", float(i), float(np.linalg.norm(x[0, :, :3], axis=1).mean()),
                                      0.9, mean, truth[i])
            events += monitor.labelled("dev", float(i), truth[i], truth[i], x[0].mean(0))
        alarms = [e for e in events if e.signal == "orientation"]
        assert changes[:1] == [15] and "dev" in orienter.turns  # turned at 15, kept (later refits: small)
        if not tell:
            assert alarms, "the scenario no longer shows the problem"
        else:
            assert alarms == []
