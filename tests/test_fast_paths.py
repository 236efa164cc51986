"""The fast paths of issue 8 (performance) give what the general paths give."""

import numpy as np
import orjson
import pytest

from stream.adapters import CsvAdapter
from stream.buffers import DeviceBuffer, resample
from stream.decode import Rejected, decode_imu, decode_imu_many
from stream.monitor import Monitor, _Confidences


def test_windows_handed_out_are_not_overwritten_by_later_samples():
    t = 100.0 + np.arange(1000) / 50.0
    acc = np.stack([np.sin(t), np.cos(t), 9.81 + t * 0], axis=1)
    buf = DeviceBuffer("d", 25.0, 25)
    kept = []
    for a in range(0, 1000, 25):  # 0.5 s messages: the fast path
        for w in buf.push(t[a:a + 25], acc[a:a + 25], 0.0):
            kept.append((w, w.samples.copy()))
    assert len(kept) >= 18
    for w, copy in kept:
        np.testing.assert_array_equal(w.samples, copy)
    (grid, values), = resample(t, acc, 25.0)
    np.testing.assert_allclose(np.concatenate([w.samples for w, _ in kept]), values[:25 * len(kept)], atol=1e-6)


def test_fast_path_leaves_gaps_and_repeats_to_the_general_path():
    t = 100.0 + np.arange(200) / 50.0
    acc = np.tile([0.0, 0.0, 9.81], (200, 1))
    buf = DeviceBuffer("d", 25.0, 25, max_gap=1.0)
    buf.push(t[:50], acc[:50], 0.0)
    buf.push(t[50:100] + 5.0, acc[50:100], 0.0)  # a 5 s silence: the grid restarts
    assert buf.gaps == 1
    t2 = t[100:110] + 5.0
    buf.push(np.repeat(t2, 2), np.repeat(acc[100:110], 2, axis=0), 0.0)  # repeated timestamps
    assert buf.last_t == t2[-1]


@pytest.mark.parametrize("acc, unit, reason", [
    ([[0, 0, 3.5e37]] * 2, "g", "non_finite"),  # beyond float32 once turned into m/s²
    ([[0, 0, 3.5e38]] * 2, "m/s2", "non_finite"),
    ([[0, 0, 1e308]] * 2, "g", "non_finite"),  # beyond float64 once turned into m/s²
])
def test_values_beyond_float32_are_refused_on_every_path(acc, unit, reason):
    payload = orjson.dumps({"seq": 1, "t": [0.0, 0.1], "acc": acc, "unit": unit})
    with pytest.raises(Rejected) as info:
        decode_imu(payload, "d")
    assert info.value.reason == reason


@pytest.mark.parametrize("body", [
    {"acc": [[0, 0, 1e20]] * 2},  # finite in float32, but the network's features would overflow
    {"acc": [[0, 0, 9.8], [-2e4, 0, 0]]},
    {"acc": [[0, 0, 2000]] * 2, "unit": "g"},  # 19,600 m/s²
    {"acc": [[0, 0, 9.8]] * 2, "gyro": [[0, 5e3, 0]] * 2},
])
def test_values_no_body_worn_sensor_reads_are_refused_on_every_path(body):
    payload = orjson.dumps({"seq": 1, "t": [0.0, 0.1], **body})
    with pytest.raises(Rejected) as info:
        decode_imu(payload, "d")
    assert info.value.reason == "out_of_range"
    good = orjson.dumps({"seq": 1, "t": [0.0, 0.1], "acc": [[0, 0, 1500.0]] * 2})  # a hard landing: kept
    out = decode_imu_many([(good, "a"), (payload, "b"), (good, "c")])
    assert [o.reason if isinstance(o, Rejected) else "ok" for o in out] == ["ok", "out_of_range", "ok"]
    assert reason_of(lambda: CsvAdapter().decode(b"0,0,0,9.8\n0.1,0,0,1e20", "rig")) == "out_of_range"


def reason_of(call):
    with pytest.raises(Rejected) as info:
        call()
    return info.value.reason


def test_time_checks_of_the_fast_path():
    ok = decode_imu(orjson.dumps({"seq": 1, "t": [0.0, 0.0, 0.1], "acc": [[0, 0, 1]] * 3, "unit": "g"}), "d")
    assert ok.acc.dtype == np.float32 and ok.acc[0, 2] == np.float32(9.80665)
    with pytest.raises(Rejected) as info:
        decode_imu(orjson.dumps({"seq": 1, "t": [0.1, 0.0], "acc": [[0, 0, 1]] * 2}), "d")
    assert info.value.reason == "bad_time"


