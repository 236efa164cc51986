"""Phone adapters, session 12: CSV fields float() reads but no CSV writer means (a byte-order mark, '1_0',
non-ASCII digits, a line split at U+2028), clearer CSV errors, and a Sensor Logger gyroscope that covers
only part of a message."""

import numpy as np
import orjson
import pytest

from stream.adapters import CsvAdapter, SensorLoggerAdapter
from stream.decode import Rejected


def rejected(payload: bytes, adapter=None) -> Rejected:
    with pytest.raises(Rejected) as info:
        (adapter or CsvAdapter()).decode(payload, "rig")
    return info.value


# -- CSV -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("body", [b"\xef\xbb\xbft,ax,ay,az\n1,0,0,9.8\n2,0,0,9.7\n",
                                  b"\xef\xbb\xbf1,0,0,9.8\r\n2,0,0,9.7\r\n"])
def test_csv_after_a_byte_order_mark_is_read(body):
    # Windows tools and some phone apps write one before the text: the header (or first line) was refused
    (b,) = CsvAdapter().decode(body, "rig")
    np.testing.assert_allclose(b.t, [1.0, 2.0])
    np.testing.assert_allclose(b.acc[:, 2], [9.8, 9.7], rtol=1e-6)
    # one mark only: a second is no header and no number
    assert rejected(b"\xef\xbb\xbf" + body).reason == "bad_csv"


@pytest.mark.parametrize("line, field", [
    ("1,0,0,1_0", "1_0"),  # float() read it as 10
    ("1_000,0,0,9.8", "1_000"),  # and this as 1000 s
    ("1,0,0,9.8,0,0_5,0", "0_5"),  # a gyro field alike
    ("1,0,0,\uff19", "\uff19"),  # float() reads a fullwidth 9 as 9
    ("1,0,\u0663,9.8", "\u0663"),  # and an Arabic-Indic 3 as 3
])
def test_a_csv_field_float_reads_but_is_no_number_is_refused_naming_it(line, field):
    width = len(line.split(","))
    good = ",".join(["0.5"] + ["0"] * (width - 1))
    exc = rejected(f"t,ax,ay,az\n{good}\n{line}\n".encode())
    assert exc.reason == "bad_csv"
    assert exc.detail == f"line 3: {field!r} is not a number"


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "Infinity", "+infinity", "1e999"])
def test_csv_non_finite_numbers_are_non_finite_as_in_decode_imu(value):
    assert rejected(f"1,0,0,{value}".encode()).reason == "non_finite"


def test_csv_numbers_with_spaces_around_and_every_decimal_form_are_read():
    (b,) = CsvAdapter().decode(b" 1 , 0.5 ,\t-0 , +9.8e0\n2., .5, -1E-1, 9\n", "rig")
    np.testing.assert_allclose(b.t, [1.0, 2.0])
    np.testing.assert_allclose(b.acc, [[0.5, 0, 9.8], [0.5, -0.1, 9]], rtol=1e-6)


@pytest.mark.parametrize("separator", ["\x85", "\u2028", "\u2029", "\x0b", "\x1e"])
def test_a_csv_line_is_not_split_at_other_unicode_line_breaks(separator):
    # str.splitlines() splits there too: a garbled line became two rows taken as samples
    exc = rejected(f"1,0,0,9.8{separator}2,0,0,9.8\n".encode())
    assert exc.reason == "bad_csv" and "line 1" in exc.detail


def test_csv_lines_end_at_newline_cr_lf_or_cr_and_are_numbered_so():
    (b,) = CsvAdapter().decode(b"1,0,0,9.8\r\n2,0,0,9.8\r3,0,0,9.8\n4,0,0,9.8", "rig")
    np.testing.assert_allclose(b.t, [1, 2, 3, 4])
    exc = rejected(b"1,0,0,9.8\r\n2,0,0,9.8\r3,0,0,9.8\n4,0,x,9.8\n")
    assert exc.reason == "bad_csv" and "line 4" in exc.detail and "'x'" in exc.detail


def test_a_csv_line_of_the_other_width_says_what_was_expected():
    # it said 'line 3 has 7 fields, expected 4 or 7'
    exc = rejected(b"t,ax,ay,az\n1,0,0,9.8\n2,0,0,9.8,0,0,0\n")
    assert exc.reason == "bad_shape"
    assert exc.detail == "line 3 has 7 fields, line 2 has 4"


