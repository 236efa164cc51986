"""Stream a recording file through the stateful classifier, window by window, and score it.

The samples go through the same ``Pipeline`` (per-device buffers, batched stateful classifier) as
the live consumer; devices are interleaved chunk by chunk, as they would arrive live.
"""

from __future__ import annotations

import logging

import numpy as np
from tqdm import tqdm

from models.metrics import scores
from models.rnn import HARNet
from models.state import StatefulClassifier
from stream.decode import Rejected, SampleBatch, check_range
from stream.pipeline import Pipeline, Prediction
from stream.recording import Recording

__all__ = ["confusion_lines", "drift_alarms", "evaluate", "no_window_reason", "stream_recording", "window_truth"]

log = logging.getLogger(__name__)


def stream_recording(model: HARNet, rec: Recording, version: str = "unknown", chunk_seconds: float = 1.0,
                     progress: bool = False) -> list[Prediction]:
    """Every window's prediction, feeding the devices chunk by chunk through one Pipeline (with the
    gyroscope where the model reads it: a recording without one is then an error). A chunk holding a
    sample no body-worn sensor reads is left out (logged), as the consumer rejects such a batch
    (``out_of_range``): fed to the network it would leave the device's state NaN for good."""
    gyro = model.config.input_channels == 6
    if gyro and rec.gyro is None:
        raise ValueError("the model reads the gyroscope, but the recording has no gx, gy, gz columns "
                         "(evaluate it with a model trained with --no-gyro)")
    pipeline = Pipeline(StatefulClassifier(model, version))
    cursors = []
    for device, rows in rec.segments():
        t = rec.t[rows]
        edges = np.searchsorted(t, np.arange(t[0], t[-1] + chunk_seconds, chunk_seconds), side="left")
        cursors.append((device, rows.start, np.append(edges[1:], len(t))))
    out: list[Prediction] = []
    rounds = max(len(c[2]) for c in cursors)
    prev = {device: 0 for device, _, _ in cursors}
    for r in tqdm(range(rounds), desc="evaluating", unit="chunk", disable=not progress):
        for device, start, ends in cursors:
            if r >= len(ends):
                continue
            a, b = start + prev[device], start + ends[r]
            prev[device] = ends[r]
            if b > a:
                batch = SampleBatch(device, rec.t[a:b], rec.acc[a:b], rec.gyro[a:b] if gyro else None)
                try:
                    check_range(batch.acc, batch.gyro)
                except Rejected as exc:
                    log.warning("device %s, t %.3f to %.3f s: left out, as the consumer rejects it (%s)",
                                device, rec.t[a], rec.t[b - 1], exc)
                    continue
                pipeline.add(batch, arrival=0.0)
        if pipeline.pending:
            out.extend(pipeline.classify_ready())
    return out


def window_truth(rec: Recording, predictions: list[Prediction], rate: float, window: int,
                 agree: float = 0.6) -> list[str]:
    """The true label of each predicted window: the label held by at least ``agree`` of its grid
    samples, else "" (a transition or unknown)."""
    rows = {device: rows for device, rows in rec.segments()}
    truth = []
    offsets = np.arange(window - 1, -1, -1) / rate
    for p in predictions:
        sl = rows[p.device]
        t, labels = rec.t[sl], rec.label[sl]
        idx = np.clip(np.searchsorted(t, p.t_end - offsets + 1e-9, side="right") - 1, 0, len(t) - 1)
        values, counts = np.unique(labels[idx], return_counts=True)
        k = counts.argmax()
        truth.append(str(values[k]) if counts[k] >= agree * window else "")
    return truth


def drift_alarms(rec: Recording, predictions: list[Prediction], rate: float, window: int) -> dict:
    """The consumer's drift monitor (``stream.monitor``) over the predictions, as the consumer feeds it:
    once with every window that one label covers from end to end fed as labelled, once with none. In a
    recording where nothing is known to have drifted, every alarm is a false one. Per device (the
    overall detectors, ``_all``, left out): alarms by ``detector:signal``, and per device-hour."""
    from stream.monitor import Monitor

    truth = window_truth(rec, predictions, rate, window, agree=1.0)
    hours = len(predictions) * window / rate / 3600
    out: dict = {"device_hours": round(hours, 3)}
    for mode in ("with_labels", "without_labels"):
        monitor, alarms = Monitor(), {}
        for p, label in zip(predictions, truth, strict=True):
            if p.reoriented:  # turned anew by the orienter: not a drift (as the consumer tells its monitor)
                monitor.reoriented(p.device, p.t_end)
            events = monitor.observe(p.device, p.t_end, p.magnitude, p.confidence, p.mean_acc, p.label,
                                     p.motion)
            if label and mode == "with_labels":
                events += monitor.labelled(p.device, p.t_end, label, p.label, p.mean_acc, p.motion)
            for e in events:
                if e.device == p.device:
                    key = f"{e.detector}:{e.signal}"
                    alarms[key] = alarms.get(key, 0) + 1
        n = sum(alarms.values())
        out[mode] = {"alarms": n, "per_device_hour": round(n / hours, 3) if hours else None,
                     "by_detector": dict(sorted(alarms.items()))}
    return out


