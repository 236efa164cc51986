"""Sim-to-real: train on simulated people only, evaluate on real recordings, person by person.

For every real data set that shares exercises with the simulator, a model is trained on simulated
data alone (the sensor placed where the real one was, the shared exercises only) and streamed
through ``evaluate`` on each real person. Nothing real is used in training.

    python benchmarks/sim_to_real.py [--datasets exermote barbell uci-hapt] [--minutes 10] [--people 40]

Writes ``docs/sim_to_real.md`` (``--out``). Needs ../shared/datasets (``--source``; skips with a
message when absent, and a data set whose folder is missing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.evaluate import evaluate  # noqa: E402
from models.train import TrainConfig, train  # noqa: E402
from simulators.training import simulated_training_data  # noqa: E402
from stream.recording import Recording  # noqa: E402

DATASETS = ROOT.parent / "shared" / "datasets"

# data set -> (importer name, folder, placement of the real sensor, shared exercises, relabelling of real classes)
SETUPS = {
    "exermote": ("exermote", "exermote", "upper_arm", ["rest", "squat", "sit_up", "burpee"], {}),
    "barbell": ("barbell", "barbell-metamotion", "wrist",
                ["rest", "squat", "bench_press", "overhead_press", "deadlift", "row"], {}),
    "uci-hapt": ("uci-hapt", "uci-hapt", "waist", ["rest", "walking"],
                 {"sitting": "rest", "standing": "rest"}),
}


# the code whose output a cached import is: the importers, the recording file's writer, the label names
IMPORTER_CODE = [ROOT / "models" / "importers.py", ROOT / "stream" / "recording.py", ROOT / "models" / "labels.py"]


def importer_stamp(importer: str, src: Path) -> str:
    """What made an import: a digest of the importing code (``IMPORTER_CODE``), the importer's name and the
    source folder. A cached import with another stamp (an older importer's, another --source's) is made again."""
    digest = hashlib.sha1(f"{importer}\0{src.resolve()}\0".encode())
    for path in IMPORTER_CODE:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def real_recording(name: str, cache: Path, source: Path = DATASETS) -> Recording:
    """The data set's recording file, imported into ``cache`` unless the import there was made by this very
    importer from this source (its stamp, in ``<importer>.importer`` beside it)."""
    from models.importers import import_dataset
    from stream.recording import read_recording
    importer, folder, *_ = SETUPS[name]
    out = cache / f"{importer}.csv"
    made_by = out.with_suffix(".importer")
    stamp = importer_stamp(importer, source / folder)
    if out.exists() and (not made_by.exists() or made_by.read_text().strip() != stamp):
        print(f"sim_to_real: {out} was imported by other code or from another source than now: importing again",
              file=sys.stderr, flush=True)
        made_by.unlink(missing_ok=True)
        out.unlink()
    if not out.exists():
        import_dataset(importer, source / folder, out)
        made_by.write_text(stamp + "\n")
    return read_recording(out)


def run(name: str, people: int, minutes: float, cache: Path, seed: int, source: Path = DATASETS,
        max_minutes: float | None = TrainConfig.max_minutes) -> dict:
    _, _, placement, exercises, relabel = SETUPS[name]
    real = real_recording(name, cache, source)
    labels = np.array([relabel.get(str(x), str(x)) for x in real.label])
    real.label = np.where(np.isin(labels, exercises), labels, "")  # only the shared exercises are scored
    started = time.monotonic()
    sim = simulated_training_data(people, minutes * 60.0, seed=seed, placements=[placement], exercises=exercises)
    model, report = train(sim, cfg=TrainConfig(seed=seed, max_minutes=max_minutes), progress=False)
    train_s = time.monotonic() - started
    per_person = {}
    subjects = real.subjects()
    for person in sorted(set(subjects.tolist())):
        part = real.take(subjects == person)
        if not (part.label != "").any():
            continue
        r = evaluate(model, part)
        per_person[person] = {"accuracy": r["accuracy"], "macro_f1": r["macro_f1"], "windows": r["windows"],
                              "recall": r["recall"]}
    accs = [v["accuracy"] for v in per_person.values() if v["accuracy"] is not None]
    overall = evaluate(model, real)
    return {"dataset": name, "placement": placement, "exercises": exercises, "people_simulated": people,
            "minutes_each": minutes, "train_seconds": round(train_s, 1),
            "sim_validation_accuracy": report["best"].get("accuracy"),
            "mean_person_accuracy": round(float(np.mean(accs)), 4) if accs else None,
            "per_person": per_person, "overall": {k: overall[k] for k in ("accuracy", "macro_f1", "windows",
                                                                            "recall", "labels", "confusion")}}


def write_markdown(results: list[dict], command: str, path: Path) -> None:
    lines = ["# Sim-to-real", "",
             "Models trained on simulated people only (the sensor placed as in the real data set, the shared "
             "exercises only), streamed through `evaluate` on every real person. No real data in training.", "",
             f"Reproduce: `{command}`", "",
             "| data set | placement | exercises | mean accuracy over people | all windows: accuracy / macro F1 "
             "| windows |",
             "|---|---|---|---|---|---|"]
    for r in results:
        o = r["overall"]
        lines.append(f"| {r['dataset']} | {r['placement']} | {', '.join(r['exercises'])} | "
                     f"{r['mean_person_accuracy']:.1%} | {o['accuracy']:.1%} / {o['macro_f1']:.3f} | {o['windows']} |")
    for r in results:
        lines += ["", f"## {r['dataset']}", "",
                  f"Trained on {r['people_simulated']} simulated people x {r['minutes_each']:g} min in "
                  f"{r['train_seconds']:.0f} s (validation on held-out simulated people: "
                  f"{r['sim_validation_accuracy']}).", "",
                  "| person | accuracy | macro F1 | windows |", "|---|---|---|---|"]
        for person, v in r["per_person"].items():
            lines.append(f"| {person} | {v['accuracy']:.1%} | {v['macro_f1']:.3f} | {v['windows']} |")
        o = r["overall"]
        lines += ["", "Recall: " + ", ".join(f"{c} {x:.2f}" for c, x in o["recall"].items()), "",
                  "Confusion (rows true, columns predicted): " + ", ".join(o["labels"]), "", "```"]
        lines += [" ".join(f"{v:>6}" for v in row) for row in o["confusion"]]
        lines += ["```"]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(SETUPS), choices=list(SETUPS),
                        help="real data sets to test on (default: all three)")
    parser.add_argument("--people", type=int, default=40, help="simulated people to train on (default: 40)")
    parser.add_argument("--minutes", type=float, default=10.0, help="simulated minutes per person (default: 10)")
    parser.add_argument("--seed", type=int, default=0, help="of the simulated people and of training (default: 0)")
    parser.add_argument("--max-minutes", type=float, default=TrainConfig.max_minutes,
                        help="each of training's two runs (validated, then on everyone) stops after this long, "
                             "keeping its best model: a short check of the script (default: %(default)s)")
    parser.add_argument("--source", type=Path, default=DATASETS,
                        help="the real data sets as published (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/harstream-real"),
                        help="imported recording files are kept here, and imported again when the importer or "
                             "--source changed (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "sim_to_real.md",
                        help="the page to write, and its .json beside it (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.source.is_dir():
        print(f"sim_to_real: {args.source} is absent; nothing to compare against", file=sys.stderr)
        return 0
    missing = [name for name in args.datasets if not (args.source / SETUPS[name][1]).is_dir()]
    for name in missing:  # before minutes of training on the others
        print(f"sim_to_real: no {name} data set at {args.source / SETUPS[name][1]}; skipped", file=sys.stderr)
    if len(missing) == len(args.datasets):
        print("sim_to_real: nothing to compare against", file=sys.stderr)
        return 0
    args.cache.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)  # now, not after the training
    results = []
    for name in [n for n in args.datasets if n not in missing]:
        r = run(name, args.people, args.minutes, args.cache, args.seed, args.source, args.max_minutes)
        print(json.dumps({k: r[k] for k in ("dataset", "mean_person_accuracy", "train_seconds")}), flush=True)
        results.append(r)
    command = " ".join(["python benchmarks/sim_to_real.py", *(sys.argv[1:] if argv is None else argv)])
    write_markdown(results, command, args.out)
    (args.out.with_suffix(".json")).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