def test_csv_time_going_back_names_the_line():
    exc = rejected(b"# rig\n1,0,0,9.8\n2,0,0,9.8\n\n1.5,0,0,9.8\n")
    assert exc.reason == "bad_time"
    assert exc.detail == "t decreases at line 5: 1.5 after 2.0 (line 3)"


# -- Sensor Logger's gyroscope ---------------------------------------------------------------------
T0 = 1_700_000_000.0


def entry(name, t, v):
    return {"name": name, "time": int(round((T0 + t) * 1e9)),
            "values": {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}}


def message(acc_times, gyro_times):
    entries = [entry("totalacceleration", t, [0, 0, 9.81]) for t in acc_times]
    entries += [entry("gyroscope", t, [t, 0.0, -t]) for t in gyro_times]  # x = time: where each value comes from
    return orjson.dumps({"messageId": 1, "sessionId": "s", "deviceId": "d", "payload": entries})


def runs(batches):
    """Each batch as (first and last time relative to T0, whether it has the gyroscope)."""
    return [(round(b.t[0] - T0, 3), round(b.t[-1] - T0, 3), b.gyro is not None) for b in batches]


ACC = np.arange(50) * 0.01  # 0.5 s at 100 Hz
GYRO = 0.005 + np.arange(50) * 0.01  # the same rate, half a sample after (no time on a bound of the hold)


def test_a_gyroscope_that_stops_early_is_held_no_further_than_the_hold():
    # held without limit, the samples 0.1 s to 0.49 s got the gyroscope's value of 0.095 s
    batches = SensorLoggerAdapter().decode(message(ACC, GYRO[:10]), "p")
    assert runs(batches) == [(0.0, 0.19, True), (0.2, 0.49, False)]  # 0.1 s after the last one at most
    np.testing.assert_allclose(batches[0].gyro[:, 0], np.clip(ACC[:20], 0.005, 0.095), atol=1e-6)
    # nothing lost: every accelerometer sample, in order
    np.testing.assert_allclose(np.concatenate([b.t for b in batches]) - T0, ACC, atol=1e-6)
    assert all(b.device == "p" and len(b.acc) == len(b.t) for b in batches)


def test_a_gyroscope_that_starts_late_or_pauses_covers_only_its_own_times():
    batches = SensorLoggerAdapter().decode(message(ACC, GYRO[30:]), "p")
    assert runs(batches) == [(0.0, 0.2, False), (0.21, 0.49, True)]
    np.testing.assert_allclose(batches[1].gyro[:10, 0], 0.305, atol=1e-6)  # 0.21 to 0.30: its first value
    gap = np.concatenate([GYRO[:5], GYRO[45:]])  # nothing from 0.045 to 0.455 s
    assert runs(SensorLoggerAdapter().decode(message(ACC, gap), "p")) == [
        (0.0, 0.14, True), (0.15, 0.35, False), (0.36, 0.49, True)]


def test_a_gyroscope_a_sample_apart_from_the_accelerometer_still_covers_the_message():
    # the sensors of one message start and end up to a sample apart: no split for that
    (b,) = SensorLoggerAdapter().decode(message(ACC, GYRO[:48]), "p")
    assert b.gyro is not None and len(b) == 50
    # a slow gyroscope (10 Hz) is held over two of its own intervals: 0.14 s after its last sample here
    (b,) = SensorLoggerAdapter().decode(message(ACC, -0.05 + np.arange(5) * 0.1), "p")
    assert b.gyro is not None and len(b) == 50
    np.testing.assert_allclose(b.gyro[-1, 0], 0.35, atol=1e-6)
    # one gyroscope sample (a short batch period) serves the times within the hold of it
    assert runs(SensorLoggerAdapter().decode(message(ACC, [0.025]), "p")) == [(0.0, 0.12, True),
                                                                            (0.13, 0.49, False)]


def test_a_gyro_model_takes_the_samples_with_the_gyroscope_and_counts_the_others(tiny_model):
    import torch

    from models.rnn import HARNet, ModelConfig
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig

    torch.manual_seed(0)
    gyro_model = HARNet(ModelConfig(classes=("a", "b"), input_channels=6, hidden=16, layers=1, rate=25.0,
                                    window=25, hop=25, patch=5)).eval()
    body = message(ACC, GYRO[:10])
    for model, taken, no_gyro in ((gyro_model, 20, 1), (tiny_model, 50, 0)):
        config = ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=False, adapters=("sl/+ = sensor_logger",))
        consumer = Consumer(config, StatefulClassifier(model, "m"))
        consumer.handle("sl/phone", body, 0.0)
        assert consumer.stats.samples == taken
        assert consumer.stats.rejected["no_gyro"] == no_gyro