def no_window_reason(rec: Recording, window: int, rate: float) -> str:
    """Why a recording gave no window at all: no device covers a window's time, or (one does) its samples
    have gaps or were left out."""
    seconds = window / rate
    spans = {device: float(rec.t[rows][-1] - rec.t[rows][0]) for device, rows in rec.segments()}
    longest = max(spans, key=spans.get)
    about = (f"the model's window is {window} samples at {rate:g} Hz ({seconds:g} s); the longest of its "
             f"{len(spans)} device{'' if len(spans) == 1 else 's'}, {longest}, covers {spans[longest]:.4g} s")
    if spans[longest] < seconds:
        return f"nothing to evaluate: no device has a window's worth of samples ({about})"
    return (f"nothing to evaluate: no window came of the samples ({about}, but its samples have gaps or were "
            "left out: see the warnings above)")


def evaluate(model: HARNet, rec: Recording, version: str = "unknown", progress: bool = False) -> dict:
    """accuracy, macro_f1, recall and F1 per class, confusion matrix and windows, over labelled windows;
    also ``windows_total`` (labelled or not), ``unknown_classes`` (true labels the model does not have)
    and ``accuracy_known_classes`` (over the windows of the classes it has); ``drift``: the drift
    monitor's alarms over the same windows (``drift_alarms``). A recording that gives no window at all
    raises ValueError saying why (``no_window_reason``), as training does."""
    predictions = stream_recording(model, rec, version, progress=progress)
    cfg = model.config
    if not predictions:  # nothing scored: "0 labelled windows (0 in all)", accuracy None, said nothing of why
        raise ValueError(no_window_reason(rec, cfg.window, cfg.rate))
    truth = window_truth(rec, predictions, cfg.rate, cfg.window)
    pairs = [(t, p.label) for t, p in zip(truth, predictions, strict=True) if t]
    report = scores([t for t, _ in pairs], [p for _, p in pairs], list(cfg.classes))
    report["windows_total"] = len(predictions)
    report["unknown_classes"] = sorted({t for t, _ in pairs} - set(cfg.classes))
    known = [(t, p) for t, p in pairs if t in cfg.classes]  # a model cannot name a class it never learnt
    report["accuracy_known_classes"] = round(sum(t == p for t, p in known) / len(known), 4) if known else None
    report["model"] = version
    report["drift"] = drift_alarms(rec, predictions, cfg.rate, cfg.window)
    return report


def confusion_lines(labels: list[str], matrix: list[list[int]], width: int = 120) -> list[str]:
    """The confusion matrix (rows true, columns predicted) as text lines of at most ``width`` characters
    where the row names allow, 0 shown as '.'. Columns are headed by the full class names when they fit;
    else by numbers that the rows carry beside their names, in blocks of columns that fit. Names cut to 6
    characters ("bench_ deadli overhe") could not be told apart, and 17 classes made lines of 150."""
    cells = [[str(v) if v else "." for v in row] for row in matrix]
    cell = max([len(v) for row in cells for v in row] + [1])
    name = max([len(c) for c in labels] + [1])
    full = [max(len(c), cell) for c in labels]
    if name + sum(w + 1 for w in full) <= width:
        lines = ["confusion (rows true, columns predicted; . for 0):",
                 " " * name + "".join(f" {c:>{w}}" for c, w in zip(labels, full, strict=True))]
        return lines + [f"{c:>{name}}" + "".join(f" {v:>{w}}" for v, w in zip(row, full, strict=True))
                        for c, row in zip(labels, cells, strict=True)]
    digits = len(str(len(labels)))
    cell = max(cell, digits)
    head = name + 1 + digits  # "   bench_press  1"
    per_block = max(1, (width - head) // (cell + 1))
    per_block = -(-len(labels) // -(-len(labels) // per_block))  # blocks as even as they can be
    lines = ["confusion (rows true, columns predicted, numbered as the rows; . for 0):"]
    for a in range(0, len(labels), per_block):
        cols = range(a, min(len(labels), a + per_block))
        if len(labels) > per_block:
            lines.append(f"predicted {a + 1}-{cols[-1] + 1} of {len(labels)}:")
        lines.append(" " * head + "".join(f" {j + 1:>{cell}}" for j in cols))
        lines += [f"{c:>{name}} {i + 1:>{digits}}" + "".join(f" {cells[i][j]:>{cell}}" for j in cols)
                  for i, c in enumerate(labels)]
    return lines
