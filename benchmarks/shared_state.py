"""What keeping per-device state in Redis costs, against keeping it in the replica's memory.

The same traffic (N devices, one message of ``--interval`` seconds of 50 Hz samples per device per
tick, device clocks staggered so that windows complete on every tick) goes through the consumer's
classification path (``Pipeline`` and ``SequenceCheck``, the shipped model) four ways:

- ``local``: state in this process only (one consumer, or replicas with no shared state);
- ``memory, affinity``: ``SharedDevices`` on an in-process store: the cost of encoding, decoding and
  the bookkeeping alone;
- ``redis, affinity``: one replica per device, as with EMQX ``hash_topic`` dispatch: the replica's
  own copy is current, so one round trip per cycle (the compare-and-set commit);
- ``redis, round-robin``: messages alternate between 2 replicas, as Mosquitto dispatches a shared
  subscription: every message needs a read and a commit.

Reported per message: wall and CPU time of the consumer side, Redis commands and Redis server CPU
(from ``INFO``), and the bytes Redis holds per device. MQTT decoding and publishing are left out:
they are the same in every mode (``harstream bench`` measures the whole consumer)::

    python benchmarks/shared_state.py [--devices 1000 2000] [--ticks 24] [--redis redis://127.0.0.1:6379/0]

``--live`` runs the whole thing instead: ``--replicas`` real ``harstream consume --shared`` processes
on the broker (Mosquitto: round-robin) and Redis, fed by ``harstream bench``'s publisher at 50 Hz in
real time, against one plain consumer fed the same way; it reports windows/s, latency and the CPU
of every replica (from /proc)::

    python benchmarks/shared_state.py --live --devices 1000 --replicas 2 [--duration 20]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import default_model_path, load_checkpoint  # noqa: E402
from models.state import StatefulClassifier  # noqa: E402
from stream.decode import SampleBatch, SequenceCheck  # noqa: E402
from stream.pipeline import Pipeline  # noqa: E402
from stream.shared_state import MemoryStore, RedisStore, SharedDevices  # noqa: E402

WINDOW_S = 2.0  # the shipped model's window: each device completes one every 2 s

WARMUP_TICKS = 4  # not timed: the first windows, slot allocation, Redis keys created


def make_traffic(devices: int, ticks: int, interval: float, rate: float = 50.0,
                 seed: int = 0) -> list[list[SampleBatch]]:
    """``ticks`` lists of one batch per device; device clocks start at random offsets."""
    rng = np.random.default_rng(seed)
    n = int(round(interval * rate))
    offsets = rng.uniform(0, 2.0, devices)
    out = []
    for k in range(ticks):
        tick = []
        for d in range(devices):
            t = 1000.0 + offsets[d] + (k * n + np.arange(n)) / rate
            acc = np.stack([np.sin(3 * t + d), np.cos(2 * t), 9.81 + np.sin(5 * t)], axis=1)
            acc += rng.normal(0, 0.3, acc.shape)
            tick.append(SampleBatch(f"dev-{d}", t, acc.astype(np.float32), seq=k))
        out.append(tick)
    return out


def run_local(model, traffic) -> dict:
    pipeline, sequence = Pipeline(StatefulClassifier(model)), SequenceCheck()
    timed = _Timer()
    windows = 0
    for k, tick in enumerate(traffic):
        timed.start(k >= WARMUP_TICKS)
        for batch in tick:
            sequence.check(batch)
            pipeline.add(batch, 0.0)
        windows += len(pipeline.classify_ready()) * (k >= WARMUP_TICKS)
        timed.stop()
    return timed.result(sum(len(t) for t in traffic[WARMUP_TICKS:]), windows)


def run_shared(model, traffic, stores: list, round_robin: bool) -> dict:
    replicas = [SharedDevices(s, Pipeline(StatefulClassifier(model)), SequenceCheck(), reorder_wait=60.0)
                for s in stores]
    timed = _Timer()
    windows = 0
    for k, tick in enumerate(traffic):
        timed.start(k >= WARMUP_TICKS)
        for d, batch in enumerate(tick):
            replicas[(d + k) % len(replicas) if round_robin else d % len(replicas)].hold(batch, 0.0)
        for r in replicas:  # each replica's cycle: apply what is next, classify, write back
            r.apply(now=0.0)
            windows += len(r.commit(r.pipeline.classify_ready())) * (k >= WARMUP_TICKS)
        timed.stop()
        assert not any(r.held for r in replicas), "every message is its device's next"
    out = timed.result(sum(len(t) for t in traffic[WARMUP_TICKS:]), windows)
    out["reads"] = sum(r.counts["reads"] for r in replicas)
    out["conflicts"] = sum(r.counts["conflicts"] for r in replicas)
    return out


class _Timer:
    def __init__(self) -> None:
        self.wall = self.cpu = 0.0
        self._on = False

    def start(self, on: bool) -> None:
        self._on = on
        self._wall, self._cpu = time.perf_counter(), time.process_time()

    def stop(self) -> None:
        if self._on:
            self.wall += time.perf_counter() - self._wall
            self.cpu += time.process_time() - self._cpu

    def result(self, messages: int, windows: int) -> dict:
        return {"messages": messages, "windows": windows, "wall_s": round(self.wall, 3),
                "cpu_s": round(self.cpu, 3), "us_per_message": round(self.wall / messages * 1e6, 1),
                "cpu_us_per_message": round(self.cpu / messages * 1e6, 1),
                "messages_per_s": round(messages / self.wall)}


def run_live(broker: str, redis_url: str | None, devices: int, replicas: int, duration: float,
             warmup: float = 8.0) -> dict:
    """``replicas`` consumer processes (shared when ``redis_url``) against ``devices`` published devices,
    measured over about ``duration`` seconds from ``warmup`` seconds after the publisher's first message (its
    devices join over its first 4 s) to its last one. Windows/s classified and offered are over that one span."""
    import signal
    import subprocess
    import threading

    import orjson

    from stream.bench import _proc_cpu_seconds
    from stream.mqtt import BrokerURL, connect
    prefix = f"sharedbench{uuid.uuid4().hex[:6]}"
    metrics: dict[str, list[dict]] = {}
    lock = threading.Lock()

    def on_metrics(client, userdata, message):
        if not message.payload:  # a consumer without --id clears its retained metrics as it stops
            return
        with lock:
            metrics.setdefault(message.topic, []).append(orjson.loads(message.payload))
    watcher = connect(BrokerURL.parse(broker), "shared-bench-watch",
                      subscriptions=[(f"{prefix}/_consumer/+/metrics", 0)], on_message=on_metrics)
    cmd = [sys.executable, "-m", "stream.cli", "consume", "--broker", broker, "--prefix", prefix,
           "--no-learn", "--metrics-interval", "1"]
    if redis_url:
        cmd += ["--shared", "bench", "--state-store", redis_url]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.DEVNULL) for _ in range(replicas)]
    publisher = None
    try:
        deadline = time.monotonic() + 60
        while len(metrics) < replicas and time.monotonic() < deadline:
            time.sleep(0.1)
        if len(metrics) < replicas:
            raise RuntimeError("the replicas did not start publishing metrics within 60 s")
        publisher = subprocess.Popen([sys.executable, "-m", "stream.bench", "publish", broker, prefix,
                                      str(devices), str(duration + warmup + 1.0), "0.5"],  # 1 s: seeing it start
                                     cwd=ROOT, stdout=subprocess.PIPE)
        # the warm-up counts from the publisher's first message (it takes seconds to start on a busy machine:
        # counted from its start, the span began while its devices were still joining)
        with lock:
            before = sum(m[-1]["messages"] for m in metrics.values())
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and publisher.poll() is None:
            with lock:
                if sum(m[-1]["messages"] for m in metrics.values()) > before:
                    break
            time.sleep(0.1)
        time.sleep(warmup)
        cpu0, t0, wall0 = [_proc_cpu_seconds(p.pid) for p in procs], time.monotonic(), time.time()
        out, _ = publisher.communicate(timeout=duration + warmup + 60)
        cpu1, t1 = [_proc_cpu_seconds(p.pid) for p in procs], time.monotonic()
        if publisher.returncode != 0:
            raise RuntimeError(f"the publisher exited with status {publisher.returncode}")
        lines = out.decode().strip().splitlines()
        progress = json.loads(lines[-1]).get("progress", []) if lines else []  # (wall time, samples sent)
        # the span ends with the publisher's last message; each replica's count is read at its end from the
        # metrics on either side of it, so wait for one after it (they come every second)
        wall1 = progress[-1][0] if progress else time.time()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with lock:
                if all(m[-1]["t"] > wall1 for m in metrics.values()):
                    break
            time.sleep(0.1)
        with lock:
            series = {t: [(x["t"], x["windows"]) for x in m] for t, m in metrics.items()}
            window = {t: [x for x in m if wall0 < x["t"] <= wall1 + 1.5] for t, m in metrics.items()}
            end = {t: m[-1] for t, m in window.items() if m}
    finally:
        if publisher is not None and publisher.poll() is None:
            publisher.kill()
            publisher.wait()
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(30)
        watcher.disconnect()
        watcher.loop_stop()
        if redis_url:  # the replicas' namespace is harstream:<prefix>
            import redis
            client = redis.Redis.from_url(redis_url)
            keys = list(client.scan_iter(f"harstream:{prefix}:*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i:i + 1000])
            client.close()
    elapsed = t1 - t0
    windows_per_s = window_rate(series, (wall0, wall1))
    offered = offered_window_rate(progress, (wall0, wall1), devices)
    p99 = [x["latency_ms"]["p99"] for m in window.values() for x in m if x["latency_ms"]["p99"] is not None]
    p50 = [x["latency_ms"]["p50"] for m in window.values() for x in m if x["latency_ms"]["p50"] is not None]
    cpu = [(b - a) / elapsed for a, b in zip(cpu0, cpu1, strict=True)]
    return {"devices": devices, "replicas": replicas, "shared": bool(redis_url),
            "windows_per_s": round(windows_per_s, 1), "offered_windows_per_s": round(offered, 1),
            "span_s": round(wall1 - wall0, 2),
            "latency_ms_p50": round(float(np.median(p50)), 1) if p50 else None,
            "latency_ms_p99": round(float(np.percentile(p99, 99)), 1) if p99 else None,
            "cpu_cores_per_replica": [round(c, 3) for c in cpu],
            "cpu_us_per_message": round(sum(cpu) / (devices / 0.5) * 1e6, 1),
            "lost_samples": sum(m["lost_samples"] for m in end.values()),
            "rejected": sum(sum(m["rejected"].values()) for m in end.values()),
            "shared_state": [m.get("shared") for m in end.values()]}


def window_rate(series: dict[str, list[tuple[float, int]]], span: tuple[float, float]) -> float:
    """Windows per second the replicas classified over ``span`` (wall times): the windows each replica's
    metrics count since it started (``(t, windows)``, ``t`` its wall clock), read at both ends of the one
    span by interpolating between its metrics on either side, summed."""
    a, b = span
    total = 0.0
    for points in series.values():
        if not points:
            continue
        times = np.asarray([p[0] for p in points], dtype=float)
        counts = np.asarray([p[1] for p in points], dtype=float)
        total += float(np.interp(b, times, counts) - np.interp(a, times, counts))
    return total / max(b - a, 1e-9)


def offered_window_rate(progress: list, span: tuple[float, float], devices: int, rate: float = 50.0) -> float:
    """Windows per second the publisher's samples made over ``span``: what it sent then (its ``progress``,
    (wall time, samples sent so far) after every tick), one window per ``WINDOW_S`` of a device's samples;
    ``devices / WINDOW_S`` where its progress does not cover the span."""
    from stream.bench import _sent_rate
    sent = _sent_rate(progress, span)
    return devices / WINDOW_S if sent is None else sent / (rate * WINDOW_S)


def redis_info(client) -> tuple[float, int]:
    cpu, stats = client.info("cpu"), client.info("stats")
    return cpu["used_cpu_sys"] + cpu["used_cpu_user"], stats["total_commands_processed"]


def _check_redis(url: str) -> None:
    """One line naming the Redis that does not answer, instead of a traceback after the local mode's run."""
    import redis
    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=2.0)
        client.ping()
        client.close()
    except (redis.RedisError, ValueError) as exc:
        raise SystemExit(f"shared_state: Redis does not answer at {url} (--redis): {exc}") from None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 2000],
                        help="device counts, one measurement each (default: 1000 2000)")
    parser.add_argument("--ticks", type=int, default=24, help="messages per device (default: %(default)s)")
    parser.add_argument("--interval", type=float, default=0.5, help="seconds of samples per message")
    parser.add_argument("--redis", default=os.environ.get("HARSTREAM_TEST_REDIS", "redis://127.0.0.1:6379/0"),
                        help="Redis for the shared modes (default: %(default)s)")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables (nothing is written)")
    parser.add_argument("--live", action="store_true", help="real replicas through the broker (see above)")
    parser.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                        help="with --live (default: %(default)s)")
    parser.add_argument("--replicas", type=int, default=2, help="with --live (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=20.0, help="with --live: measured seconds")
    args = parser.parse_args(argv)
    if args.live:
        from stream.mqtt import BrokerURL, mqtt_answers
        if not mqtt_answers(BrokerURL.parse(args.broker)):
            raise SystemExit(f"shared_state: no MQTT broker answers at {args.broker} (--broker)")
    _check_redis(args.redis)  # both modes need it (--live for its shared replicas): before any measuring
    if args.live:
        results = []
        for n in args.devices:
            for replicas, redis_url in ((1, None), (args.replicas, args.redis)):
                r = run_live(args.broker, redis_url, n, replicas, args.duration)
                results.append(r)
                if not args.json:
                    print(f"{n} devices, {replicas} {'shared replicas' if redis_url else 'plain consumer'}: "
                          f"{r['windows_per_s']} of {r['offered_windows_per_s']:g} windows/s, latency p50 "
                          f"{r['latency_ms_p50']} p99 {r['latency_ms_p99']} ms, CPU cores "
                          f"{r['cpu_cores_per_replica']} ({r['cpu_us_per_message']} µs per message), "
                          f"lost samples {r['lost_samples']}, "
                          f"rejected {r['rejected']}", flush=True)
        if args.json:
            print(json.dumps(results))
        return 0

    import redis
    import torch
    torch.set_num_threads(1)  # as the consumer serves
    model, info = load_checkpoint(args.model or default_model_path())
    client = redis.Redis.from_url(args.redis)
    results = []
    for n in args.devices:
        traffic = make_traffic(n, args.ticks, args.interval)
        rows = {"local": run_local(model, traffic)}
        rows["memory, affinity"] = run_shared(model, traffic, [MemoryStore()], round_robin=False)
        for name, replicas, rr in (("redis, affinity", 1, False), ("redis, round-robin", 2, True)):
            namespace = f"harstream-bench:{uuid.uuid4().hex[:8]}"
            stores = [RedisStore(args.redis, namespace, ttl=600) for _ in range(replicas)]
            cpu0, cmd0 = redis_info(client)
            row = run_shared(model, traffic, stores, round_robin=rr)
            cpu1, cmd1 = redis_info(client)
            # the Redis counters also cover the untimed warm-up ticks: scale by all messages sent
            sent = n * args.ticks
            row["redis_commands_per_message"] = round((cmd1 - cmd0) / sent, 2)
            row["redis_cpu_us_per_message"] = round((cpu1 - cpu0) / sent * 1e6, 1)
            row["redis_bytes_per_device"] = client.memory_usage(f"{namespace}:dev-0")
            keys = list(client.scan_iter(f"{namespace}:*", count=1000))
            for i in range(0, len(keys), 1000):
                client.delete(*keys[i:i + 1000])
            for s in stores:
                s.close()
            rows[name] = row
        local = rows["local"]["us_per_message"]
        for row in rows.values():
            row["overhead_us_per_message"] = round(row["us_per_message"] - local, 1)
        results.append({"devices": n, "ticks": args.ticks, "interval_s": args.interval,
                        "model": info["version"], "load_average": os.getloadavg()[0], "rows": rows})
        if not args.json:
            print(f"\n{n} devices x {args.ticks} messages of {args.interval:g} s (model {info['version']}, "
                  f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
            print("| mode | µs/message (wall) | CPU µs/message | over local | messages/s "
                  "| Redis cmds/message | Redis CPU µs/message | Redis bytes/device |")
            print("|---|---|---|---|---|---|---|---|")
            for name, r in rows.items():
                print(f"| {name} | {r['us_per_message']} | {r['cpu_us_per_message']} | "
                      f"{r['overhead_us_per_message']:+} | {r['messages_per_s']} | "
                      f"{r.get('redis_commands_per_message', '-')} | "
                      f"{r.get('redis_cpu_us_per_message', '-')} | {r.get('redis_bytes_per_device', '-')} |")
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
