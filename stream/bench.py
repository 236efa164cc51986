"""``harstream bench``: throughput and latency of the consumer through a real broker.

Three processes: a publisher replaying pre-generated simulator streams of N devices at 50 Hz in real
time, the consumer (the real ``harstream consume``), and this one, which reads the consumer's
metrics from the broker and its CPU time and memory from /proc. In the same run it measures the
baseline: the usual way of online sequence classification, which re-runs a whole context window
through the network for every prediction, one device at a time, with no carried state.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import torch

from stream.broker import EmbeddedBroker
from stream.mqtt import BrokerURL, BufferedClient, broker_answers, client_class, connect, read_mode

__all__ = ["run_bench", "publish_main", "baseline_throughput", "service_profile"]

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _proc_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def _tree_cpu_seconds(pid: int) -> tuple[float, float]:
    """CPU seconds of a process and of its children (the consumer's learner process), each summed."""
    children = 0.0
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        for child in task.read_text().split():
            try:
                children += _proc_cpu_seconds(int(child))
            except (OSError, IndexError, ValueError):
                pass  # exited meanwhile
    return _proc_cpu_seconds(pid), children


def _thread_cpu_seconds(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (the main thread's id is ``pid``)."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = (int(fields[11]) + int(fields[12])) / CLK_TCK
    return out


def _broker_pid() -> int | None:
    """The local Mosquitto's pid, if one runs (its CPU is shared with anything else using it)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if (proc / "comm").read_text().strip() == "mosquitto":
                    return int(proc.name)
            except OSError:
                continue
    return None


def _proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


# -- publisher process ---------------------------------------------------------------------------
def _pool(streams: int, seconds: float, rate: float, seed: int) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Pre-generated simulator streams: (t relative to 0, acc m/s², true label)."""
    from simulators.workout import DeviceStream
    out = []
    for k in range(streams):
        chunk = DeviceStream(f"pool-{k}", seed=seed + k, rate=rate).read(seconds)
        scale = 9.80665 if chunk.unit == "g" else 1.0
        out.append((chunk.t - chunk.t[0], (chunk.acc * scale).astype(np.float32), chunk.label))
    return out


JOIN_SECONDS = 4.0  # bench devices join over this long, within the warm-up (publish_main)


def publish_main(argv: list[str]) -> int:
    """Entry of the publisher process: python -m stream.bench publish URL PREFIX N DURATION INTERVAL."""
    url, prefix, n, duration, interval = argv[0], argv[1], int(argv[2]), float(argv[3]), float(argv[4])
    labelled = int(argv[5]) if len(argv) > 5 else 0
    broker = BrokerURL.parse(url)
    pool = _pool(min(n, 32), duration + 2 * interval, 50.0, seed=1)
    # pre-cut every pool stream into messages; device k replays pool[k % len(pool)] on its own clock
    cuts = []
    for t, acc, label in pool:
        edges = np.searchsorted(t, np.arange(0, duration + interval, interval))
        cuts.append([(t[a:b], acc[a:b], label[a:b]) for a, b in zip(edges[:-1], edges[1:], strict=True)])
    client = connect(broker, "bench-pub")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    epoch = time.time()
    start = time.monotonic()
    ticks = int(duration / interval)
    behind = 0.0
    sent = samples = 0
    progress = []  # (wall time, samples sent so far) after every tick: what was offered when
    last_label: dict[int, str] = {}
    # devices join over the first JOIN_SECONDS (inside the warm-up), as independent devices do: started
    # together, every device's window would end in the same tick (a 2 s window is 4 messages of 0.5 s),
    # a burst of one window per device every 2 s instead of an even flow
    join_ticks = max(1, round(JOIN_SECONDS / interval))
    for tick in range(ticks):
        for k in range(n):
            due = start + tick * interval + interval * k / n
            delay = due - time.monotonic()
            if delay > 0.002:
                time.sleep(delay)
            else:
                behind = max(behind, -delay)
            if tick < k % join_ticks:
                continue
            t, acc, label = cuts[k % len(cuts)][tick]
            if len(t) == 0:
                continue
            device = f"b{k:05d}"
            t = t + epoch + 0.37 * k
            if k < labelled:  # the truth, whenever it changes
                for i in [0, *(np.flatnonzero(label[1:] != label[:-1]) + 1).tolist()]:
                    if last_label.get(k) != label[i]:
                        last_label[k] = label[i]
                        client.publish(f"{prefix}/{device}/label",
                                       orjson.dumps({"label": str(label[i]), "t": float(t[i])}), qos=1)
            # numbered from its first message, as a device that starts publishing numbers them: a first seq
            # above 0 is, to a replica of a shared subscription, a device whose earlier messages may be on
            # another replica, held for its reorder wait (5 s) and let through at once into the measured span
            body = orjson.dumps({"seq": tick - k % join_ticks, "t": t, "acc": acc}, option=orjson.OPT_SERIALIZE_NUMPY)
            client.publish(f"{prefix}/{device}/imu", body)
            sent += 1
            samples += len(t)
        progress.append((round(time.time(), 4), samples))
        if stop.is_set():
            break
    # at once, before disconnecting: the bench's measured span ends with the last publish
    print(json.dumps({"messages": sent, "samples": samples, "max_behind_s": round(behind, 3),
                      "progress": progress}), flush=True)
    client.disconnect()
    client.loop_stop()
    return 0


# -- baseline ------------------------------------------------------------------------------------
def baseline_throughput(model, context_seconds: float = 10.0, seconds: float = 2.0, batch: int = 1000) -> dict:
    """The model alone on one thread, the same network four ways: stateless (every prediction re-runs a
    ``context_seconds`` window from a zero state, the usual way) or stateful (one new window per
    prediction, the device's state carried), each one device at a time and ``batch`` devices per pass.

    Predictions per second; samples/s per core count each prediction as one hop of new samples at the
    sensors' 50 Hz (what a live consumer must keep up with)."""
    cfg = model.config
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    from models.state import StatefulClassifier
    n = int(round(context_seconds * cfg.rate / cfg.patch)) * cfg.patch
    rng = np.random.default_rng(0)

    def rate(step, per_call: int) -> float:
        step()  # warm up
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            step()
            count += per_call
        return count / (time.perf_counter() - start)

    try:
        with torch.inference_mode():
            one = torch.from_numpy((rng.normal(0, 1, (1, n, 3)) + [0, 0, 9.81]).astype(np.float32))
            many = torch.from_numpy((rng.normal(0, 1, (batch, n, 3)) + [0, 0, 9.81]).astype(np.float32))
            stateless_one = rate(lambda: model(one, None), 1)  # the whole context window, from zero
            stateless_many = rate(lambda: model(many, None), batch)
        classifier = StatefulClassifier(model)
        devices = [f"d{i}" for i in range(batch)]
        windows = (rng.normal(0, 1, (batch, cfg.window, 3)) + [0, 0, 9.81]).astype(np.float32)
        stateful_one = rate(lambda: classifier.classify(devices[:1], windows[:1]), 1)
        stateful_many = rate(lambda: classifier.classify(devices, windows), batch)
    finally:
        torch.set_num_threads(threads)
    samples = cfg.window_seconds * 50.0  # new samples per prediction at 50 Hz
    return {"predictions_per_s": round(stateless_one, 1), "context_s": context_seconds, "batch": batch,
            "window_s": cfg.window_seconds,
            "samples_per_s_per_core": round(stateless_one * samples, 1),
            "stateless_batched_predictions_per_s": round(stateless_many, 1),
            "stateful_single_predictions_per_s": round(stateful_one, 1),
            "stateful_batched_predictions_per_s": round(stateful_many, 1),
            "stateful_batched_samples_per_s_per_core": round(stateful_many * samples, 1),
            # the headline: the consumer's way against the usual way
            "model_only_ratio": round(stateful_many / stateless_one, 1),
            # what carrying state alone buys (both batched), and what batching alone buys (both stateful)
            "state_ratio": round(stateful_many / stateless_many, 1),
            "batching_ratio": round(stateful_many / stateful_one, 1)}


# -- the service thread alone, and memory per device ---------------------------------------------
class _NullClient:
    """Stands in for paho in ``service_profile``: publishing costs what building the payload costs."""

    def publish(self, topic, payload=None, qos=0, retain=False):
        return None


def _payloads(devices: int, seconds: float, interval: float, prefix: str) -> list[list[tuple[str, bytes]]]:
    """Per tick, every device's message, as ``harstream bench``'s publisher sends them."""
    pool = _pool(min(devices, 32), seconds + 2 * interval, 50.0, seed=1)
    ticks = int(seconds / interval)
    out = []
    for tick in range(ticks):
        row = []
        for k in range(devices):
            t, acc, _ = pool[k % len(pool)]
            a, b = np.searchsorted(t, [tick * interval, (tick + 1) * interval])
            body = orjson.dumps({"seq": tick, "t": t[a:b] + 1.7e9 + 0.37 * k, "acc": acc[a:b]},
                                option=orjson.OPT_SERIALIZE_NUMPY)
            row.append((f"{prefix}/b{k:05d}/imu", body))
        out.append(row)
    return out


def service_profile(devices: int = 2000, seconds: float = 30.0, interval: float = 0.5, batch: int = 0,
                    model_path: str | None = None, memory_devices: int = 500) -> dict:
    """The consumer's service thread without MQTT, on one thread: CPU per message of decoding and
    buffering (``handle``) and of classifying, publishing and monitoring (``_classify``), messages handed
    over in ``harstream bench``'s order; then memory per device (tracemalloc, ``memory_devices`` devices
    after the same seconds of samples), by the file that allocated it."""
    import tracemalloc

    from models.checkpoint import default_model_path, load_checkpoint
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig

    model, info = load_checkpoint(model_path or default_model_path())
    batch = batch or max(1, devices // 25)  # messages per cycle: what arrives in 20 ms in real time

    def consumer() -> Consumer:
        c = Consumer(ConsumerConfig(broker=BrokerURL.parse("mqtt://127.0.0.1:1"), prefix="p", learn=False),
                     StatefulClassifier(model, info["version"]))
        c._client = _NullClient()
        return c

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        c = consumer()
        ticks = _payloads(devices, seconds, interval, "p")
        warm = max(1, len(ticks) // 5)
        handle_s = classify_s = 0.0
        messages = 0
        for i, row in enumerate(ticks):
            for j in range(0, len(row), batch):
                t0 = time.process_time()
                now = time.monotonic()
                c.handle_many([(topic, body, now) for topic, body in row[j:j + batch]])
                t1 = time.process_time()
                c._classify()
                t2 = time.process_time()
                if i >= warm:
                    handle_s += t1 - t0
                    classify_s += t2 - t1
                    messages += len(row[j:j + batch])
        windows = c.stats.windows
        del c, ticks
        # memory: every device's objects after the same stream, against the consumer before any device
        ticks = _payloads(memory_devices, seconds, interval, "p")
        gc.collect()
        tracemalloc.start(1)
        c = consumer()
        gc.collect()
        before = tracemalloc.take_snapshot()
        _stream(c, ticks, batch)
        gc.collect()
        after = tracemalloc.take_snapshot()
        tracemalloc.stop()
    finally:
        torch.set_num_threads(threads)
    by_file: dict[str, int] = {}
    for stat in after.compare_to(before, "filename"):
        name = stat.traceback[0].filename
        for marker in ("/site-packages/", "/work/main/", str(Path(__file__).resolve().parents[1]) + "/"):
            if marker in name:
                name = name.split(marker, 1)[1]
        by_file[name] = by_file.get(name, 0) + stat.size_diff
    total = sum(by_file.values())
    top = sorted(by_file.items(), key=lambda kv: -kv[1])[:8]
    return {
        "devices": devices, "seconds": seconds, "messages_per_cycle": batch, "messages": messages,
        "windows": windows,
        "handle_us_per_message": round(handle_s / max(messages, 1) * 1e6, 2),
        "classify_us_per_message": round(classify_s / max(messages, 1) * 1e6, 2),
        "service_us_per_message": round((handle_s + classify_s) / max(messages, 1) * 1e6, 2),
        "memory_devices": memory_devices,
        "memory_bytes_per_device": int(total / memory_devices),
        "memory_by_file_per_device": {k: int(v / memory_devices) for k, v in top},
        "resident_bytes_per_device": _resident_per_device(memory_devices, seconds, interval, batch,
                                                          model_path),
    }


def _resident_per_device(devices: int, seconds: float, interval: float, batch: int,
                         model_path: str | None = None) -> int:
    """Resident memory (VmRSS) the consumer's service path adds per device, measured in a fresh process
    (in this one, memory freed by earlier work would be reused and hide it): ``resident_main``."""
    cmd = [sys.executable, "-m", "stream.bench", "resident", str(devices), str(seconds), str(interval),
           str(batch), model_path or ""]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=900)
    return int(out.stdout.split()[-1])


def _stream(c, ticks: list[list[tuple[str, bytes]]], batch: int) -> None:
    """Hand a consumer the payloads tick by tick, ``batch`` messages per cycle, classifying after each."""
    for row in ticks:
        for j in range(0, len(row), batch):
            now = time.monotonic()
            c.handle_many([(topic, body, now) for topic, body in row[j:j + batch]])
            c._classify()


def resident_main(argv: list[str]) -> int:
    """A consumer without MQTT is warmed up with 8 devices (lazy imports, first detectors, the model's
    first passes); with the payloads made beforehand, DEVICES devices then stream for SECONDS; prints
    the growth of VmRSS per device."""
    from models.checkpoint import default_model_path, load_checkpoint
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    devices, seconds, interval, batch = int(argv[0]), float(argv[1]), float(argv[2]), int(argv[3])
    model, info = load_checkpoint((argv[4] if len(argv) > 4 and argv[4] else None) or default_model_path())
    torch.set_num_threads(1)
    c = Consumer(ConsumerConfig(broker=BrokerURL.parse("mqtt://127.0.0.1:1"), prefix="p", learn=False),
                 StatefulClassifier(model, info["version"]))
    c._client = _NullClient()
    _stream(c, _payloads(8, seconds, interval, "p"), batch)  # 8 of the devices measured next: a rounding error
    ticks = _payloads(devices, seconds, interval, "p")
    gc.collect()
    before = _proc_rss_bytes(os.getpid())
    _stream(c, ticks, batch)
    gc.collect()
    print(int((_proc_rss_bytes(os.getpid()) - before) / devices))
    return 0


# -- the benchmark -------------------------------------------------------------------------------
def _message_rates(metrics: list[dict], wall0: float, wall1: float) -> dict[str, float]:
    """Messages per second between the consumer's metrics nearest the measured interval: received by
    paho's thread (handled, dropped or still queued) and handled by the service thread."""
    inside = [m for m in metrics if wall0 <= m["t"] <= wall1]  # while the publisher published
    if len(inside) < 2:
        return {"received": 0.0, "handled": 0.0}
    a, b = inside[0], inside[-1]
    dt = max(b["t"] - a["t"], 1e-9)

    def received(m: dict) -> int:
        return m["messages"] + m["dropped"] + m.get("queue", 0)
    rates = {"received": (received(b) - received(a)) / dt, "handled": (b["messages"] - a["messages"]) / dt,
             "span": (a["t"], b["t"])}
    if "samples" in a and "samples" in b:
        rates["samples"] = (b["samples"] - a["samples"]) / dt
    return rates


def _sent_rate(progress: list, span: tuple[float, float] | None) -> float | None:
    """Samples per second the publisher sent over ``span`` (wall times), from its (time, samples sent)
    after every tick; None where it cannot tell."""
    if span is None or len(progress) < 2:
        return None
    times, sent = np.asarray([p[0] for p in progress]), np.asarray([p[1] for p in progress], dtype=float)
    a, b = span
    if b <= a or a < times[0] or b > times[-1] + 1.0:
        return None
    return float((np.interp(b, times, sent) - np.interp(a, times, sent)) / (b - a))


def _real_time(sustained: float, offered: float, nominal: float, dropped: int) -> bool:
    """The consumer handled what was sent, and what was sent kept up with the schedule: the streams hold
    49-50 samples/s per device, and a publisher on the same cores falling behind lowers both."""
    return bool(sustained >= 0.97 * offered and offered >= 0.95 * nominal and dropped == 0)


def _consumer_cmd(broker: str, prefix: str, consumer_id: str, model_path: str | None, learn: bool) -> list[str]:
    cmd = [sys.executable, "-m", "stream.cli", "consume", "--broker", broker, "--prefix", prefix,
           "--id", consumer_id, "--metrics-interval", "1"]
    if model_path:
        cmd += ["--model", model_path]
    if not learn:
        cmd += ["--no-learn"]
    return cmd


def _publisher_cmd(broker: str, prefix: str, devices: int, seconds: float, interval: float,
                   labelled: int) -> list[str]:
    return [sys.executable, "-m", "stream.bench", "publish", broker, prefix, str(devices), str(seconds),
            str(interval), str(labelled)]


def _exited(name: str, proc: subprocess.Popen, stderr) -> RuntimeError:
    """``proc`` (the consumer or the publisher) ended by itself: its status and the last line it wrote
    to ``stderr`` (a file), which says why (its own one-line error, or a traceback's last line)."""
    stderr.seek(0)
    lines = [x.strip() for x in stderr.read().decode(errors="replace").splitlines() if x.strip()]
    return RuntimeError(f"the {name} exited with status {proc.returncode}"
                        + (f": {lines[-1]}" if lines else " and said nothing"))


def run_bench(broker: str, devices: int, duration: float, interval: float = 0.5, warmup: float = 8.0,
              model_path: str | None = None, learn: bool = False, labelled: int | float = 0,
              context_seconds: float = 10.0, quiet: bool = False) -> dict:
    """One bench run (the module's docstring). ``labelled``: how many devices publish labels (an int), or
    which share of them (a float, as ``--labelled``)."""
    if devices < 1:
        raise ValueError(f"'devices' must be at least 1 (got {devices})")
    if isinstance(labelled, float):  # a share of the devices, as `harstream bench --labelled` takes it: the
        labelled = int(devices * labelled)  # publisher, handed "0.5" for a count, died before publishing
    from models.checkpoint import default_model_path, load_checkpoint
    # loaded first: the baseline needs it, and a wrong --model is named at once (a consumer that cannot load
    # it only never publishes metrics, which was all the bench said, 30 s later)
    model, _ = load_checkpoint(model_path or default_model_path())
    load_before = os.getloadavg()
    url = BrokerURL.parse(broker)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, file=sys.stderr, flush=True))
    embedded = None
    if not broker_answers(url):
        if url.tls:  # the embedded broker listens on plain TCP: nothing here would reach it over TLS
            raise ConnectionError(f"nothing answers at {url}, and the embedded broker speaks plain MQTT only: "
                                  f"start a TLS broker there, or pass --broker mqtt://{url.host}:{url.port}")
        say(f"bench: nothing answers at {url}; starting the embedded broker")
        embedded = EmbeddedBroker(url).start()
    broker_name = "embedded amqtt" if embedded else "the broker that answered (Mosquitto on this machine)"
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    consumer_id = f"bench-consumer-{uuid.uuid4().hex[:6]}"
    metrics: list[dict] = []
    watcher = connect(url, "bench-watch", subscriptions=[(f"{prefix}/_consumer/{consumer_id}/metrics", 0)],
                      on_message=lambda c, u, m: metrics.append(orjson.loads(m.payload)))
    # the children's stderr is kept (not shown: the consumer logs as it runs) to say why one ended
    consumer_err, publisher_err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    consumer = subprocess.Popen(_consumer_cmd(broker, prefix, consumer_id, model_path, learn), stderr=consumer_err)
    publisher = None
    try:
        deadline = time.monotonic() + 30
        while not metrics and time.monotonic() < deadline:
            if consumer.poll() is not None:
                raise _exited("consumer", consumer, consumer_err)
            time.sleep(0.1)
        if not metrics:
            raise RuntimeError("the consumer did not start publishing metrics within 30 s")
        rss_idle = _proc_rss_bytes(consumer.pid)
        say(f"bench: {devices} devices at 50 Hz for {duration:g} s ({interval:g} s per message) via {url}")
        publisher = subprocess.Popen(_publisher_cmd(broker, prefix, devices, duration + warmup, interval, labelled),
                                     stdout=subprocess.PIPE, stderr=publisher_err)
        time.sleep(warmup)
        n0 = len(metrics)
        broker_pid = None if embedded else _broker_pid()
        broker0 = _proc_cpu_seconds(broker_pid) if broker_pid else 0.0
        (cpu0, learner0), t0, wall0 = _tree_cpu_seconds(consumer.pid), time.monotonic(), time.time()
        threads0 = _thread_cpu_seconds(consumer.pid)
        peak_rss = 0
        report: list[bytes] = []  # the publisher's one line, printed as soon as it has published all
        done = threading.Event()

        def read_report() -> None:
            report.append(publisher.stdout.readline())
            done.set()
        threading.Thread(target=read_report, daemon=True).start()
        while not done.is_set() and publisher.poll() is None:
            peak_rss = max(peak_rss, _proc_rss_bytes(consumer.pid))
            done.wait(0.5)
        (cpu1, learner1), t1, wall1 = _tree_cpu_seconds(consumer.pid), time.monotonic(), time.time()
        broker1 = _proc_cpu_seconds(broker_pid) if broker_pid else 0.0
        threads1 = _thread_cpu_seconds(consumer.pid)
        publisher.wait(30)
        if publisher.returncode != 0:  # no report, or a partial run: nothing to measure
            raise _exited("publisher", publisher, publisher_err)
        time.sleep(2.5)  # let the last windows and metrics out
        if consumer.poll() is not None:  # it died during the run: what it published is not its throughput
            raise _exited("consumer", consumer, consumer_err)
        pub = json.loads((report[0] if report else b"") or b"{}")
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        running = len(metrics)  # the metrics it published while running (its last, on SIGTERM, follows)
        consumer.send_signal(signal.SIGTERM)
        try:
            consumer.wait(20)
        except subprocess.TimeoutExpired:
            consumer.kill()
        watcher.disconnect()
        watcher.loop_stop()
        if embedded:
            embedded.stop()
        consumer_err.close()
        publisher_err.close()
    window = metrics[n0:-2] if len(metrics) > n0 + 2 else metrics[n0:]
    samples = [m["samples_per_s"] for m in window]
    p50 = [m["latency_ms"]["p50"] for m in window if m["latency_ms"]["p50"] is not None]
    p99 = [m["latency_ms"]["p99"] for m in window if m["latency_ms"]["p99"] is not None]
    mx = [m["latency_ms"]["max"] for m in window if m["latency_ms"]["max"] is not None]
    last = metrics[max(running, 1) - 1]  # not the one published on SIGTERM: its learner has stopped by then
    # the consumer's process and its learner process (a child of its own with --learn)
    cpu_share = (cpu1 - cpu0 + learner1 - learner0) / max(t1 - t0, 1e-9)
    # the service thread (decode, buffers, model, publishing) is the main thread; paho's network thread
    # (reading and parsing MQTT packets, handing them over) is the busiest of the others
    thread_cores = sorted(((threads1[k] - threads0.get(k, 0.0)) / max(t1 - t0, 1e-9), k) for k in threads1)
    service_cores = next((c for c, k in thread_cores if k == consumer.pid), 0.0)
    other = [c for c, k in thread_cores if k != consumer.pid]
    rates = _message_rates(metrics, wall0, wall1)
    # samples handled over the measured span (the metrics' intervals are irregular when the service
    # thread is busy: a median of per-interval rates weighs a short interval like a long one)
    sustained = rates.get("samples") or (float(np.median(samples)) if samples else 0.0)
    nominal = devices * 50.0
    # what the publisher sent over the same span (its streams hold 49-50 samples/s per device; behind its
    # schedule, less): real time is the consumer handling what it was offered
    offered = _sent_rate(pub.get("progress") or [], rates.get("span")) or nominal
    baseline = baseline_throughput(model, context_seconds)
    per_core = sustained / max(cpu_share, 1e-9)
    return {
        "devices": devices,
        "duration_s": duration,
        "broker": broker_name,
        "offered_samples_per_s": round(offered, 1),
        "nominal_samples_per_s": nominal,
        "sustained_samples_per_s": round(sustained, 1),
        "real_time": _real_time(sustained, offered, nominal, last["dropped"]),
        "devices_in_real_time": int(min(devices, sustained / 50.0)),
        # per-second figures of the consumer's metrics: p50 the median second's, p99 the worst second's
        # (a single stall sets it), p99_median_second the median second's p99 (the steady state)
        "latency_ms": {"p50": round(float(np.median(p50)), 2) if p50 else None, "p99": max(p99) if p99 else None,
                       "p99_median_second": round(float(np.median(p99)), 2) if p99 else None,
                       "max": max(mx) if mx else None, "p99_by_second": p99},
        "dropped": last["dropped"],
        "lost_samples": last["lost_samples"],
        "rejected": last["rejected"],
        "consumer_cpu_cores": round(cpu_share, 3),
        "learner_cpu_cores": round((learner1 - learner0) / max(t1 - t0, 1e-9), 3),
        "broker_cpu_cores": round((broker1 - broker0) / max(t1 - t0, 1e-9), 3) if broker_pid else None,
        "service_thread_cores": round(service_cores, 3),
        "network_thread_cores": round(max(other, default=0.0), 3),
        "cpu_us_per_message": round(cpu_share / max(sustained / (50.0 * interval), 1e-9) * 1e6, 1),
        # each thread's CPU per message it handled: paho's thread reads every message (queued or dropped),
        # the service thread decodes the queued ones (unlike cpu_us_per_message, fair when it falls behind)
        "network_us_per_message": round(max(other, default=0.0) / max(rates["received"], 1e-9) * 1e6, 1),
        "service_us_per_message": round(service_cores / max(rates["handled"], 1e-9) * 1e6, 1),
        "received_messages_per_s": round(rates["received"], 1),
        # how the consumer's paho client read the socket (HARSTREAM_MQTT_READ, inherited by the consumer)
        "mqtt_read": read_mode() if client_class() is BufferedClient else "plain",
        "samples_per_s_per_core": round(per_core, 1),
        "memory_bytes_per_device": int(max(0, peak_rss - rss_idle) / devices),
        "consumer_peak_rss_mb": round(peak_rss / 2**20, 1),
        "publisher": {k: v for k, v in pub.items() if k != "progress"},
        "learn": learn,
        "learner": last.get("learner"),  # the online learner's counters at the end (None without it)
        "interval_s": interval,
        "load_average": {"before": [round(x, 2) for x in load_before],
                         "after": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count()},
        "baseline": baseline,
        "speedup_per_core_vs_baseline": round(per_core / max(baseline["samples_per_s_per_core"], 1e-9), 1),
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "publish":
        sys.exit(publish_main(sys.argv[2:]))
    if len(sys.argv) > 1 and sys.argv[1] == "resident":
        sys.exit(resident_main(sys.argv[2:]))
    print("usage: python -m stream.bench publish URL PREFIX N DURATION INTERVAL", file=sys.stderr)
    sys.exit(2)
