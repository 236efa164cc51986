"""Phone adapters, session 13: CSV numbers padded with Unicode spaces (a no-break space, as phone apps in
some locales write), Sensor Logger accelerometer samples outside the gravity samples (dropped uncounted),
the Android sample cap counting sensor types the adapter ignores, and a flickering gyroscope making a
batch of every run."""

import unicodedata

import numpy as np
import orjson
import pytest
import torch

from models.rnn import HARNet, ModelConfig
from models.state import StatefulClassifier
from stream.adapters import REJECT_REASONS, AndroidAdapter, CsvAdapter, SensorLoggerAdapter
from stream.consumer import Consumer, ConsumerConfig
from stream.decode import MAX_SAMPLES, Rejected

# -- CSV numbers padded with Unicode spaces --------------------------------------------------------
SPACES = [chr(c) for c in range(0x10000) if unicodedata.category(chr(c)) == "Zs" and chr(c) != " "]


def test_every_unicode_space_is_known():
    # the space separators of the Unicode database Python ships: the list the test below runs over
    assert "\u00a0" in SPACES and "\u202f" in SPACES and "\u3000" in SPACES and len(SPACES) == 16


@pytest.mark.parametrize("space", SPACES, ids=[f"U+{ord(s):04X}" for s in SPACES])
def test_csv_numbers_padded_with_a_unicode_space_read_as_with_an_ascii_one(space):
    # they were refused as bad_csv ("'\xa00.5' is not a number") where ' 0.5' is read
    ascii_padded = CsvAdapter().decode(b"t,ax,ay,az,gx,gy,gz\n 1, 0.5 ,0,9.8,0,0,0\n2 ,0,-1e-1 , 9,0.1,0,0\n", "rig")
    body = (f"t,ax,ay,az,gx,gy,gz\n{space}1,{space}0.5{space},0,9.8,0,0,0\n"
            f"2{space},0,-1e-1{space}{space},{space}9,0.1,0,0\n")
    (b,) = CsvAdapter().decode(body.encode(), "rig")
    (a,) = ascii_padded
    np.testing.assert_array_equal(b.t, a.t)
    np.testing.assert_array_equal(b.acc, a.acc)
    np.testing.assert_array_equal(b.gyro, a.gyro)
    np.testing.assert_allclose(b.acc, [[0.5, 0, 9.8], [0, -0.1, 9]], rtol=1e-6)


@pytest.mark.parametrize(("field", "why"), [
    ("1\u00a0000", "1\u00a0000"),  # a space inside a number (digit grouping) is no number, as '1 000' is not
    ("\u200b9.8", "\u200b9.8"),  # a zero-width space is no space (Unicode: a format character)
    ("\u00a0\uff19\u00a0", "\u00a0\uff19\u00a0"),  # padding taken off, a fullwidth 9 is still no ASCII digit
])
def test_csv_fields_that_are_not_padded_numbers_are_still_refused(field, why):
    with pytest.raises(Rejected) as info:
        CsvAdapter().decode(f"1,0,0,0\n2,{field},0,0\n".encode(), "rig")
    assert info.value.reason == "bad_csv"
    assert info.value.detail == f"line 2: {why!r} is not a number"


# -- Sensor Logger: accelerometer samples without gravity ------------------------------------------
T0 = 1_700_000_000.0
ACC = np.arange(50) * 0.01  # 0.5 s at 100 Hz


def entry(name, t, v):
    return {"name": name, "time": int(round((T0 + t) * 1e9)),
            "values": {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}}


def sensor_logger(entries) -> bytes:
    return orjson.dumps({"messageId": 1, "sessionId": "s", "deviceId": "d", "payload": entries})


def with_gravity(acc_times, gravity_times) -> bytes:
    return sensor_logger([entry("accelerometer", t, [0.1, 0, 0]) for t in acc_times]
                         + [entry("gravity", t, [0, 0, 9.81]) for t in gravity_times])


def consumer(model, adapter="sensor_logger") -> Consumer:
    config = ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=False, adapters=(f"sl/+ = {adapter}",))
    return Consumer(config, StatefulClassifier(model, "m"))


