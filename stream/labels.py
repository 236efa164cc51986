"""True labels as they arrive on ``har/<device>/label``, and matching them to classified windows.

A label is either ``{"label": name, "t": start}``, holding until the device's next label, or
``{"label": name, "start": s, "end": e}``. Labels may arrive late: windows are kept for a while after
they are classified and resolved only once ``lateness`` seconds of device time have passed. The windows still
waiting go into the consumer's checkpoint (``WindowHistory.snapshot``/``restore``), so that labels arriving
after a restart (those published while the consumer was down come with the persistent session) still name them.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from stream.decode import MAX_T, Rejected, json_object

if TYPE_CHECKING:  # torch is imported where windows' tensors are handled: harstream record, which needs only
    import torch  # decode_label and LabelBook, starts without it (2 s and some 200 MB of RSS)

__all__ = ["LabelBook", "LabelledWindow", "WindowHistory", "decode_label"]

MAX_LABEL_BYTES = 4096
EPS = 1e-6  # s: a window's first sample is t_end - span up to rounding (2.36 - 0.76 < 1.6 in floats)
# windows of one device waiting for their labels at most: an hour of lateness at a window a second (50-sample
# windows at 50 Hz; the default model makes one every 2 s: two hours), about 11 MB a labelling device at some
# 3 kB a window (the default model's samples and LSTM state, measured). Memory follows the lateness asked for
# (the default 4 s keeps 2 windows of 2 s); this only bounds it, refusing a lateness that would keep more. The
# checkpoint keeps them too (WindowHistory.snapshot): some 1.7 kB a window, 5.8 MB for 3,500 windows (measured)
MAX_WINDOWS = 3600
SNAPSHOT_VERSION = 1  # of WindowHistory.snapshot


def decode_label(payload: bytes) -> tuple[str, float, float | None]:
    """(label, start, end or None) of one label message; raises ``Rejected``."""
    body = json_object(payload, MAX_LABEL_BYTES)
    label = body.get("label")
    if not isinstance(label, str) or not 0 < len(label) <= 64:
        raise Rejected("bad_label", f"{repr(label)[:40]}: a label is a name of 1 to 64 characters")
    numbers = {k: body.get(k) for k in ("t", "start", "end")}
    for k, v in numbers.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise Rejected("bad_time", f"{k}={v!r}"[:40])
        if v is not None and abs(v) >= MAX_T:  # as the imu's times: such a label would name no window
            raise Rejected("bad_time", f"{k} {v:.3g} is beyond {MAX_T:.0e} s: times are in seconds "
                                       f"(milliseconds or nanoseconds?)")
    if numbers["t"] is not None:
        if numbers["start"] is not None or numbers["end"] is not None:  # which one was meant is unknown
            raise Rejected("bad_time", "t and start/end in one label: t (holds until the next), or start < end")
        return label, float(numbers["t"]), None
    if numbers["start"] is not None and numbers["end"] is not None and numbers["end"] > numbers["start"]:
        return label, float(numbers["start"]), float(numbers["end"])
    raise Rejected("bad_time", "label needs t, or start < end")


class LabelBook:
    """Label timelines of every device. Each label keeps its number in the order taken (``taken``), so that
    the labels a device had before its clock went back can be told from those that came after."""

    def __init__(self, max_per_device: int = 512) -> None:
        self.max_per_device = max_per_device
        self.taken = 0  # labels taken so far, of every device: the next one's number
        self._open: dict[str, tuple[list[float], list[str], list[int]]] = {}  # "holds until the next" labels
        self._spans: dict[str, list[tuple[float, float, str, int]]] = {}  # explicit start-end labels

    def __contains__(self, device: str) -> bool:
        return device in self._open or device in self._spans

    def add(self, device: str, label: str, start: float, end: float | None = None) -> None:
        number, self.taken = self.taken, self.taken + 1
        if end is None:
            ts, names, numbers = self._open.setdefault(device, ([], [], []))
            i = bisect.bisect(ts, start)
            ts.insert(i, start)
            names.insert(i, label)
            numbers.insert(i, number)
            if len(ts) > self.max_per_device:  # the earliest goes, but not the one just taken: a restarted
                j = 1 if i == 0 else 0  # device's first label lies before all its last session's labels
                del ts[j], names[j], numbers[j]
        else:
            spans = self._spans.setdefault(device, [])
            spans.append((start, end, label, number))
            if len(spans) > self.max_per_device:
                del spans[0]

    def _span_at(self, device: str, t: float) -> int | None:
        """Index of the latest span covering ``t`` (spans win over open labels), None if none does."""
        spans = self._spans.get(device, ())
        for i in range(len(spans) - 1, -1, -1):
            if spans[i][0] <= t <= spans[i][1]:
                return i
        return None

    def _open_at(self, device: str, t: float) -> str | None:
        ts, names, _ = self._open.get(device, ((), (), ()))
        i = bisect.bisect(ts, t) - 1
        return names[i] if i >= 0 else None

    def at(self, device: str, t: float) -> str | None:
        i = self._span_at(device, t)
        return self._spans[device][i][2] if i is not None else self._open_at(device, t)

    def window_label(self, device: str, t_start: float, t_end: float) -> str | None:
        """The label of a whole window, or None where unknown or changing inside it. Where spans cover both
        ends, they must name one label, and it must hold in between too: a label starting inside the window,
        or a span starting or ending there, must not change it (squat, a 1 s span of rest inside the window,
        squat again is no squat window; two spans of one label with an unlabelled stretch between them, a
        labelled replay's runs, do not label a window reaching across it; two that touch, a set labelled in
        two parts, do)."""
        first, last = self._span_at(device, t_start), self._span_at(device, t_end)
        spans = self._spans.get(device, ())
        if first is not None and last is not None:
            label = spans[first][2] if spans[first][2] == spans[last][2] else None
        else:
            label = spans[first][2] if first is not None else self._open_at(device, t_start)
            if label is None or label != (spans[last][2] if last is not None else self._open_at(device, t_end)):
                return None
        if label is None:
            return None
        return label if self._holds(device, label, t_start, t_end) else None

    def _holds(self, device: str, label: str, t_start: float, t_end: float) -> bool:
        """Whether ``at`` is ``label`` everywhere from ``t_start`` to ``t_end``. It changes only where a label
        starts or just after a span ends: those points are looked at in one sweep, the latest of the spans
        covering each on top of a heap, the open label by bisection. (``at`` at each point scanned every span:
        with 512 spans kept and a label a sample, 2 ms a window on the consumer's hot path, 20 ms with the spans
        inside it too.)
        """
        ts, names, _ = self._open.get(device, ((), (), ()))
        spans = self._spans.get(device, ())
        # spans reaching into the window: (where they start in it, -number in the list: the latest first, end)
        over = sorted((max(s, t_start), -i, e) for i, (s, e, _, _) in enumerate(spans) if s <= t_end and e >= t_start)
        points = {t_start, *ts[bisect.bisect(ts, t_start):bisect.bisect(ts, t_end)]}
        points.update(s for s, _, _ in over)
        points.update(math.nextafter(e, math.inf) for _, _, e in over if e < t_end)
        covering: list[tuple[int, float]] = []  # (-i, end) of the spans started; the ended leave when on top
        k = 0
        for t in sorted(points):
            while k < len(over) and over[k][0] <= t:
                heapq.heappush(covering, over[k][1:])
                k += 1
            while covering and covering[0][1] < t:
                heapq.heappop(covering)
            if covering:
                at = spans[-covering[0][0]][2]
            else:
                i = bisect.bisect(ts, t) - 1
                at = names[i] if i >= 0 else None
            if at != label:
                return False
        return True

    def drop_after(self, device: str, t: float) -> None:
        """Forget the device's labels that start after ``t``: after its clock went back to ``t``, they
        belong to the session before (they would name the new session's windows when its clock got there)."""
        if device in self._open:
            ts, names, numbers = self._open[device]
            keep = bisect.bisect(ts, t)
            del ts[keep:], names[keep:], numbers[keep:]
        if device in self._spans:
            self._spans[device] = [span for span in self._spans[device] if span[0] <= t]

    def split_off(self, device: str, mark: int, t: float) -> LabelBook:
        """Take a restarted device's labels of its new session out into a book of their own: those taken from
        ``mark`` on (a value of ``taken``: after its last session's last window) that start at ``t`` (the new
        clock's first window) or before. Those left are its last session's. ``take_over`` puts them back."""
        part = LabelBook(self.max_per_device)
        if device in self._open:
            rows = list(zip(*self._open.pop(device), strict=True))  # (start, label, number), in time order
            for book, new in ((part, True), (self, False)):
                chosen = [r for r in rows if (r[2] >= mark and r[0] <= t) == new]
                if chosen:
                    book._open[device] = tuple(list(column) for column in zip(*chosen, strict=True))
        if device in self._spans:
            spans = self._spans.pop(device)
            for book, new in ((part, True), (self, False)):
                chosen = [span for span in spans if (span[3] >= mark and span[0] <= t) == new]
                if chosen:
                    book._spans[device] = chosen
        return part

    def take_over(self, device: str, part: LabelBook) -> None:
        """The device's labels are ``part``'s from now on (``split_off``): those it had are forgotten."""
        self.forget(device)
        if device in part._open:
            self._open[device] = part._open[device]
        if device in part._spans:
            self._spans[device] = part._spans[device]

    def forget(self, device: str) -> None:
        self._open.pop(device, None)
        self._spans.pop(device, None)


@dataclass
class LabelledWindow:
    device: str
    t_end: float
    samples: np.ndarray  # (window, C): the model's input channels, the accelerometer's first
    state: tuple[torch.Tensor, ...]  # the device's state before this window, each (layers, hidden)
    predicted: str
    confidence: float
    label: str | None = None  # None: unknown or a transition


class WindowHistory:
    """Recent windows of devices that receive labels, waiting for their labels to be final.

    A window waits until the device's newest is ``lateness`` seconds of device time past it. A device's windows
    are more than ``span`` apart (its hop is span + one sample, more across a gap), so at most lateness / span
    + 1 of them wait: a lateness that would keep more than ``max_windows`` is refused. More in one cycle (a
    replay at full speed, a consumer behind) are due at once, past their lateness already. (A span of 0, a
    window of one sample, says nothing of the hop: only ``max_windows`` bounds its windows then.)
    """

    def __init__(self, span: float, lateness: float = 4.0, max_windows: int = MAX_WINDOWS) -> None:
        if not 0.0 <= lateness < math.inf:  # NaN fails too
            raise ValueError(f"label lateness must be a finite number of seconds, 0 or more, not {lateness!r}")
        if span > 0 and lateness / span + 2 > max_windows:
            raise ValueError(f"a label lateness of {lateness:g} s would keep up to {int(lateness / span) + 1} windows "
                             f"of {span:g} s a device waiting; at most {max_windows} are kept, for a lateness of up "
                             f"to {(max_windows - 2) * span:.0f} s")
        self.span = span  # seconds from a window's first sample to its last (``t_end``): (window - 1) / rate
        self.lateness = lateness
        self._windows: dict[str, deque[LabelledWindow]] = {}
        self._ended: dict[str, list[LabelledWindow]] = {}  # windows of a session whose device clock then went back
        # windows pushed out of a full queue (more than max_windows of a device in one cycle): resolved next
        # with their labels as they stand; always of the device's current session (a session ending takes
        # them into _ended, before its queue)
        self._due: dict[str, list[LabelledWindow]] = {}
        self.max_windows = max_windows
        self._newest: dict[str, float] = {}  # t_end of each device's newest window (its queue may be empty)
        self._fresh: set[str] = set()  # devices with a window added since the last resolve
        # each device's LabelBook.taken at the end of the last cycle that brought it a window; a session's, kept
        # in _ended_mark when the clock goes back: the labels taken before it are that session's
        self._mark: dict[str, int] = {}
        self._ended_mark: dict[str, int | None] = {}

    def __contains__(self, device: str) -> bool:
        return device in self._windows

    def track(self, device: str) -> None:
        self._windows.setdefault(device, deque())

    def add(self, window: LabelledWindow, new_session: bool = False) -> None:
        """``new_session``: the window is its device's new session's first (``Window.new_session``), though it
        may end after the last one's newest (a device's seq 0 starting a new grid within its last window)."""
        queue = self._windows.get(window.device)
        if queue is None:
            return
        device = window.device
        newest = self._newest.get(device)
        if newest is not None and (window.t_end < newest or new_session):  # its clock went back: a new session
            ended = self._ended.setdefault(device, [])  # even if none waits: its labels are to be forgotten
            ended += self._due.pop(device, [])  # its windows pushed out come before those left
            ended.extend(queue)  # final now: resolved next
            queue.clear()
            if device not in self._ended_mark:  # two sessions ending in one cycle: the first's mark
                self._ended_mark[device] = self._mark.get(device)  # None: no cycle of the device ended yet
        elif len(queue) == self.max_windows:  # more than the queue holds in one cycle: its oldest is due
            self._due.setdefault(device, []).append(queue.popleft())
        queue.append(window)
        self._newest[device] = window.t_end
        self._fresh.add(device)

    def resolve(self, labels: LabelBook) -> list[LabelledWindow]:
        """Windows old enough that a late label would have arrived, with their labels, in order. A
        session whose device's clock went back has ended: its windows are all resolved at once, on its own
        labels, which are then forgotten: those taken before it ended, and those starting after the new clock's
        first window (``LabelBook.split_off``). Where it ended in the device's first cycle (no mark), on all the
        device's labels, then those starting after the new clock's first window are forgotten."""
        out = []
        for device, ended in self._ended.items():
            first = self._due.get(device) or self._windows.get(device)  # the new session's first window
            t = first[0].t_end if first else math.inf
            mark = self._ended_mark.pop(device, None)
            # the new session's labels out of the way: a label from the new clock's 0 named the old session's
            # last windows too (those past it, unless a later label of the old one came before them)
            new = labels.split_off(device, mark, t) if mark is not None else None
            for w in ended:
                w.label = self._label_of(w, labels)
            out += ended
            if new is not None:
                labels.take_over(device, new)
            else:
                labels.drop_after(device, t)
        self._ended.clear()
        for due in self._due.values():  # the current session's, older than anything of their device's below
            for w in due:
                w.label = self._label_of(w, labels)
            out += due
        self._due.clear()
        for queue in self._windows.values():
            if not queue:
                continue
            newest = queue[-1].t_end
            while queue and queue[0].t_end <= newest - self.lateness:
                w = queue.popleft()
                w.label = self._label_of(w, labels)
                out.append(w)
        for device in self._fresh:
            self._mark[device] = labels.taken
        self._fresh.clear()
        return out

    def end_session(self, device: str, labels: LabelBook) -> list[LabelledWindow]:
        """The device's waiting windows, with their labels as they stand: its session has ended (its clock was
        found restarted while the consumer was down, before its new session's labels are told from the last
        one's). It stays tracked, afresh."""
        out = self.waiting(device)
        for w in out:
            w.label = self._label_of(w, labels)
        tracked = device in self._windows
        self.forget(device)
        if tracked:
            self.track(device)
        return out

    def snapshot(self) -> dict:
        """The windows still waiting, for the consumer's checkpoint (``restore``), as plain data only (tensors,
        numbers, strings, as ``torch.load(weights_only=True)`` reads them): ``devices``, each device with any and
        how many, in order; then every window of them, device after device, oldest first, in one tensor a field
        (a tensor each per device made them two fifths larger in the file at 2 windows a device): ``t_end``,
        ``samples`` (n, window, C), each state tensor (n, layers, hidden), ``confidence``, and ``predicted`` as
        indices into ``classes``. Taken between cycles, when no ended session or pushed-out window waits (a
        cycle's ``resolve`` takes them): those would be taken too, and a device's whose clock went back then is
        refused by ``restore`` (out of order). The labels' marks are not kept: a restored device is as in its
        first cycle."""
        import torch
        devices: dict[str, int] = {}
        windows: list[LabelledWindow] = []
        for device in self._windows:
            waiting = self.waiting(device)
            if waiting:
                devices[device] = len(waiting)
                windows += waiting
        classes: dict[str, int] = {}
        out = {"version": SNAPSHOT_VERSION, "devices": devices}
        if windows:
            out.update({
                "t_end": torch.tensor([w.t_end for w in windows], dtype=torch.float64),
                "samples": torch.from_numpy(np.stack([w.samples for w in windows])),
                "state": [torch.stack(parts) for parts in zip(*(w.state for w in windows), strict=True)],
                "confidence": torch.tensor([w.confidence for w in windows], dtype=torch.float64),
                "predicted": torch.tensor([classes.setdefault(w.predicted, len(classes)) for w in windows]),
            })
        out["classes"] = list(classes)
        return out

    def restore(self, snapshot, devices=None, window: tuple[int, int] | None = None,
                states: list[tuple[int, ...]] | None = None) -> dict[str, str]:
        """Take up the windows a ``snapshot`` kept, of the ``devices`` given (else of all), as waiting windows of
        devices tracked from now on; ``window`` (samples, channels) and ``states`` (each state tensor's shape)
        as the model in use has them. Returns the devices whose windows were refused, with why (out of order,
        values not finite): they are dropped, the others taken. A snapshot that is malformed as a whole (no
        dict, another version, fields missing or of the wrong type or shape, made by another model, tensors
        other than plain CPU ones: sparse, on the meta device, needing grad) is a ``ValueError`` saying why,
        nothing taken. Samples and states are taken as float32, as the model keeps and the learner trains them
        (a float64 state, say, failed each learner batch it went into)."""
        import torch
        if not isinstance(snapshot, dict):
            raise ValueError(f"label history: a dict expected, not {type(snapshot).__name__}")
        version = snapshot.get("version")
        if type(version) is not int or version != SNAPSHOT_VERSION:  # a tensor's != is no bool
            raise ValueError(f"label history of version {str(version)[:40]}, not {SNAPSHOT_VERSION}")
        try:
            counts = snapshot["devices"]
            if not isinstance(counts, dict) or not all(
                    isinstance(d, str) and type(n) is int and 0 < n <= self.max_windows for d, n in counts.items()):
                raise TypeError(f"devices: device -> 1 to {self.max_windows} windows expected")
            if not counts:
                return {}
            fields = self._fields(snapshot, sum(counts.values()), window, states)
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError, RuntimeError) as exc:
            raise ValueError(f"label history malformed ({type(exc).__name__}: {str(exc)[:200]})") from None
        t_end, samples, parts, confidence, predicted = fields
        refused = {}
        taken: dict[str, deque[LabelledWindow]] = {}  # all or none: nothing is taken before a fault
        start = 0
        for device, n in counts.items():
            at, start = slice(start, start + n), start + n
            if devices is not None and device not in devices:
                continue
            times = t_end[at].tolist()
            if not all(math.isfinite(t) for t in times) or any(b < a for a, b in zip(times, times[1:], strict=False)):
                refused[device] = "t_end: finite and in order expected"  # a clock that went back: no one session
                continue
            if not all(bool(torch.isfinite(x[at]).all()) for x in (samples, confidence, *parts)):
                refused[device] = "values not finite"
                continue
            values, names = samples[at].numpy(), predicted[at]
            state, sure = [p[at] for p in parts], confidence[at].tolist()
            taken[device] = deque(
                LabelledWindow(device, t, values[i].copy(), tuple(p[i].clone() for p in state), names[i], sure[i])
                for i, t in enumerate(times))
        for device, queue in taken.items():
            self._windows[device] = queue
            self._newest[device] = queue[-1].t_end
        return refused

    def drop_resolved(self, marks: dict[str, float]) -> int:
        """Forget the restored windows that a killed life resolved after its checkpoint, by each device's
        ``marks`` (the end of the last window it classified: its journal's), as ``resolve`` did: those
        ``lateness`` (this life's) or more before the mark, or all where the mark lies before them (the device's
        clock went back: their session ended then). They were scored, taught and, on a clock gone back, labelled
        on their own session's labels, which the next life can no longer tell from the new session's: not
        again. A mark at the newest window is no window since: none taken. Call it right after ``restore``.
        Returns how many were forgotten."""
        dropped = 0
        for device, queue in self._windows.items():
            mark = marks.get(device)
            if mark is None or not queue or mark == queue[-1].t_end:  # nothing classified since the checkpoint
                continue
            if mark < queue[-1].t_end:  # a new session since: all of them were resolved when it began
                dropped += len(queue)
                queue.clear()
            else:
                while queue and queue[0].t_end <= mark - self.lateness:
                    queue.popleft()
                    dropped += 1
            self._newest[device] = mark  # as that life left it: the windows coming next follow on from the mark
        return dropped

    @staticmethod
    def _fields(snapshot: dict, n: int, window: tuple[int, int] | None, states: list[tuple[int, ...]] | None):
        """(t_end, samples, state parts, confidence, predicted names) of a snapshot's ``n`` windows."""
        import torch

        from stream.persist import plain_tensor
        t_end, samples, confidence = snapshot["t_end"], snapshot["samples"], snapshot["confidence"]
        parts, indices, classes = snapshot["state"], snapshot["predicted"], snapshot["classes"]

        # as weights_only read them: sparse, meta, needing grad, negative bit, another float type (plain_tensor)
        t_end = plain_tensor(t_end, "t_end", torch.float64)
        confidence = plain_tensor(confidence, "confidence", torch.float64)
        samples = plain_tensor(samples, "samples", torch.float32)
        if t_end.shape != (n,) or confidence.shape != (n,):
            raise ValueError(f"t_end and confidence of shapes {tuple(t_end.shape)}, {tuple(confidence.shape)}, "
                             f"not ({n},)")
        if samples.dim() != 3 or len(samples) != n or (window is not None and tuple(samples.shape[1:]) != window):
            raise ValueError(f"samples of shape {tuple(samples.shape)}, not ({n}, {window})")
        if not isinstance(parts, (list, tuple)):
            raise TypeError(f"state: a list of float tensors of {n} windows expected")
        parts = [plain_tensor(p, "state", torch.float32) for p in parts]
        if not all(p.dim() > 1 and len(p) == n for p in parts):
            raise TypeError(f"state: a list of float tensors of {n} windows expected")
        if states is not None and [tuple(p.shape[1:]) for p in parts] != [tuple(x) for x in states]:
            raise ValueError(f"state of shapes {[tuple(p.shape[1:]) for p in parts]}, not {states}")
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise TypeError("classes: a list of names expected")
        if not (isinstance(indices, torch.Tensor) and indices.layout == torch.strided and indices.device.type == "cpu"
                and indices.dtype == torch.int64):
            raise TypeError("predicted: an int64 tensor expected (dense, on the CPU)")
        if indices.shape != (n,):
            raise TypeError(f"predicted: {n} indices expected")
        if n and indices.min() < 0:
            raise IndexError("predicted: a negative index")
        return t_end, samples, parts, confidence, [classes[i] for i in indices.tolist()]

    def waiting(self, device: str) -> list[LabelledWindow]:
        """The device's windows still waiting for their labels (an ended session's too), oldest first."""
        return self._ended.get(device, []) + self._due.get(device, []) + list(self._windows.get(device, ()))

    def flush(self, device: str, labels: LabelBook) -> list[LabelledWindow]:
        """All of a device's waiting windows, with their labels as they stand (the device has gone)."""
        out = self._ended.pop(device, []) + self._due.pop(device, []) + list(self._windows.get(device, ()))
        for w in out:
            w.label = self._label_of(w, labels)
        self.forget(device)
        return out

    def _label_of(self, w: LabelledWindow, labels: LabelBook) -> str | None:
        """The label holding from the window's first sample to its last (None: unknown or changing)."""
        return labels.window_label(w.device, w.t_end - self.span + EPS, w.t_end)

    def forget(self, device: str) -> None:
        for kept in (self._windows, self._ended, self._due, self._newest, self._mark, self._ended_mark):
            kept.pop(device, None)
        self._fresh.discard(device)
