"""Seeds: how far one training seed is from what to expect, and what averaging models over seeds buys.

For each fold of ``benchmarks/real_data.py`` (the same recordings and held-out people), a model is
trained with each seed by ``harstream train --data FILE --seed S`` and the held-out people's file is
streamed through it as ``harstream evaluate`` streams it (in process); every window's class
probabilities are kept. Then each seed is scored, and the
ensembles: each window's probabilities averaged over k seeds' models, each model streamed with its
own carried state.

    python benchmarks/seeds.py --datasets barbell --seeds 0 1 2 3 [--folds barbell-A ...] [--jobs 2]

Prints a Markdown table per data set and writes the figures to ``WORK/seeds.json``; each fold and
seed's model and probabilities are kept in ``WORK/DATASET/FOLD/seedS.pt`` and ``seedS.npz``, and the
probabilities are reused on the next run. ``--train-args='...'`` passes more arguments to every
``harstream train`` (a variant against the defaults, over the same seeds; give it a ``--work`` of its
own). Needs ../shared/datasets (``--source``). Measured in docs/results.md, "Four seeds on barbell and exermote".
"""

from __future__ import annotations

import argparse
import itertools
import json
import shlex
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent))
sys.path.insert(0, str(ROOT))

import real_data  # noqa: E402

from stream.recording import read_recording  # noqa: E402


def run(train_csv: Path, test_csv: Path, seed: int, out: Path, extra: tuple[str, ...] = ()) -> str:
    """``harstream train --seed S`` on the fold's training file (one thread), then the test file
    streamed through the model as ``harstream evaluate`` streams it; every window's probabilities
    kept in ``out`` (beside the model, ``out`` with the suffix .pt). ``extra``: more arguments
    for ``harstream train``."""
    from models.checkpoint import load_checkpoint
    from models.evaluate import stream_recording, window_truth
    model_path = out.with_suffix(".pt")
    _, seconds = real_data.harstream(["train", "--data", str(train_csv), "--out", str(model_path), "--quiet",
                                      "--seed", str(seed), *extra], threads=1)
    model, _ = load_checkpoint(model_path)
    test = read_recording(test_csv)
    predictions = stream_recording(model, test)
    result = {"probs": np.stack([p.probs for p in predictions]),
              "truth": np.array(window_truth(test, predictions, model.config.rate, model.config.window)),
              "classes": np.array(model.config.classes)}
    np.savez(out, **result)
    return f"{out.parent.name} / seed {seed}: accuracy {accuracy(result):.4f}, trained in {seconds:.0f} s"


def accuracy(result: dict, probs: np.ndarray | None = None) -> float:
    """Window accuracy over the windows with a label (``harstream evaluate``'s), from ``probs``
    (default: the result's own)."""
    truth = result["truth"]
    scored = truth != ""
    predicted = result["classes"][(result["probs"] if probs is None else probs).argmax(axis=1)]
    return float((predicted[scored] == truth[scored]).mean())


def ensembles(runs: dict[int, dict], k: int) -> list[float]:
    """Accuracy of every set of ``k`` seeds' models, their probabilities averaged window by window."""
    first = next(iter(runs.values()))
    return [accuracy(first, np.mean([runs[s]["probs"] for s in seeds], axis=0))
            for seeds in itertools.combinations(sorted(runs), k)]


def summarise(name: str, folds: dict[str, dict[int, dict]], seeds: list[int]) -> dict:
    per_fold = {fold: {"windows": int((next(iter(runs.values()))["truth"] != "").sum()),
                       "seeds": {s: accuracy(runs[s]) for s in seeds},
                       "all_averaged": ensembles(runs, len(seeds))[0]}
                for fold, runs in folds.items()}
    means = {s: float(np.mean([f["seeds"][s] for f in per_fold.values()])) for s in seeds}
    by_k = {}
    for k in range(2, len(seeds) + 1):  # mean over folds of each set of k seeds, then over the sets
        sets = np.mean([ensembles(runs, k) for runs in folds.values()], axis=0)
        by_k[k] = {"mean": float(sets.mean()), "min": float(sets.min()), "max": float(sets.max())}
    return {"dataset": name, "folds": per_fold, "seed_means": means,
            "mean_over_seeds": float(np.mean(list(means.values()))), "ensembles": by_k}


