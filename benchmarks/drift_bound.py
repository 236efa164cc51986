"""How soon a behavioural drift can show at all: a bound on "detected within 10 s" for the simulator's
``new_person`` and ``fatigue`` scenarios, with no model and no detector.

A behavioural scenario takes effect at the end of the set or rest under way (``simulators/workout.py``),
and the new person (or the fatigue) shows only in what the person does next. This script measures, per
drifting device, from the onset:
- the first whole window of an exercise (not rest): before it, nothing the person does has changed;
- the first window of a set of a class the device did before the onset: before it, no per-class check
  (the error detector, a per-class motion or tempo check) has a reference of the same person to compare;
- for fatigue, how far a set's motion (``stream.monitor.window_motion``, mean log over its first 3
  windows) moves from the device's earlier sets of the same class, against quiet devices' sets.

    python benchmarks/drift_bound.py [--seeds 20000 30000] [--devices 30] [--quiet-devices 40]
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.labels import REST  # noqa: E402
from simulators.workout import G_STANDARD, DeviceStream  # noqa: E402
from stream.monitor import SET_GAP, window_motion  # noqa: E402

SCENARIOS = {"new_person": 2, "fatigue": 3}  # index in benchmarks/drift.py's SCENARIOS: the same devices
WINDOW = 2.0
ONSET = 120.0
AFTER = 300.0
K = 3  # windows of a set compared


def windows(stream: DeviceStream, duration: float) -> list[tuple[float, str | None, float]]:
    """(end from the stream's start, the one label the window holds or None, window_motion)."""
    chunk = stream.read(duration)
    acc = chunk.acc * np.float32(G_STANDARD) if chunk.unit == "g" else chunk.acc
    t = chunk.t - stream.t0
    out = []
    for start in np.arange(0.0, duration - WINDOW, WINDOW):
        rows = (t >= start) & (t < start + WINDOW)
        if rows.sum() < 10:
            continue
        labels = chunk.label[rows]
        label = str(labels[0]) if (labels == labels[0]).all() else None
        out.append((float(start + WINDOW), label, window_motion(acc[rows])))
    return out


def sets(ws: list) -> list[tuple[str, list[float], list[float]]]:
    """Consecutive windows of one exercise label: (label, window ends, motions)."""
    out: list = []
    current = None
    for t, label, motion in ws:
        if label is None or label == REST:
            current = None
        elif current is not None and current[0] == label and t - current[1][-1] <= SET_GAP:
            current[1].append(t)
            current[2].append(motion)
        else:
            current = (label, [t], [motion])
            out.append(current)
    return out


def levels(ws: list, onset: float = np.inf) -> list[tuple[float, float]]:
    """Per set of at least K windows with an earlier such set of its class that began before ``onset``: (its
    K-th window's end, mean log motion of its first K windows minus that of those earlier sets)."""
    history: dict[str, list[float]] = defaultdict(list)
    out = []
    for label, ts, motions in sets(ws):
        if len(motions) < K:
            continue
        level = float(np.mean(np.log(np.asarray(motions[:K]) + 0.05)))
        if history[label]:
            out.append((ts[K - 1], level - float(np.mean(history[label]))))
        if ts[0] - WINDOW < onset:
            history[label].append(level)
    return out


def main(argv: list[str] | None = None) -> int:
    # the first paragraph, whole: its first line ends mid-sentence
    parser = argparse.ArgumentParser(description=" ".join(__doc__.split("\n\n")[0].split()),
                                     epilog="Prints its figures; writes nothing.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[20000, 30000],
                        help="simulator seeds, as benchmarks/drift.py's --seed (default: 20000 30000, the "
                             "monitor's tuning seeds)")
    parser.add_argument("--devices", type=int, default=30, help="devices per scenario and seed")
    parser.add_argument("--quiet-devices", type=int, default=40, help="devices without drift (30 min each)")
    args = parser.parse_args(argv)
    quiet = []
    for seed in args.seeds:
        for k in range(args.quiet_devices):  # benchmarks/drift.py's quiet devices
            quiet += [d for _, d in levels(windows(DeviceStream(f"quiet-{k}", seed=seed + 9000 + k), 1800.0))]
    q = np.asarray(quiet)
    lo, hi = np.percentile(q, [0.5, 99.5])
    print(f"quiet devices: {len(q)} sets compared with the same class's earlier sets; log motion differs by "
          f"sd {q.std():.3f}, 99% of them within [{lo:.2f}, {hi:.2f}]")
    for name, index in SCENARIOS.items():
        exercise, seen_class, fatigue_beyond = [], [], 0
        compared = []
        for seed in args.seeds:
            for k in range(args.devices):
                stream = DeviceStream(f"{name}-{k}", seed=seed + 1000 * index + k, scenario=name,
                                      scenario_start=ONSET)
                ws = windows(stream, ONSET + AFTER)
                onset = stream.scenario_onset
                exercise.append(next((t - onset for t, label, _ in ws
                                      if t - WINDOW >= onset and label not in (None, REST)), np.inf))
                before: set[str] = set()
                lag = np.inf
                for label, ts, _ in sets(ws):
                    if ts[0] - WINDOW < onset:
                        before.add(label)
                    elif label in before:
                        lag = ts[0] - onset
                        break
                seen_class.append(lag)
                after = [d for t, d in levels(ws, onset) if t - K * WINDOW >= onset]
                if after:
                    compared.append(after[0])
                    fatigue_beyond += not lo <= after[0] <= hi
        exercise, seen_class = np.asarray(exercise), np.asarray(seen_class)
        n = len(exercise)
        print(f"{name}: {n} devices; first exercise window within 10 s of the onset: {(exercise <= 10).sum()}/{n} "
              f"(median {np.median(exercise):.1f} s); first window of a class done before the onset within "
              f"10 s: {(seen_class <= 10).sum()}/{n}, within {AFTER:.0f} s: {np.isfinite(seen_class).sum()}/{n}")
        if compared:
            c = np.asarray(compared)
            print(f"  first set after the onset compared with the class's sets before the onset ({len(c)} devices): "
                  "log "
                  f"motion differs by median {np.median(c):+.3f} (quartiles {np.percentile(c, 25):+.3f}, "
                  f"{np.percentile(c, 75):+.3f}); outside the quiet sets' 99%: {fatigue_beyond}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
