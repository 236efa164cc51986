import numpy as np
import orjson
import pytest

from stream.decode import (
    MAX_SAMPLES,
    REASONS,
    G,
    Rejected,
    SampleBatch,
    SequenceCheck,
    decode_imu,
    parse_topic,
)


def payload(**kw) -> bytes:
    body = {"seq": 1, "t": [0.0, 0.02, 0.04], "acc": [[0, 0, 9.81]] * 3}
    body.update(kw)
    return orjson.dumps({k: v for k, v in body.items() if v is not None})


def reason(data: bytes, device: str = "dev-1") -> str:
    with pytest.raises(Rejected) as info:
        decode_imu(data, device)
    assert info.value.reason in REASONS
    return info.value.reason


def test_valid_payload_in_si_units():
    b = decode_imu(payload(unit="g", acc=[[0, 0, 1]] * 3), "dev-1")
    assert b.device == "dev-1" and b.seq == 1
    assert b.acc.dtype == np.float32 and b.acc.shape == (3, 3)
    assert b.acc[0, 2] == pytest.approx(G)
    np.testing.assert_allclose(b.t, [0.0, 0.02, 0.04])


def test_t0_and_rate():
    b = decode_imu(orjson.dumps({"seq": 0, "t0": 100.0, "rate": 50, "acc": [[1, 2, 3]] * 5}), "d")
    np.testing.assert_allclose(b.t, 100.0 + np.arange(5) / 50)


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"{not json", "bad_json"),
        (b"[1, 2]", "not_object"),
        (payload(seq="1"), "bad_seq"),
        (payload(seq=True), "bad_seq"),
        (payload(acc=[[0, 0]] * 3), "bad_shape"),
        (payload(acc="x"), "bad_shape"),
        (payload(t=[0.0, 0.1]), "bad_shape"),
        (payload(acc=[]), "bad_shape"),
        (payload(t=None), "bad_time"),
        (payload(t=[0.0, 0.1, 0.05]), "bad_time"),
        (payload(unit="furlongs"), "bad_unit"),
        (payload(gyro=[[0, 0, 0]] * 2), "bad_shape"),
        (b'{"seq": 1, "t": [0.0], "acc": [[0, 0, NaN]]}', "bad_json"),
        (b'{"seq": 1, "t": [0.0], "acc": [[0, 0, 1e999]]}', "bad_json"),
        (orjson.dumps({"seq": 1, "t0": 1.7e308, "rate": 1e-308, "acc": [[0, 0, 1]] * 2}), "non_finite"),
        (orjson.dumps({"seq": 1, "t0": 0, "rate": 0, "acc": [[0, 0, 1]]}), "bad_time"),
        (orjson.dumps({"seq": 1, "t0": 0, "rate": 50, "acc": [[0, 0, 1]] * (MAX_SAMPLES + 1)}), "too_many_samples"),
    ],
)
def test_rejections_have_named_reasons(data, expected):
    assert reason(data) == expected


def test_oversize_rejected_before_parsing():
    with pytest.raises(Rejected) as info:
        decode_imu(b" " * 2000, "d", max_bytes=1000)
    assert info.value.reason == "oversize"


@pytest.mark.parametrize("topic, expected", [
    ("har/dev-1/imu", ("dev-1", "imu")),
    ("har/A.b_c-9/label", ("A.b_c-9", "label")),
])
def test_topics(topic, expected):
    assert parse_topic(topic) == expected


@pytest.mark.parametrize("topic, expected", [
    ("har/-bad/imu", "bad_device"),
    ("har/" + "x" * 65 + "/imu", "bad_device"),
    ("har/dev 1/imu", "bad_device"),
    ("har/_consumer/imu", "bad_device"),
    ("other/dev/imu", "bad_topic"),
    ("har/dev/imu/extra", "bad_topic"),
])
def test_bad_topics(topic, expected):
    with pytest.raises(Rejected) as info:
        parse_topic(topic)
    assert info.value.reason == expected


def test_sequence_repeats_regressions_and_gaps():
    check = SequenceCheck()
    batch = lambda seq, n=10: SampleBatch("d", np.zeros(n), np.zeros((n, 3), np.float32), seq=seq)  # noqa: E731
    assert check.check(batch(5)) == 0
    assert check.check(batch(6)) == 0
    for seq, expected in ((6, "repeated_seq"), (4, "backwards_seq")):
        with pytest.raises(Rejected) as info:
            check.check(batch(seq))
        assert info.value.reason == expected
    assert check.check(batch(9)) == 20  # messages 7 and 8 lost, 10 samples each
    assert check.lost_samples == 20
    assert check.check(batch(0)) == 0  # a restarted device starts a new session
    assert check.check(batch(1)) == 0


def test_values_beyond_float32_are_refused_not_turned_into_inf():
    with pytest.raises(Rejected) as info:
        decode_imu(orjson.dumps({"seq": 1, "t": [0.0], "acc": [[0, 0, 1e39]]}), "d")
    assert info.value.reason == "non_finite"
