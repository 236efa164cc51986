"""Label matching (stream/labels.py): windows wait their whole lateness, however many windows that is; a
session's labels stay with it; a label changing inside a window; label payloads refused with a reason."""

import json
import time

import numpy as np
import pytest
import torch

from stream.decode import Rejected
from stream.labels import LabelBook, LabelledWindow, WindowHistory, decode_label
from tests.helpers import imu
from tests.test_consumer_monitor import _consumer, _label

STATE = (torch.zeros(2, 8),)
SPAN = 1.96  # 50 samples at 25 Hz, windows every 2 s


def _window(t_end: float) -> LabelledWindow:
    return LabelledWindow("d", t_end, np.zeros((4, 3), np.float32), STATE, "rest", 0.9)


def test_a_window_waits_its_whole_lateness_for_a_late_label_however_many_windows_that_is():
    """WindowHistory kept 64 windows a device whatever the lateness: with a lateness of 300 s and a window
    every 2 s, the 65th window pushed the first out, resolved at once 128 s after it, unlabelled, so a span
    label sent 250 s late missed it. Now none is resolved before its lateness, and the span names them all."""
    book, history = LabelBook(), WindowHistory(SPAN, lateness=300.0)
    history.track("d")
    resolved, early = [], []
    for k in range(200):  # up to 399.96 s, one window a cycle
        t_end = 2.0 * k + SPAN
        history.add(_window(t_end))
        if t_end > 250.0 and "d" not in book:
            book.add("d", "squat", 0.0, 150.0)  # the first 150 s, told 100 to 250 s late
        out = history.resolve(book)
        early += [w.t_end for w in out if w.t_end > t_end - 300.0]
        resolved += out
    assert early == []
    assert [w.t_end for w in resolved] == [2.0 * k + SPAN for k in range(len(resolved))]
    assert len(resolved) >= 49  # up to about 99.96 s: 300 s before the newest
    assert {w.label for w in resolved} == {"squat"}


def test_a_consumer_with_a_long_label_lateness_scores_each_window_on_the_label_that_came_late():
    """Through the consumer (label_lateness 120 s, windows of 0.8 s): a device labelled rest, then told 100 s
    later that those 100 s were squat. Its first 61 windows had gone out of the 64 kept, scored rest."""
    c = _consumer(label_lateness=120.0, idle_timeout=300.0)
    scored = []
    labelled = c.monitor.labelled

    def record(device, t_end, label, predicted, *args):
        scored.append(label)
        return labelled(device, t_end, label, predicted, *args)

    c.monitor.labelled = record
    _label(c, "dev", "rest")
    for seq in range(100):  # 100 s at 25 Hz, one message a cycle: 125 windows
        c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic())
        c._classify()
    c.handle("har/dev/label", json.dumps({"label": "squat", "start": 0.0, "end": 100.0}).encode(), time.monotonic())
    assert scored == []  # all still waiting
    c.config.idle_timeout = 0.0
    c._evict_idle()  # the device leaves: its windows are final
    assert scored == ["squat"] * 125


def test_a_lateness_the_history_cannot_keep_is_refused_with_what_it_can():
    WindowHistory(SPAN, lateness=3600.0)  # an hour of 2 s windows: 1,838 of the 3,600 a device may keep
    WindowHistory(SPAN, lateness=0.0)
    with pytest.raises(ValueError, match=r"keep up to 51021 windows .* at most 3600 .* up to 7052 s"):
        WindowHistory(SPAN, lateness=100_000.0)
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="label lateness must be a finite number of seconds, 0 or more"):
            WindowHistory(SPAN, lateness=bad)


