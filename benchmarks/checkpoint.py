"""What a consumer checkpoint costs the serving thread with many evicted devices, and what it writes.

A fleet whose device ids keep changing fills the consumer's evicted states up to ``max_evicted``
(100,000): devices go idle and are evicted, some come back, the oldest are forgotten; each keeps its last
seq, resume mark and anchor beside its state. Every ``checkpoint_interval`` (30 s) the serving thread writes
the checkpoint (``Consumer.checkpoint``). This script builds such a consumer (the shipped model, no broker)
and times its checkpoints under churn, for this checkout and for an older revision in the same run (a
temporary ``git worktree``), one after the other:

    python benchmarks/checkpoint.py [--evicted 100000] [--churn 500] [--returns 100] [--checkpoints 20]
                                    [--against 0b3c94f] [--out docs/checkpoint.md]

Each checkpoint: ``--churn`` devices newly evicted (the oldest forgotten beyond ``--evicted``) and
``--returns`` evicted ones back. The first checkpoint writes every state (as a consumer's first after a
start) and is reported apart. Prints, and writes to ``--out``, the medians, maxima and bytes written per
checkpoint, and the ratio of the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(args) -> dict:
    """Run in the checkout under test (cwd first on sys.path): the timings, as a dict."""
    sys.path.insert(0, os.getcwd())
    import torch

    from models.checkpoint import load_checkpoint
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig

    class Client:  # what checkpoint() asks of the MQTT client here: nothing is published
        def publish(self, *a, **k):
            raise AssertionError("a checkpoint published")

        def is_connected(self):
            return True

    model, info = load_checkpoint(ROOT / "models" / "default.pt")
    shapes = [tuple(s) for s in model.state_shapes()]
    rng = random.Random(0)
    counter = iter(range(10**9))
    with tempfile.TemporaryDirectory(prefix="harstream-ckpt-") as tmp:
        directory = Path(tmp)
        consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=directory, learn=False,
                                           max_evicted=args.evicted), StatefulClassifier(model, info["version"]))
        consumer._client = Client()
        sequences = {}

        def evict():
            d = f"dev-{next(counter)}"
            consumer._evicted[d] = tuple(torch.randn(*s) for s in shapes)
            sequences[d] = rng.randrange(10**6)
            consumer._watermarks[d] = 1.7e9 + rng.random() * 1e6
            consumer._anchors[d] = (consumer._watermarks[d], [rng.gauss(0, 1) for _ in range(3)])

        for _ in range(args.evicted):
            evict()
        times, sizes = [], []
        for _ in range(args.checkpoints + 1):
            consumer.sequence.restore(sequences)
            before = {e.name: e.stat().st_mtime_ns for e in os.scandir(directory)}
            t0 = time.perf_counter()
            consumer.checkpoint()
            times.append(time.perf_counter() - t0)
            sizes.append(sum(e.stat().st_size for e in os.scandir(directory)
                             if e.is_file() and before.get(e.name) != e.stat().st_mtime_ns))
            for d in rng.sample(list(consumer._evicted), args.returns):  # back: their states are live again
                del consumer._evicted[d]
            for _ in range(args.churn):
                evict()
            while len(consumer._evicted) > args.evicted:
                gone, _ = consumer._evicted.popitem(last=False)
                for kept in (sequences, consumer._watermarks, consumer._anchors):
                    kept.pop(gone, None)
        on_disk = sum(e.stat().st_size for e in os.scandir(directory) if e.is_file())
        if consumer.store is not None:
            consumer.store.close()
    return {"first": times[0], "median": statistics.median(times[1:]), "max": max(times[1:]),
            "bytes": statistics.median(sizes[1:]), "on_disk": on_disk, "shapes": shapes}


def measure(cwd: Path, args) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--evicted", str(args.evicted), "--churn",
           str(args.churn), "--returns", str(args.returns), "--checkpoints", str(args.checkpoints)]
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(cwd)})
    if done.returncode != 0:
        raise SystemExit(f"{cwd}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evicted", type=int, default=100_000, help="evicted devices kept (default: 100000)")
    parser.add_argument("--churn", type=int, default=500, help="devices evicted per checkpoint (default: 500)")
    parser.add_argument("--returns", type=int, default=100, help="evicted devices back per checkpoint (default: 100)")
    parser.add_argument("--checkpoints", type=int, default=20, help="checkpoints timed (default: 20)")
    parser.add_argument("--against", default="0b3c94f", help="the older revision measured in the same run "
                        "(default: 0b3c94f, the last with every evicted state in each checkpoint; '' for none)")
    parser.add_argument("--out", default=None, help="write the table to this page (e.g. docs/checkpoint.md)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    results = {"this checkout": measure(ROOT, args)}
    if args.against:
        with tempfile.TemporaryDirectory(prefix="harstream-against-") as tmp:
            tree = Path(tmp) / "tree"
            subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.against], cwd=ROOT, check=True,
                           capture_output=True)
            try:
                results[args.against] = measure(tree, args)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)
    shapes = results["this checkout"]["shapes"]
    lines = [f"{args.evicted} evicted devices, {args.churn} evicted and {args.returns} back per checkpoint, "
             f"{args.checkpoints} checkpoints; state shapes {shapes} (the shipped model's)", "",
             "| code | first checkpoint (s) | median (s) | max (s) | written per checkpoint (MB) | on disk (MB) |",
             "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['first']:.3f} | {r['median']:.3f} | {r['max']:.3f} | {r['bytes'] / 1e6:.1f} "
                     f"| {r['on_disk'] / 1e6:.1f} |")
    if args.against:
        ratio = results["this checkout"]["median"] / results[args.against]["median"]
        lines += ["", f"this checkout / {args.against}, median checkpoint: **{ratio:.3f}**"]
    print("\n".join(lines))
    if args.out:
        command = "python benchmarks/checkpoint.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text(
            "# Consumer checkpoints with many evicted devices\n\n"
            f"Reproduce: `{command.strip()}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
            f"{platform.machine()}, Python {platform.python_version()}; each revision in a process of its own, "
            "one after the other). What each checkpoint of a consumer (`Consumer.checkpoint`, no broker, the "
            "shipped model) costs its serving thread with many evicted devices, in a fleet whose ids keep "
            "changing. Up to 0b3c94f every evicted state, and every device's seq, resume mark and anchor "
            "pickled one object at a time, went into `consumer-state.pt` at each checkpoint; now the evicted "
            "states are in segment files written once (`stream.persist.EvictedSegments`) and the numbers per "
            "device are one JSON string (consumer state version 4). The first checkpoint writes every state "
            "(as a consumer's first after a start).\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
