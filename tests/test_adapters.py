"""Payload adapters: one contract test run against every adapter, then each format's own cases."""

import numpy as np
import orjson
import pytest

from stream.adapters import (
    ADAPTERS,
    REJECT_REASONS,
    AdapterRouter,
    AndroidAdapter,
    CsvAdapter,
    Route,
    SensorLoggerAdapter,
)
from stream.buffers import DeviceBuffer
from stream.decode import MAX_SAMPLES, REASONS, G, Rejected


# -- how each format says "these samples": t (s), acc (m/s², Android convention) ---------------------
def native(t, acc):
    return orjson.dumps({"seq": 0, "t": t.tolist(), "acc": acc.tolist()})


def sensor_logger(t, acc, device="sl-phone"):
    entries = [{"name": "totalacceleration", "time": int(round(ti * 1e9)), "accuracy": 3,
                "values": {"x": a[0], "y": a[1], "z": a[2]}} for ti, a in zip(t, acc.tolist(), strict=True)]
    entries.append({"name": "location", "time": int(t[0] * 1e9), "values": {"latitude": 51.5}})
    return orjson.dumps({"messageId": 3, "sessionId": "0a1b", "deviceId": device, "payload": entries})


def sensor_logger_ios(t, acc):
    """An iPhone without "Standardise Units & Frames": user acceleration + gravity, both negated."""
    gravity = np.tile([0.0, 0.0, 9.81], (len(t), 1))
    entries = []
    for ti, lin, g in zip(t, (acc - gravity).tolist(), gravity.tolist(), strict=True):
        stamp = int(round(ti * 1e9))
        entries.append({"name": "accelerometer", "time": stamp, "values": xyz(-np.array(lin))})
        entries.append({"name": "gravity", "time": stamp, "values": xyz(-np.array(g))})
    return orjson.dumps({"messageId": 0, "sessionId": "s", "deviceId": "ios", "payload": entries})


def xyz(v):
    return {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}


def android(t, acc):
    events = [{"type": "android.sensor.accelerometer", "timestamp": int(round(ti * 1e9)), "values": a}
              for ti, a in zip(t, acc.tolist(), strict=True)]
    return orjson.dumps(events[0] if len(events) == 1 else events)


def csv(t, acc):
    lines = (f"{ti!r},{a[0]!r},{a[1]!r},{a[2]!r}\n" for ti, a in zip(t.tolist(), acc.tolist(), strict=True))
    return ("t,ax,ay,az\n" + "".join(lines)).encode()


EXAMPLES = {"native": native, "sensor_logger": sensor_logger, "sensor_logger_ios": sensor_logger_ios,
            "android": android, "csv": csv}
ROUTER = AdapterRouter.from_spec([f"{name}/+ = {name}" for name in ADAPTERS if name != "native"],
                                 max_bytes=10**7)


def topic(name: str, device: str = "dev-1") -> str:
    return f"har/{device}/imu" if name == "native" else f"{name}/{device}"


def still_and_moving(n=50, rate=50.0, t0=1_700_000_000.0):
    """A phone lying screen up (+9.81 on z), then moved a little: irregular real-world numbers."""
    t = t0 + np.arange(n) / rate
    acc = np.stack([0.3 * np.sin(5 * t), -0.2 * np.cos(3 * t), 9.81 + 0.5 * np.sin(7 * t)], axis=1)
    return t, acc


def reason(call) -> str:
    with pytest.raises(Rejected) as info:
        call()
    assert info.value.reason in REJECT_REASONS, info.value.reason
    return info.value.reason


# -- the contract --------------------------------------------------------------------------------
def test_every_adapter_has_an_example():
    assert set(EXAMPLES) == set(ADAPTERS)


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_specific_force_in_seconds_and_android_convention(name):
    t, acc = still_and_moving()
    batches = ROUTER.decode(topic(name), EXAMPLES[name](t, acc))
    assert len(batches) == 1
    b = batches[0]
    assert b.device == "dev-1"  # from the topic, whatever the payload says
    assert b.t.dtype == np.float64 and b.t.shape == (len(t),)
    assert b.acc.dtype == np.float32 and b.acc.shape == (len(t), 3)
    assert b.gyro is None or (b.gyro.dtype == np.float32 and b.gyro.shape == (len(t), 3))
    np.testing.assert_allclose(b.t, t, atol=1e-6)  # ns → s keeps µs on epoch times
    np.testing.assert_allclose(b.acc, acc, atol=1e-4)
    assert b.acc[:, 2].mean() == pytest.approx(9.81, abs=0.2)  # lying screen up