def test_accelerometer_samples_outside_the_gravity_samples_are_counted_parts():
    # gravity from 0.205 to 0.295 s: the samples within 0.1 s of it, 0.11 to 0.39 s, are read; the 11 before
    # and the 10 after were dropped without a count
    batches = SensorLoggerAdapter().decode(with_gravity(ACC, 0.205 + np.arange(10) * 0.01), "p")
    (b,) = batches
    np.testing.assert_allclose(b.t - T0, ACC[11:40], atol=1e-6)
    np.testing.assert_allclose(b.acc, np.tile([0.1, 0, 9.81], (29, 1)), rtol=1e-6)
    assert [(d.reason, d.detail) for d in batches.dropped] == [
        ("no_gravity", "11 accelerometer samples more than 0.1 s before the first gravity sample"),
        ("no_gravity", "10 accelerometer samples more than 0.1 s after the last gravity sample")]
    assert "no_gravity" in REJECT_REASONS
    # covered: nothing dropped
    assert SensorLoggerAdapter().decode(with_gravity(ACC, ACC + 0.005), "p").dropped == []


def test_a_message_whose_accelerometer_is_all_outside_the_gravity_samples_is_no_gravity():
    # it was bad_time, where a part of it is now no_gravity: the same cause, the same name
    with pytest.raises(Rejected) as info:
        SensorLoggerAdapter().decode(with_gravity(ACC, [5.0, 5.01]), "p")
    assert info.value.reason == "no_gravity"


def test_the_consumer_counts_the_samples_without_gravity_and_takes_the_others(tiny_model):
    c = consumer(tiny_model)
    c.handle("sl/phone", with_gravity(ACC, 0.205 + np.arange(10) * 0.01), 0.0)
    assert c.stats.samples == 29
    assert c.stats.rejected["no_gravity"] == 2  # a part before, a part after
    assert c._rejected()["no_gravity"] == 2  # as the metrics carry it


# -- Android: the sample cap counts the accelerometer samples read ---------------------------------
def android(kinds_and_counts) -> bytes:
    events = []
    for kind, n in kinds_and_counts:
        events += [{"type": f"android.sensor.{kind}", "timestamp": 10**9 + k * 20_000_000,
                    "values": [0, 0, 9.8]} for k in range(n)]
    return orjson.dumps(events)


def test_android_events_of_ignored_types_do_not_count_toward_the_sample_cap():
    # 1,200 gyroscope events and 900 accelerometer ones: refused too_many_samples (2,100 > 2,000), all 900 lost
    body = android([("gyroscope", 1200), ("accelerometer", 900)])
    (b,) = AndroidAdapter().decode(body, "pixel")
    assert len(b) == 900
    # both accelerometers: only the calibrated one is read, so only it counts
    (b,) = AndroidAdapter().decode(android([("accelerometer_uncalibrated", 1100), ("accelerometer", 1000)]), "pixel")
    assert len(b) == 1000


def test_android_accelerometer_samples_beyond_the_cap_are_still_refused():
    with pytest.raises(Rejected) as info:
        AndroidAdapter().decode(android([("gyroscope", 10), ("accelerometer", MAX_SAMPLES + 1)]), "pixel")
    assert info.value.reason == "too_many_samples"
    # and a message of more events than AndroidAdapter.MAX_EVENTS, whatever their types, before reading them
    with pytest.raises(Rejected) as info:
        AndroidAdapter(max_bytes=10**7).decode(orjson.dumps([{"type": "x"}] * (8 * MAX_SAMPLES + 1)), "pixel")
    assert info.value.reason == "too_many_samples"


# -- Sensor Logger: a flickering gyroscope ---------------------------------------------------------
def flickering(n=1000, period=0.6):
    """``n`` accelerometer samples at 10 Hz; a burst of 3 gyroscope samples every ``period`` s, 0.03 s after an
    accelerometer sample: the accelerometer samples within 0.1 s of a burst have the gyroscope, the others
    (the 3 to 4 after, at 0.6 s) do not. The gyroscope's x is its time, so that an interpolated x is the time."""
    acc_t = np.arange(n) * 0.1
    gyro_t = np.concatenate([[b, b + 0.001, b + 0.002] for b in np.arange(0.03, acc_t[-1], period)])
    entries = [entry("totalacceleration", t, [0, 0, 9.81]) for t in acc_t]
    entries += [entry("gyroscope", t, [t, 0.0, -t]) for t in gyro_t]
    return acc_t, gyro_t, sensor_logger(entries)


