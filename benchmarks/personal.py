"""Personal or shared adaptation: which should learn from labels, the shared network, a per-device
adapter, or both? Measured, not guessed (issue 5).

Simulated devices are streamed window by window through the serving path (``Pipeline``: buffers,
resampling, the batched stateful classifier), in device time, without a broker: the question is about
learning, and the broker path is the adaptation benchmark's (``benchmarks/adaptation.py``). Every
window is classified first, then its true label goes to the learners (test, then train), in sequences
of ``k1`` windows exactly as the consumer groups them.

Three groups of devices, all starting at once:
- *drifted, labelling*: each wears the sensor in a way the model has not seen (a scenario from the
  simulator, on from the first sample) and sends labels;
- *steady, labelling*: worn as in training, sending labels;
- *steady, silent*: worn as in training, no labels: what learning from other people does to them.

Modes: ``frozen`` (no learning), ``shared`` (the consumer's online fine-tuning of the shared network,
with promotion), ``device`` (per-device adapters on a frozen network), ``both``.

    python benchmarks/personal.py [--scenarios strap_rotated other_wrist new_person] [--devices 3]
                                  [--duration 300] [--model MODEL] [--out docs/personal.md]

Writes the table to ``--out`` and the raw figures beside it (``.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import default_model_path, load_checkpoint  # noqa: E402
from models.finetune import LearnerConfig, OnlineLearner, Sequence  # noqa: E402
from models.state import StatefulClassifier  # noqa: E402
from simulators.workout import G_STANDARD, DeviceStream  # noqa: E402
from stream.decode import SampleBatch  # noqa: E402
from stream.pipeline import Pipeline  # noqa: E402

MODES = ("frozen", "shared", "device", "both")
BINS = ((0, 60), (60, 120), (120, 180), (180, 300))


def devices(scenarios: list[str], per_group: int, seed: int) -> dict[str, tuple[str, str | None]]:
    """name -> (group, scenario)."""
    out: dict[str, tuple[str, str | None]] = {}
    for scenario in scenarios:
        for k in range(per_group):
            out[f"{scenario}-{k}"] = ("drifted, labelling", scenario)
    for k in range(per_group * 2):
        out[f"steady-l{k}"] = ("steady, labelling", None)
        out[f"steady-s{k}"] = ("steady, silent", None)
    return out


def run(mode: str, model_path: Path, plan: dict, duration: float, seed: int, k1: int) -> list[dict]:
    """Every window: device, t (s from start), correct, mode."""
    torch.manual_seed(seed)
    model, info = load_checkpoint(model_path)
    classifier = StatefulClassifier(model, info["version"])
    pipeline = Pipeline(classifier)
    classes = classifier.classes
    index = {c: i for i, c in enumerate(classes)}
    learner = None
    if mode != "frozen":  # the consumer's learner, as `harstream consume --adapt MODE` builds it
        learner = OnlineLearner(model, LearnerConfig(k1=k1, k2=k1, adapt=mode),
                                on_promote=lambda m, v: classifier.set_model(m, v))
        classifier.adapters = learner.adapters
    streams = {name: DeviceStream(name, seed=seed + i, scenario=scenario, scenario_start=0.0)
               for i, (name, (_, scenario)) in enumerate(plan.items())}
    truth: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    pending: dict[str, list] = defaultdict(list)
    out: list[dict] = []
    window_s = model.config.window_seconds
    step = 1.0
    for tick in range(int(duration / step)):
        for name, stream in streams.items():
            chunk = stream.read(step)
            acc = chunk.acc * np.float32(G_STANDARD) if chunk.unit == "g" else chunk.acc
            truth[name] = (chunk.t, chunk.label)
            pipeline.add(SampleBatch(name, chunk.t, acc.astype(np.float32)), arrival=0.0)
        if not pipeline.pending:
            continue
        for p in pipeline.classify_ready():
            t, labels = truth[p.device]
            inside = labels[(t > p.t_end - window_s) & (t <= p.t_end)]
            if not len(inside):
                continue
            values, counts = np.unique(inside, return_counts=True)
            label = str(values[counts.argmax()]) if counts.max() >= 0.6 * len(inside) else ""
            if not label or label not in index:
                continue
            out.append({"mode": mode, "device": p.device, "group": plan[p.device][0],
                        "t": tick * step, "correct": int(p.label == label)})
            if plan[p.device][0] == "steady, silent" or learner is None:
                continue
            seq = pending[p.device]
            seq.append((p.window, index[label], p.state_before()))
            if len(seq) < k1:
                continue
            windows = torch.from_numpy(np.stack([w for w, _, _ in seq]))
            targets = torch.tensor([y for _, y, _ in seq])
            pending[p.device] = []
            learner.learn(Sequence(p.device, windows, targets, seq[0][2]))
    return out


def summarise(rows: list[dict]) -> dict:
    table: dict = {}
    for mode in MODES:
        for group in ("drifted, labelling", "steady, labelling", "steady, silent"):
            sel = [r for r in rows if r["mode"] == mode and r["group"] == group]
            if not sel:
                continue
            cells = {}
            for a, b in BINS:
                inside = [r["correct"] for r in sel if a <= r["t"] < b]
                cells[f"{a}-{b}s"] = round(float(np.mean(inside)), 4) if inside else None
            table.setdefault(mode, {})[group] = cells
    return table


def main(argv: list[str] | None = None) -> int:
    # the first paragraph, whole: its first line ends mid-sentence
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()))
    parser.add_argument("--scenarios", nargs="+", default=["strap_rotated", "other_wrist", "new_person"],
                        help="drift scenarios of the drifted devices (default: strap_rotated other_wrist "
                             "new_person)")
    parser.add_argument("--devices", type=int, default=3, help="devices per drift scenario; 2x that steady")
    parser.add_argument("--duration", type=float, default=300.0, help="device seconds")
    parser.add_argument("--k1", type=int, default=4, help="windows per labelled sequence")
    parser.add_argument("--model", type=Path, default=default_model_path(),
                        help="checkpoint (default: the shipped model)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES,
                        help="who learns from the labels, one run each (default: all four)")
    parser.add_argument("--seed", type=int, default=500, help="picks the simulated people (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "personal.md",
                        help="the page to write, and its .json beside it (default: %(default)s)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    plan = devices(args.scenarios, args.devices, args.seed)
    rows: list[dict] = []
    seconds = {}
    for mode in args.modes:
        started = time.monotonic()
        rows += run(mode, args.model, plan, args.duration, args.seed, args.k1)
        seconds[mode] = round(time.monotonic() - started, 1)
        print(f"{mode}: {seconds[mode]} s", file=sys.stderr, flush=True)
    table = summarise(rows)
    command = "python benchmarks/personal.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Personal or shared adaptation", "",
        f"Reproduce: `{command.strip()}` ({time.strftime('%Y-%m-%d')}). Model: `{args.model.name}`. "
        f"{len(plan)} simulated devices streamed through the serving path in device time, "
        f"{args.duration:.0f} s each: {args.devices} per drift scenario ({', '.join(args.scenarios)}; "
        f"drifted from the first sample, all labelling), {2 * args.devices} steady labelling and "
        f"{2 * args.devices} steady silent. Every window is classified, then learnt from (test, then "
        f"train); accuracy is per window, by seconds since the start (i.e. of labelled data).", "",
        "| mode | devices | " + " | ".join(f"{a}–{b} s" for a, b in BINS) + " |",
        "|---|---|" + "---|" * len(BINS),
    ]
    for mode, groups in table.items():
        for group, cells in groups.items():
            lines.append(f"| {mode} | {group} | " + " | ".join(
                "–" if v is None else f"{100 * v:.1f}%" for v in cells.values()) + " |")
    lines += ["", "Mean over the whole run (all windows):", "",
              "| mode | drifted, labelling | steady, labelling | steady, silent |", "|---|---|---|---|"]
    for mode in table:
        means = []
        for group in ("drifted, labelling", "steady, labelling", "steady, silent"):
            sel = [r["correct"] for r in rows if r["mode"] == mode and r["group"] == group]
            means.append(f"{100 * np.mean(sel):.1f}%" if sel else "–")
        lines.append(f"| {mode} | " + " | ".join(means) + " |")
    lines += ["", "How to read it: `shared` is the consumer's fine-tuning of the one network every device "
              "uses; it learns from whoever sends labels and promotes what suits them, so devices that "
              "send none pay for it. `device` learns a per-device input map (a rotation search over the "
              "24 axis-aligned turns, then gradient steps on 12 numbers) on the frozen network: only the "
              "labelling device changes, and only while its own recent labels say the adapter helps. "
              "The consumer's default, `harstream consume --adapt device`, follows from this table; "
              "`--adapt shared` and `--adapt both` remain settings."]
    lines += ["", "An adapter is served only while it gets more of its device's recent untrained windows "
              "right than no adapter; until 2026-12-03 a tie was enough. Measured on the change: this "
              "benchmark's seed 500 (the tie rule's figures from 2026-11-25; frozen and shared reproduce "
              "them to the tenth), device mode 92.5% → 91.0% (drifted) "
              "and 93.0% → 93.5% (steady, labelling), both mode 89.5% → 92.4% and 90.7% → 95.2%; "
              "`--seed 3000 --devices 6 --modes frozen device both` (not looked at before; both rules run "
              "side by side), device mode "
              "91.8% → 92.5% and 92.1% → 93.8% (frozen 90.8% and 92.5%), both mode 92.4% → 93.6% and "
              "92.5% → 93.9%. The rule was chosen on seeds 900 and 1900 with the drift 120 s into the "
              "stream (device mode better than with ties in every minute after the onset, by up to 5 "
              "points). `benchmarks/adaptation.py` through Mosquitto: docs/adaptation.md. On the same two "
              "seeds, forgetting each device's adapter at the drift's onset (told the onset: the most a "
              "reset on a drift could do; a study outside the repository) gained nothing: -0.8 to +0.3 "
              "points per minute after the onset under this rule, -2.1 to +2.0 under the tie rule. So a "
              "drift does not reset adapters; labels keep adapting them."]
    lines += ["", "Run time per mode (s): " + ", ".join(f"{m} {s}" for m, s in seconds.items()), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps({"table": table, "seconds": seconds,
                                                         "command": command}, indent=1))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
