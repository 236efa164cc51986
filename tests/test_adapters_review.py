"""Review of the phone adapters: cases the apps really send that were mis-read or refused."""

import numpy as np
import orjson

from stream.adapters import SensorLoggerAdapter


def entry(name, t, v):
    return {"name": name, "time": int(round(float(t) * 1e9)),
            "values": {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}}


def jump(ios_unstandardised: bool) -> bytes:
    """A 200 ms batch of an iPhone in the air for most of it, then landing (+30 m/s² on z): the
    Accelerometer, Gravity and Accelerometer Uncalibrated sensors on."""
    t = 100 + np.arange(20) * 0.01
    total = np.array([[0.1, 0.2, 0.3]] * 14 + [[0.0, 0.0, 30.0]] * 6)  # specific force, Android signs
    grav = np.tile([0.0, 0.0, 9.81], (20, 1))
    sign, raw_scale = (-1.0, 1 / 9.80665) if ios_unstandardised else (1.0, 1.0)
    entries = []
    for ti, a, g in zip(t, total, grav, strict=True):
        entries += [entry("accelerometer", ti, sign * (a - g)), entry("gravity", ti, sign * g),
                    entry("accelerometeruncalibrated", ti, sign * a * raw_scale)]
    return orjson.dumps({"messageId": 1, "sessionId": "s", "deviceId": "d", "payload": entries})


def test_a_standardised_iphone_in_the_air_is_not_taken_for_an_unstandardised_one():
    # the uncalibrated accelerometer reads under 3 m/s² for most of the batch (free fall): that is no
    # sign of g units when the calibrated sensors of the same message say m/s²; it was negated
    (b,) = SensorLoggerAdapter().decode(jump(ios_unstandardised=False), "p")
    np.testing.assert_allclose(b.acc[-1], [0.0, 0.0, 30.0], atol=1e-4)
    np.testing.assert_allclose(b.acc[0], [0.1, 0.2, 0.3], atol=1e-4)


def test_an_unstandardised_iphone_in_the_air_is_still_recognised():
    (b,) = SensorLoggerAdapter().decode(jump(ios_unstandardised=True), "p")
    np.testing.assert_allclose(b.acc[-1], [0.0, 0.0, 30.0], atol=1e-4)


def test_android_events_of_both_accelerometers_in_one_message_are_not_interleaved():
    # an app that sends both sensors' events together: the uncalibrated one's readings (bias not
    # removed) were merged sample by sample with the calibrated one's, a zigzag the phone never felt
    from stream.adapters import AndroidAdapter

    events = []
    for k in range(4):
        stamp = 1_000_000_000 + k * 20_000_000
        events.append({"type": "android.sensor.accelerometer", "timestamp": stamp, "values": [0, 0, 9.8]})
        events.append({"type": "android.sensor.accelerometer_uncalibrated", "timestamp": stamp + 1000,
                       "values": [0.5, 0, 10.3, 0.5, 0, 0.5]})
    (b,) = AndroidAdapter().decode(orjson.dumps(events), "p")
    np.testing.assert_allclose(b.t, [1.0, 1.02, 1.04, 1.06])
    np.testing.assert_allclose(b.acc, [[0, 0, 9.8]] * 4, rtol=1e-6)
