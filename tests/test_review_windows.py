"""Review of the windowing core (stream/decode.py, stream/buffers.py, stream/pipeline.py): defects found
in review, each shown by a test that failed before its fix."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.decode import Rejected, decode_imu, decode_imu_many


class _Capture:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic, payload=None, qos=0, retain=False):
        self.topics.append(topic)


def _imu(seq: int, t0: float, n: int = 50) -> bytes:
    t = t0 + np.arange(n) / 50
    return orjson.dumps({"seq": seq, "t": t, "acc": np.tile([0.0, 0.0, 9.81], (n, 1))},
                        option=orjson.OPT_SERIALIZE_NUMPY)


@pytest.mark.parametrize("seq", [2**63, 2**64 - 1])
def test_a_seq_beyond_64_bit_signed_is_refused_bad_seq(seq):
    """JSON parses integers up to 2**64 - 1; a seq of 2**63 or more was accepted, and the shared state's
    record (a signed 64-bit seq) could not be written: struct.error out of the consumer's cycle."""
    payload = _imu(seq, 100.0)
    with pytest.raises(Rejected) as info:
        decode_imu(payload, "d")
    assert info.value.reason == "bad_seq"
    out = decode_imu_many([(payload, "d"), (_imu(2**63 - 1, 100.0), "e")])
    assert isinstance(out[0], Rejected) and out[0].reason == "bad_seq"
    assert not isinstance(out[1], Rejected) and out[1].seq == 2**63 - 1


def test_a_seq_beyond_64_bit_does_not_stop_a_shared_consumer(tiny_model):
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="rv", learn=False, state_store="memory://"),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Capture()
    for k, seq in enumerate((0, 2**63)):
        c.handle_many([("rv/dev1/imu", _imu(seq, 100.0 + k), time.monotonic())])
    c.shared.apply(now=time.monotonic() + 1000.0)  # the gap's wait is over: applied
    c._classify()  # raised struct.error ('q' format) writing the device's record
    assert c.stats.rejected["bad_seq"] == 1


def test_a_huge_seq_jump_is_a_new_numbering_not_loss_and_metrics_still_publish(tiny_model):
    """seq 0 then 2**63 - 1 counted (2**63 - 2) x 50 samples lost, beyond the 64 bits orjson writes: the
    consumer's metrics raised TypeError, out of its run loop. A jump beyond MAX_GAP messages is a device
    numbering anew, as seq 0 after a higher one is, so no loss is counted; a real gap still is."""
    from stream.decode import SequenceCheck
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="rv", learn=False),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Capture()
    for k, seq in enumerate((0, 2**63 - 3, 2**63 - 1)):
        c.handle_many([("rv/dev1/imu", _imu(seq, 100.0 + k), time.monotonic())])
    c._classify()
    c._publish_metrics()
    assert c.sequence.lost_samples == 1 * 50  # the last message's gap of one, after the renumbering
    check = SequenceCheck()
    samples = decode_imu(_imu(0, 0.0), "d")
    assert check.check(samples) == 0
    big = decode_imu(_imu(SequenceCheck.MAX_GAP + 1, 1.0), "d")
    assert check.check(big) == SequenceCheck.MAX_GAP * 50  # at the bound: still loss


def test_a_null_unit_is_the_default_unit_as_a_null_gyro_is_no_gyroscope():
    """A sender that writes every optional field, unset ones as null, had every message refused bad_unit
    ("gyro": null was already taken as no gyroscope)."""
    body = {"seq": 1, "t": [0.0, 0.02], "acc": [[0, 0, 9.81], [0, 0, 9.8]], "unit": None, "gyro": None}
    b = decode_imu(orjson.dumps(body), "d")
    np.testing.assert_allclose(b.acc[:, 2], [9.81, 9.8], rtol=1e-6)
    (many,) = decode_imu_many([(orjson.dumps(body), "d")])
    np.testing.assert_allclose(many.acc, b.acc)
    with pytest.raises(Rejected) as exc:
        decode_imu(orjson.dumps({**body, "unit": "furlongs"}), "d")
    assert exc.value.reason == "bad_unit"


def test_late_and_repeated_samples_stay_counted_after_their_device_is_evicted(tiny_model):
    """late_samples summed the buffers in memory only, so the counter fell when an idle device was evicted
    (metrics are counters); samples dropped as repeated timestamps were counted but never published."""
    payloads = []

    class _Payloads(_Capture):
        def publish(self, topic, payload=None, qos=0, retain=False):
            super().publish(topic, payload, qos, retain)
            if topic.endswith("/metrics"):
                payloads.append(orjson.loads(payload))

    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="rv", learn=False, reorder=0.5),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Payloads()
    t = 100.0 + np.arange(50) / 50
    body = {"t": t, "acc": np.tile([0.0, 0.0, 9.81], (50, 1))}
    for seq, times in ((0, t), (1, np.concatenate([t[40:], t[-1] + 1 + np.arange(40) / 50])), (2, t[:10])):
        c.handle_many([("rv/dev1/imu", orjson.dumps({**body, "seq": seq, "t": times, "acc": body["acc"][:len(times)]},
                                                    option=orjson.OPT_SERIALIZE_NUMPY), time.monotonic())])
        if seq:  # the first two together: the second's first 10 repeat samples still held back
            c.pipeline.release(time.monotonic() + 10.0)
        c._classify()
    c._publish_metrics()
    before = payloads[-1]
    assert before["late_samples"] == 10 and before["duplicates"] == 10
    c.pipeline.evict("dev1")
    c._publish_metrics()
    assert payloads[-1]["late_samples"] == 10 and payloads[-1]["duplicates"] == 10