def markdown(summary: dict, seeds: list[int]) -> str:
    head = " | ".join(f"seed {s}" for s in seeds)
    lines = [f"**{summary['dataset']}**, window accuracy on the held-out people, %", "",
             f"| fold | windows | {head} | mean of seeds | all {len(seeds)} models averaged |",
             "|---|---|" + "---|" * (len(seeds) + 2)]
    for fold, f in summary["folds"].items():
        cells = " | ".join(f"{100 * f['seeds'][s]:.2f}" for s in seeds)
        lines.append(f"| {fold} | {f['windows']} | {cells} | {100 * np.mean(list(f['seeds'].values())):.2f} "
                     f"| {100 * f['all_averaged']:.2f} |")
    cells = " | ".join(f"**{100 * summary['seed_means'][s]:.2f}**" for s in seeds)
    folds = summary["folds"].values()
    lines.append(f"| **mean** | {sum(f['windows'] for f in folds)} | {cells} | "
                 f"**{100 * summary['mean_over_seeds']:.2f}** | "
                 f"**{100 * np.mean([f['all_averaged'] for f in folds]):.2f}** |")
    lines.append("")
    for k, e in summary["ensembles"].items():
        lines.append(f"- {k} models averaged: {100 * e['mean']:.2f}% on average over the sets of {k} seeds "
                     f"({100 * e['min']:.2f}–{100 * e['max']:.2f}%)")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["barbell"], choices=list(real_data.TARGETS),
                        help="default: barbell")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3],
                        help="harstream train --seed of each model (default: 0 1 2 3)")
    parser.add_argument("--folds", nargs="+", help="only these folds (default: every fold)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="trainings run at a time, one thread each (default: 1)")
    parser.add_argument("--recordings", type=Path, default=Path("/tmp/harimport"),
                        help="where the imported recording files are kept (made if missing)")
    parser.add_argument("--source", type=Path, default=real_data.SOURCE,
                        help="the real data sets as published (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/harstream-seeds"),
                        help="fold files, models, probabilities and seeds.json go here (default: %(default)s)")
    parser.add_argument("--train-args", default="", metavar="ARGS",
                        help="more arguments for every `harstream train`, joined to the option by '=' as they "
                             "start with a dash: --train-args='--tbptt 4' (use a --work of its own: results "
                             "kept there are reused)")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"no data sets at {args.source} (--source): nothing to do", file=sys.stderr)
        return 1
    tasks, layout = [], {}
    for name in args.datasets:
        try:
            rec = read_recording(real_data.recording(name, args.recordings, args.source))
        except subprocess.CalledProcessError:  # harstream import said what is missing and where, above
            print(f"{name}: no recording file and harstream import failed", file=sys.stderr)
            return 1
        for fold, mask in real_data.folds(name, rec):
            if args.folds and fold not in args.folds:
                continue
            folder, train_csv, test_csv = real_data.write_fold(name, fold, rec, mask, args.work)
            for seed in args.seeds:
                out = folder / f"seed{seed}.npz"
                layout.setdefault(name, {}).setdefault(fold, {})[seed] = out
                if not out.exists():
                    tasks.append((train_csv, test_csv, seed, out, tuple(shlex.split(args.train_args))))
    kept = sum(len(seeds) for folds in layout.values() for seeds in folds.values()) - len(tasks)
    print(f"{len(tasks)} trainings to run ({kept} kept from an earlier run in {args.work})", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for line in pool.map(run, *zip(*tasks, strict=True)) if tasks else []:
            print(" ", line, flush=True)
    summaries = []
    for name, folds in layout.items():
        runs = {fold: {s: dict(np.load(p)) for s, p in seeds.items()} for fold, seeds in folds.items()}
        summary = summarise(name, runs, args.seeds)
        summaries.append(summary)
        print("\n" + markdown(summary, args.seeds))
    (args.work / "seeds.json").write_text(json.dumps(summaries, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
