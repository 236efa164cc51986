"""Real data: person-held-out accuracy of `harstream train` + `harstream evaluate`, defaults only.

For every data set, the recording file is split into a training and a test file per fold (whole
people, or whole sets for muvr's one person), then the command line itself runs on them:

    harstream train --data FOLD/train.csv --out FOLD/model.pt --quiet
    harstream evaluate --model FOLD/model.pt --data FOLD/test.csv --json

so the figures are exactly what a user gets (window-level, streamed through the stateful pipeline).

    python benchmarks/real_data.py [--quick] [--no-gyro] [--datasets uci-hapt exermote barbell muvr]
                                   [--recordings /tmp/harimport] [--source ../shared/datasets]

Recording files are read from ``--recordings`` (``<name>.csv``) and imported from ``--source`` with
``harstream import`` when missing. Writes the "Real data" section of ``docs/results.md`` (other
sections are kept) and confusion-matrix plots ``docs/img/real_<name>.png``; the raw figures go to
``<work>/real_data.json``. ``--quick`` runs at most two folds per data set.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from stream.recording import Recording, read_recording, write_recording  # noqa: E402

SOURCE = ROOT.parent / "shared" / "datasets"
# the command installed beside this interpreter (a venv's python run without activating the venv), else PATH's
_BESIDE = Path(sys.executable).with_name("harstream")
HARSTREAM = str(_BESIDE) if _BESIDE.exists() else "harstream"
FOLDERS = {"uci-hapt": "uci-hapt", "exermote": "exermote", "barbell": "barbell-metamotion",
           "muvr": "muvr-gym"}
UCI_TEST = [2, 4, 9, 10, 12, 13, 18, 20, 24]  # UCI HAR's test volunteers
MUVR_FOLDS = 5  # muvr: sets split into this many groups, each exercise spread over all of them

# name -> (split, published figure to beat, goal)
TARGETS = {
    "uci-hapt": ("UCI HAR's test persons (2, 4, 9, 10, 12, 13, 18, 20, 24)", 0.9165, 0.95),
    "exermote": ("leave one person out, mean", 0.9556, 0.96),
    "barbell": ("leave one person out, mean", None, 0.95),
    "muvr": (f"split by set ({MUVR_FOLDS} folds), mean", None, None),
}


def _importer_stamp() -> str:
    """A digest of the code that writes a data set's recording file: an import made by other code (a
    fixed importer) is made again rather than reused."""
    digest = hashlib.sha1()
    for module in ("models/importers.py", "stream/recording.py"):
        digest.update((ROOT / module).read_bytes())
    return digest.hexdigest()[:12]


def recording(name: str, recordings: Path, source: Path) -> Path:
    path = recordings / f"{name}.csv"
    stamp, made_by = _importer_stamp(), path.with_suffix(".importer")
    if path.exists() and (not made_by.exists() or made_by.read_text().strip() != stamp):
        print(f"{path}: imported by other code than this checkout's importer: importing again", flush=True)
        path.unlink()
    if not path.exists():
        recordings.mkdir(parents=True, exist_ok=True)
        cmd = [HARSTREAM, "import", name, str(source / FOLDERS[name]), str(path)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        made_by.write_text(stamp + "\n")
    return path


def folds(name: str, rec: Recording) -> list[tuple[str, np.ndarray]]:
    """(fold name, boolean mask of the test rows)."""
    subjects = rec.subjects()
    if name == "uci-hapt":
        return [("test persons", np.isin(subjects, [f"uci-user{v:02d}" for v in UCI_TEST]))]
    if name == "muvr":  # one person: whole sets held out, every exercise's sets dealt over the folds
        rng = np.random.default_rng(0)
        group: dict[str, int] = {}
        by_class: dict[str, list[str]] = {}
        for device, rows in rec.segments():
            labels = [x for x in rec.label[rows] if x]
            if labels:
                by_class.setdefault(max(set(labels), key=labels.count), []).append(device)
        for devices in by_class.values():
            rng.shuffle(devices)
            offset = int(rng.integers(MUVR_FOLDS))
            for i, device in enumerate(devices):
                group[device] = (i + offset) % MUVR_FOLDS
        fold_of = np.array([group.get(str(d), -1) for d in rec.device])
        return [(f"sets {k + 1}/{MUVR_FOLDS}", fold_of == k) for k in range(MUVR_FOLDS)]
    return [(person, subjects == person) for person in sorted(set(subjects.tolist()))]


def harstream(args: list[str], threads: int) -> tuple[str, float]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.monotonic()
    done = subprocess.run([HARSTREAM, *args], check=True, capture_output=True, text=True, env=env)
    return done.stdout, time.monotonic() - started


def write_fold(name: str, fold: str, rec: Recording, mask: np.ndarray, work: Path) -> tuple[Path, Path, Path]:
    """The fold's folder under ``work``, its training people's recording file and its test file."""
    folder = work / name / re.sub(r"[^A-Za-z0-9_.-]+", "_", fold)
    folder.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = folder / "train.csv", folder / "test.csv"
    write_recording(train_csv, rec.take(~mask))
    write_recording(test_csv, rec.take(mask))
    return folder, train_csv, test_csv


def run_fold(name: str, fold: str, rec: Recording, mask: np.ndarray, work: Path, threads: int,
             train_args: tuple[str, ...] = ()) -> dict:
    folder, train_csv, test_csv = write_fold(name, fold, rec, mask, work)
    model = folder / "model.pt"
    train_cmd = ["train", "--data", str(train_csv), "--out", str(model), "--quiet", *train_args]
    eval_cmd = ["evaluate", "--model", str(model), "--data", str(test_csv), "--json"]
    print(f"  {name} / {fold}: training ...", end=" ", flush=True)
    _, train_s = harstream(train_cmd, threads)
    out, eval_s = harstream(eval_cmd, threads)
    report = json.loads(out)
    from models.checkpoint import load_checkpoint
    _, info = load_checkpoint(model)
    trained = info["metadata"].get("report", {})
    print(f"accuracy {report['accuracy']}, macro F1 {report['macro_f1']}, {report['windows']} windows, "
          f"train {train_s:.0f} s", flush=True)
    return {
        "fold": fold,
        "accuracy": report["accuracy"],
        "macro_f1": report["macro_f1"],
        "windows": report["windows"],
        # windows of classes the training people never did cannot be right; scored apart here
        "accuracy_known_classes": report["accuracy_known_classes"],
        "unknown_classes": report.get("unknown_classes", []),
        "recall": report["recall"],
        "labels": report["labels"],
        "confusion": report["confusion"],
        "train_seconds": round(train_s, 1),
        "evaluate_seconds": round(eval_s, 1),
        "validation": trained.get("best", {}),
        "held_out_for_validation": trained.get("held_out"),
        "epochs": trained.get("epochs_run"),
        "refit_epochs": trained.get("refit", {}).get("epochs_run"),
        "commands": ["harstream " + " ".join(train_cmd), "harstream " + " ".join(eval_cmd)],
    }


def summarise(name: str, results: list[dict]) -> dict:
    labels = sorted({c for r in results for c in r["labels"]})
    total = np.zeros((len(labels), len(labels)), dtype=int)
    for r in results:
        idx = [labels.index(c) for c in r["labels"]]
        total[np.ix_(idx, idx)] += np.array(r["confusion"], dtype=int)
    split, published, goal = TARGETS[name]
    windows = int(total.sum())
    return {
        "data": name,
        "split": split,
        "folds": len(results),
        "windows": windows,
        "accuracy_mean": round(float(np.mean([r["accuracy"] for r in results])), 4),
        "macro_f1_mean": round(float(np.mean([r["macro_f1"] for r in results])), 4),
        "accuracy_pooled": round(float(np.trace(total) / max(1, windows)), 4),
        "accuracy_known_classes_mean": round(float(np.mean([r["accuracy_known_classes"] or 0.0
                                                             for r in results])), 4),
        "train_seconds_mean": round(float(np.mean([r["train_seconds"] for r in results])), 1),
        "published": published,
        "goal": goal,
        "labels": labels,
        "confusion": total.tolist(),
    }


def short(text: str | None, width: int = 60) -> str:
    text = text or ""
    return text if len(text) <= width else text[: width - 3].rsplit(",", 1)[0] + ", ..."


def plot_confusion(summary: dict, path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    m = np.array(summary["confusion"], dtype=float)
    share = m / np.maximum(m.sum(axis=1, keepdims=True), 1)
    k = len(summary["labels"])
    size = max(4.0, 0.32 * k + 2.5)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), summary["labels"], rotation=60, ha="right", fontsize=8 if k < 12 else 6)
    ax.set_yticks(range(k), summary["labels"], fontsize=8 if k < 12 else 6)
    if k <= 12:
        for i in range(k):
            for j in range(k):
                if m[i, j]:
                    ax.text(j, i, int(m[i, j]), ha="center", va="center", fontsize=7,
                            color="white" if share[i, j] > 0.5 else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{summary['data']}: {summary['split']}\nall folds, {summary['windows']} windows",
                 fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.046, label="share of the true class")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f}%"


def markdown(summaries: list[dict], results: dict[str, list[dict]], meta: dict) -> str:
    lines = [
        "## Real data",
        "",
        "Person-held-out, window-level figures of `harstream train` and `harstream evaluate` with their "
        "defaults, nothing tuned per data set: each fold's test people (or, for muvr's one person, sets) "
        "are written to their own recording file, the model is trained on the rest and the test file is "
        "streamed through the same stateful pipeline as live data. A window counts when at least 60% of it "
        "holds one label (transitions and unlabelled stretches are left out). "
        f"Reproduce with `{meta['command']}` ({meta['when']}, {meta['machine']}).",
        "",
        "| data | split | folds | windows | accuracy | macro F1 | published figure | goal "
        "| training per fold |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        goal = pct(s["goal"]) if s["goal"] else "report"
        met = "" if not s["goal"] else (" ✓" if s["accuracy_mean"] >= s["goal"] else " ✗")
        lines.append(f"| {s['data']} | {s['split']} | {s['folds']} | {s['windows']} | "
                     f"**{pct(s['accuracy_mean'])}**{met} | {pct(s['macro_f1_mean'])} | "
                     f"{pct(s['published'])} | {goal} | {s['train_seconds_mean']:.0f} s |")
    lines += ["", "Accuracy and macro F1 are means over folds (pooled over all windows: "
              + ", ".join(f"{s['data']} {pct(s['accuracy_pooled'])}" for s in summaries) + ")."]
    unknown = [s for s in summaries if s["accuracy_known_classes_mean"] != s["accuracy_mean"]]
    for s in unknown:
        lines.append(f"In {s['data']}, some test people did a class that no training person did (a model "
                     f"cannot name a class it never saw); over the classes known to each fold's model the "
                     f"mean accuracy is {pct(s['accuracy_known_classes_mean'])}.")
    lines += ["", "### Per fold", ""]
    for s in summaries:
        lines += [f"**{s['data']}**", "",
                  "| fold | windows | accuracy | macro F1 | validation accuracy (held out) "
                  "| epochs (+ refit) | training | evaluation |", "|---|---|---|---|---|---|---|---|"]
        for r in results[s["data"]]:
            val = r["validation"].get("accuracy")
            epochs = f"{r['epochs']}" + (f" + {r['refit_epochs']}" if r["refit_epochs"] else "")
            note = f" (unknown: {', '.join(r['unknown_classes'])})" if r["unknown_classes"] else ""
            lines.append(f"| {r['fold']}{note} | {r['windows']} | {pct(r['accuracy'])} | "
                         f"{pct(r['macro_f1'])} | {pct(val)} ({short(r['held_out_for_validation'])}) | {epochs} | "
                         f"{r['train_seconds']:.0f} s | {r['evaluate_seconds']:.0f} s |")
        lines += ["", f"![confusion matrix, {s['data']}](img/real_{s['data']}.png)", ""]
    first = next(iter(results.values()))[0]
    lines += ["### Commands", "", "Every fold runs, with `OMP_NUM_THREADS=" + str(meta["threads"]) + "`:", "",
              "```", *first["commands"], "```", "",
              f"Total time {meta['minutes']:.0f} min; raw figures in `{meta['json']}`.", ""]
    return "\n".join(lines)


def write_section(path: Path, section: str) -> None:
    """Replace the "## Real data" section of ``path`` (up to the next "## " heading), or append it."""
    text = path.read_text() if path.exists() else "# Results\n\n"
    pattern = re.compile(r"^## Real data\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1)
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text.rstrip("\n") + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(TARGETS), choices=list(TARGETS),
                        help="default: all four")
    parser.add_argument("--quick", action="store_true", help="two folds per data set")
    parser.add_argument("--no-gyro", action="store_true",
                        help="train on the accelerometer alone (harstream train --no-gyro), as before "
                             "issue 4")
    parser.add_argument("--recordings", type=Path, default=Path("/tmp/harimport"),
                        help="folder of <name>.csv recording files (imported when missing)")
    parser.add_argument("--source", type=Path, default=SOURCE,
                        help="the real data sets as published (default: %(default)s)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/harstream-real-data"),
                        help="fold files, models and real_data.json go here (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per command (default: 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="harstream train --seed: it also picks the validation people (default: 0)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs",
                        help="replaces the \"Real data\" section of results.md there and writes "
                             "img/real_<data set>.png (default: %(default)s)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    summaries, results = [], {}
    for name in args.datasets:
        try:
            path = recording(name, args.recordings, args.source)
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            print(f"{name}: no recording file and cannot import it ({exc}); skipped", file=sys.stderr)
            continue
        rec = read_recording(path)
        todo = folds(name, rec)
        if args.quick:
            todo = todo[:2]
        print(f"{name}: {len(todo)} fold(s)", flush=True)
        train_args = ("--no-gyro",) if args.no_gyro else ()
        train_args += ("--seed", str(args.seed)) if args.seed else ()
        results[name] = [run_fold(name, fold, rec, mask, args.work, args.threads, train_args)
                         for fold, mask in todo]
        summary = summarise(name, results[name])
        plot_confusion(summary, args.docs / "img" / f"real_{name}.png")
        summaries.append(summary)
    if not summaries:
        print("no data set found", file=sys.stderr)
        return 1
    meta = {
        "command": "python benchmarks/real_data.py" + (" --quick" if args.quick else "")
                   + (" --no-gyro" if args.no_gyro else "") + (f" --seed {args.seed}" if args.seed else "")
                   + ("" if args.datasets == list(TARGETS) else " --datasets " + " ".join(args.datasets)),
        "when": time.strftime("%Y-%m-%d"),
        "machine": f"{os.cpu_count()} CPU cores, {platform.machine()}, Python {platform.python_version()}",
        "threads": args.threads,
        "minutes": (time.monotonic() - started) / 60,
        "json": str(args.work / "real_data.json"),
    }
    write_section(args.docs / "results.md", markdown(summaries, results, meta))
    (args.work / "real_data.json").write_text(json.dumps({"meta": meta, "summaries": summaries,
                                                          "folds": results}, indent=1))
    for s in summaries:
        print(f"{s['data']}: accuracy {pct(s['accuracy_mean'])}, macro F1 {pct(s['macro_f1_mean'])} "
              f"over {s['folds']} fold(s), {s['windows']} windows")
    return 0


if __name__ == "__main__":
    sys.exit(main())
