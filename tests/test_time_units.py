"""Times in milliseconds or nanoseconds sent as seconds: refused with a reason that says so. Taken, 50 Hz
samples lay hours or years apart (or, at 1e17, 16 s of float64 spacing collapsed them into duplicates) and no
window ever came, with nothing to say why."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from stream.adapters import AdapterRouter
from stream.decode import MAX_T, Rejected, decode_imu, decode_imu_many


def _payload(t: np.ndarray, seq: int = 0) -> bytes:
    return orjson.dumps({"seq": seq, "t": t, "acc": np.tile([0.0, 0.0, 9.81], (len(t), 1))},
                        option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.parametrize("scale", [1e3, 1e9])  # milliseconds, nanoseconds
def test_times_not_in_seconds_are_refused_as_bad_time(scale):
    now = 1.77e9 + np.arange(10) / 50
    for payload in (_payload(now * scale), orjson.dumps({"seq": 0, "t0": float(now[0] * scale), "rate": 50.0 / scale,
                                                         "acc": [[0, 0, 9.81]] * 10})):
        with pytest.raises(Rejected) as info:
            decode_imu(payload, "d")
        assert info.value.reason == "bad_time" and "seconds" in str(info.value)
        out = decode_imu_many([(payload, "d"), (_payload(now), "e")])  # the batch path, beside a good one
        assert isinstance(out[0], Rejected) and out[0].reason == "bad_time"
        assert not isinstance(out[1], Rejected)


def test_seconds_of_any_clock_in_use_are_taken():
    for t0 in (0.0, 12.5, 1.77e9, -5.0, MAX_T - 10):
        batch = decode_imu(_payload(t0 + np.arange(10) / 50), "d")
        assert len(batch) == 10


def test_a_phone_format_with_nanoseconds_is_refused_too():
    router = AdapterRouter.from_spec(["csvphone/+ = csv"], "har")
    t_ns = (1.77e9 + np.arange(5) / 50) * 1e9
    body = "\n".join(f"{t:.0f},0,0,9.81" for t in t_ns).encode()
    with pytest.raises(Rejected) as info:
        router.decode("csvphone/p1", body)
    assert info.value.reason == "bad_time"


def test_the_consumer_counts_them_and_goes_on(tiny_model):
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig

    class Capture:
        def __init__(self):
            self.topics = []

        def publish(self, topic, payload=None, qos=0, retain=False):
            self.topics.append(topic)

    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="tu", learn=False),
                 StatefulClassifier(tiny_model, "t"))
    c._client = Capture()
    for k in range(6):
        t = 1.77e9 + k + np.arange(50) / 50
        c.handle_many([("tu/ms/imu", _payload(t * 1e3, k), time.monotonic()),
                       ("tu/s/imu", _payload(t, k), time.monotonic())])
        c._classify()
    assert c.stats.rejected["bad_time"] == 6
    assert sum(t == "tu/s/prediction" for t in c._client.topics) >= 5


def test_a_recording_file_with_times_in_milliseconds_names_the_line(tmp_path):
    """`evaluate` and `replay` read it whole: every window a gap, nothing classified and nothing said why."""
    from stream.recording import RecordingError, read_recording
    path = tmp_path / "ms.csv"
    rows = [f"d,{1.77e12 + 20 * k:.0f},0,0,9.81,rest" for k in range(5)]
    path.write_text("device,t,ax,ay,az,label\n" + "\n".join(rows) + "\n")
    with pytest.raises(RecordingError) as info:
        read_recording(path)
    assert "ms.csv:2:" in str(info.value) and "seconds" in str(info.value)  # the file's line 2


def test_the_recording_writer_refuses_what_the_reader_would(tmp_path):
    from stream.recording import Recording, RecordingError, write_recording
    n = 4
    rec = Recording(device=np.array(["d"] * n), t=1.77e12 + np.arange(n) * 20.0,
                    acc=np.zeros((n, 3), np.float32), label=np.array(["rest"] * n))
    with pytest.raises(RecordingError) as info:
        write_recording(tmp_path / "out.csv", rec)
    assert "row 1" in str(info.value) and "seconds" in str(info.value)
