"""Throughput and latency against the number of devices, up to where it breaks (issue "Performance").

Runs ``harstream bench`` (the real consumer, a real broker, a publisher process replaying
pre-generated simulator streams) for each device count, once with online fine-tuning off and, at
one size, on (with a share of devices publishing labels); optionally the largest size again with
1 s messages instead of 0.5 s; then the consumer's service thread alone without MQTT
(``stream.bench.service_profile``: CPU per message, memory per device by the file that allocated
it). Writes ``docs/throughput.md``, the JSON and a plot of latency percentiles against devices.

    python benchmarks/throughput.py [--devices 1000 2000 3000 5000] [--duration 20] [--learn-at 2000]
                                    [--long-messages 5000]
    python benchmarks/throughput.py --compare-read plain fast [--devices 3000 4000 5000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def bench(devices: int, duration: float, extra: list[str], read: str | None = None) -> dict:
    """One ``harstream bench`` run; ``read`` sets HARSTREAM_MQTT_READ (how the consumer's paho reads)."""
    cmd = [sys.executable, "-m", "stream.cli", "bench", "--devices", str(devices), "--duration", str(duration),
           "--json", *extra]
    env = dict(os.environ, **({"HARSTREAM_MQTT_READ": read} if read else {}))  # the consumer inherits it
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    if done.returncode != 0:  # its one-line error (no broker, a wrong model), not a traceback of this script
        said = done.stderr.strip().splitlines()
        raise SystemExit(f"throughput: harstream bench --devices {devices} failed with status {done.returncode}"
                         + (f": {said[-1]}" if said else ""))
    r = json.loads(done.stdout.strip().splitlines()[-1])
    r["mqtt_read_asked"] = read
    return r


READ_BEGIN, READ_END = "<!-- read-comparison -->", "<!-- /read-comparison -->"


def compare_read(args) -> int:
    """The same bench with each HARSTREAM_MQTT_READ mode, interleaved (the order turns every round), so
    that each pair of runs meets the same machine load; kept in the JSON's ``read_comparisons`` (one per
    command: a run of the same command replaces the earlier one)."""
    runs = []
    for k in range(args.rounds):
        for n in args.devices:
            modes = args.compare_read if (k + args.devices.index(n)) % 2 == 0 else args.compare_read[::-1]
            for mode in modes:
                r = bench(n, args.duration, [], read=mode)
                r["round"] = k + 1
                keys = ("devices", "mqtt_read", "sustained_samples_per_s", "latency_ms",
                        "network_us_per_message", "service_us_per_message", "load_average")
                print(json.dumps({key: r[key] for key in keys}), flush=True)
                runs.append(r)
    path = args.out.with_suffix(".json")
    data = json.loads(path.read_text()) if path.exists() else {}
    command = "python benchmarks/throughput.py " + " ".join(args.argv)
    data["read_comparisons"] = [c for c in data.get("read_comparisons", []) if c["command"] != command]
    data["read_comparisons"].append({"command": command, "runs": runs})
    path.write_text(json.dumps(data, indent=1))
    return write_read(args, data["read_comparisons"])


def read_table(comparison: dict) -> list[str]:
    runs = comparison["runs"]
    modes = list(dict.fromkeys(r["mqtt_read_asked"] for r in runs))
    lines = ["",
             f"Reproduce: `{comparison['command']}`. Each row is one `harstream bench --devices N --duration "
             f"{runs[0]['duration_s']:g} --json` with `HARSTREAM_MQTT_READ` set for the consumer; the modes "
             "alternate, so each pair met about the same load (last column, before → after).", "",
             "| devices | round | read | sustained of offered samples/s | real time | latency p50 / p99 / max "
             "(ms) | consumer cores (service + network) | network thread µs per message received | service "
             "thread µs per message | CPU µs per message | dropped | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        lat = r["latency_ms"]
        lines.append(
            f"| {r['devices']} | {r['round']} | {r['mqtt_read_asked']} | "
            f"{r['sustained_samples_per_s']:.0f} of {r['offered_samples_per_s']:.0f} | "
            f"{'yes' if r['real_time'] else 'no'} | {lat['p50']} / {lat['p99']} / {lat['max']} | "
            f"{r['consumer_cpu_cores']} ({r['service_thread_cores']} + {r['network_thread_cores']}) | "
            f"{r['network_us_per_message']} | {r['service_us_per_message']} | {r['cpu_us_per_message']} | "
            f"{r['dropped']} | {load(r)} |")
    lines += ["", f"Means of the runs of each mode at each size, and their ratio to `{modes[0]}`:", "",
              "| devices | read | network thread µs per message | ratio | consumer cores | ratio | "
              "sustained samples/s | ratio | latency p99 (ms) |",
              "|---|---|---|---|---|---|---|---|---|"]

    def mean(xs: list[float]) -> float:
        return sum(xs) / max(len(xs), 1)

    def ratio(x: float, to: float) -> str:  # a base of 0 (paho's thread idle over a short, small run): none
        return f"{x / to:.2f}" if to else "–"
    for n in sorted({r["devices"] for r in runs}):
        base = None
        for mode in modes:
            sel = [r for r in runs if r["devices"] == n and r["mqtt_read_asked"] == mode]
            if not sel:
                continue
            net = mean([r["network_us_per_message"] for r in sel])
            cores = mean([r["consumer_cpu_cores"] for r in sel])
            sus = mean([r["sustained_samples_per_s"] for r in sel])
            p99 = mean([r["latency_ms"]["p99"] or 0.0 for r in sel])
            base = base or (net, cores, sus)
            lines.append(f"| {n} | {mode} | {net:.1f} | {ratio(net, base[0])} | {cores:.3f} | "
                         f"{ratio(cores, base[1])} | {sus:.0f} | {ratio(sus, base[2])} | {p99:.0f} |")
    return lines


def write_read(args, comparisons: list[dict]) -> int:
    """The comparisons' tables and a plot of all their runs, written between READ_BEGIN and READ_END."""
    lines = [READ_BEGIN]
    for comparison in comparisons:
        lines += read_table(comparison)
    lines += ["", "![network thread CPU per message by read mode](img/throughput-read.png)", "", READ_END]
    runs = [r for c in comparisons for r in c["runs"]]
    modes = list(dict.fromkeys(r["mqtt_read_asked"] for r in runs))
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
    for mode in modes:
        sel = [r for r in runs if r["mqtt_read_asked"] == mode]
        a1.plot([r["devices"] for r in sel], [r["network_us_per_message"] for r in sel], "o", label=mode)
        a2.plot([r["devices"] for r in sel], [r["latency_ms"]["p99"] for r in sel], "o", label=mode)
    a1.set_xlabel("devices at 50 Hz (0.5 s messages)")
    a1.set_ylabel("paho thread CPU per message received (µs)")
    a1.set_ylim(bottom=0)
    a2.set_xlabel("devices at 50 Hz (0.5 s messages)")
    a2.set_ylabel("latency p99 (ms)")
    a2.set_yscale("log")
    a2.axhline(100, color="grey", linestyle="--", linewidth=1)
    for a in (a1, a2):
        a.legend()
        a.grid(True, alpha=0.3)
    fig.tight_layout()
    img = args.out.parent / "img" / "throughput-read.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(img, dpi=110)
    block = "\n".join(lines)
    page = args.out.read_text() if args.out.exists() else ""
    if READ_BEGIN in page and READ_END in page:
        page = page[:page.index(READ_BEGIN)] + block + page[page.index(READ_END) + len(READ_END):]
    else:
        marker = "\n## What breaks first"
        at = page.index(marker) if marker in page else len(page)
        head = "\n## How the consumer's MQTT client reads (HARSTREAM_MQTT_READ)\n\n"
        page = page[:at] + head + block + "\n" + page[at:]
    args.out.write_text(page)
    print(block)
    return 0


def load(r: dict) -> str:
    la = r.get("load_average") or {}
    return f"{la['before'][0]:.1f} → {la['after'][0]:.1f}" if la else "?"


def stateless_consumer(r: dict) -> float:
    """The consumer's CPU per message against the same consumer with the stateless model swapped in:
    everything else (MQTT, JSON, buffers, publishing) costs the same, the model costs what the
    baseline measured per prediction instead of the batched stateful pass."""
    b = r["baseline"]
    per_prediction = r["interval_s"] / b.get("window_s", 2.0)  # predictions per message
    stateless = r["cpu_us_per_message"] + per_prediction * 1e6 * (
        1 / b["predictions_per_s"] - 1 / b["stateful_batched_predictions_per_s"])
    return stateless / r["cpu_us_per_message"]


def row(r: dict) -> str:
    lat = r["latency_ms"]
    return (f"| {r['devices']} | {r['interval_s']:g} s | {r['offered_samples_per_s']:.0f} | "
            f"{r['sustained_samples_per_s']:.0f} | {'yes' if r['real_time'] else 'no'} | "
            f"{lat['p50']} / {lat.get('p99_median_second', '–')} / {lat['p99']} / {lat['max']} | "
            f"{r['consumer_cpu_cores']} "
            f"({r['service_thread_cores']} + {r['network_thread_cores']}) | {r['cpu_us_per_message']} | "
            f"{r['samples_per_s_per_core']:.0f} | {stateless_consumer(r):.1f}x | "
            f"{r['memory_bytes_per_device'] / 1024:.1f} kB | {r.get('broker_cpu_cores')} | "
            f"{r['publisher'].get('max_behind_s')} | {r['dropped']} | {load(r)} |")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every run is `harstream bench` on the broker HARSTREAM_BROKER names (default "
               "mqtt://127.0.0.1:1883; the embedded one is started where nothing answers).")
    parser.add_argument("--devices", type=int, nargs="+", default=[1000, 2000, 3000, 5000],
                        help="device counts, one run each (default: 1000 2000 3000 5000)")
    parser.add_argument("--duration", type=float, default=20.0, help="measured seconds per run (default: %(default)s)")
    parser.add_argument("--learn-at", type=int, default=2000,
                        help="device count of the fine-tuning-on run, and of its fine-tuning-off twin (default: "
                             "%(default)s)")
    parser.add_argument("--labelled", type=float, default=0.05,
                        help="share of devices with labels in the learning pair (default: %(default)s)")
    parser.add_argument("--long-messages", type=int, default=0, metavar="N",
                        help="also run N devices with 1 s messages (half the messages for the same samples)")
    parser.add_argument("--profile-devices", type=int, default=3000,
                        help="devices of the in-process profile; its memory per device is measured at 1000, or "
                             "at these if fewer (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "throughput.md",
                        help="the page to write, its .json beside it and plots in img/ there (default: %(default)s)")
    parser.add_argument("--from-json", action="store_true", help="rewrite the page and plot from the JSON only")
    parser.add_argument("--compare-read", nargs="+", metavar="MODE", choices=("fast", "buffered", "plain"),
                        help="only compare the consumer's MQTT read modes (HARSTREAM_MQTT_READ) at --devices, "
                             "interleaved, --rounds times")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --compare-read (default: %(default)s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else argv  # for the page's "Reproduce" line
    args.out.parent.mkdir(parents=True, exist_ok=True)  # now, not after the runs
    if args.compare_read:
        return compare_read(args)
    if args.from_json:
        if not args.out.with_suffix(".json").exists():
            raise SystemExit(f"throughput: --from-json: no {args.out.with_suffix('.json')} (a run writes it)")
        data = json.loads(args.out.with_suffix(".json").read_text())
        if data.get("read_comparisons"):
            write_read(args, data["read_comparisons"])
        return write(args, data)
    runs = []
    for n in args.devices:
        r = bench(n, args.duration, [])
        print(json.dumps({k: r[k] for k in ("devices", "sustained_samples_per_s", "real_time", "latency_ms",
                                            "consumer_cpu_cores", "cpu_us_per_message", "memory_bytes_per_device",
                                            "load_average")}), flush=True)
        runs.append(r)
    # the same label traffic both ways: the difference is learning, not decoding and scoring labels
    learn_off = bench(args.learn_at, args.duration, ["--labelled", str(args.labelled)])
    learn_on = bench(args.learn_at, args.duration, ["--learn", "--labelled", str(args.labelled)])
    long = bench(args.long_messages, args.duration, ["--interval", "1.0"]) if args.long_messages else None
    from stream.bench import service_profile
    # memory per device at 1000 devices, or at fewer where the profile has fewer (a small run stays small)
    profile = service_profile(args.profile_devices, 20.0, memory_devices=min(1000, args.profile_devices))
    command = "python benchmarks/throughput.py " + " ".join(args.argv)
    data = {"command": command.strip(), "labelled": args.labelled, "runs": runs, "learn_off": learn_off,
            "learn_on": learn_on, "long_messages": long, "service_profile": profile, "cpu_count": os.cpu_count()}
    previous = args.out.with_suffix(".json")
    if previous.exists() and "read_comparisons" in (old := json.loads(previous.read_text())):
        data["read_comparisons"] = old["read_comparisons"]
    args.out.with_suffix(".json").write_text(json.dumps(data, indent=1))
    return write(args, data)


HAND_WRITTEN = ("\n## How the consumer's MQTT client reads", "\n## What breaks first")


def labelled_share(data: dict) -> float | None:
    """The share of devices that published labels in the learning pair: kept in the JSON (``labelled``); a
    JSON written before it was kept has it from its recorded command (``--labelled``, else the default:
    0.05 since the option exists); None where that command no longer parses."""
    if "labelled" in data:
        return data["labelled"]
    words = shlex.split(data.get("command", ""))
    words = words[words.index("benchmarks/throughput.py") + 1:] if "benchmarks/throughput.py" in words else []
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            return _parser().parse_args(words).labelled
    except SystemExit:
        return None


def labelled_text(data: dict, devices: int) -> str:
    """'5% of them (250) publishing labels', from the share kept in ``data`` (``harstream bench --labelled``
    labels ``int(devices * share)`` of them)."""
    share = labelled_share(data)
    if share is None:
        return "a share of them not recorded publishing labels"
    return f"{share * 100:g}% of them ({int(devices * share)}) publishing labels"


def write(args, data: dict) -> int:
    runs, learn_on, learn_off = data["runs"], data["learn_on"], data["learn_off"]
    long, profile = data["long_messages"], data["service_profile"]
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
    a1.set_xlabel(f"devices at 50 Hz ({runs[0]['interval_s']:g} s messages)")
    a1.set_ylabel("latency, window's last sample in -> prediction out (ms)")
    a1.axhline(100, color="grey", linestyle="--", linewidth=1)
    a1.legend()
    a1.grid(True, alpha=0.3)
    a2.plot(xs, [r["offered_samples_per_s"] for r in runs], "k--", label="offered")
    a2.plot(xs, [r["sustained_samples_per_s"] for r in runs], marker="o", label="sustained")
    if long:
        a2.plot([long["devices"]], [long["sustained_samples_per_s"]], "s",
                label=f"sustained, {long['interval_s']:g} s messages")
    a2.set_xlabel("devices at 50 Hz")
    a2.set_ylabel("samples per second")
    a2.legend()
    a2.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(img, dpi=110)

    b = runs[0]["baseline"]
    lines = ["# Throughput and latency through a real broker", "",
             f"Reproduce: `{data['command']}` (each row is one `harstream bench --devices N --duration "
             f"{runs[0]['duration_s']:g} --json`, the last columns' load average is the machine's before → after the "
             f"row). Broker: {runs[0]['broker']}. Machine: {data.get('cpu_count') or os.cpu_count()} cores, shared by "
             "the broker, the publisher process and the consumer, and by whatever else runs (the load column): compare "
             "figures only within one run, as ratios.", "",
             "| devices | message | offered samples/s | sustained | real time | latency p50 / p99 of the median "
             "second / p99 of the worst second / max (ms) | "
             "consumer cores (service + network thread) | CPU µs per message | samples/s per core | "
             "per core vs the same consumer with the stateless model | memory per device (RSS) | broker cores | "
             "publisher behind (s) | dropped | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [row(r) for r in runs]
    if long:
        lines.append(row(long))
    on, off = learn_on, learn_off
    lines += ["", "## The baseline, same network, one thread (model only)", "",
              "| way | predictions/s | vs stateless one at a time |", "|---|---|---|",
              f"| stateless: every prediction re-runs a {b['context_s']:g} s window from a zero state, one device "
              f"at a time (the usual way) | {b['predictions_per_s']:.0f} | 1x |",
              f"| stateless, {b['batch']} devices per pass | {b['stateless_batched_predictions_per_s']:.0f} | "
              f"{b['stateless_batched_predictions_per_s'] / b['predictions_per_s']:.1f}x |",
              f"| stateful: one new {runs[0]['baseline'].get('window_s', 2):g} s window, state carried, one device "
              f"at a time | {b['stateful_single_predictions_per_s']:.0f} | "
              f"{b['stateful_single_predictions_per_s'] / b['predictions_per_s']:.1f}x |",
              f"| stateful, {b['batch']} devices per pass (the consumer's way) | "
              f"{b['stateful_batched_predictions_per_s']:.0f} | {b['model_only_ratio']}x |", "",
              f"Carrying state alone (both batched): {b['state_ratio']}x; batching alone (both stateful): "
              f"{b['batching_ratio']}x. Per core, the stateless way does {b['samples_per_s_per_core']:.0f} "
              f"samples/s (each prediction takes in one {b.get('window_s', 2):g} s hop of 50 Hz samples), the "
              f"stateful batched model {b['stateful_batched_samples_per_s_per_core']:.0f}; the whole consumer "
              "(MQTT, JSON, buffers, model, publishing, drift detection) does the 'samples/s per core' of the "
              "table above.", "",
              "## The service thread alone, without MQTT (`stream.bench.service_profile`)", "",
              f"{profile['devices']} devices, {profile['messages_per_cycle']} messages per cycle, one thread: "
              f"{profile['handle_us_per_message']} µs per message to decode and buffer, "
              f"{profile['classify_us_per_message']} µs per message to classify, publish (to a null client) and "
              f"watch for drift: {profile['service_us_per_message']} µs in all. Memory that Python allocated per "
              f"device (tracemalloc, {profile['memory_devices']} devices after {profile['seconds']:g} s): "
              f"{profile['memory_bytes_per_device']} bytes; by file: "
              + ", ".join(f"{k} {v}" for k, v in profile["memory_by_file_per_device"].items()) + "."
              + (f" Resident memory (VmRSS) per device, in a fresh process after a warm-up: "
                 f"{profile['resident_bytes_per_device']} bytes (`python -m stream.bench resident "
                 f"{profile['memory_devices']} {profile['seconds']:g} 0.5 {profile['messages_per_cycle']}`); the "
                 "table's 'memory per device' is the whole process's peak over its idle size, divided by the "
                 "devices: the queue, MQTT buffers and the first use of lazily loaded code are in it."
                 if profile.get("resident_bytes_per_device") is not None else ""), "",
              f"## Online fine-tuning at {off['devices']} devices ({labelled_text(data, off['devices'])}, both "
              "ways; several rounds: benchmarks/learning_latency.py)", "",
              f"{on['sustained_samples_per_s']:.0f} samples/s on vs {off['sustained_samples_per_s']:.0f} off "
              f"(consumer cores {on['consumer_cpu_cores']} vs {off['consumer_cpu_cores']}, CPU per message "
              f"{on['cpu_us_per_message']} vs {off['cpu_us_per_message']} µs); latency p50/p99 "
              f"{on['latency_ms']['p50']}/{on['latency_ms']['p99']} ms vs {off['latency_ms']['p50']}/"
              f"{off['latency_ms']['p99']} ms.", "",
              "![latency and throughput](img/throughput.png)"]
    # the sections written by hand (and --compare-read's tables) below the generated part are kept
    old = args.out.read_text() if args.out.exists() else ""
    starts = [old.index(m) for m in HAND_WRITTEN if m in old]
    tail = old[min(starts):] if starts else "\n"
    args.out.write_text("\n".join(lines) + "\n" + tail)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