@pytest.mark.parametrize("name", sorted(ADAPTERS))
@pytest.mark.parametrize("payload", [b"", b"{", b"[]", b"null", b"\xff\xfe", b"1,2,3", b'{"payload": 5}',
                                     b'[{"type": 1}]', b"t,ax\n1,2", b'{"acc": [[1, 2, 3]]}'])
def test_garbage_is_rejected_with_a_named_reason(name, payload):
    reason(lambda: ROUTER.decode(topic(name), payload))


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_oversize_rejected_before_parsing(name):
    t, acc = still_and_moving()
    assert reason(lambda: ADAPTERS[name](max_bytes=100).decode(EXAMPLES[name](t, acc), "dev-1")) == "oversize"


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_batch_size_is_capped(name):
    t, acc = still_and_moving(n=MAX_SAMPLES + 1)
    assert reason(lambda: ROUTER.decode(topic(name), EXAMPLES[name](t, acc))) == "too_many_samples"


@pytest.mark.parametrize("name", sorted(ADAPTERS))
@pytest.mark.parametrize("device", ["-dash", "x" * 65, "dev 1", "_consumer", ""])
def test_invalid_device_in_topic_rejected(name, device):
    t, acc = still_and_moving(n=3)
    got = reason(lambda: ROUTER.decode(topic(name, device), EXAMPLES[name](t, acc)))
    assert got in ("bad_device", "bad_topic")


@pytest.mark.filterwarnings("ignore:overflow encountered in cast")  # decode_imu's cast; NativeAdapter checks
@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_values_beyond_float32_are_not_finite(name):
    t, acc = still_and_moving(n=3)
    acc[1, 0] = 1e39  # finite as float64, inf as float32
    assert reason(lambda: ROUTER.decode(topic(name), EXAMPLES[name](t, acc))) == "non_finite"


@pytest.mark.parametrize("name", sorted(ADAPTERS))
def test_windows_of_a_phone_at_rest(name):
    t, acc = still_and_moving(n=200)
    buf = DeviceBuffer("dev-1", rate=25.0, window=25)
    windows = []
    for a in range(0, 200, 20):
        for b in ROUTER.decode(topic(name), EXAMPLES[name](t[a:a + 20], acc[a:a + 20])):
            windows += buf.push(b.t, b.acc, 0.0)
    assert len(windows) == 4 and buf.late_samples == 0  # 3.98 s: 100 grid samples
    assert np.mean([w.samples[:, 2].mean() for w in windows]) == pytest.approx(9.81, abs=0.2)


# -- Sensor Logger ---------------------------------------------------------------------------------
def sl_message(entries, device="phone-1"):
    return orjson.dumps({"messageId": 1, "sessionId": "s", "deviceId": device, "payload": entries})


def entry(name, t, x, y, z):
    return {"name": name, "time": int(t * 1e9), "values": {"x": x, "y": y, "z": z}}


def test_sensor_logger_documented_schema_device_from_payload():
    """The schema of awesome-sensor-logger's PUSHING.md, on a topic without a device level."""
    router = AdapterRouter.from_spec(["sensor-logger = sensor_logger"])
    body = sl_message([entry("totalacceleration", 1698501144.401773, 0.1, 0.2, 9.8),
                       {"name": "location", "time": 1698501145514000000, "latitude": 0.0},
                       entry("TotalAcceleration", 1698501144.411773, 0.1, 0.2, 9.7)], device="8E2D-41aa")
    (b,) = router.decode("sensor-logger", body)
    assert b.device == "8E2D-41aa" and len(b) == 2
    np.testing.assert_allclose(b.t, [1698501144.401773, 1698501144.411773], atol=1e-6)
    forged = sl_message([], device="../etc/passwd")
    assert reason(lambda: router.decode("sensor-logger", forged)) == "bad_device"
    assert reason(lambda: router.decode("sensor-logger", sl_message([], device=None))) == "bad_device"


