"""A second look at 266c231: windows pushed out of a device's full queue of WindowHistory are due, not
dropped. What a due window meets: a session whose clock goes back in the same cycle."""

import numpy as np
import pytest
import torch

from stream.labels import LabelBook, LabelledWindow, WindowHistory

STATE = (torch.zeros(2, 8),)


def _window(t_end: float) -> LabelledWindow:
    return LabelledWindow("d", t_end, np.zeros((4, 3), np.float32), STATE, "rest", 0.9)


@pytest.mark.parametrize("old_in_cycle", [0, 70], ids=["old-session-resolved", "old-session-overflows-too"])
def test_a_new_session_that_overflows_in_the_cycle_its_clock_went_back_is_resolved_after_the_old_on_its_labels(
        old_in_cycle):
    """The device's clock goes back (a new session) and the new session completes more windows than the queue
    holds (64) in one cycle. Its windows pushed out were resolved first, before the old session's, and labelled
    before the old session's later labels were forgotten (drop_after); drop_after then went from the first
    window left in the queue, not the new session's first, so the old session's squat from 6 s named the whole
    new session. Now: the old session's windows, then the new one's, in time order, on the new session's label."""
    book, history = LabelBook(), WindowHistory(span=1.96, lateness=4.0)
    history.track("d")
    book.add("d", "rest", 0.0)
    book.add("d", "squat", 6.0)
    old = [2.0 * k + 1.96 for k in range(56)]  # the first session, up to 111.96 s
    resolved = []
    for t in old[:len(old) - old_in_cycle]:
        history.add(_window(t))
        resolved += history.resolve(book)
    for t in old[len(old) - old_in_cycle:]:  # the old session's last ones come in the same cycle
        history.add(_window(t))
    book.add("d", "lunge", 0.0)  # the device restarts, its clock at 0 again, and a new label comes
    new = [2.0 * k + 1.96 for k in range(70)]
    for t in new:  # all in one cycle: more than the 64 the queue holds
        history.add(_window(t))
    resolved += history.resolve(book)
    times = [w.t_end for w in resolved]
    assert times == old + new[:len(times) - len(old)]  # each session in time order, the old one first
    assert len(times) > len(old) + 60
    assert [w.label for w in resolved[len(old):]] == ["lunge"] * (len(times) - len(old))
    assert book.at("d", 50.0) == "lunge"  # the first session's squat from 6 s is forgotten


def test_waiting_and_flush_give_a_devices_windows_oldest_first_across_a_session_and_an_overflow():
    """waiting() (re-expressed when the orientation step turns a device) and flush() (eviction) hold every
    waiting window once, the ended session's first, then the new session's in time order."""
    book, history = LabelBook(), WindowHistory(span=1.96, lateness=4.0)
    history.track("d")
    old = [100.0 + 2.0 * k for k in range(5)]
    new = [2.0 * k + 1.96 for k in range(70)]
    for t in old + new:
        history.add(_window(t))
    assert [w.t_end for w in history.waiting("d")] == old + new
    assert [w.t_end for w in history.flush("d", book)] == old + new
    assert history.waiting("d") == [] and history.resolve(book) == []


def test_a_restarted_device_replayed_at_full_speed_is_scored_on_its_own_labels():
    """Through the consumer: a device labelled rest, then squat from 6 s, restarts (seq 0, clock at 0 again)
    with a new label, walking, and sends 200 one-second messages in one cycle (250 windows). Every window of
    the new session was scored against the first session's squat."""
    import json
    import time

    from tests.helpers import imu
    from tests.test_consumer_monitor import _consumer, _label

    c = _consumer()
    scored = scored_windows(c)
    _label(c, "dev", "rest")
    _label(c, "dev", "squat", 6.0)
    for seq in range(60):  # the first session: one message a cycle
        c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic())
        c._classify()
    before, waiting = len(scored), len(c.history.waiting("dev"))  # the first session's last ones: squat
    c.handle("har/dev/label", json.dumps({"label": "walking", "t": 0.0}).encode(), time.monotonic())
    for seq in range(200):  # restarted: seq 0 and its clock at 0 again, all in one cycle
        c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic())
    c._classify()
    assert [label for _, label in scored[before:before + waiting]] == ["squat"] * waiting and waiting > 0
    new = [label for _, label in scored[before + waiting:]]
    assert len(new) > 200 and set(new) == {"walking"}


def scored_windows(consumer) -> list[tuple[float, str]]:
    """The (t_end, true label) of every window ``consumer`` scores from now on, in order."""
    scored = []
    labelled = consumer.monitor.labelled

    def record(device, t_end, label, predicted, *args):
        scored.append((t_end, label))
        return labelled(device, t_end, label, predicted, *args)

    consumer.monitor.labelled = record
    return scored
