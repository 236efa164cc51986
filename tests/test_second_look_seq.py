"""Second look at 4e04bb8 (a lower seq with newer samples taken as a device numbering anew) and 0bda91f
(the simulator's label runs pruned after LABEL_HORIZON)."""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig


class _Capture:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def publish(self, topic, payload=None, qos=0, retain=False):
        self.topics.append(topic)


def _payload(seq: int, t0: float, seconds: float) -> bytes:
    n = int(round(seconds * 50))
    t = t0 + np.arange(n) / 50
    return orjson.dumps({"seq": seq, "t": t, "acc": np.tile([0.0, 0.0, 9.81], (n, 1))},
                        option=orjson.OPT_SERIALIZE_NUMPY)


def test_two_publishers_under_one_id_with_different_batch_lengths_stay_apart(tiny_model):
    """Two publishers under one device id on one clock: A sends 5 s batches (seq 1000 on), B 1 s batches
    (seq 10 on, behind A's). B's batches follow each other; once one of them is refused, the next came more
    than RESTART_GAP after A's newest sample (A's batch is 5 s long), and was taken as a device numbering
    anew: B's samples went into A's buffer every other second, and each of A's batches then counted a gap of
    about 990 messages as lost. B's refused batches are samples the device gave: B stays refused."""
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="tp", learn=False),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Capture()
    a, b = 1000, 10
    for second in range(105, 160):
        if second % 5 == 0:  # A: the last 5 s
            c.handle_many([("tp/dev/imu", _payload(a, second - 5.0, 5.0), time.monotonic())])
            a += 1
        else:  # B: the last second
            c.handle_many([("tp/dev/imu", _payload(b, second - 1.0, 1.0), time.monotonic())])
            b += 1
        c._classify()
    assert c.sequence.renumbered == 0
    assert c.sequence.lost_samples == 0
    assert c.stats.rejected["backwards_seq"] == b - 10
    assert c.sequence.last("dev") == a - 1


def test_the_truth_of_a_time_whose_labels_were_pruned_is_refused_not_made_up():
    """0bda91f prunes a simulated device's label runs older than LABEL_HORIZON; ``truth_label`` of such a time
    gave the oldest run kept, silently (benchmarks/adaptation.py scores every prediction after its run: with
    ``--onset`` beyond an hour, its first windows were scored against another exercise). It is refused."""
    from simulators.workout import LABEL_HORIZON, DeviceStream

    stream = DeviceStream("d", seed=3)
    chunks = [stream.read(60.0) for _ in range(int(1.5 * LABEL_HORIZON / 60))]
    t = np.concatenate([c.t for c in chunks])
    labels = np.concatenate([c.label for c in chunks])
    kept_from = stream._timeline.label_starts[0]
    assert kept_from > 60.0  # runs were pruned
    old = t < kept_from
    assert (labels[old] != labels[old][-1]).any()  # the oldest run kept is not the truth of every older time
    with pytest.raises(ValueError, match="LABEL_HORIZON"):
        stream.truth_label(t[old][::50])
    with pytest.raises(ValueError, match="LABEL_HORIZON"):
        stream.truth_label(float(t[0]))
    recent = ~old
    np.testing.assert_array_equal(stream.truth_label(t[recent][::50]), labels[recent][::50])