def test_sensor_logger_accelerometer_excludes_gravity():
    lin = [entry("accelerometer", 10 + k * 0.01, 1.0, 0.0, 0.0) for k in range(5)]
    grav = [entry("gravity", 10 + k * 0.02, 0.0, 0.0, 9.81) for k in range(3)]  # other times: interpolated
    (b,) = SensorLoggerAdapter().decode(sl_message(lin + grav), "p")
    np.testing.assert_allclose(b.acc, [[1.0, 0.0, 9.81]] * 5, atol=1e-5)
    with pytest.raises(Rejected) as info:
        SensorLoggerAdapter().decode(sl_message(lin), "p")  # no gravity: not specific force
    assert info.value.reason == "ignored_type" and "gravity" in info.value.detail


def test_sensor_logger_prefers_total_acceleration():
    body = sl_message([entry("accelerometer", 1.0, 5, 5, 5), entry("gravity", 1.0, 0, 0, 9.81),
                       entry("totalacceleration", 1.0, 0.0, 0.0, 9.81)])
    (b,) = SensorLoggerAdapter().decode(body, "p")
    np.testing.assert_allclose(b.acc, [[0.0, 0.0, 9.81]], atol=1e-5)


def test_sensor_logger_ios_frame_negates():
    body = sl_message([entry("accelerometer", 1.0, 0.5, 0, 0), entry("gravity", 1.0, 0, 0, -9.81)])
    (android_b,) = SensorLoggerAdapter(frame="android").decode(body, "p")
    (ios_b,) = SensorLoggerAdapter(frame="ios").decode(body, "p")
    np.testing.assert_allclose(ios_b.acc, [[-0.5, 0.0, 9.81]], atol=1e-5)
    np.testing.assert_allclose(android_b.acc, -ios_b.acc)
    with pytest.raises(ValueError, match="frame"):
        SensorLoggerAdapter(frame="upside-down")


def test_sensor_logger_uncalibrated_in_g_means_an_unstandardised_iphone():
    raw_g = [entry("accelerometeruncalibrated", 1 + k * 0.01, 0.0, 0.0, -1.0) for k in range(4)]
    (b,) = SensorLoggerAdapter().decode(sl_message(raw_g), "p")
    np.testing.assert_allclose(b.acc, [[0.0, 0.0, G]] * 4, atol=1e-4)
    # in g, so iOS: the calibrated sensors of the same message are negated too
    body = sl_message(raw_g + [entry("accelerometer", 1.0, 0, 0, 0), entry("gravity", 1.0, 0, 0, -9.81)])
    (b,) = SensorLoggerAdapter().decode(body, "p")
    np.testing.assert_allclose(b.acc, [[0.0, 0.0, 9.81]], atol=1e-4)
    falling = [entry("accelerometeruncalibrated", 1.0, 0, 0, 0.1), entry("totalacceleration", 1.0, 0, 0, 0.1)]
    (b,) = SensorLoggerAdapter().decode(sl_message(falling), "p")  # totalacceleration: Android, in free fall
    np.testing.assert_allclose(b.acc, [[0.0, 0.0, 0.1]], atol=1e-6)
    raw_ms2 = [entry("accelerometeruncalibrated", 1.0, 0.0, 0.0, 9.7)]  # Android: m/s², sign kept
    (b,) = SensorLoggerAdapter().decode(sl_message(raw_ms2), "p")
    np.testing.assert_allclose(b.acc, [[0.0, 0.0, 9.7]], atol=1e-5)


