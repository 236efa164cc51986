"""A scripted stand-in for devices and a consumer, for the dashboard's own tests and screenshots.

It publishes every kind of message the dashboard reads (DESIGN.md, "MQTT contract"): raw samples,
predictions, true labels, drift detections, device and consumer status, consumer metrics with online
metrics, model versions and fine-tuning updates. The numbers are made up to look plausible; nothing
here classifies anything. ``harstream demo`` is the real thing.
"""

from __future__ import annotations

import threading
import time

import numpy as np
import orjson

from stream.mqtt import BrokerURL, connect

__all__ = ["ScriptedFeed"]

EXERCISES = ("rest", "walking", "squat", "push_up", "jumping_jack", "biceps_curl")
MOTION = {  # exercise → (frequency Hz, amplitude m/s²) of its main movement
    "rest": (0.2, 0.05), "walking": (1.8, 2.5), "squat": (0.5, 3.0), "push_up": (0.6, 2.0),
    "jumping_jack": (1.4, 9.0), "biceps_curl": (0.4, 4.0),
}


class ScriptedFeed:
    """Publishes ``devices`` scripted devices and one scripted consumer until ``stop()``.

    Parameters
    ----------
    broker, prefix
        Where to publish.
    devices
        Device ids are ``watch-01``, ``watch-02``, ...
    rate, interval, hop
        Samples per second, seconds per imu message, seconds between predictions.
    segment
        Seconds each exercise lasts.
    seed
        Seed of everything random.
    """

    def __init__(self, broker: BrokerURL, prefix: str = "har", devices: int = 3, rate: float = 50.0,
                 interval: float = 0.2, hop: float = 2.0, segment: float = 12.0, seed: int = 0) -> None:
        if devices < 1:
            raise ValueError("'devices' must be at least 1")
        self.broker = broker
        self.prefix = prefix
        self.devices = [f"watch-{k + 1:02d}" for k in range(devices)]
        self.rate = rate
        self.interval = interval
        self.hop = hop
        self.segment = segment
        self.seed = seed
        self.consumer = "scripted-consumer"
        self._rng = np.random.default_rng(seed)
        self._t0 = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = None
        self._seq = dict.fromkeys(self.devices, 0)
        self._label: dict[str, str] = {}
        self._confusion = np.zeros((len(EXERCISES), len(EXERCISES)), dtype=int)
        self._correct: list[bool] = []
        self._losses: list[float] = []

    def exercise(self, device: str, t: float) -> str:
        k = self.devices.index(device)
        return EXERCISES[(int((t - self._t0) / self.segment) + 2 * k) % len(EXERCISES)]

    def start(self) -> ScriptedFeed:
        self._client = connect(self.broker, "scripted-feed")
        self._t0 = time.time() - 60.0  # a minute of history, published at once
        self._thread = threading.Thread(target=self._run, name="scripted-feed", daemon=True)
        self._thread.start()
        return self

    def stop(self, clear_retained: bool = True) -> None:
        """Stop publishing; by default also delete the retained messages it left on the broker."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
        if self._client is None:
            return
        consumer = f"{self.prefix}/_consumer/{self.consumer}"
        retained = [f"{self.prefix}/{d}/status" for d in self.devices] + [f"{consumer}/status"]
        if clear_retained:
            retained += [f"{consumer}/metrics", f"{consumer}/model"]
        for topic in retained:
            info = self._client.publish(topic, b"" if clear_retained else b"offline", qos=1, retain=True)
        info.wait_for_publish(5)
        self._client.disconnect()
        self._client.loop_stop()
        self._client = None

    def _publish(self, topic: str, payload, qos: int = 0, retain: bool = False) -> None:
        if not isinstance(payload, bytes):
            payload = orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)
        self._client.publish(topic, payload, qos=qos, retain=retain)

    def _run(self) -> None:
        consumer = f"{self.prefix}/_consumer/{self.consumer}"
        self._publish(f"{consumer}/status", b"online", qos=1, retain=True)
        for device in self.devices:
            self._publish(f"{self.prefix}/{device}/status", b"online", qos=1, retain=True)
        t = self._t0
        next_prediction = t + self.hop
        next_metrics = time.time()
        while not self._stop.is_set():
            now = time.time()
            while t + self.interval <= now:  # catch up on the scripted history, then keep pace
                t += self.interval
                for device in self.devices:
                    self._samples(device, t)
                if t >= next_prediction:
                    for device in self.devices:
                        self._prediction(device, next_prediction)
                    self._training(next_prediction)
                    next_prediction += self.hop
            if now >= next_metrics:
                self._metrics()
                self._publish_model(["v1", "v2"], serving="v2")
                next_metrics = now + 2.0
            self._stop.wait(self.interval / 2)

    def _samples(self, device: str, t_end: float) -> None:
        n = int(round(self.rate * self.interval))
        t = t_end - self.interval + np.arange(1, n + 1) / self.rate
        exercise = self.exercise(device, t_end)
        if self._label.get(device) != exercise:
            self._label[device] = exercise
            label = {"label": exercise, "t": round(float(t[0]), 3)}
            self._publish(f"{self.prefix}/{device}/label", label, qos=1)
        freq, amp = MOTION[exercise]
        phase = 2 * np.pi * freq * t
        acc = np.stack([amp * np.sin(phase), 0.5 * amp * np.cos(phase),
                        9.81 + 0.7 * amp * np.sin(2 * phase)], axis=1)
        acc += self._rng.normal(0, 0.15, acc.shape)
        body = {"seq": self._seq[device], "t": t.round(3), "acc": acc.round(3), "unit": "m/s2"}
        self._seq[device] += 1
        self._publish(f"{self.prefix}/{device}/imu", body)

    def _prediction(self, device: str, t: float) -> None:
        truth = self.exercise(device, t - self.hop / 2)
        alpha = np.full(len(EXERCISES), 0.3)
        alpha[EXERCISES.index(truth)] = 6.0 if device != self.devices[-1] else 2.0  # the last one drifts
        probs = self._rng.dirichlet(alpha)
        label = EXERCISES[int(probs.argmax())]
        self._confusion[EXERCISES.index(truth), int(probs.argmax())] += 1
        self._correct.append(label == truth)
        self._publish(f"{self.prefix}/{device}/prediction", {
            "device": device, "t": round(t, 3), "label": label, "confidence": round(float(probs.max()), 4),
            "probs": {c: round(float(p), 4) for c, p in zip(EXERCISES, probs, strict=True)}, "model": "v2",
            "latency_ms": round(float(self._rng.gamma(4.0, 1.5)), 2)})
        if device == self.devices[-1] and probs.max() < 0.4 and self._rng.random() < 0.5:
            self._publish(f"{self.prefix}/{device}/drift", {
                "device": device, "detector": "ADWIN", "signal": "confidence", "t": round(t, 3),
                "value": round(float(probs.max()), 3), "needs_labels": False}, qos=1)
        if self._rng.random() < 0.03:
            self._publish(f"{self.prefix}/{device}/drift", {
                "device": device, "detector": "ADWIN", "signal": "input_magnitude", "t": round(t, 3),
                "value": round(9.81 + float(probs[0]), 3), "needs_labels": True}, qos=1)
        if device == self.devices[0] and self._rng.random() < 0.02:
            self._publish(f"{self.prefix}/_consumer/{self.consumer}/drift", {
                "device": "_all", "detector": "FHDDM", "signal": "error", "t": round(t, 3),
                "value": round(1 - float(np.mean(self._correct[-60:])), 3), "needs_labels": False}, qos=1)

    def _training(self, t: float) -> None:
        loss = 1.6 * np.exp(-len(self._losses) / 60) + 0.25 + self._rng.normal(0, 0.05)
        self._losses.append(loss)
        grad_norm = float(self._rng.lognormal(0.0, 0.6))
        self._publish(f"{self.prefix}/_consumer/{self.consumer}/training", {
            "t": round(t, 3), "version": "v3-candidate", "loss": round(float(loss), 4),
            "grad_norm": round(grad_norm, 4), "clipped": grad_norm > 1.0,
            "skipped": bool(self._rng.random() < 0.03), "windows": 32})

    def _publish_model(self, versions: list[str], serving: str) -> None:
        now = time.time()
        self._publish(f"{self.prefix}/_consumer/{self.consumer}/model", {
            "serving": serving, "updates": len(self._losses), "skipped": 0,
            "comparison": self._comparison(),
            "versions": [{"version": v, "created": now - 3600 * (len(versions) - k),
                          "parent": versions[k - 1] if k else None, "path": f"versions/{v}.pt",
                          "metrics": {} if not k else {"windows": 200, "serving_accuracy": 0.78,
                                                       "challenger_accuracy": 0.83}}
                         for k, v in enumerate(versions)]}, qos=1, retain=True)

    def _comparison(self) -> dict:
        recent = self._correct[-200:]
        serving = sum(recent) / len(recent) if recent else None
        return {"windows": len(recent), "serving_accuracy": serving,
                "challenger_accuracy": None if serving is None else min(1.0, serving + 0.02)}

    def _metrics(self) -> None:
        windows = int(self._confusion.sum())
        rows = self._confusion.sum(axis=1)
        accuracy = float(np.trace(self._confusion) / windows) if windows else None
        expected = float((rows * self._confusion.sum(axis=0)).sum() / windows**2) if windows else None
        rolling = self._correct[-60:]
        self._publish(f"{self.prefix}/_consumer/{self.consumer}/metrics", {
            "t": time.time(), "consumer": self.consumer, "samples_per_s": self.rate * len(self.devices),
            "windows_per_s": round(len(self.devices) / self.hop, 2), "devices": len(self.devices),
            "latency_ms": {"p50": 5.1, "p95": 9.8, "p99": 14.2, "max": 21.0}, "messages": 40 * windows,
            "windows": windows, "rejected": {"bad_json": 1}, "dropped": 0, "lost_samples": 10,
            "late_samples": 0, "queue": 0, "model": "v2",
            "learner": {"updates": len(self._losses), "skipped": 0, "dropped": 0, **self._comparison()},
            "online": {
                "labelled_windows": windows,
                "needs_labels": False,
                "accuracy": accuracy,
                "kappa": (accuracy - expected) / (1 - expected) if windows and expected < 1 else None,
                "rolling_accuracy": sum(rolling) / len(rolling) if rolling else None,
                "estimated_accuracy": round(accuracy - 0.03, 4) if accuracy is not None else None,
                "per_class_recall": {c: round(float(self._confusion[k, k] / rows[k]), 4)
                                     for k, c in enumerate(EXERCISES) if rows[k]},
                "confusion": {"labels": list(EXERCISES), "matrix": self._confusion.tolist()},
            },
        }, retain=True)
