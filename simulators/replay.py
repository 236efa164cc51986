"""Replaying a recording file over MQTT, in real time or faster, optionally with its labels."""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson
from tqdm import tqdm

from stream.mqtt import BrokerURL, connect
from stream.recording import Recording

__all__ = ["replay"]


def replay(rec: Recording, broker: BrokerURL, prefix: str = "har", speed: float = 1.0, labels: bool = False,
           interval: float = 0.2, stop: threading.Event | None = None, progress: bool = False,
           qos: int = 0) -> dict:
    """Publish every device of ``rec`` as native imu messages of ``interval`` seconds of samples.

    Devices play side by side, each from its own first timestamp; ``speed`` 0 publishes as fast as
    possible. Labels go out as ``{"label", "t"}`` whenever a device's label changes.
    """
    stop = stop or threading.Event()
    client = connect(broker, "replay")
    messages = []  # (offset from the device's start, device, seq, rows)
    for device, rows in rec.segments():
        t = rec.t[rows]
        edges = np.searchsorted(t, np.arange(t[0], t[-1] + interval, interval), side="left")
        edges = np.unique(np.append(edges, len(t)))
        for seq, (a, b) in enumerate(zip(edges[:-1], edges[1:], strict=True)):
            if b > a:
                messages.append((float(t[b - 1] - t[0]), device, seq, rows.start + a, rows.start + b))
    messages.sort(key=lambda m: m[0])
    last_label: dict[str, str] = {}
    start = time.monotonic()
    samples = 0
    info = None
    try:
        for offset, device, seq, a, b in tqdm(messages, desc="replaying", unit="msg", disable=not progress):
            if stop.is_set():
                break
            if speed > 0:
                delay = start + offset / speed - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
            if labels:
                seg = rec.label[a:b]
                for i in [0, *(np.flatnonzero(seg[1:] != seg[:-1]) + 1).tolist()]:
                    if seg[i] and last_label.get(device) != seg[i]:
                        last_label[device] = str(seg[i])
                        client.publish(f"{prefix}/{device}/label",
                                       orjson.dumps({"label": str(seg[i]), "t": float(rec.t[a + i])}), qos=1)
            body = {"seq": seq, "t": rec.t[a:b].round(4).tolist(), "acc": rec.acc[a:b].round(4).tolist()}
            if rec.gyro is not None:  # as the device sent it: a model that reads the gyroscope needs it
                body["gyro"] = rec.gyro[a:b].round(5).tolist()
            info = client.publish(f"{prefix}/{device}/imu", orjson.dumps(body), qos=qos)
            if speed <= 0 and seq % 200 == 0:
                info.wait_for_publish(10)  # as fast as possible, but without unbounded client memory
            samples += b - a
    finally:
        if info is not None:
            info.wait_for_publish(10)  # flush what paho still holds before leaving
        client.disconnect()
        client.loop_stop()
    return {"messages": len(messages), "samples": samples, "devices": len({m[1] for m in messages})}
