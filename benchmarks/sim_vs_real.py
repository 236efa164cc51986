"""Simulated versus real accelerometer signals, exercise by exercise.

For every exercise the simulator shares with a real data set in ``../shared/datasets`` (see its
README), simulate the same sensor placement at the same sample rate and compare, over windows of
up to 10 s inside one labelled set:

- dominant frequency: peak of the summed power spectra of the three axes, mean removed, above 0.15 Hz;
- magnitude spread: standard deviation of |a|;
- gravity range: how far the direction of the low-passed acceleration (1 s moving average, about
  gravity) turns within the window: the 95th percentile of its angle to the window's mean direction.

The medians over windows (with the interquartile range) go to ``docs/sim_vs_real.md`` and
``docs/sim_vs_real.png``::

    python benchmarks/sim_vs_real.py [--datasets DIR] [--out docs] [--people 12]

Real data are read with ``models.importers`` when it is there and works, else straight from the
raw files. Without the data sets the script says so and exits 0.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulators.motion import sample_person  # noqa: E402
from simulators.workout import DeviceStream  # noqa: E402

G = 9.80665
WINDOW = 10.0  # s, longest window
MIN_WINDOW = 4.0  # s, shortest run used


@dataclass(frozen=True)
class Source:
    name: str  # data set folder
    placement: str  # where the simulator puts the sensor to match it
    rate: float  # Hz
    labels: dict[str, str]  # real label -> simulated exercise
    note: str
    styles: tuple[tuple[str, int], ...] = ()  # exercise variants the recorded people did


SOURCES = (
    Source("exermote", "upper_arm", 10.0,
           {"squat": "squat", "sit_up": "sit_up", "burpee": "burpee", "rest": "rest"},
           "iPhone on the right upper arm, 10 Hz; rest = Break and setBreak (pauses between repetitions "
           "count as part of the set); sit-ups swinging the arms from overhead to the toes",
           styles=(("sit_up", 2),)),
    Source("barbell-metamotion", "wrist", 12.5,
           {"squat": "squat", "bench_press": "bench_press", "overhead_press": "overhead_press",
            "deadlift": "deadlift", "row": "row", "rest": "rest"},
           "MetaMotion wristband, 12.5 Hz; rest = sitting and standing; squats with a barbell on the back",
           styles=(("squat", 1),)),
    Source("uci-hapt", "waist", 50.0,
           {"walking": "walking", "sitting": "rest", "standing": "rest"},
           "Galaxy S II on the waist, 50 Hz; rest = sitting and standing"),
    Source("muvr-gym", "wrist", 50.0,
           {"biceps_curl": "biceps_curl", "barbell_biceps_curl": "biceps_curl",
            "dumbbell_biceps_curl": "biceps_curl", "straight_bar_biceps_curl": "biceps_curl",
            "alt_dumbbell_biceps_curl": "biceps_curl"},
           "Pebble watch on the left wrist, about 50 Hz; all biceps-curl variants"),
)


# -- statistics ----------------------------------------------------------------------------------


def dominant_frequency(acc: np.ndarray, rate: float) -> float:
    x = acc - acc.mean(axis=0)
    power = (np.abs(np.fft.rfft(x * np.hanning(len(x))[:, None], axis=0)) ** 2).sum(axis=1)
    freq = np.fft.rfftfreq(len(x), 1.0 / rate)
    keep = freq >= 0.15
    return float(freq[keep][np.argmax(power[keep])])


def gravity_range(acc: np.ndarray, rate: float) -> float:
    width = max(1, int(round(rate)))
    kernel = np.ones(width) / width
    low = np.stack([np.convolve(acc[:, i], kernel, mode="valid") for i in range(3)], axis=1)
    mean = low.mean(axis=0)
    cos = low @ mean / (np.linalg.norm(low, axis=1) * np.linalg.norm(mean) + 1e-12)
    return float(np.percentile(np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))), 95))


def window_stats(acc: np.ndarray, rate: float) -> tuple[float, float, float]:
    return dominant_frequency(acc, rate), float(np.linalg.norm(acc, axis=1).std()), gravity_range(acc, rate)


def windows(acc: np.ndarray, rate: float, skip_first: bool = False):
    """Windows of up to WINDOW s over one run of one label (the last one may be shorter)."""
    n = int(WINDOW * rate)
    shortest = int(MIN_WINDOW * rate)
    starts = list(range(0, max(len(acc) - shortest + 1, 0), n))
    for i, a in enumerate(starts):
        if skip_first and i == 0 and len(starts) > 1:
            continue
        piece = acc[a:a + n]
        if len(piece) >= shortest:
            yield piece


def runs(device: np.ndarray, label: np.ndarray, t: np.ndarray, rate: float):
    """(label, start, stop) of each stretch of one device and one label without gaps in time."""
    cut = np.flatnonzero((device[1:] != device[:-1]) | (label[1:] != label[:-1])
                         | (np.diff(t) > 3.0 / rate) | (np.diff(t) < 0)) + 1
    bounds = np.concatenate([[0], cut, [len(label)]])
    for a, b in zip(bounds[:-1], bounds[1:], strict=False):
        yield str(label[a]), int(a), int(b)


# -- real data -----------------------------------------------------------------------------------


def _importers():
    try:
        from models import importers
    except Exception as exc:  # a half-written module must not stop the benchmark
        print(f"models.importers unusable ({exc!r}); reading raw files")
        return None
    return importers


def load_real(source: Source, root: Path):
    """(device, t, acc m/s², label) of a data set, through models.importers when it works."""
    importers = _importers()
    readers = {"exermote": "read_exermote", "barbell-metamotion": "read_barbell", "uci-hapt": "read_uci_hapt",
               "muvr-gym": "read_muvr"}
    if importers is not None and hasattr(importers, readers[source.name]):
        try:
            rec = getattr(importers, readers[source.name])(root / source.name)
            return rec.device, rec.t, np.asarray(rec.acc, dtype=float), rec.label
        except Exception as exc:
            print(f"models.importers.{readers[source.name]} failed ({exc!r}); reading raw files")
    return RAW[source.name](root / source.name)


def _raw_uci(path: Path):
    labels = np.loadtxt(path / "RawData" / "labels.txt", dtype=int)
    names = {1: "walking", 4: "sitting", 5: "standing"}
    parts = []
    for exp, user in sorted({(int(e), int(u)) for e, u in labels[:, :2]}):
        acc = np.loadtxt(path / "RawData" / f"acc_exp{exp:02d}_user{user:02d}.txt") * G
        label = np.full(len(acc), "", dtype=object)
        for _, _, activity, a, b in labels[(labels[:, 0] == exp) & (labels[:, 1] == user)]:
            label[a - 1:b] = names.get(int(activity), "")
        parts.append((np.full(len(acc), f"uci-{exp}"), np.arange(len(acc)) / 50.0, acc, label))
    return tuple(np.concatenate(p) for p in zip(*parts, strict=False))


def _raw_barbell(path: Path):
    names = {"bench": "bench_press", "squat": "squat", "ohp": "overhead_press", "dead": "deadlift",
             "row": "row", "rest": "rest"}
    parts = []
    for i, file in enumerate(sorted((path / "raw").glob("*Accelerometer*.csv"))):
        if file.name.endswith("1.4.41.csv") or file.name.startswith("E-"):  # copies of other sets
            continue
        data = np.loadtxt(file, delimiter=",", skiprows=1, usecols=(2, 3, 4, 5))
        label = names.get(file.name.split("-")[1], "")
        parts.append((np.full(len(data), f"bb-{i}"), data[:, 0], data[:, 1:] * G, np.full(len(data), label)))
    return tuple(np.concatenate(p) for p in zip(*parts, strict=False))


def _raw_muvr(path: Path):
    parts = []
    for i, file in enumerate(sorted((path / "labelled").rglob("*.csv"))):
        with file.open() as handle:
            rows = [r for r in csv.reader(handle) if len(r) >= 4]
        if not rows:
            continue
        acc = np.array([[float(v) for v in r[:3]] for r in rows]) * -G
        label = np.array([r[3].replace("-", "_") for r in rows])
        parts.append((np.full(len(acc), f"muvr-{i}"), np.arange(len(acc)) / 50.0, acc, label))
    return tuple(np.concatenate(p) for p in zip(*parts, strict=False))


def _raw_exermote(path: Path):
    names = {"Squat": "squat", "Situp": "sit_up", "Burpee": "burpee", "Break": "rest", "setBreak": "rest"}
    parts = []
    for i, file in enumerate(sorted((path / "RawData").glob("*.csv"))):
        with file.open(newline="") as handle:
            reader = csv.reader(handle)
            header = next(reader)
            col = {h: j for j, h in enumerate(header)}
            cols = [col[f"Device: {a}{b}"] for b in ("Gravity", "Acceleration") for a in ("x", "y", "z")]
            rows = [r for r in reader if r[cols[0]]]
        values = np.array([[float(r[j]) for j in cols] for r in rows])
        acc = -(values[:, :3] + values[:, 3:]) * G
        label = np.array([names.get(r[col["exerciseType"]], "") for r in rows])
        parts.append((np.full(len(acc), f"ex-{i}"), np.arange(len(acc)) / 10.0, acc, label))
    return tuple(np.concatenate(p) for p in zip(*parts, strict=False))


RAW = {"uci-hapt": _raw_uci, "barbell-metamotion": _raw_barbell, "muvr-gym": _raw_muvr,
       "exermote": _raw_exermote}


def sets(device: np.ndarray, label: np.ndarray, t: np.ndarray, rate: float, pause: float = 3.0):
    """``runs``, with pauses between repetitions (rest shorter than ``pause`` s between two runs of
    the same exercise, as exermote labels them) made part of the set."""
    merged: list[list] = []
    for name, a, b in runs(device, label, t, rate):
        if len(merged) >= 2:
            (before, start, _), (between, gap_start, gap_end) = merged[-2], merged[-1]
            joins = (between == "rest" and before == name != "rest" and gap_end - gap_start < pause * rate
                     and gap_start == merged[-2][2] and a == gap_end and device[a] == device[start])
        else:
            joins = False
        if joins:
            merged.pop()
            merged[-1][2] = b
        else:
            merged.append([name, a, b])
    return [tuple(m) for m in merged]


def real_stats(source: Source, root: Path) -> dict[str, np.ndarray]:
    device, t, acc, label = load_real(source, root)
    out: dict[str, list] = {}
    for name, a, b in sets(np.asarray(device), np.asarray(label).astype(str), np.asarray(t, dtype=float),
                           source.rate):
        exercise = source.labels.get(name)
        if exercise is None:
            continue
        for piece in windows(acc[a:b], source.rate):
            out.setdefault(exercise, []).append(window_stats(piece, source.rate))
    return {k: np.array(v) for k, v in out.items()}


# -- simulated data ------------------------------------------------------------------------------


def sim_stats(source: Source, exercise: str, people: int, seconds: float) -> np.ndarray:
    """Window statistics of ``people`` simulated people doing sets of ``exercise``; for rest, the
    rests (and transitions) of whole workouts of the data set's exercises."""
    exercises = [exercise] if exercise != "rest" else list(dict.fromkeys(source.labels.values()))
    rows = []
    for seed in range(people):
        person = sample_person(np.random.default_rng(1000 + seed), source.placement)
        person.styles.update(dict(source.styles))
        stream = DeviceStream("bench", seed=1000 + seed, rate=source.rate, placement=source.placement,
                              exercises=exercises, person=person)
        chunk = stream.read(seconds if exercise != "rest" else 4 * seconds)
        for name, a, b in runs(np.zeros(len(chunk)), chunk.label, chunk.t, source.rate):
            if name != exercise:
                continue
            for piece in windows(chunk.acc[a:b].astype(float), source.rate, skip_first=exercise != "rest"):
                rows.append(window_stats(piece, source.rate))
    return np.array(rows)


