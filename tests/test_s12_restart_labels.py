"""A device that restarted on a new clock while the consumer was down: the labels put back from the last
life (events.db) are its session before's. Before, only those starting after the new clock's first sample
were forgotten, so an open label of the last life ("squat" from 0) named, scored and taught every window of
the new session."""

from __future__ import annotations

import time

from tests.helpers import imu
from tests.test_consumer_monitor import _label
from tests.test_consumer_restart import _life, _send
from tests.test_second_look_labels import scored_windows


def _send_new_clock(consumer, device, seq):  # the device restarted: seq and clock from 0 again
    consumer.handle(f"har/{device}/imu", imu(seq, 5.0 + seq, n=25, rate=25.0), time.monotonic())
    consumer._classify()


def _second_life(tmp_path, tiny_model):
    """A consumer started again after a life in which "dev" was labelled squat from 0 and sent 12 s."""
    first = _life(tmp_path, tiny_model)
    _label(first, "dev", "squat")
    for seq in range(12):
        _send(first, "dev", seq)
    first.checkpoint(final=True)
    first.store.close()
    return _life(tmp_path, tiny_model)


def test_a_device_restarted_meanwhile_is_not_named_by_the_last_lifes_labels(tiny_model, tmp_path):
    second = _second_life(tmp_path, tiny_model)
    try:
        scored = scored_windows(second)
        for seq in range(12):
            _send_new_clock(second, "dev", seq)
        assert second.stats.windows >= 8  # its new session is classified ...
        # ... and none of it named squat (before: every window, scored and learnt); the last life's windows it
        # left waiting for labels (its last 4 s, in the checkpoint) are final now, squat as they were
        assert [t for t, label in scored if t < 100.0] == []
        assert {label for t, label in scored} <= {"squat"}
        scored.clear()
        _label(second, "dev", "curl", 10.0)  # a label of the new session is taken as ever
        for seq in range(12, 24):
            _send_new_clock(second, "dev", seq)
        assert scored and {label for _, label in scored} == {"curl"}
    finally:
        second.store.close()


def test_a_returning_device_on_its_old_clock_keeps_the_last_lifes_labels(tiny_model, tmp_path):
    second = _second_life(tmp_path, tiny_model)
    try:
        scored = scored_windows(second)
        for seq in range(12, 24):
            _send(second, "dev", seq)
        assert scored and {label for _, label in scored} == {"squat"}  # "holds until the next" goes on
    finally:
        second.store.close()