def test_monitor_makes_label_metrics_only_for_labelled_devices():
    mon = Monitor()
    for k in range(5):
        mon.observe("a", float(k), 9.8, 0.9, np.array([0, 0, 9.8], np.float32), "squat")
        mon.observe("b", float(k), 9.8, 0.7, np.array([0, 0, 9.8], np.float32), "squat")
    mon.labelled("a", 4.0, "squat", "squat")
    assert mon._devices["b"].accuracy is None and mon._devices["a"].accuracy is not None
    assert mon.device_summary("b")["labelled_windows"] == 0
    assert mon.device_summary("b")["estimated_accuracy"] == pytest.approx(0.7)
    assert mon.device_summary("a")["accuracy"] == 1.0
    assert mon.summary()["labelled_windows"] == 1


def test_confidence_ring_is_the_mean_of_the_last_values():
    ring = _Confidences(4)
    assert ring.mean() is None
    for v in [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]:
        ring.append(v)
    assert ring.mean() == pytest.approx(np.mean([0.3, 0.4, 0.5, 0.6]))


def test_pipeline_window_features_match_per_window(tiny_model):
    from models.state import StatefulClassifier
    from stream.decode import SampleBatch
    from stream.pipeline import Pipeline
    pipe = Pipeline(StatefulClassifier(tiny_model))
    cfg = pipe.config
    rng = np.random.default_rng(0)
    for d in range(3):
        n = int(cfg.window / cfg.rate * 50) * 2
        t = 10.0 + np.arange(n) / 50.0
        pipe.add(SampleBatch(f"d{d}", t, (rng.normal(0, 2, (n, 3)) + [0, 0, 9.81]).astype(np.float32)), 0.0)
    preds = pipe.classify_ready()
    assert len(preds) >= 3
    for p in preds:
        assert p.magnitude == pytest.approx(float(np.linalg.norm(p.window, axis=1).mean()), rel=1e-6)
        np.testing.assert_allclose(p.mean_acc, p.window.mean(axis=0), rtol=1e-6)
        assert p.confidence == pytest.approx(float(p.probs.max()))


def test_a_cycle_handled_at_once_is_each_message_handled_alone(tiny_model):
    """Consumer.handle_many decodes a cycle's imu payloads together: the predictions, the samples and
    every rejection reason must be those of handling the messages one by one, bad ones in the middle."""
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig

    rng = np.random.default_rng(5)
    messages = []
    for tick in range(12):
        for k in range(6):
            t = 50.0 * k + tick * 0.4 + np.arange(20) / 50.0
            body = {"seq": tick, "t": t.tolist(), "acc": (rng.normal(size=(20, 3)) + [0, 0, 9.81]).tolist()}
            messages.append((f"har/dev-{k}/imu", orjson.dumps(body)))
        messages += [("har/dev-0/imu", b"{not json"),
                     ("har/dev-9/imu", orjson.dumps({"seq": tick, "t": [1.0, 0.5], "acc": [[0, 0, 1]] * 2})),
                     ("har/dev-8/imu", orjson.dumps({"seq": tick, "t": [2.0 + tick], "acc": [[0, 0, 1e39]]})),
                     ("har/bad dev/imu", orjson.dumps({"seq": tick, "t": [1.0], "acc": [[0, 0, 1]]})),
                     ("har/dev-7/imu", orjson.dumps({"seq": tick, "t": [3.0 + tick], "acc": [[0, 0]]})),
                     ("har/dev-1/label", orjson.dumps({"label": "squat", "t": 50.0}))]
        if tick == 5:
            messages.append(("har/dev-2/imu", messages[-12][1]))  # dev-2's message again: repeated_seq

    def run(at_once: bool):
        c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=False),
                     StatefulClassifier(tiny_model, "t"))
        published = []
        c._publish = published.extend
        for a in range(0, len(messages), 17):
            chunk = [(topic, body, 0.0) for topic, body in messages[a:a + 17]]
            if at_once:
                c.handle_many(chunk)
            else:
                for item in chunk:
                    c.handle(*item)
            c._classify()
        return c, [(p.device, p.t_end, p.label, round(p.confidence, 6)) for p in published]

    alone, each = run(False)
    together, cycle = run(True)
    assert len(each) > 20 and cycle == each
    assert together.stats.samples == alone.stats.samples > 0
    assert dict(together.stats.rejected) == dict(alone.stats.rejected)
    assert {"bad_json", "bad_time", "non_finite", "bad_device", "bad_shape", "repeated_seq"} <= set(
        k for k, v in together.stats.rejected.items() if v)
