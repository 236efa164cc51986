"""Replaying a recording file over MQTT, in real time or faster, optionally with its labels."""

from __future__ import annotations

import logging
import threading
import time

import numpy as np
import orjson
from tqdm import tqdm

from simulators.publisher import check_interval, check_speed
from stream.decode import MAX_PAYLOAD_BYTES, MAX_SAMPLES, _spread_ok
from stream.mqtt import BrokerURL, connect
from stream.recording import Recording

log = logging.getLogger(__name__)


def _settle(info, timeout: float = 10.0) -> bool:
    """Wait until paho has sent ``info``'s message (acknowledged, at QoS 1); False, and the replay goes on, where
    it could not: paho's ``wait_for_publish`` raises RuntimeError for a message published while the connection
    was down (it is sent again once paho reconnects), and the replay ended with a traceback."""
    try:
        info.wait_for_publish(timeout)
        return info.is_published()
    except (RuntimeError, ValueError) as exc:
        log.warning("replay: %s; going on (paho sends it again once it reconnects)", exc)
        return False

__all__ = ["replay", "label_spans", "message_rows"]

SPAN_EPS = 1e-6  # s: a span's end beyond its last sample, far below any sample spacing
# The most bytes a sample takes in an imu message: orjson writes a float64 in at most 24 characters
# ("-2.2250738585072014e-308"); t and a comma, "[x,y,z]," for acc and as much for gyro. With the message's own
# keys (_BODY_BYTES), a message of at most max_samples(gyro) samples is within the consumer's MAX_PAYLOAD_BYTES
_NUMBER_BYTES = 24
_BODY_BYTES = 64  # {"seq":<19 digits>,"t":[],"acc":[],"gyro":[]}