def test_sensor_logger_sorts_drops_repeats_and_interpolates_gyro():
    body = sl_message([entry("totalacceleration", 2.02, 0, 0, 3), entry("totalacceleration", 2.00, 0, 0, 1),
                       entry("totalacceleration", 2.01, 0, 0, 2), entry("totalacceleration", 2.01, 0, 0, 99),
                       entry("gyroscope", 2.00, 0.0, 0.0, 0.0), entry("gyroscope", 2.02, 0.2, 0.0, 0.0)])
    (b,) = SensorLoggerAdapter().decode(body, "p")
    np.testing.assert_allclose(b.t, [2.00, 2.01, 2.02])
    np.testing.assert_allclose(b.acc[:, 2], [1, 2, 3])  # the repeated 2.01 kept once, the first one
    np.testing.assert_allclose(b.gyro[:, 0], [0.0, 0.1, 0.2], atol=1e-6)


@pytest.mark.parametrize("entries, expected", [
    ([{"name": "totalacceleration", "time": "12", "values": {"x": 0, "y": 0, "z": 1}}], "bad_time"),
    ([{"name": "totalacceleration", "time": 12, "values": [0, 0, 1]}], "bad_shape"),
    ([{"name": "totalacceleration", "time": 12, "values": {"x": 0, "y": True, "z": 1}}], "bad_shape"),
    ([{"time": 12}], "bad_shape"),
    ([entry("location", 1, 0, 0, 0)], "ignored_type"),
    ([], "ignored_type"),
])
def test_sensor_logger_rejections(entries, expected):
    assert reason(lambda: SensorLoggerAdapter().decode(sl_message(entries), "p")) == expected


# -- Android sensor events -------------------------------------------------------------------------
def test_android_single_event_from_sensorspot_readme():
    body = b'{"type": "android.sensor.accelerometer", "timestamp": 3925657519043709, ' \
           b'"values": [0.31892395, -0.97802734, 10.049896]}'
    (b,) = AndroidAdapter().decode(body, "pixel")
    assert b.t[0] == pytest.approx(3925657.519043709) and b.seq is None
    np.testing.assert_allclose(b.acc, [[0.31892395, -0.97802734, 10.049896]], rtol=1e-6)


def test_android_other_sensors_are_ignored_and_counted():
    gyro = b'{"type": "android.sensor.gyroscope", "timestamp": 1, "values": [0, 0, 1]}'
    assert reason(lambda: AndroidAdapter().decode(gyro, "pixel")) == "ignored_type"
    linear = b'{"type": "android.sensor.linear_acceleration", "timestamp": 1, "values": [0, 0, 0]}'
    assert reason(lambda: AndroidAdapter().decode(linear, "pixel")) == "ignored_type"


def test_android_dedicated_topic_and_uncalibrated():
    router = AdapterRouter.from_spec(["android/+/accelerometer = android", "android/+/gyroscope = android"])
    event = b'{"timestamp": 2000000000, "values": [0, 0, 9.8]}'  # no type: the topic names the sensor
    (b,) = router.decode("android/pixel/accelerometer", event)
    assert b.device == "pixel" and b.t.tolist() == [2.0]
    assert reason(lambda: router.decode("android/pixel/gyroscope", event)) == "ignored_type"
    raw = (b'{"type": "android.sensor.accelerometer_uncalibrated", "timestamp": 1, '
           b'"values": [0.1, 0, 9.9, 0.1, 0, 0.1]}')
    (b,) = AndroidAdapter().decode(raw, "pixel")
    np.testing.assert_allclose(b.acc, [[0, 0, 9.8]], atol=1e-6)  # x_uncalib - x_bias, as Android defines it
    without_bias = raw.replace(b", 0.1, 0, 0.1]", b"]")  # only the 3 values: read as they are
    (b,) = AndroidAdapter().decode(without_bias, "pixel")
    np.testing.assert_allclose(b.acc, [[0.1, 0, 9.9]], atol=1e-6)


@pytest.mark.parametrize("body, expected", [
    (b'{"type": "android.sensor.accelerometer", "timestamp": "1", "values": [0, 0, 1]}', "bad_time"),
    (b'{"type": "android.sensor.accelerometer", "timestamp": 1, "values": [0, 1]}', "bad_shape"),
    (b'{"type": "android.sensor.accelerometer", "timestamp": 1, "values": [0, null, 1]}', "bad_shape"),
    (b'[1, 2]', "not_object"),
    (b'[]', "empty"),
    (b'"x"', "not_object"),
])
def test_android_rejections(body, expected):
    assert reason(lambda: AndroidAdapter().decode(body, "pixel")) == expected


