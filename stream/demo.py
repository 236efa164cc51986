"""``harstream demo``: the whole system on one machine, with live predictions beside the truth.

Uses the broker at ``--broker`` when it answers, else starts the embedded one there; then runs the
consumer and the simulator (labels on, so that the demo can show the truth) as child processes, and
prints a live table from what arrives on the broker.
"""

from __future__ import annotations

import bisect
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict

import numpy as np
import orjson

from stream.broker import EmbeddedBroker
from stream.mqtt import BrokerURL, broker_answers, connect, mqtt_answers

__all__ = ["consumer_command", "run_demo", "DemoWatcher"]


class DemoWatcher:
    """Subscribes to predictions, labels and consumer metrics; scores predictions against the truth."""

    def __init__(self, url: BrokerURL, prefix: str = "har") -> None:
        self.prefix = prefix
        self._lock = threading.Lock()
        self.labels: dict[str, tuple[list[float], list[str]]] = defaultdict(lambda: ([], []))
        self.predictions: dict[str, list[dict]] = defaultdict(list)
        self.metrics: dict = {}
        self.first_prediction: float | None = None
        self.client = connect(url, "demo-watch", on_message=self._on_message, subscriptions=[
            (f"{prefix}/+/prediction", 0), (f"{prefix}/+/label", 1), (f"{prefix}/_consumer/+/metrics", 0)])

    def _on_message(self, client, userdata, message) -> None:
        try:
            body = orjson.loads(message.payload)
        except orjson.JSONDecodeError:
            return
        parts = message.topic.split("/")
        with self._lock:
            if parts[-1] == "prediction":
                self.first_prediction = self.first_prediction or time.monotonic()
                self.predictions[parts[1]].append(body)
            elif parts[-1] == "label" and isinstance(body, dict) and "t" in body:
                ts, names = self.labels[parts[1]]
                i = bisect.bisect(ts, body["t"])
                ts.insert(i, body["t"])
                names.insert(i, body["label"])
            elif parts[-1] == "metrics":
                self.metrics = body

    def truth(self, device: str, t: float) -> str | None:
        ts, names = self.labels.get(device, ([], []))
        i = bisect.bisect(ts, t) - 1
        return names[i] if i >= 0 else None

    def summary(self, window_seconds: float = 2.0) -> dict:
        with self._lock:
            rows, matched, judged, latencies, count = {}, 0, 0, [], 0
            for device, preds in sorted(self.predictions.items()):
                count += len(preds)
                latencies += [p["latency_ms"] for p in preds]
                for p in preds:
                    truth = self.truth(device, p["t"] - window_seconds / 2)  # truth at the window's middle
                    if truth is not None:
                        judged += 1
                        matched += truth == p["label"]
                last = preds[-1]
                rows[device] = (last["label"], last["confidence"], self.truth(device, last["t"] - window_seconds / 2),
                                len(preds))
        lat = np.asarray(latencies)
        return {
            "rows": rows,
            "predictions": count,
            "matched_share": matched / judged if judged else None,
            "judged": judged,
            "latency_ms": dict(zip(("p50", "p95", "p99"), np.percentile(lat, [50, 95, 99]).round(1).tolist(),
                                   strict=True))
            if len(lat) else {},
        }

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _child(args: list[str]) -> subprocess.Popen:
    # own process group: the terminal's Ctrl-C reaches the demo, which stops children in order
    return subprocess.Popen([sys.executable, "-m", "stream.cli", *args], start_new_session=True)


def _name(child: subprocess.Popen) -> str:
    if child.args[2] == "streamlit":
        return "dashboard"
    command = child.args[3]  # python -m stream.cli consume ...
    return {"consume": "consumer", "simulate": "simulator"}.get(command, command)


def consumer_command(args, common: list[str]) -> list[str]:
    """``harstream consume``'s arguments for the demo's consumer: ``common`` (broker, prefix, CA file), the
    demo's ``--state-dir``, ``--model`` and ``--adapt`` (``shared`` or ``both`` make model versions, which the
    dashboard's Model page promotes and rolls back; the default, ``device``, adapters only)."""
    consume = ["consume", *common, "--metrics-interval", "2"]
    if args.state_dir:
        consume += ["--state-dir", args.state_dir]
    if args.model:
        consume += ["--model", args.model]
    adapt = getattr(args, "adapt", None)
    if adapt:
        consume += ["--adapt", adapt]
    return consume


