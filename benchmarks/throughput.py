"""Throughput and latency against the number of devices, up to where it breaks (issue "Performance").

Runs ``harstream bench`` (the real consumer, a real broker, a publisher process replaying
pre-generated simulator streams) for each device count, once with online fine-tuning off and, at
one size, on (with a share of devices publishing labels); writes ``docs/throughput.md``, the JSON
and a plot of latency percentiles against devices.

    python benchmarks/throughput.py [--devices 500 1000 2000 3000 5000] [--duration 30] [--learn-at 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(devices: int, duration: float, extra: list[str]) -> dict:
    cmd = [sys.executable, "-m", "stream.cli", "bench", "--devices", str(devices), "--duration", str(duration),
           "--json", *extra]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[500, 1000, 2000, 3000, 5000])
    parser.add_argument("--duration", type=float, default=30.0)
    parser.add_argument("--learn-at", type=int, default=2000, help="device count of the fine-tuning-on run")
    parser.add_argument("--labelled", type=float, default=0.05, help="share of devices with labels when learning")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "throughput.md")
    args = parser.parse_args()
    runs = []
    for n in args.devices:
        r = bench(n, args.duration, [])
        print(json.dumps({k: r[k] for k in ("devices", "sustained_samples_per_s", "real_time", "latency_ms",
                                            "consumer_cpu_cores", "memory_bytes_per_device")}), flush=True)
        runs.append(r)
    learn_off = next((r for r in runs if r["devices"] == args.learn_at), None) or bench(args.learn_at, args.duration, [])
    learn_on = bench(args.learn_at, args.duration, ["--learn", "--labelled", str(args.labelled)])
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:])
    data = {"command": command.strip(), "runs": runs, "learn_off": learn_off, "learn_on": learn_on,
            "cpu_count": os.cpu_count()}
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    img = args.out.parent / "img" / "throughput.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = [r["devices"] for r in runs]
    for key in ("p50", "p99", "max"):
        a1.plot(xs, [r["latency_ms"][key] for r in runs], marker="o", label=key)
    a1.set_yscale("log")
    a1.set_xlabel("devices at 50 Hz")
    a1.set_ylabel("latency, window's last sample in -> prediction out (ms)")
    a1.axhline(100, color="grey", linestyle="--", linewidth=1)
    a1.legend()
    a1.grid(True, alpha=0.3)
    a2.plot(xs, [r["offered_samples_per_s"] for r in runs], "k--", label="offered")
    a2.plot(xs, [r["sustained_samples_per_s"] for r in runs], marker="o", label="sustained")
    a2.set_xlabel("devices at 50 Hz")
    a2.set_ylabel("samples per second")
    a2.legend()
    a2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(img, dpi=110)

    lines = ["# Throughput and latency through a real broker", "",
             f"Reproduce: `{data['command']}` (each row is one `harstream bench --devices N --duration "
             f"{args.duration:g} --json`). Broker: {runs[0]['broker']}. Machine: {os.cpu_count()} cores, "
             "shared by the broker, the publisher process and the consumer.", "",
             "| devices | offered samples/s | sustained | real time | latency p50 / p99 / max (ms) | consumer cores | "
             "samples/s per core | memory per device | dropped | baseline samples/s per core (model only) | "
             "end-to-end per core vs baseline model only |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lat = r["latency_ms"]
        lines.append(f"| {r['devices']} | {r['offered_samples_per_s']:.0f} | {r['sustained_samples_per_s']:.0f} | "
                     f"{'yes' if r['real_time'] else 'no'} | {lat['p50']} / {lat['p99']} / {lat['max']} | "
                     f"{r['consumer_cpu_cores']} | {r['samples_per_s_per_core']:.0f} | "
                     f"{r['memory_bytes_per_device'] / 1024:.1f} kB | {r['dropped']} | "
                     f"{r['baseline']['samples_per_s_per_core']:.0f} | {r['speedup_per_core_vs_baseline']}x |")
    b = runs[0]["baseline"]
    lines += ["", f"Model only, one thread: the stateless baseline makes {b['predictions_per_s']:.0f} predictions/s "
              f"(a {b['context_s']:g} s window from a zero state, one device at a time); the stateful classifier "
              f"makes {b['stateful_batched_predictions_per_s']:.0f} (one 2 s window per device, 1,000 devices per "
              f"batch, state carried): {b['model_only_ratio']}x."]
    on, off = learn_on, learn_off
    lines += ["", f"Online fine-tuning at {args.learn_at} devices ({args.labelled:.0%} publishing labels): "
              f"{on['sustained_samples_per_s']:.0f} samples/s on vs {off['sustained_samples_per_s']:.0f} off "
              f"(consumer cores {on['consumer_cpu_cores']} vs {off['consumer_cpu_cores']}); latency p50/p99 "
              f"{on['latency_ms']['p50']}/{on['latency_ms']['p99']} ms vs {off['latency_ms']['p50']}/"
              f"{off['latency_ms']['p99']} ms.", "",
             "The baseline is the usual stateless way, measured in the same run on one thread: every prediction "
             f"re-runs a {runs[0]['baseline']['context_s']:g} s window through the same network from a zero state, one "
             "device at a time. Its samples/s per core count the model only; the consumer's count everything "
             "(MQTT, JSON decoding, resampling, the model, publishing), so the end-to-end column compares unlike "
             "things and mostly shows that decoding, not the model, dominates the consumer.", "",
             "![latency and throughput](img/throughput.png)"]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