# -- report --------------------------------------------------------------------------------------

STATS = ("dominant frequency (Hz)", "std of |a| (m/s²)", "gravity range (°)")
_MD_STATS = tuple(s.replace("|", "\\|") for s in STATS)  # a bare | would end a table cell


def _cell(values: np.ndarray) -> str:
    q1, med, q3 = np.percentile(values, [25, 50, 75])
    return f"{med:.2f} ({q1:.2f}–{q3:.2f})" if med < 10 else f"{med:.0f} ({q1:.0f}–{q3:.0f})"


def report(results: list[tuple[Source, str, np.ndarray, np.ndarray]], out: Path, elapsed: float) -> None:
    lines = [
        "# Simulated versus real signals",
        "",
        "Written by `benchmarks/sim_vs_real.py`. Medians over windows of up to 10 s inside one labelled set",
        "(interquartile range in brackets); the simulator puts its sensor where the real one was, at the",
        "same rate. Dominant frequency: peak of the summed spectra of the three axes. Std of |a|: spread",
        "of the acceleration's magnitude. Gravity range: 95th percentile of the angle between the",
        "low-passed acceleration (1 s mean) and its mean direction over the window.",
        "",
        "| data set | exercise | windows real / sim | "
        + " | ".join(f"{s} real | sim" for s in _MD_STATS) + " |",
        "|---|---|---|" + "---|---|" * len(STATS),
    ]
    for source, exercise, real, sim in results:
        cells = [f"{_cell(real[:, i])} | {_cell(sim[:, i])}" for i in range(len(STATS))]
        lines.append(f"| {source.name} | {exercise} | {len(real)} / {len(sim)} | " + " | ".join(cells) + " |")
    lines += ["", "Sources and placements:", ""]
    lines += [f"- `{s.name}`: {s.note}; simulated `{s.placement}` at {s.rate:g} Hz." for s in SOURCES]
    lines += ["", f"Run time {elapsed:.0f} s.", ""]
    (out / "sim_vs_real.md").write_text("\n".join(lines))
    plot(results, out / "sim_vs_real.png")


