"""Session 16, adversarial input (/tmp/s16/fuzz): the work one message can make, and one corrupted seq.

Each test failed on 188f883: the spread-out message was taken (990 windows from one message), and one seq of
2**40 had every later message of its device refused ``backwards_seq``."""

from __future__ import annotations

import logging
import time

import numpy as np
import orjson
import pytest

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.decode import (
    MAX_SAMPLES,
    REASONS,
    Rejected,
    SampleBatch,
    SequenceCheck,
    decode_imu,
    decode_imu_many,
)
from stream.pipeline import Pipeline

MAX_SPAN = 200.0  # stream.decode.MAX_SPAN (a literal here, so that this file runs on the code before it)


class _Capture:
    def publish(self, topic, payload=None, qos=0, retain=False):
        pass


def _consumer(tiny_model, **config) -> Consumer:
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="fz", learn=False, **config),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Capture()
    return c


def _spread(seq: int) -> bytes:
    """The probe's message: 2,000 samples 0.99 s apart (just under the buffer's 1 s max_gap), 1,980 s."""
    return orjson.dumps({"seq": seq, "t0": seq * 1980.0, "rate": 1 / 0.99, "acc": [[0, 0, 9.8]] * 2000})


def _native(seq: int, t: np.ndarray) -> bytes:
    return orjson.dumps({"seq": seq, "t": t, "acc": np.tile([0.1, 0.2, 9.8], (len(t), 1))},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def test_a_message_spread_over_device_time_is_refused_and_makes_no_window(tiny_model):
    """One such message a second made 990 windows each, classified one after another: the other devices'
    predictions came 0.4-4.2 s late instead of 23 ms. Refused ``bad_span``, counted, no window."""
    c = _consumer(tiny_model)
    now = time.monotonic()
    c.handle_many([("fz/amp2/imu", _spread(s), now) for s in range(3)])
    assert c.pipeline.pending == 0  # was 7,423 windows (the tiny model)
    assert c.stats.rejected["bad_span"] == 3 and "bad_span" in REASONS
    with pytest.raises(Rejected) as info:
        decode_imu(_spread(0), "amp2")
    assert info.value.reason == "bad_span"
    (many,) = decode_imu_many([(_spread(0), "amp2")])
    assert isinstance(many, Rejected) and many.reason == "bad_span"
    # sparse but short (one sample a second over 5 s), or long but dense: taken as before
    c.handle_many([("fz/slow/imu", _native(0, 10.0 + np.arange(6.0)), now),
                   ("fz/long/imu", _native(0, 10.0 + np.arange(MAX_SAMPLES) / 50), now)])
    assert c.stats.rejected["bad_span"] == 3 and c.stats.samples == 6 + MAX_SAMPLES


@pytest.mark.parametrize("rate, seconds", [
    (100.0, MAX_SAMPLES / 100), (50.0, MAX_SAMPLES / 50),  # the longest batches a message holds
    (10.0, 5.0), (5.0, 10.0), (5.0, 30.0), (10.0, MAX_SPAN),  # phone apps' slow rates (SensorSpot's 5 Hz default)
    (50.0, 0.2), (50.0, 0.01)])  # replays and the simulator (--interval 0.2, the least 0.01)
def test_real_sensor_batches_are_taken(rate, seconds):
    n = min(MAX_SAMPLES, max(1, round(seconds * rate)))
    t = 1.7e9 + np.arange(n) / rate + np.random.default_rng(0).uniform(-0.002, 0.002, n) * (n > 1)
    t.sort()
    payload = _native(7, t)
    assert decode_imu(payload, "d").seq == 7
    (many,) = decode_imu_many([(payload, "d")])
    assert isinstance(many, SampleBatch)
    by_rate = orjson.dumps({"seq": 1, "t0": 5.0, "rate": rate, "acc": [[0, 0, 9.8]] * n})
    assert len(decode_imu(by_rate, "d")) == n


@pytest.mark.parametrize("t", [np.arange(2000.0) * 0.101,  # 202 s: longer than any message
                               np.arange(20.0) * 0.9])  # 17 s at 1.1 samples a second
def test_the_limit_holds_on_every_path(tiny_model, t):
    """Native payloads when decoded, the phone formats' batches (no seq) in ``Pipeline.check``, which the
    consumer calls on every batch; ``Pipeline.add`` (``harstream evaluate``'s chunks) does not refuse them."""
    with pytest.raises(Rejected) as info:
        decode_imu(_native(0, t), "d")
    assert info.value.reason == "bad_span"
    pipeline = Pipeline(StatefulClassifier(tiny_model, "tiny"))
    batch = SampleBatch("d", t, np.tile(np.float32([0, 0, 9.8]), (len(t), 1)))
    with pytest.raises(Rejected) as info:
        pipeline.check(batch)
    assert info.value.reason == "bad_span"
    pipeline.add(batch, 0.0)
    c = _consumer(tiny_model, adapters=("phone/+ = csv",))  # a phone format: no seq, no decode_imu
    c.handle("phone/p1", "\n".join(f"{x:.3f},0,0,9.8" for x in t).encode(), time.monotonic())
    assert c.stats.rejected["bad_span"] == 1 and c.stats.samples == 0
    c.handle("phone/p1", "\n".join(f"{x:.3f},0,0,9.8" for x in t[:8]).encode(), time.monotonic())
    assert c.stats.samples == 8  # 7 s: taken


def test_one_wild_seq_is_refused_and_the_device_goes_on():
    """The probe: seq 0..149, message 50 with seq 2**40. Taken as a device numbering anew, it had the 99
    messages after it refused backwards_seq, until a restart or seq 0."""
    check = SequenceCheck()
    refused = []
    for k in range(150):
        seq = 2**40 if k == 50 else k
        try:
            check.check(SampleBatch("glseq", 1000 + k * 0.2 + np.arange(10) / 50, np.zeros((10, 3)), seq=seq),
                        newest=None)
        except Rejected as exc:
            refused.append((k, exc.reason, exc.detail))
    assert [r[:2] for r in refused] == [(50, "seq_jump")]
    assert "glseq" in refused[0][2]  # the device named
    assert check.last("glseq") == 149 and check.renumbered == 0
    assert check.lost_samples == 10  # message 50's place, as any lost message


def test_a_numbering_anew_is_believed_once_the_next_message_follows_it(caplog):
    check = SequenceCheck()
    batch = lambda seq, t0: SampleBatch("dev-7", t0 + np.arange(10) / 50, np.zeros((10, 3)), seq=seq)  # noqa: E731
    for k in range(5):
        check.check(batch(k, k * 0.2))
    with pytest.raises(Rejected) as info:
        check.check(batch(2**40, 1.0))
    assert info.value.reason == "seq_jump"
    with caplog.at_level(logging.INFO, logger="stream.decode"):
        assert check.check(batch(2**40 + 2, 1.2)) == 10  # follows the jump (one message lost between)
    assert check.renumbered == 1 and check.last("dev-7") == 2**40 + 2
    assert any("dev-7" in r.getMessage() for r in caplog.records)
    assert check.check(batch(2**40 + 3, 1.4)) == 0
    with pytest.raises(Rejected) as info:
        check.check(batch(4, 1.6))  # the old numbering is gone now
    assert info.value.reason == "backwards_seq"
    # two wild seqs in a row that do not follow each other: both refused
    with pytest.raises(Rejected):
        check.check(batch(2**50, 1.8))
    with pytest.raises(Rejected):
        check.check(batch(2**45, 2.0))
    assert check.check(batch(2**40 + 4, 2.2)) == 0 and check.renumbered == 1


def test_one_wild_seq_through_the_consumer(tiny_model):
    """The probe's repro end to end: 150 messages of 10 samples, the 51st with seq 2**40."""
    c = _consumer(tiny_model)
    now = time.monotonic()
    for k in range(150):
        seq = 2**40 if k == 50 else k
        c.handle_many([("fz/glseq/imu", _native(seq, 1000 + k * 0.2 + np.arange(10) / 50), now + k * 0.2)])
    assert c.stats.rejected["seq_jump"] == 1
    assert c.stats.rejected["backwards_seq"] == 0  # was 99
    assert c.stats.samples == 149 * 10