# -- CSV lines -------------------------------------------------------------------------------------
def test_csv_gyro_comments_and_blank_lines():
    body = b"# from a logger\ntime,ax,ay,az,gx,gy,gz\n\n1.0,0,0,9.8,0.1,0,0\n1.02,0,0,9.7,0.2,0,0\n"
    (b,) = CsvAdapter().decode(body, "rig")
    np.testing.assert_allclose(b.t, [1.0, 1.02])
    np.testing.assert_allclose(b.gyro[:, 0], [0.1, 0.2], rtol=1e-6)


@pytest.mark.parametrize("body, expected", [
    (b"1,0,0,9.8\n0.5,0,0,9.8", "bad_time"),
    (b"1,0,0", "bad_shape"),
    (b"1,0,0,9.8\n2,0,0,9.8,0,0,0", "bad_shape"),
    (b"1,0,zero,9.8", "bad_csv"),
    (b"1,0,0,nan", "non_finite"),
    (b"\xff,0,0,1", "bad_csv"),
    (b"# nothing\n", "empty"),
])
def test_csv_rejections(body, expected):
    assert reason(lambda: CsvAdapter().decode(body, "rig")) == expected


# -- the router ------------------------------------------------------------------------------------
def test_router_subscriptions_native_first():
    router = AdapterRouter.from_spec(["csv/+ = csv"], prefix="lab")
    assert router.subscriptions() == ["lab/+/imu", "csv/+"]
    assert router.matches("lab/d/imu") and router.matches("csv/d") and not router.matches("lab/d/label")
    assert reason(lambda: router.decode("lab/d/label", b"{}")) == "bad_topic"
    assert reason(lambda: router.decode("csv/d/extra", b"1,0,0,1")) == "bad_topic"
    assert reason(lambda: router.decode("csv/" + "x" * 300, b"1,0,0,1")) == "bad_topic"


def test_router_first_plus_is_the_device_and_fixed_devices():
    router = AdapterRouter.from_spec(["phones/+/+/acc = csv", "android/sensor = android@my-phone"])
    (b,) = router.decode("phones/alice/left/acc", b"1,0,0,9.8")
    assert b.device == "alice"
    event = b'{"type": "android.sensor.accelerometer", "timestamp": 1, "values": [0, 0, 9.8]}'
    (b,) = router.decode("android/sensor", event)
    assert b.device == "my-phone"


@pytest.mark.parametrize("spec", [
    "csv/+ = nope",  # unknown adapter
    "csv/+",  # no adapter
    "csv/# = csv",  # '#' cannot name a device
    "csv/a+ = csv",  # '+' only as a whole level
    "har/+/acc = csv",  # would catch the prefix's own topics
    "+/acc = csv",  # and so would this
    "csv = csv",  # no device anywhere
    "csv/+ = csv@dev",  # device twice
    "csv = csv@bad id",  # invalid fixed device
])
def test_router_invalid_specs(spec):
    with pytest.raises(ValueError):
        AdapterRouter.from_spec([spec])


def test_route_repr_and_sensor_logger_without_plus():
    route = Route("sensor-logger", SensorLoggerAdapter())
    assert repr(route) == "Route('sensor-logger' = sensor_logger)"


def test_docstring_examples():
    import doctest

    import stream.adapters
    assert doctest.testmod(stream.adapters, raise_on_error=True).attempted > 0


def test_android_event_with_a_list_as_type_is_rejected_not_crashing():
    # found by hypothesis: {"type": []} made the rejection message itself raise TypeError
    from stream.adapters import ADAPTERS
    with pytest.raises(Rejected) as info:
        ADAPTERS["android"]().decode(b'{"type": []}', "dev-1", "android/dev-1")
    assert info.value.reason in REJECT_REASONS or info.value.reason in REASONS
