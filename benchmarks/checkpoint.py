"""What a consumer checkpoint costs the serving thread with many evicted devices, and what it writes.

A fleet whose device ids keep changing fills the consumer's evicted states up to ``max_evicted``
(100,000): devices go idle and are evicted, some come back, the oldest are forgotten. Every
``checkpoint_interval`` (30 s) the serving thread writes the checkpoint (``stream.persist.save_state``).
This script builds such a fleet's evicted states (the shipped model's state shapes) and then runs the same
churn twice, each checkpoint timed, in the same process:

- **inline**: every evicted state in ``consumer-state.pt`` itself (harstream up to 0b3c94f);
- **segments**: the evicted states in segment files written once (``stream.persist.EvictedSegments``), each
  checkpoint writing those evicted since the last.

    python benchmarks/checkpoint.py [--evicted 100000] [--churn 500] [--returns 100] [--checkpoints 20]
                                    [--out docs/checkpoint.md]

Each checkpoint: ``--churn`` devices newly evicted (the oldest forgotten beyond ``--evicted``) and
``--returns`` evicted ones back (their states leave the evicted set). The first checkpoint of each run writes
every state (as a consumer's first after a start from an older file) and is reported apart. Prints medians,
maxima and bytes written per checkpoint, and the ratio of the medians, and writes them to ``--out``.
The states alone: a consumer's checkpoint also holds each device's sequence, resume mark and drift monitor.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import load_checkpoint  # noqa: E402
from stream.persist import EvictedSegments, load_state, save_state  # noqa: E402


def written(directory: Path, before: dict[str, float]) -> int:
    """Bytes of the files in ``directory`` written since ``before`` (their mtimes)."""
    total = 0
    for entry in os.scandir(directory):
        if entry.is_file() and before.get(entry.name) != entry.stat().st_mtime_ns:
            total += entry.stat().st_size
    return total


def run(directory: Path, shapes: list[tuple[int, ...]], args, segmented: bool) -> dict:
    rng = random.Random(0)
    counter = iter(range(10**9))

    def state():
        return tuple(torch.randn(*s) for s in shapes)

    evicted: OrderedDict[str, tuple] = OrderedDict((f"dev-{next(counter)}", state()) for _ in range(args.evicted))
    segments = EvictedSegments(directory) if segmented else None
    times, sizes = [], []
    for _ in range(args.checkpoints + 1):
        before = {e.name: e.stat().st_mtime_ns for e in os.scandir(directory)}
        t0 = time.perf_counter()
        save_state(directory, "v", {}, {}, dict(evicted), segments=segments)
        times.append(time.perf_counter() - t0)
        sizes.append(written(directory, before))
        saved = {d: s[0] for d, s in evicted.items()}
        for d in rng.sample(list(evicted), args.returns):  # came back: their states are live again
            del evicted[d]
        for _ in range(args.churn):
            evicted[f"dev-{next(counter)}"] = state()
        while len(evicted) > args.evicted:
            evicted.popitem(last=False)
    restored = load_state(directory)["evicted"]  # as of the last checkpoint, every state as it was
    if restored.keys() != saved.keys() or any(not torch.equal(restored[d][0], saved[d]) for d in saved):
        raise SystemExit(f"{directory}: the evicted states read back differ from those saved")
    files = sum(e.stat().st_size for e in os.scandir(directory) if e.is_file())
    return {"first": times[0], "median": statistics.median(times[1:]), "max": max(times[1:]),
            "bytes": statistics.median(sizes[1:]), "on_disk": files, "restored": len(restored)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--evicted", type=int, default=100_000, help="evicted devices kept (default: 100000)")
    parser.add_argument("--churn", type=int, default=500, help="devices evicted per checkpoint (default: 500)")
    parser.add_argument("--returns", type=int, default=100, help="evicted devices back per checkpoint (default: 100)")
    parser.add_argument("--checkpoints", type=int, default=20, help="checkpoints timed (default: 20)")
    parser.add_argument("--out", default=None, help="write the table to this page (e.g. docs/checkpoint.md)")
    args = parser.parse_args(argv)
    model, _ = load_checkpoint(ROOT / "models" / "default.pt")
    shapes = [tuple(s) for s in model.state_shapes()]
    results = {}
    for name, segmented in (("inline", False), ("segments", True)):
        with tempfile.TemporaryDirectory(prefix=f"harstream-ckpt-{name}-") as tmp:
            results[name] = run(Path(tmp), shapes, args, segmented)
    lines = [f"{args.evicted} evicted devices, {args.churn} evicted and {args.returns} back per checkpoint, "
             f"{args.checkpoints} checkpoints; state shapes {shapes} (the shipped model's)", "",
             "| evicted states | first checkpoint (s) | median (s) | max (s) | written per checkpoint (MB) "
             "| on disk (MB) |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['first']:.3f} | {r['median']:.3f} | {r['max']:.3f} | {r['bytes'] / 1e6:.1f} "
                     f"| {r['on_disk'] / 1e6:.1f} |")
    ratio = results["segments"]["median"] / results["inline"]["median"]
    lines += ["", f"segments / inline, median checkpoint: **{ratio:.3f}**"]
    print("\n".join(lines))
    if args.out:
        command = "python benchmarks/checkpoint.py " + " ".join(argv if argv is not None else sys.argv[1:])
        Path(args.out).write_text(
            "# Consumer checkpoints with many evicted devices\n\n"
            f"Reproduce: `{command.strip()}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, "
            f"{platform.machine()}, Python {platform.python_version()}; both runs in one process, one after the "
            "other). What each checkpoint of a consumer costs its serving thread for the evicted devices' states "
            "(`stream.persist.save_state`), in a fleet whose ids keep changing: **inline**, every evicted state "
            "in `consumer-state.pt` (up to 0b3c94f); **segments**, in segment files written once "
            "(`stream.persist.EvictedSegments`). The first checkpoint writes every state (as a consumer's first "
            "after a start from a file written inline).\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
