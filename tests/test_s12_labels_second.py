"""A second look at fb90076 (stream/labels.py): what a window costs when a device has many labels inside it; a
restarted device's last session scored on its own labels, not the new session's; a restarted device's first
label kept by a full label book."""

import bisect
import math
import random
import time

import numpy as np
import torch

from stream.labels import LabelBook, LabelledWindow, WindowHistory
from tests.helpers import imu
from tests.test_consumer_monitor import _consumer, _label
from tests.test_second_look_labels import scored_windows

STATE = (torch.zeros(2, 8),)
SPAN = 1.96  # 50 samples at 25 Hz, windows every 2 s


def _window(t_end: float) -> LabelledWindow:
    return LabelledWindow("d", t_end, np.zeros((4, 3), np.float32), STATE, "rest", 0.9)


class _CountedSpans(list):
    """A device's spans, counting each span read (by index or in a loop)."""

    reads = 0

    def __getitem__(self, i):
        self.reads += 1
        return super().__getitem__(i)

    def __iter__(self):
        for span in super().__iter__():
            self.reads += 1
            yield span


def test_a_window_reads_a_devices_spans_a_few_times_not_once_for_each_label_inside_it():
    """A device with 512 spans from earlier (a labelled replay's runs) then labelled at each sample (50 Hz): some
    100 labels inside a 2 s window. fb90076 looked the label up at each of them, each a scan of every span: some
    100,000 span reads, about 2 ms for one window on the consumer's hot path (20 times the whole lookup now).
    Now one pass over the spans, and at each point the latest covering span from a heap."""
    book = LabelBook()
    for k in range(512):
        book.add("d", ("rest", "squat")[k % 2], 10.0 * k, 10.0 * k + 5.0)
    for k in range(500):
        book.add("d", "squat", 5200.0 + 0.02 * k)
    book._spans["d"] = spans = _CountedSpans(book._spans["d"])
    assert book.window_label("d", 5204.0, 5205.96) == "squat"
    assert spans.reads < 10 * len(spans)  # a few passes over the spans (fb90076: one a label inside)
    spans.reads = 0
    book.add("d", "rest", 5205.0, 5205.01)  # a span of another label inside: no squat window
    assert book.window_label("d", 5204.0, 5205.96) is None and book.window_label("d", 5206.0, 5207.96) == "squat"
    assert spans.reads < 20 * len(spans)


def _reference(book: LabelBook, t_start: float, t_end: float) -> str | None:
    """fb90076's window label, the label looked up one point at a time: at the window's ends, at every label
    start inside and just after every span end inside (two spans of one label that touch or overlap label a
    window across them since the s13 change; fb90076 asked the same span to cover both ends)."""
    spans = book._spans.get("d", [])
    label = book.at("d", t_start)
    if label is None or label != book.at("d", t_end):
        return None
    ts = book._open["d"][0] if "d" in book._open else []
    points = ts[bisect.bisect(ts, t_start):bisect.bisect(ts, t_end)]
    for s, e, _, _ in spans:
        if t_start < s <= t_end:
            points.append(s)
        if t_start <= e < t_end:
            points.append(math.nextafter(e, math.inf))
    return label if all(book.at("d", t) == label for t in points) else None


def test_a_windows_label_is_the_one_looked_up_point_by_point():
    """Random books of open labels and spans, overlapping, with equal times and spans of one instant: the
    sweep labels a window exactly as looking the label up at each point where it may change."""
    rng = random.Random(12)
    labelled = 0
    for _ in range(3000):
        book = LabelBook(max_per_device=rng.choice([4, 512]))
        for _ in range(rng.randint(0, 12)):
            s = round(rng.uniform(0.0, 10.0), 1)
            if rng.random() < 0.5:
                book.add("d", rng.choice("ab"), s)
            else:
                book.add("d", rng.choice("ab"), s, s + (round(rng.uniform(0.0, 4.0), 1) or 0.1))
        t_start = round(rng.uniform(-1.0, 10.0), 1)
        t_end = t_start + rng.choice([0.0, 0.5, 1.96, 3.0])
        label = book.window_label("d", t_start, t_end)
        assert label == _reference(book, t_start, t_end), (t_start, t_end, book._open, book._spans)
        labelled += label is not None
    assert 500 < labelled < 2500  # labelled windows and unlabelled ones well represented


