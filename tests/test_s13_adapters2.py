"""Phone adapters, second look at 3bd0866/91376f7 (session 13).

- CSV: a number padded with an ASCII information separator (U+001C to U+001F) on an ASCII line raised
  StopIteration out of ``CsvAdapter.decode`` (float() refuses the padding, the field check took it off), which
  ``Consumer.handle`` does not catch: one message ended the consumer. The fast path and the field-by-field path
  must agree on every field.
- Sensor Logger: beyond 4 runs of the gyroscope, runs of several seconds lost it (a gyro model refused whole
  windows of real samples) to bound the batches, which only short runs multiply.
- Android: a message over the sample cap was read event by event before it was refused, the other
  accelerometer's events too (more than 10 times the work of the refusal before 3bd0866).
"""

import numpy as np
import orjson
import pytest
import torch

import stream.adapters as adapters
from models.rnn import HARNet, ModelConfig
from models.state import StatefulClassifier
from stream.adapters import AndroidAdapter, CsvAdapter, SensorLoggerAdapter
from stream.consumer import Consumer, ConsumerConfig
from stream.decode import MAX_SAMPLES, Rejected


def consumer(model, route: str) -> Consumer:
    config = ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=False, adapters=(route,))
    return Consumer(config, StatefulClassifier(model, "m"))


@pytest.fixture
def gyro_model():
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=("a", "b"), input_channels=6, hidden=16, layers=1, rate=25.0,
                              window=50, hop=50, patch=5)).eval()


# -- CSV: the fast path and the field-by-field path --------------------------------------------------
def outcome(body: bytes):
    """What CsvAdapter makes of ``body``: its acc, or the reason it is refused (anything else is raised)."""
    try:
        (b,) = CsvAdapter().decode(body, "rig")
    except Rejected as exc:
        return exc.reason
    return b.acc.tolist()


@pytest.mark.parametrize("sep", ["\x1c", "\x1d", "\x1e", "\x1f"])
def test_a_number_padded_with_an_information_separator_is_refused_not_raised(sep, tiny_model):
    # StopIteration before: float() refuses '\x1c2' on the ASCII fast path, the field check took the padding
    # off and found every field a number, so the error's field was never found
    assert outcome(f"1,{sep}2,0,0\n".encode()) == "bad_csv"
    assert outcome(f"1,2{sep},0,0\n2,0,0,0\n".encode()) == "bad_csv"
    c = consumer(tiny_model, "csv/+ = csv")
    c.handle("csv/rig", f"1,{sep}2,0,0\n".encode(), 0.0)  # raised out of handle: the consumer's loop ended
    assert c.stats.rejected["bad_csv"] == 1


def test_the_fast_path_and_the_field_path_read_every_ascii_padding_alike():
    # the second line goes field by field (a no-break space in it), the first by float() alone
    for code in range(128):
        c = chr(code)
        if c in "\r\n,":
            continue
        for field in (f"{c}2", f"2{c}", f"{c}2{c}"):
            fast = outcome(f"1,{field},0,0\n".encode())
            slow = outcome(f"1\u00a0,{field},0,0\n".encode())
            assert fast == slow, (repr(field), fast, slow)


# -- Sensor Logger: long runs of the gyroscope ---------------------------------------------------------
T0 = 1_700_000_000.0


def entry(name, t, v):
    return {"name": name, "time": int(round((T0 + t) * 1e9)),
            "values": {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}}


def pausing(runs: int, length: float = 2.5, pause: float = 1.2, rate: float = 50.0):
    """A Sensor Logger message at ``rate`` Hz whose gyroscope runs ``runs`` times for ``length`` s with pauses of
    ``pause`` s (beyond the 1 s that is bridged); the gyroscope's x is its time."""
    acc_t = np.arange(int(round((runs * (length + pause) - pause) * rate))) / rate
    spans = [(k * (length + pause), k * (length + pause) + length) for k in range(runs)]
    gyro_t = np.array([x for x in acc_t + 0.5 / rate if any(a <= x < b for a, b in spans)])
    entries = [entry("totalacceleration", x, [0.0, 0.0, 9.81]) for x in acc_t]
    entries += [entry("gyroscope", x, [x, 0.0, 0.0]) for x in gyro_t]
    return acc_t, gyro_t, spans, orjson.dumps({"messageId": 1, "sessionId": "s", "deviceId": "d", "payload": entries})