@pytest.mark.parametrize("old_in_cycle", [0, 10], ids=["old-session-resolved", "old-session-in-the-cycle"])
def test_windows_past_the_cap_in_one_cycle_are_due_and_keep_their_order_with_an_ended_session(old_in_cycle):
    """The overflow path at a cap of 8: a new session completing 30 windows in the cycle its clock went back.
    Each session in time order, the old one first, each on its own labels; none resolved before its
    lateness (the cap holds more than a lateness' worth)."""
    book, history = LabelBook(), WindowHistory(SPAN, lateness=4.0, max_windows=8)
    history.track("d")
    book.add("d", "rest", 0.0)
    book.add("d", "squat", 6.0)
    old = [2.0 * k + SPAN for k in range(20)]
    resolved = []
    for t in old[:len(old) - old_in_cycle]:
        history.add(_window(t))
        resolved += history.resolve(book)
    for t in old[len(old) - old_in_cycle:]:
        history.add(_window(t))
    book.add("d", "lunge", 0.0)  # the device restarts, its clock at 0 again, and a new label comes
    new = [2.0 * k + SPAN for k in range(30)]
    for t in new:
        history.add(_window(t))
    assert [w.t_end for w in history.waiting("d")] == [w for w in old if w not in
                                                       {x.t_end for x in resolved}] + new
    resolved += history.resolve(book)
    assert [w.t_end for w in resolved] == old + new[:28]  # the last two wait: within 4 s of the newest
    assert [w.label for w in resolved[:len(old)]] == ["rest"] * 3 + ["squat"] * 17
    assert [w.label for w in resolved[len(old):]] == ["lunge"] * 28


def test_a_clock_going_back_ends_the_session_with_no_window_left_waiting():
    """With a lateness of 0 every window is resolved in its cycle, and a clock going back was seen only
    against a window still in the queue: never. The old session's squat from 6 s named the new session's
    windows past 6 s. The session now ends on the device's newest window, waiting or not."""
    book, history = LabelBook(), WindowHistory(SPAN, lateness=0.0)
    history.track("d")
    book.add("d", "rest", 0.0)
    book.add("d", "squat", 6.0)
    for k in range(20):
        history.add(_window(2.0 * k + SPAN))
        assert len(history.resolve(book)) == 1
    book.add("d", "lunge", 0.0)  # the device restarts with a new label
    resolved = []
    for k in range(10):
        history.add(_window(2.0 * k + SPAN))
        resolved += history.resolve(book)
    assert [w.label for w in resolved] == ["lunge"] * 10


def test_a_restarted_device_without_a_new_label_is_not_named_by_its_last_sessions_labels():
    """A device labelled rest from 0 and squat from 6 s restarts, its clock at 0 again, and no one labels the
    new session yet. The labels after the new clock's first window were forgotten, not rest from 0: it named
    every window of the new session (scored and learnt from as rest). The labels a device had before its
    clock went back are now its last session's; a label coming after names the new session."""
    book, history = LabelBook(), WindowHistory(SPAN, lateness=4.0)
    history.track("d")
    book.add("d", "rest", 0.0)
    book.add("d", "squat", 6.0)
    old = [2.0 * k + SPAN for k in range(10)]
    resolved = []
    for t in old:
        history.add(_window(t))
        resolved += history.resolve(book)
    new = [2.0 * k + SPAN for k in range(10)]
    for t in new[:5]:  # restarted: all in one cycle, with no label
        history.add(_window(t))
    resolved += history.resolve(book)
    assert [w.t_end for w in resolved] == old + new[:3]
    assert [w.label for w in resolved[:len(old)]] == ["rest"] * 3 + ["squat"] * 7  # the old one on its own
    assert [w.label for w in resolved[len(old):]] == [None] * 3  # not rest
    assert book.at("d", 1.0) is None
    book.add("d", "lunge", 8.0)  # the new session's first label, as it comes
    for t in new[5:]:
        history.add(_window(t))
        resolved += history.resolve(book)
    assert [w.label for w in resolved[len(old) + 3:]] == [None] + ["lunge"] * 4