def test_a_restarted_devices_last_windows_are_not_named_by_its_new_sessions_first_label():
    """A device labelled rest from 0 restarts, its clock at 0 again, and is labelled squat from 0. Its last
    session's windows still waiting (the last 4 s) were resolved with the new session's label in the book: squat
    from 0, taken later, held over them. Now they are resolved on the labels taken before the new session's."""
    book, history = LabelBook(), WindowHistory(SPAN, lateness=4.0)
    history.track("d")
    book.add("d", "rest", 0.0)
    resolved = []
    for k in range(50):
        history.add(_window(2.0 * k + SPAN))
        resolved += history.resolve(book)
    book.add("d", "squat", 0.0)  # the new session's first label, before its first window
    for k in range(6):
        history.add(_window(2.0 * k + SPAN))
        resolved += history.resolve(book)
    assert [w.t_end for w in resolved] == [2.0 * k + SPAN for k in range(50)] + [2.0 * k + SPAN for k in range(4)]
    assert [w.label for w in resolved[:50]] == ["rest"] * 50  # fb90076: its last two squat
    assert [w.label for w in resolved[50:]] == ["squat"] * 4
    assert book.at("d", 50.0) == "squat"  # rest from 0 went with the last session


def test_a_consumer_with_a_long_lateness_scores_a_restarted_devices_last_session_on_its_own_label():
    """Through the consumer, with a 20 s lateness: a device labelled rest restarts and is labelled squat from
    its new clock's 0. The last session's 25 windows still waiting were scored squat (and learnt so)."""
    c = _consumer(label_lateness=20.0, idle_timeout=300.0)
    scored = scored_windows(c)
    _label(c, "dev", "rest")
    for seq in range(60):  # 60 s at 25 Hz, one message a cycle: 75 windows of 0.8 s
        c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic())
        c._classify()
    waiting = len(c.history.waiting("dev"))
    assert waiting >= 24 and len(scored) == 75 - waiting
    _label(c, "dev", "squat")  # restarted: a label from its new clock's 0, then seq 0 at 0 s again
    for seq in range(30):
        c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic())
        c._classify()
    old, new = scored[:75], scored[75:]
    assert [label for _, label in old] == ["rest"] * 75  # fb90076: the last 25 squat
    assert len(new) > 10 and {label for _, label in new} == {"squat"} and new[0][0] < old[-1][0]


def test_a_restarted_devices_first_label_is_kept_by_a_full_label_book():
    """A device labelled 600 times (the book keeps 512 open labels) restarts and is labelled lunge from 0. Its
    label, the earliest, was the one the full book dropped at once: the new session went unlabelled, its last
    session's labels forgotten. Now the earliest other goes, and the new session is lunge."""
    book, history = LabelBook(), WindowHistory(SPAN, lateness=4.0)
    history.track("d")
    for k in range(600):  # an exercise every 10 s for 100 minutes
        book.add("d", ("rest", "squat")[k % 2], 10.0 * k)
    resolved = []
    for k in range(3000):
        history.add(_window(2.0 * k + SPAN))
        resolved += history.resolve(book)
    book.add("d", "lunge", 0.0)
    assert book.at("d", 1.0) == "lunge"
    for k in range(6):
        history.add(_window(2.0 * k + SPAN))
        resolved += history.resolve(book)
    assert [w.label for w in resolved[-6:]] == ["squat"] * 2 + ["lunge"] * 4  # the last session's last two
    assert book.at("d", 5990.0) == "lunge"  # the last session's labels forgotten


def test_a_full_label_book_drops_the_earliest_label_when_the_new_one_is_later():
    book = LabelBook(max_per_device=3)
    for t, name in ((0.0, "a"), (10.0, "b"), (20.0, "c"), (15.0, "d")):
        book.add("d", name, t)
    assert [book.at("d", t) for t in (5.0, 12.0, 17.0, 25.0)] == [None, "b", "d", "c"]
    book.add("d", "e", -5.0)  # earlier than all: the earliest of the others goes
    assert [book.at("d", t) for t in (-1.0, 12.0, 17.0, 25.0)] == ["e", "e", "d", "c"]