def test_runs_of_the_gyroscope_lasting_seconds_all_keep_it():
    # 6 runs of 2.5 s, 1.2 s apart: the 2 shortest (in samples) went without it, 250 samples a gyro model refused
    acc_t, gyro_t, spans, body = pausing(6)
    assert len(body) < 256 * 1024  # a message the consumer takes
    batches = SensorLoggerAdapter().decode(body, "p")
    with_gyro = [b for b in batches if b.gyro is not None]
    assert len(with_gyro) == 6
    for b, (a, z) in zip(with_gyro, spans, strict=True):
        assert a - 0.1 <= b.t[0] - T0 <= a and z - 0.03 <= b.t[-1] - T0 <= z + 0.1  # within the hold (0.1 s)
        np.testing.assert_allclose(b.gyro[:, 0], np.interp(b.t - T0, gyro_t, gyro_t), atol=2e-3)  # its own
    np.testing.assert_allclose(np.concatenate([b.t for b in batches]) - T0, acc_t, atol=1e-6)  # all, in order


def test_a_gyro_model_takes_every_long_run_of_the_gyroscope(gyro_model):
    *_, body = pausing(5)
    batches = SensorLoggerAdapter().decode(body, "p")
    c = consumer(gyro_model, "sl/+ = sensor_logger")
    c.handle("sl/phone", body, 0.0)
    taken = sum(len(b) for b in batches if b.gyro is not None)
    assert c.stats.samples == taken >= 5 * 125  # 2.5 s at 50 Hz in each run (532 before: one run refused)
    assert c.stats.rejected["no_gyro"] == 4  # the pauses


def test_short_runs_are_still_bounded_beside_long_ones():
    # 3 long runs, then 20 bursts too far apart to bridge: the long ones and the longest of the short ones, up to 4
    rate = 50.0
    acc_t = np.arange(int(36 * rate)) / rate  # 1,800 samples
    gyro_t = [x for x in acc_t[:int(12 * rate)] + 0.01 if x % 4.0 < 2.5]  # 2.5 s on, 1.5 s off: 3 runs
    gyro_t += [12.0 + 1.2 * k + 0.01 for k in range(20)]  # then one sample every 1.2 s
    entries = [entry("totalacceleration", x, [0.0, 0.0, 9.81]) for x in acc_t]
    entries += [entry("gyroscope", x, [0.0, 0.0, 0.0]) for x in gyro_t]
    body = orjson.dumps({"deviceId": "d", "payload": entries})
    batches = SensorLoggerAdapter(max_bytes=10**7).decode(body, "p")
    with_gyro = [b for b in batches if b.gyro is not None]
    assert len(with_gyro) == 4
    assert all(b.t[-1] - b.t[0] > 2.5 for b in with_gyro[:3])
    assert len(batches) <= 9


# -- Android: the sample cap before the events are read ------------------------------------------------
def events(kind: str, n: int, bad_at: int | None = None) -> list:
    out = [{"type": f"android.sensor.{kind}", "timestamp": 10**9 + k * 10_000_000, "values": [0, 0, 9.8]}
           for k in range(n)]
    if bad_at is not None:
        out[bad_at]["values"] = "x"
    return out


@pytest.fixture
def numbers_read(monkeypatch):
    calls = [0]
    real = adapters._is_number

    def counted(value):
        calls[0] += 1
        return real(value)

    monkeypatch.setattr(adapters, "_is_number", counted)
    return calls


def test_a_message_over_the_cap_is_refused_before_its_events_are_read(numbers_read):
    # 3 x MAX_SAMPLES events: each one's timestamp and values were checked (24,000 numbers) before the refusal
    with pytest.raises(Rejected) as info:
        AndroidAdapter(max_bytes=10**7).decode(orjson.dumps(events("accelerometer", 3 * MAX_SAMPLES)), "pixel")
    assert info.value.reason == "too_many_samples"
    assert numbers_read[0] <= 4 * (MAX_SAMPLES + 1)


def test_the_other_accelerometer_is_not_read_beside_the_calibrated_one(numbers_read):
    # 'only those are read': the uncalibrated events were read (and a malformed one refused the message)
    body = orjson.dumps(events("accelerometer_uncalibrated", 3000, bad_at=2000) + events("accelerometer", 1500))
    (b,) = AndroidAdapter(max_bytes=10**7).decode(body, "pixel")
    assert len(b) == 1500
    assert numbers_read[0] <= 4 * 1500


def test_the_gyroscope_is_bridged_no_further_than_the_consumer_bridges_a_silence(tiny_model):
    # GYRO_BRIDGE is honest as long as it is no more than the buffer's max_gap: a gyro model's buffer interpolates
    # both sensors over a hole that long anyway, and restarts its grid after a longer one
    c = consumer(tiny_model, "sl/+ = sensor_logger")
    assert SensorLoggerAdapter.GYRO_BRIDGE <= c.pipeline.max_gap
