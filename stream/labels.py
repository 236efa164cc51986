"""True labels as they arrive on ``har/<device>/label``, and matching them to classified windows.

A label is either ``{"label": name, "t": start}``, holding until the device's next label, or
``{"label": name, "start": s, "end": e}``. Labels may arrive late: windows are kept for a while after
they are classified and resolved only once ``lateness`` seconds of device time have passed.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

from stream.decode import Rejected, json_object

__all__ = ["LabelBook", "LabelledWindow", "WindowHistory", "decode_label"]

MAX_LABEL_BYTES = 4096
EPS = 1e-6  # s: a window's first sample is t_end - span up to rounding (2.36 - 0.76 < 1.6 in floats)


def decode_label(payload: bytes) -> tuple[str, float, float | None]:
    """(label, start, end or None) of one label message; raises ``Rejected``."""
    body = json_object(payload, MAX_LABEL_BYTES)
    label = body.get("label")
    if not isinstance(label, str) or not 0 < len(label) <= 64:
        raise Rejected("bad_label", repr(label)[:40])
    numbers = {k: body.get(k) for k in ("t", "start", "end")}
    for k, v in numbers.items():
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)):
            raise Rejected("bad_time", f"{k}={v!r}"[:40])
    if numbers["t"] is not None:
        return label, float(numbers["t"]), None
    if numbers["start"] is not None and numbers["end"] is not None and numbers["end"] > numbers["start"]:
        return label, float(numbers["start"]), float(numbers["end"])
    raise Rejected("bad_time", "label needs t, or start < end")


class LabelBook:
    """Label timelines of every device."""

    def __init__(self, max_per_device: int = 512) -> None:
        self.max_per_device = max_per_device
        self._open: dict[str, tuple[list[float], list[str]]] = {}  # "holds until the next" labels
        self._spans: dict[str, list[tuple[float, float, str]]] = {}  # explicit start-end labels

    def __contains__(self, device: str) -> bool:
        return device in self._open or device in self._spans

    def add(self, device: str, label: str, start: float, end: float | None = None) -> None:
        if end is None:
            ts, names = self._open.setdefault(device, ([], []))
            i = bisect.bisect(ts, start)
            ts.insert(i, start)
            names.insert(i, label)
            if len(ts) > self.max_per_device:
                del ts[0], names[0]
        else:
            spans = self._spans.setdefault(device, [])
            spans.append((start, end, label))
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
        ts, names = self._open.get(device, ((), ()))
        i = bisect.bisect(ts, t) - 1
        return names[i] if i >= 0 else None

    def at(self, device: str, t: float) -> str | None:
        i = self._span_at(device, t)
        return self._spans[device][i][2] if i is not None else self._open_at(device, t)

    def window_label(self, device: str, t_start: float, t_end: float) -> str | None:
        """The label of a whole window, or None where unknown or changing inside it. Where spans cover both
        ends, the same span must: two spans of one label with an unlabelled stretch between them (a
        labelled replay's runs) do not label a window reaching across it."""
        first, last = self._span_at(device, t_start), self._span_at(device, t_end)
        if first is not None and last is not None:
            return self._spans[device][first][2] if first == last else None
        spans = self._spans.get(device, ())
        label = spans[first][2] if first is not None else self._open_at(device, t_start)
        return label if label is not None and label == (spans[last][2] if last is not None
                                                          else self._open_at(device, t_end)) else None

    def drop_after(self, device: str, t: float) -> None:
        """Forget the device's labels that start after ``t``: after its clock went back to ``t``, they
        belong to the session before (they would name the new session's windows when its clock got there)."""
        if device in self._open:
            ts, names = self._open[device]
            keep = bisect.bisect(ts, t)
            del ts[keep:], names[keep:]
        if device in self._spans:
            self._spans[device] = [span for span in self._spans[device] if span[0] <= t]

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
    """Recent windows of devices that receive labels, waiting for their labels to be final."""

    def __init__(self, span: float, lateness: float = 4.0, max_windows: int = 64) -> None:
        self.span = span  # seconds from a window's first sample to its last (``t_end``): (window - 1) / rate
        self.lateness = lateness
        self._windows: dict[str, deque[LabelledWindow]] = {}
        self._ended: dict[str, list[LabelledWindow]] = {}  # windows of a session whose device clock then went back
        # windows pushed out of a full queue (more than max_windows of a device in one cycle: a replay at full
        # speed, a consumer behind): resolved next with their labels as they stand, far past their lateness;
        # always of the device's current session (a session ending takes them into _ended, before its queue)
        self._due: dict[str, list[LabelledWindow]] = {}
        self.max_windows = max_windows

    def __contains__(self, device: str) -> bool:
        return device in self._windows

    def track(self, device: str) -> None:
        self._windows.setdefault(device, deque(maxlen=self.max_windows))

    def add(self, window: LabelledWindow) -> None:
        queue = self._windows.get(window.device)
        if queue is None:
            return
        if queue and window.t_end < queue[-1].t_end:  # the device's clock went back: a new session
            ended = self._ended.setdefault(window.device, [])
            ended += self._due.pop(window.device, [])  # its windows pushed out come before those left
            ended.extend(queue)  # final now: resolved next
            queue.clear()
        elif len(queue) == queue.maxlen:  # the deque would drop its oldest unscored: it is due instead
            self._due.setdefault(window.device, []).append(queue.popleft())
        queue.append(window)

    def resolve(self, labels: LabelBook) -> list[LabelledWindow]:
        """Windows old enough that a late label would have arrived, with their labels, in order. A
        session whose device's clock went back has ended: its windows are all resolved at once, then
        its labels after the new clock's first window are forgotten (``LabelBook.drop_after``)."""
        out = []
        for device, ended in self._ended.items():
            for w in ended:
                w.label = self._label_of(w, labels)
            out += ended
            first = self._due.get(device) or self._windows.get(device)  # the new session's first window
            if first:
                labels.drop_after(device, first[0].t_end)
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
        return out

    def waiting(self, device: str) -> list[LabelledWindow]:
        """The device's windows still waiting for their labels (an ended session's too), oldest first."""
        return self._ended.get(device, []) + self._due.get(device, []) + list(self._windows.get(device, ()))

    def flush(self, device: str, labels: LabelBook) -> list[LabelledWindow]:
        """All of a device's waiting windows, with their labels as they stand (the device has gone)."""
        out = self._ended.pop(device, []) + self._due.pop(device, []) + list(self._windows.get(device, ()))
        for w in out:
            w.label = self._label_of(w, labels)
        self._windows.pop(device, None)
        return out

    def _label_of(self, w: LabelledWindow, labels: LabelBook) -> str | None:
        """The label holding from the window's first sample to its last (None: unknown or changing)."""
        return labels.window_label(w.device, w.t_end - self.span + EPS, w.t_end)

    def forget(self, device: str) -> None:
        self._windows.pop(device, None)
        self._ended.pop(device, None)
        self._due.pop(device, None)