def test_a_restarted_devices_label_taken_before_its_new_windows_still_names_them():
    """The label for the new session comes between the old session's last window and the new one's first
    (the dashboard, a replay restarted): it is the new session's, and stays."""
    book, history = LabelBook(), WindowHistory(SPAN, lateness=4.0)
    history.track("d")
    book.add("d", "rest", 0.0)
    for k in range(10):
        history.add(_window(2.0 * k + SPAN))
        history.resolve(book)
    book.add("d", "squat", 0.0, 10.0)
    history.add(_window(SPAN))
    resolved = history.resolve(book)
    assert [w.label for w in resolved] == ["rest"] * 2  # the old session's last two, on its own label
    for k in range(1, 8):
        history.add(_window(2.0 * k + SPAN))
        resolved += history.resolve(book)
    assert [w.label for w in resolved[2:]] == ["squat"] * 5 + [None]  # rest from 0 was the old session's


@pytest.mark.parametrize("labels, window, expected", [
    ([("squat", 0.0, None), ("rest", 10.5, 11.0)], (10.0, 12.0), None),  # a span inside the window
    ([("squat", 0.0, None), ("rest", 10.5, 11.0)], (12.0, 14.0), "squat"),
    ([("squat", 0.0, None), ("lunge", 10.5, None), ("squat", 11.0, None)], (10.0, 12.0), None),
    ([("squat", 0.0, None), ("lunge", 10.5, None), ("squat", 11.0, None)], (11.0, 13.0), "squat"),
    ([("squat", 0.0, 100.0), ("rest", 50.0, 50.5)], (49.5, 51.46), None),  # a later span inside a span
    ([("squat", 0.0, 100.0), ("squat", 50.0, 50.5)], (49.5, 51.46), "squat"),  # of the same label
    ([("squat", 0.0, 100.0), ("rest", 50.0, 50.5)], (51.0, 52.96), "squat"),
    ([("squat", 0.0, None), ("rest", 11.0, 11.0 + 1e-9)], (10.0, 12.0), None),  # however short
])
def test_a_label_changing_inside_a_window_and_back_does_not_label_it(labels, window, expected):
    """Only the label at a window's first and last sample was looked at: squat, 0.5 s of rest, squat again
    inside one window labelled it squat (and the learner learnt it so)."""
    book = LabelBook()
    for name, start, end in labels:
        book.add("d", name, start, end)
    assert book.window_label("d", *window) == expected


@pytest.mark.parametrize("payload, reason, detail", [
    (b'{"label": "squat", "t": 1700000000000}', "bad_time", "t 1.7e+12 is beyond 1e+11 s: times are in seconds"),
    (b'{"label": "squat", "start": 1700000000000, "end": 1700000002000}', "bad_time", "start 1.7e+12 is beyond"),
    (b'{"label": "squat", "start": 0, "end": 1e17}', "bad_time", "(milliseconds or nanoseconds?)"),
    (b'{"label": "squat", "t": 5, "start": 1, "end": 3}', "bad_time", "t and start/end in one label"),
    (b'{"label": "squat", "t": 5, "end": 8}', "bad_time", "t and start/end in one label"),
    (b'{"label": "' + b"x" * 65 + b'", "t": 5}', "bad_label", "a label is a name of 1 to 64 characters"),
    (b'{"label": "", "t": 5}', "bad_label", "a label is a name of 1 to 64 characters"),
])
def test_a_label_naming_no_window_or_two_ways_is_refused_with_why(payload, reason, detail):
    """A label in milliseconds named no window, silently, where the same times on imu are refused as
    bad_time (06d4c66); a label with both t and start-end was taken as an open label at t, its span
    dropped without a word."""
    with pytest.raises(Rejected) as info:
        decode_label(payload)
    assert info.value.reason == reason and detail in info.value.detail


def test_a_consumer_counts_a_label_in_milliseconds_as_bad_time_and_keeps_nothing_of_it():
    c = _consumer()
    c.handle("har/dev/label", json.dumps({"label": "squat", "t": 1.7e12}).encode(), time.monotonic())
    assert c.stats.rejected["bad_time"] == 1
    assert "dev" not in c.labels and "dev" not in c.history
