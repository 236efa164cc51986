"""Property tests over every decoder: no input crashes one, every refusal has a known reason, and
whatever is accepted keeps the batch invariants the buffers rely on."""

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stream.adapters import ADAPTERS, REJECT_REASONS, AdapterRouter
from stream.decode import MAX_SAMPLES, Rejected, SampleBatch
from stream.labels import decode_label

KNOWN_REASONS = set(REJECT_REASONS) | {"bad_label"}
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ROUTES = ["sl/+ = sensor_logger", "sl-any = sensor_logger", "ios/+ = sensor_logger_ios",
          "android/+/accelerometer = android", "csv/+ = csv"]
ROUTER = AdapterRouter.from_spec(ROUTES)


def adapter_decoder(name):
    adapter = ADAPTERS[name]()
    return lambda payload: adapter.decode(payload, "dev-1", "android/dev-1/accelerometer")


DECODERS = {name: adapter_decoder(name) for name in ADAPTERS}
DECODERS["label"] = decode_label
DECODERS["router"] = lambda payload: ROUTER.decode("sl-any", payload)


def check(decoder, payload: bytes) -> None:
    """Accepted with the invariants, or refused with a known reason; nothing else."""
    try:
        result = decoder(payload)
    except Rejected as exc:
        assert exc.reason in KNOWN_REASONS, exc.reason
        return
    if isinstance(result, tuple):  # decode_label
        label, start, end = result
        assert isinstance(label, str) and 0 < len(label) <= 64 and np.isfinite(start)
        assert end is None or end > start
        return
    assert isinstance(result, list)
    for batch in result:
        assert isinstance(batch, SampleBatch)
        n = len(batch.t)
        assert 0 < n <= MAX_SAMPLES
        assert batch.t.dtype == np.float64 and batch.t.shape == (n,) and np.isfinite(batch.t).all()
        assert (np.diff(batch.t) >= 0).all()
        assert batch.acc.dtype == np.float32 and batch.acc.shape == (n, 3) and np.isfinite(batch.acc).all()
        if batch.gyro is not None:
            assert batch.gyro.dtype == np.float32 and batch.gyro.shape == (n, 3)
            assert np.isfinite(batch.gyro).all()


# -- inputs ----------------------------------------------------------------------------------------
KEYS = ["seq", "t", "t0", "rate", "acc", "gyro", "unit", "label", "start", "end", "payload", "deviceId",
        "messageId", "name", "time", "values", "x", "y", "z", "type", "timestamp"]
NAMES = ["totalacceleration", "accelerometer", "gravity", "accelerometeruncalibrated", "gyroscope",
         "location", "TotalAcceleration"]
TYPES = ["android.sensor.accelerometer", "android.sensor.accelerometer_uncalibrated",
         "android.sensor.gyroscope", "android.gps"]
numbers = (st.integers(min_value=-(2**63), max_value=2**64 - 1)
           | st.floats(allow_nan=False, allow_infinity=False) | st.sampled_from([0, 1, 9.81, 1e39, -1e308]))
scalars = st.none() | st.booleans() | numbers | st.text(max_size=20)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), children, max_size=6),
    max_leaves=40,
)
xyz = st.lists(numbers, min_size=3, max_size=3)
imu_like = st.fixed_dictionaries({}, optional={
    "seq": scalars, "t": st.lists(numbers, max_size=5) | json_values, "t0": scalars, "rate": scalars,
    "acc": st.lists(xyz | json_values, max_size=5) | json_values,
    "gyro": st.lists(xyz, max_size=5) | json_values,
    "unit": st.sampled_from(["m/s2", "g", "furlongs"]) | scalars})
sensor_logger_like = st.fixed_dictionaries({"deviceId": st.text(max_size=10) | scalars}, optional={
    "payload": st.lists(st.fixed_dictionaries(
        {"name": st.sampled_from(NAMES) | scalars},
        optional={"time": numbers | scalars,
                  "values": st.fixed_dictionaries({"x": numbers, "y": numbers, "z": numbers}) | json_values}),
        max_size=8) | json_values})
android_event = st.fixed_dictionaries({}, optional={
    "type": st.sampled_from(TYPES) | scalars, "timestamp": numbers | scalars,
    "values": st.lists(numbers, min_size=0, max_size=7) | json_values})
android_like = android_event | st.lists(android_event, max_size=5)
label_like = st.fixed_dictionaries({}, optional={
    "label": st.text(max_size=70) | scalars, "t": numbers | scalars, "start": numbers | scalars,
    "end": numbers | scalars})
structured = imu_like | sensor_logger_like | android_like | label_like | json_values
tokens = st.sampled_from(["1", "-2.5", "9.81", "nan", "inf", "1e39", "x", "", " 3 ", "t", "time", "#"]) | \
    numbers.map(repr)
csv_like = st.lists(st.lists(tokens, min_size=0, max_size=8).map(",".join), max_size=8).map("\n".join)

decoder_names = pytest.mark.parametrize("name", sorted(DECODERS))


@decoder_names
@SETTINGS
@given(payload=st.binary(max_size=300))
def test_any_bytes(name, payload):
    check(DECODERS[name], payload)


@decoder_names
@SETTINGS
@given(value=structured)
def test_any_json(name, value):
    check(DECODERS[name], orjson.dumps(value))


@decoder_names
@SETTINGS
@given(text=csv_like)
def test_any_csv_text(name, text):
    check(DECODERS[name], text.encode())


@settings(max_examples=200, deadline=None)
@given(topic=st.text(max_size=40) | st.lists(st.sampled_from(["sl", "har", "csv", "android", "accelerometer",
                                                              "imu", "+", "", "dev-1", "_x", "a b"]),
                                             max_size=4).map("/".join),
       value=structured)
def test_router_any_topic(topic, value):
    check(lambda payload: ROUTER.decode(topic, payload), orjson.dumps(value))


# -- a cycle's payloads decoded at once ------------------------------------------------------------
valid_imu = st.builds(
    lambda seq, t, rows, unit: {"seq": seq, "t": sorted(t)[: len(rows)], "acc": rows[: len(t)], **unit},
    st.integers(0, 2**40), st.lists(st.floats(-1e6, 1e10), min_size=1, max_size=6),
    st.lists(st.lists(st.floats(-1e3, 1e3) | st.sampled_from([1e39, float("nan")]), min_size=3, max_size=3),
             min_size=1, max_size=6),
    st.sampled_from([{}, {"unit": "m/s2"}, {"unit": "g"}]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=st.lists(valid_imu | imu_like | json_values, max_size=8))
def test_decoding_a_cycle_at_once_is_decoding_each_message(values):
    """decode_imu_many gives, item by item, what decode_imu gives: the same arrays, or the same reason."""
    from stream.decode import decode_imu, decode_imu_many

    items = [(orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS) if not isinstance(v, bytes) else v, f"d{i}")
             for i, v in enumerate(values)]
    many = decode_imu_many(items)
    assert len(many) == len(items)
    for (payload, device), got in zip(items, many, strict=True):
        try:
            want = decode_imu(payload, device)
        except Rejected as exc:
            assert isinstance(got, Rejected) and got.reason == exc.reason
            continue
        assert isinstance(got, SampleBatch), got
        assert (got.device, got.seq) == (want.device, want.seq) and got.gyro is None and want.gyro is None
        assert got.t.dtype == want.t.dtype and got.acc.dtype == want.acc.dtype
        np.testing.assert_array_equal(got.t, want.t)
        np.testing.assert_array_equal(got.acc, want.acc)
        assert got.t.base is None and got.acc.base is None  # its own memory, not a view of the cycle's