def plot(results, path: Path) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)")
        return
    names = [f"{s.name.split('-')[0]}\n{e}" for s, e, _, _ in results]
    x = np.arange(len(results))
    fig, axes = plt.subplots(len(STATS), 1, figsize=(max(8, 0.75 * len(results)), 9), sharex=True)
    for i, (ax, stat) in enumerate(zip(axes, STATS, strict=False)):
        for offset, which, colour, label in ((-0.15, 2, "tab:blue", "real"),
                                             (0.15, 3, "tab:orange", "simulated")):
            q = np.array([np.percentile(r[which][:, i], [25, 50, 75]) for r in results])
            ax.errorbar(x + offset, q[:, 1], yerr=[q[:, 1] - q[:, 0], q[:, 2] - q[:, 1]], fmt="o",
                        color=colour, capsize=3, label=label)
        ax.set_ylabel(stat)
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[-1].set_xticks(x, names, rotation=60, fontsize=8)
    fig.suptitle("Simulated vs real: median and interquartile range over windows")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(os.environ.get("HARSTREAM_DATASETS", ROOT.parent / "shared" / "datasets"))
    parser.add_argument("--datasets", type=Path, default=default,
                        help="folder of the real data sets (default: HARSTREAM_DATASETS, else %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs",
                        help="sim_vs_real.md and sim_vs_real.png go in this folder (default: %(default)s)")
    parser.add_argument("--people", type=int, default=12, help="simulated people per exercise")
    parser.add_argument("--seconds", type=float, default=90.0, help="simulated seconds per person")
    args = parser.parse_args(argv)
    if not args.datasets.is_dir():
        print(f"no real data sets at {args.datasets}: nothing to compare (skipped)")
        return 0
    start = time.perf_counter()
    results = []
    for source in SOURCES:
        if not (args.datasets / source.name).is_dir():
            print(f"{source.name}: not found, skipped")
            continue
        real = real_stats(source, args.datasets)
        for exercise in dict.fromkeys(source.labels.values()):
            if exercise not in real:
                continue
            sim = sim_stats(source, exercise, args.people, args.seconds)
            results.append((source, exercise, real[exercise], sim))
            print(f"{source.name:20s} {exercise:15s} " + "  ".join(
                f"{math.nan if not len(real[exercise]) else np.median(real[exercise][:, i]):6.2f} / "
                f"{np.median(sim[:, i]):6.2f}" for i in range(len(STATS))))
    if not results:  # as without the folder: an empty table would replace the page (and no plot be drawn)
        print(f"no real data set ({', '.join(s.name for s in SOURCES)}) in {args.datasets}: nothing to compare "
              "(skipped)")
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    report(results, args.out, time.perf_counter() - start)
    print(f"wrote {args.out / 'sim_vs_real.md'} and {args.out / 'sim_vs_real.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