def max_samples(gyro: bool) -> int:
    """The most samples replay puts in one message: within ``stream.decode``'s ``MAX_SAMPLES`` and, however their
    numbers print, within its ``MAX_PAYLOAD_BYTES`` (the consumer's default ``max_payload``)."""
    per_sample = (_NUMBER_BYTES + 1) + (3 * _NUMBER_BYTES + 5) * (2 if gyro else 1)
    return min(MAX_SAMPLES, (MAX_PAYLOAD_BYTES - _BODY_BYTES) // per_sample)


def message_rows(t: np.ndarray, interval: float, most: int) -> list[tuple[int, int]]:
    """(first, end) rows of each message of a device whose sample times are ``t`` (not decreasing): one per
    ``interval`` seconds of its own time, split further where one would be refused by the decoder: more than
    ``most`` samples (split into equal parts), or a span ``stream.decode.check_span`` refuses ("bad_span": over
    its MAX_SPAN seconds, or sparse samples over its SPARSE_SPAN; split at the middle of its time span)."""
    slot = np.floor((t - t[0]) / interval)  # message k: t[0] + k interval <= t < t[0] + (k + 1) interval
    edges = np.concatenate([[0], np.flatnonzero(slot[1:] != slot[:-1]) + 1, [len(t)]]).tolist()
    out: list[tuple[int, int]] = []
    todo = [(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a][::-1]
    while todo:
        a, b = todo.pop()
        n = b - a
        if n > most:
            parts = -(-n // most)
            cuts = [a + (n * k) // parts for k in range(parts + 1)]
            todo.extend(list(zip(cuts[:-1], cuts[1:], strict=True))[::-1])
        elif n > 1 and not _spread_ok(n, float(t[b - 1] - t[a])):
            # t[a] < middle < t[b - 1] (the span is over SPARSE_SPAN): both halves hold samples
            middle = a + int(np.searchsorted(t[a:b], (t[a] + t[b - 1]) / 2, side="left"))
            todo.extend([(middle, b), (a, middle)])
        else:
            out.append((a, b))
    return out


def label_spans(label: np.ndarray) -> list[tuple[int, int, str]]:
    """(first row, last row, label) of each run of consecutive rows under one non-empty label."""
    if len(label) == 0:
        return []
    change = np.flatnonzero(label[1:] != label[:-1]) + 1
    bounds = np.concatenate([[0], change, [len(label)]])
    return [(int(a), int(b) - 1, str(label[a])) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if label[a]]


def replay(rec: Recording, broker: BrokerURL, prefix: str = "har", speed: float = 1.0, labels: bool = False,
           interval: float = 0.2, stop: threading.Event | None = None, progress: bool = False,
           qos: int = 0, client=None) -> dict:
    """Publish every device of ``rec`` as native imu messages of ``interval`` seconds of samples; returns
    the messages, samples and devices sent, the messages planned and whether it was stopped before the end.

    A message holds no more than the consumer takes: one of ``interval`` seconds that would be refused is split
    (``message_rows``: at most ``max_samples`` samples, and a span ``check_span`` takes), each part its own seq.
    Devices play side by side, each from its own first timestamp; ``speed`` 0 publishes as fast as
    possible. With ``labels``, each run of a device's rows under one non-empty label goes out once, before
    its first sample, as the span ``{"label", "start", "end"}``: from the run's first sample to its last
    (plus ``SPAN_EPS``, for the consumer's grid times rounded off it), so that the consumer's windows inside
    the run get the label and a window reaching into the next run, or into an unlabelled stretch, gets none
    (an open ``{"label", "t"}`` would hold over the unlabelled rows that follow). ``client``: a client
    ``stream.mqtt.connect`` made (connected before a long read of the file), which replay disconnects when done.
    """
    interval, speed = check_interval(interval), check_speed(speed)
    stop = stop or threading.Event()
    client = client or connect(broker, "replay")
    messages = []  # (offset from the device's start, device, seq, rows, label spans starting in them)
    most = max_samples(rec.gyro is not None)
    for device, rows in rec.segments():
        t = rec.t[rows]
        spans = label_spans(rec.label[rows]) if labels else []
        starts = np.asarray([s[0] for s in spans], dtype=np.int64)
        for seq, (a, b) in enumerate(message_rows(t, interval, most)):
            first, last = np.searchsorted(starts, [a, b], side="left")
            here = [{"label": name, "start": float(np.round(t[i], 4)), "end": float(np.round(t[j], 4)) + SPAN_EPS}
                    for i, j, name in spans[first:last]]
            messages.append((float(t[b - 1] - t[0]), device, seq, rows.start + a, rows.start + b, here))
    messages.sort(key=lambda m: m[0])
    start = time.monotonic()
    samples = sent = 0
    devices: set[str] = set()
    info = None
    try:
        for offset, device, seq, a, b, spans in tqdm(messages, desc="replaying", unit="msg", disable=not progress):
            if stop.is_set():
                break
            if speed > 0:
                delay = start + offset / speed - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
            for span in spans:  # before the run's first sample, so its windows are kept for it
                client.publish(f"{prefix}/{device}/label", orjson.dumps(span), qos=1)
            body = {"seq": seq, "t": rec.t[a:b].round(4).tolist(), "acc": rec.acc[a:b].round(4).tolist()}
            if rec.gyro is not None:  # as the device sent it: a model that reads the gyroscope needs it
                body["gyro"] = rec.gyro[a:b].round(5).tolist()
            info = client.publish(f"{prefix}/{device}/imu", orjson.dumps(body), qos=qos)
            if seq == 0 and qos:
                # its seq 0 is acknowledged before anything after it leaves, so that no copy of it follows a
                # higher seq: paho sends unacknowledged messages again after a reconnection, and the broker
                # passes a publisher's copy on without DUP; seq 0 after a higher one not flagged DUP is a new
                # session for the consumer (its windows classified again), as this replay is when it runs again
                _settle(info)
            elif speed <= 0 and seq % 200 == 0:
                _settle(info)  # as fast as possible, but without unbounded client memory
            samples += b - a
            sent += 1
            devices.add(device)
    finally:
        if info is not None:
            _settle(info)  # flush what paho still holds before leaving
        client.disconnect()
        client.loop_stop()
    # what was sent (a replay stopped early sends less than planned)
    return {"messages": sent, "samples": samples, "devices": len(devices), "planned_messages": len(messages),
            "stopped": sent < len(messages)}
