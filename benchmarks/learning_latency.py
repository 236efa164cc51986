"""Serving latency with online fine-tuning on against off, the same traffic, through a real broker.

Issue 5: "serving latency with fine-tuning on stays within 1.5 times the latency without it". Each
round runs ``harstream bench`` twice, alternately, with the same devices and the same share of them
publishing labels: once with ``--learn`` (the consumer's default adaptation, its learner at its default
CPU share) and once without (labels still decoded, scored and watched for drift; nothing learnt). So
the ratio is the cost of learning alone, not of the label traffic. ``--against REV`` also runs the
learning configuration of an older revision (from a temporary ``git worktree``) in the same rounds.

    python benchmarks/learning_latency.py [--devices 5000] [--duration 20] [--labelled 0.05]
                                          [--rounds 3] [--against REV] [--out docs/learning_latency.md]

Latency is the consumer's own per-second figures (``harstream bench``): p50 of the median second, p99
of the median second (the steady state) and p99 of the worst second (a single stall sets it). The
table gives each figure's median over the rounds, and the ratio of medians against learning off.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

FIGURES = (("p50", "p50"), ("p99_median_second", "p99 of the median second"),
           ("p99", "p99 of the worst second"))


def bench(cwd: Path, devices: int, duration: float, labelled: float, learn: bool) -> dict:
    cmd = [sys.executable, "-m", "stream.cli", "bench", "--devices", str(devices), "--duration",
           str(duration), "--labelled", str(labelled), "--json"] + (["--learn"] if learn else [])
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(cwd)})
    if done.returncode != 0:  # its one-line error (no broker, a wrong model), not a traceback of this script
        said = done.stderr.strip().splitlines()
        raise SystemExit(f"learning_latency: harstream bench --devices {devices} in {cwd} failed with status "
                         f"{done.returncode}" + (f": {said[-1]}" if said else ""))
    run = json.loads(done.stdout)
    return run["runs"][0] if "runs" in run else run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        epilog="Every run is `harstream bench` on the broker HARSTREAM_BROKER names (default "
               "mqtt://127.0.0.1:1883; the embedded one is started where nothing answers).")
    parser.add_argument("--devices", type=int, default=5000, help="devices of every run (default: %(default)s)")
    parser.add_argument("--duration", type=float, default=20.0,
                        help="measured seconds per run (default: %(default)s)")
    parser.add_argument("--labelled", type=float, default=0.05,
                        help="share of devices publishing labels (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each running every configuration once (default: %(default)s)")
    parser.add_argument("--against", metavar="REV", help="also run the learning configuration of this git revision")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "learning_latency.md",
                        help="the page to write, and its .json beside it (default: %(default)s)")
    args = parser.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)  # now, not after the rounds
    started = time.monotonic()
    configs = {"learning off": (ROOT, False), "learning on": (ROOT, True)}
    worktree = None
    if args.against:
        worktree = Path(tempfile.mkdtemp(prefix="harstream-against-"))
        done = subprocess.run(["git", "worktree", "add", "--detach", str(worktree), args.against], cwd=ROOT,
                              capture_output=True, text=True)
        if done.returncode != 0:  # git's reason (an unknown revision), not CalledProcessError's traceback
            worktree.rmdir()
            said = done.stderr.strip().splitlines()
            raise SystemExit(f"learning_latency: --against {args.against}: "
                             + (said[-1] if said else f"git worktree add failed with status {done.returncode}"))
        configs[f"learning on at {args.against}"] = (worktree, True)
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    try:
        for r in range(args.rounds):
            for name, (cwd, learn) in configs.items():
                run = bench(cwd, args.devices, args.duration, args.labelled, learn)
                runs[name].append(run)
                lat = run["latency_ms"]
                print(f"round {r + 1}, {name}: p50 {lat['p50']} ms, p99 median second "
                      f"{lat['p99_median_second']} ms, worst second {lat['p99']} ms, "
                      f"{run['consumer_cpu_cores']} cores, learner {run.get('learner')}", flush=True)
    finally:
        if worktree is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(worktree)], cwd=ROOT,
                           capture_output=True)
    medians = {name: {key: float(np.median([x["latency_ms"][key] for x in rs])) for key, _ in FIGURES}
               for name, rs in runs.items()}
    base = medians["learning off"]
    command = ("python benchmarks/learning_latency.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    lines = [
        "# Serving latency with online fine-tuning on and off", "",
        f"Reproduce: `{command}` ({time.strftime('%Y-%m-%d')}, "
        f"{(time.monotonic() - started) / 60:.0f} min, "
        f"{os.cpu_count()} cores shared by the broker, the bench's publisher and the consumer). "
        f"{args.devices} devices at 50 Hz, {int(args.devices * args.labelled)} of them ({args.labelled:.0%}) "
        "publishing labels in every run; "
        f"{args.rounds} rounds, the configurations alternating within each round. Medians over the rounds "
        "(ratio to learning off):", "",
        "| consumer | " + " | ".join(label for _, label in FIGURES)
        + " | consumer cores (its learner process included) | learner: sequences learnt / dropped |",
        "|---|" + "---|" * (len(FIGURES) + 2),
    ]
    for name, rs in runs.items():
        cells = [f"{medians[name][key]:.1f} ms ({medians[name][key] / base[key]:.2f}x)"
                 for key, _ in FIGURES]
        cores = float(np.median([x["consumer_cpu_cores"] for x in rs]))
        learner = [x.get("learner") or {} for x in rs]
        learnt = [(lr.get("updates") or 0) + (lr.get("adapter_updates") or 0) for lr in learner]
        learnt = "–" if not any(learner) else (
            f"{np.median(learnt):.0f} / {np.median([lr.get('dropped') or 0 for lr in learner]):.0f}")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {cores:.2f} | {learnt} |")
    lines += ["", "Per run (p50 / p99 of the median second / p99 of the worst second, ms):", ""]
    for name, rs in runs.items():
        lines.append(f"- {name}: " + "; ".join(
            f"{x['latency_ms']['p50']} / {x['latency_ms']['p99_median_second']} / {x['latency_ms']['p99']}"
            for x in rs))
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "medians": medians,
                                                         "runs": runs}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