def check_flickering(batches, acc_t, gyro_t):
    # a batch per run before (334 for the 0.6 s bursts); the gyroscope in 4 runs (GYRO_RUNS), 9 batches at most
    assert len(batches) <= 9
    with_gyro = [b for b in batches if b.gyro is not None]
    assert 0 < len(with_gyro) <= 4
    # every accelerometer sample, in order, none twice, none refused
    np.testing.assert_allclose(np.concatenate([b.t for b in batches]) - T0, acc_t, atol=1e-6)
    assert batches.dropped == []
    for b in with_gyro:  # the gyroscope's values are the adapter's reading: interpolated between its samples
        inner = (b.t - T0 >= gyro_t[0]) & (b.t - T0 <= gyro_t[-1])
        np.testing.assert_allclose(b.gyro[inner, 0], b.t[inner] - T0, atol=1e-3)
    return with_gyro


def test_a_gyroscope_flickering_with_short_gaps_is_interpolated_over_them():
    # gaps of 0.5 s: the consumer's buffer bridges them anyway (interpolating both sensors over the samples a
    # gyroscope model refused); now the gyroscope is interpolated over the shortest and the accelerometer is read
    acc_t, gyro_t, body = flickering(period=0.6)
    with_gyro = check_flickering(SensorLoggerAdapter().decode(body, "p"), acc_t, gyro_t)
    assert sum(len(b) for b in with_gyro) > 0.98 * len(acc_t)  # 986: the last 3 gaps and the end


def test_a_gyroscope_flickering_with_long_gaps_keeps_its_longest_runs():
    # gaps of 1.4 s, beyond what the buffer bridges (1 s): no gyroscope made up over them; the runs it keeps
    # are within the hold of a burst, the others' samples go without it
    acc_t, gyro_t, body = flickering(period=1.5)
    batches = SensorLoggerAdapter().decode(body, "p")
    for b in check_flickering(batches, acc_t, gyro_t):
        assert (np.abs(((b.t - T0) - 0.03 + 0.75) % 1.5 - 0.75) <= 0.1 + 1e-6).all()


def test_the_gyroscope_is_bridged_over_the_shortest_gaps_first():
    adapter = SensorLoggerAdapter()
    adapter.GYRO_RUNS = 2
    t = np.arange(40) * 0.1
    covered = np.zeros(40, dtype=bool)
    for a, b in ((0, 2), (4, 6), (21, 23), (28, 30), (37, 40)):  # gaps of 0.3, 1.6, 0.6, 0.8 s
        covered[a:b] = True
    starts, ends, kept = adapter._bounded(t, covered)
    # 5 runs, 3 too many: the gaps of 0.3, 0.6 and 0.8 s are bridged, not the 1.6 s one
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == [(0, 6), (6, 21), (21, 40)]
    assert kept[0] and not kept[6] and kept[21]
    # gaps of 0.3, 1.6, 0.3 and 1.3 s: the two of 0.3 s are bridged, the others are past GYRO_BRIDGE; of the 3
    # runs left, the 2 longest keep the gyroscope, the last (2 samples) goes without
    covered[:] = False
    for a, b in ((0, 2), (4, 6), (21, 23), (25, 26), (38, 40)):
        covered[a:b] = True
    starts, ends, kept = adapter._bounded(t, covered)
    assert np.flatnonzero(kept).tolist() == list(range(0, 6)) + list(range(21, 26))
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == [(0, 6), (6, 21), (21, 26), (26, 40)]


def test_a_flickering_gyroscope_reaches_the_consumer_counted(tiny_model):
    torch.manual_seed(0)
    gyro_model = HARNet(ModelConfig(classes=("a", "b"), input_channels=6, hidden=16, layers=1, rate=25.0,
                                    window=25, hop=25, patch=5)).eval()
    for period, no_gyro in ((0.6, 4), (1.5, 4)):  # 3 gaps and the end (1.5: the first run starts at 0)
        acc_t, _, body = flickering(period=period)
        assert len(body) < 256 * 1024  # under the consumer's cap
        c = consumer(tiny_model)  # an accelerometer model takes every sample
        c.handle("sl/phone", body, 0.0)
        assert c.stats.samples == len(acc_t)
        assert not c.stats.rejected
        # a gyroscope model takes the runs with it, the parts without are counted no_gyro: a few, not 167
        c = consumer(gyro_model)
        c.handle("sl/phone", body, 0.0)
        assert 0 < c.stats.samples < len(acc_t)
        assert c.stats.rejected["no_gyro"] == no_gyro