def run_demo(args) -> int:
    url = BrokerURL.parse(args.broker, args.ca_file)
    children: list[subprocess.Popen] = []
    broker = None
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    started = time.monotonic()
    try:
        if mqtt_answers(url, timeout=5.0):
            print(f"broker: using the one answering at {url}", flush=True)
        elif broker_answers(url):
            raise ConnectionError(f"something accepts connections at {url.host}:{url.port} but does not answer as "
                                  f"an MQTT broker (another service on the port, or TLS that does not match?); "
                                  f"pass --broker mqtt://{url.host}:<free port> and the demo starts its embedded "
                                  f"broker there")
        elif url.tls:  # amqtt is started on plain TCP: the demo's clients would never reach it
            raise ConnectionError(f"nothing answers at {url}, and the embedded broker speaks plain MQTT only: "
                                  f"start a TLS broker there, or pass --broker mqtt://{url.host}:{url.port}")
        else:
            print(f"broker: nothing answers at {url}; starting the embedded broker (amqtt) there", flush=True)
            broker = EmbeddedBroker(url).start()
        watcher = DemoWatcher(url, args.prefix)  # before the simulator: its first labels must not be missed
        common = ["--broker", args.broker, "--prefix", args.prefix]
        if args.ca_file:
            common += ["--ca-file", args.ca_file]
        children.append(_child(consumer_command(args, common)))
        children.append(_child(["simulate", *common, "--devices", str(args.devices), "--labels", "1",
                                "--seed", str(args.seed)]))
        if not args.no_dashboard:
            try:
                from dashboard.launch import start_dashboard
            except ImportError:
                print("dashboard: not available in this build; running headless", flush=True)
            else:
                proc, address = start_dashboard(args.broker, args.prefix, ca_file=args.ca_file,
                                                state_dir=args.state_dir, started_by="demo")
                children.append(proc)
                print(f"dashboard: {address}", flush=True)
        print(f"demo: {args.devices} simulated devices at 50 Hz -> consumer -> predictions on "
              f"{args.prefix}/<device>/prediction; Ctrl-C stops", flush=True)
        deadline = started + args.duration if args.duration else None
        next_print = time.monotonic() + 5
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            for child in children:
                if child.poll() is not None:
                    print(f"demo: the {_name(child)} exited with status {child.returncode}", flush=True)
                    stop.set()
            if time.monotonic() >= next_print:
                _print_table(watcher.summary(), watcher.metrics)
                next_print += 5
            stop.wait(0.2)
        summary = watcher.summary()
        elapsed = time.monotonic() - started
        first = watcher.first_prediction
        print(f"\ndemo summary after {elapsed:.0f} s:")
        print(f"  predictions: {summary['predictions']} "
              f"({summary['predictions'] / max(1e-9, elapsed - ((first or started) - started)):.2f} per second "
              f"since the first, which came {((first or started) - started):.1f} s after start)")
        if summary["matched_share"] is not None:
            print(f"  matched the simulator's truth: {summary['matched_share']:.1%} of {summary['judged']} windows")
        print(f"  latency ms: {summary['latency_ms']}")
        watcher.close()
        return 0
    finally:
        running = [child for child in reversed(children) if child.poll() is None]
        if running:  # each says "SIGTERM received, stopping" in its log: this is where that comes from
            print(f"demo: stopping the {', '.join(map(_name, running))}", flush=True)
        for child in running:
            os.killpg(child.pid, signal.SIGTERM)
        for child in children:
            try:
                child.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(child.pid, signal.SIGKILL)
        if broker is not None:
            broker.stop()


def _print_table(summary: dict, metrics: dict) -> None:
    if not summary["rows"] and not metrics:  # nothing yet: a header over no rows said nothing
        print("demo: waiting for the consumer's first predictions ...", flush=True)
        return
    lines = [f"{'device':<10} {'predicted':<15} {'conf':>5}  {'truth':<15} windows"]
    for device, (label, conf, truth, n) in summary["rows"].items():
        mark = "" if truth is None else ("  ok" if truth == label else "  x")
        lines.append(f"{device:<10} {label:<15} {conf:>5.2f}  {truth or '?':<15} {n:>5}{mark}")
    share = summary["matched_share"]
    lat = metrics.get("latency_ms", {})
    lines.append(f"matched truth: {'-' if share is None else f'{share:.1%}'} | consumer: "
                 f"{metrics.get('samples_per_s', '-')} samples/s, {metrics.get('devices', '-')} devices, "
                 f"p50 {lat.get('p50', '-')} ms, p99 {lat.get('p99', '-')} ms, rejected {metrics.get('rejected', {})}")
    print("\n".join(lines), flush=True)
