"""Helpers shared by the tests that talk to a broker."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import orjson


def wait(predicate, timeout: float = 20.0) -> bool:
    """Poll ``predicate`` every 50 ms until it is true (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def imu(seq: int, t0: float, n: int = 10, rate: float = 50.0) -> bytes:
    """A valid ``imu`` payload: ``n`` samples from device time ``t0`` at ``rate`` Hz, gravity on z."""
    t = t0 + np.arange(n) / rate
    acc = np.stack([np.sin(7 * t), np.cos(5 * t), 9.81 + np.sin(3 * t)], axis=1)
    return orjson.dumps({"seq": seq, "t": t.round(4).tolist(), "acc": acc.round(4).tolist()})


def make_certs(directory: Path, openssl: str, other_ca: bool = False) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for localhost and 127.0.0.1 (as README.md tells an
    operator to make them), and with ``other_ca`` a second, unrelated CA (``other-ca.crt``).
    Returns (ca.crt, server.crt, server.key)."""
    def run(*args: str) -> None:
        subprocess.run([openssl, *args], cwd=directory, check=True, capture_output=True, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=test CA")
    run("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.crt", "-days", "2", "-extfile", "san.ext")
    if other_ca:
        run("req", "-x509", *ec, "-keyout", "other.key", "-out", "other-ca.crt", "-days", "2",
            "-subj", "/CN=other CA")
    return directory / "ca.crt", directory / "server.crt", directory / "server.key"


def replay_through_consumer_matches_evaluate(rec, model, version: str, broker_url):
    """Replay ``rec`` over MQTT (as fast as possible, QoS 1) to a running consumer serving ``model`` and
    check its predictions against ``harstream evaluate``'s for the same recording (label, and
    probabilities within 2e-3). Returns the consumer, stopped, for further checks."""
    import threading
    import uuid

    from models.evaluate import stream_recording
    from models.state import StatefulClassifier
    from simulators.replay import replay
    from stream.consumer import Consumer, ConsumerConfig
    from stream.mqtt import connect

    expected = stream_recording(model, rec, version)
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    got = []
    watch = connect(broker_url, f"test-watch-{prefix}", subscriptions=[(f"{prefix}/+/prediction", 1)],
                    on_message=lambda c, u, m: got.append(orjson.loads(m.payload)))
    consumer = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, learn=False),
                        StatefulClassifier(model, version))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    try:
        wait(lambda: consumer._client is not None and consumer._client.is_connected())
        time.sleep(0.3)
        assert replay(rec, broker_url, prefix=prefix, speed=0, qos=1)["samples"] == len(rec)
        wait(lambda: len(got) >= len(expected), timeout=30)
    finally:
        consumer.stop()
        thread.join(20)
        watch.disconnect()
        watch.loop_stop()
    assert len(got) == len(expected) > 30
    by_key = {(p["device"], round(p["t"], 3)): p for p in got}
    for e in expected:
        p = by_key[(e.device, round(e.t_end, 3))]
        assert p["label"] == e.label
        np.testing.assert_allclose([p["probs"][c] for c in model.config.classes], e.probs, atol=2e-3)
    return consumer


class ConsumerTopics:
    """What consumers publish under ``<prefix>/_consumer/+/+`` (status, model, metrics, ...), in arrival order, as
    (last topic level, payload): a watcher connected to ``broker_url`` until ``close()``."""

    def __init__(self, broker_url, prefix: str, name: str = "watch") -> None:
        import threading
        import uuid

        from stream.mqtt import connect

        self._got: list[tuple[str, bytes]] = []
        self._lock = threading.Lock()
        self._client = connect(broker_url, f"{name}-{uuid.uuid4().hex[:6]}",
                               subscriptions=[(f"{prefix}/_consumer/+/+", 1)], on_message=self._on_message)

    def _on_message(self, client, userdata, msg) -> None:
        with self._lock:
            self._got.append((msg.topic.rsplit("/", 1)[-1], msg.payload))

    def said(self, kinds: tuple[str, ...] = ("status", "model")) -> list[tuple[str, bytes]]:
        """The messages of ``kinds`` so far, in order."""
        with self._lock:
            return [(k, p) for k, p in self._got if k in kinds]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()
