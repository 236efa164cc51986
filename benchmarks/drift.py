"""Drift detection at scale: delay after each scenario's onset and false alarms per device-hour.

The adaptation benchmark (``benchmarks/adaptation.py``) runs 28 devices for 5 minutes through a real
broker: about one device-hour without drift, too little to tell 0.5 false alarms per device-hour
from 2. This script feeds the consumer's ``Monitor`` exactly as the consumer does (every classified
window; every labelled window when labels come), without a broker, in device time, so that tens of
device-hours take minutes. The model is frozen: what is measured is the detectors.

    python benchmarks/drift.py [--quiet-devices 40] [--quiet-minutes 30] [--devices 10]
                               [--labels all|none|both] [--seed 7000] [--out docs/drift.md]
                               [--source ../shared/datasets] [--folds REAL_DATA_WORK]

With the real recordings at hand (``--source``), the labelled orientation checks also run over them,
where no sensor is known to have moved: their false alarms on real people, per data set. With
``--folds`` (the ``--work`` folder of ``benchmarks/real_data.py``), every detector, the error detector
included, runs over each fold's test people through the model trained without them.

``--seed`` picks the simulated people and workouts. The thresholds in ``stream/monitor.py`` were chosen
on seeds 20000 and 30000 (``--devices 30 --quiet-devices 160``: different people from the default
seed's); the default seed 7000 is held out, and docs/drift.md reports it.

Delay is reported from the onset and from the device's first wrong window after it (a drift that
starts during a rest shows only when the next set starts).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from models.checkpoint import default_model_path, load_checkpoint  # noqa: E402
from models.importers import load_dataset  # noqa: E402
from models.labels import REST  # noqa: E402
from models.state import StatefulClassifier  # noqa: E402
from simulators.workout import G_STANDARD, DeviceStream  # noqa: E402
from stream.decode import SampleBatch  # noqa: E402
from stream.monitor import Monitor, window_motion  # noqa: E402
from stream.pipeline import Pipeline  # noqa: E402

SCENARIOS = ("strap_rotated", "other_wrist", "new_person", "fatigue")
SENSOR_SCENARIOS = ("strap_rotated", "other_wrist")  # the sensor moves; the person does what they did
VISIBLE_DEG = 20.0  # a window's mean specific force turned this far shows the turn (labelled check's floor)
WARM_UP = 20.0  # device seconds before detections count (the detectors' grace period)
TUNED_ON = (20000, 30000)  # seeds the monitor's thresholds were chosen on: not a held-out measurement
HISTORY = """## History (default arguments, seed 7000)

Before the per-device error baseline (commit 2b462e7: FHDDM on every labelled window, orientation over a
fixed 75° including rest, confidence falls on every device), with labels: strap_rotated 7/10 detected,
12 s median, 3 within 10 s; other_wrist 6/10, 7 s, 5 within 10 s; new_person 2/10; fatigue 7/10, 178 s;
**1.16 false alarms per device-hour** (23 in 19.8; 95% interval 0.74–1.75; error 14, orientation 8,
confidence 1). Without labels: unchanged (0.81 per device-hour).

What changed and why (chosen on seeds 20000 and 30000, 30 devices per scenario and 80 quiet
device-hours each, before this seed was run): the error detector of a device watches only the classes
the model has been getting right on that device (≥ 5 labelled windows, ≤ 34 % wrong), with river's
HDDM_A (drift confidence 1e-4): the quiet devices' error alarms were whole sets of an exercise the model
gets wrong for that person from its first set on. The labelled orientation check turns at
max(20°, 3 × the class's own mean deviation) instead of 75°, after one confirming window instead of two,
and never uses rest as a reference (rest gave every orientation false alarm). Confidence falls are
reported only for devices without recent labels. On the tuning seeds this cut false alarms from 1.33
and 1.19 to 0.38 and 0.40 per device-hour and raised detection within 10 s (strap_rotated 3→9 and 1→8
of 30, other_wrist 7→8 and 7→8 of 30), at a cost in the slow behavioural scenarios (fatigue 13→5 and
14→5 of 30; new_person 6→6 and 8→6): with the model frozen, a fatigued set looks like a set the model
gets wrong for a quiet person, and every error detector tried (river's FHDDM, HDDM_A, HDDM_W, DDM, EDDM,
ADWIN at several settings, with and without the per-class baseline, with confirmation by a second class)
bought fatigue detections only at a proportional rise in false alarms (about 13 of 30 at 1.0–1.3 per
device-hour). On this seed, measured once after the choice: false alarms 1.16 → 0.20 per device-hour;
within 10 s strap_rotated 3 → 4 and other_wrist 5 → 4 of 10; detected at all strap_rotated 7 → 5,
other_wrist 6 → 6, new_person 2 → 1, fatigue 7 → 2 of 10. Lost: error alarms 1–5 min late (fatigue,
new person) and one at 14 s (strap_rotated); two orientation alarms on rest (8 s and 76 s); on
other_wrist-1 a false turn of sit-ups 94 s before the onset masks, by the
10-minute cooldown, the true alarm. Gained: strap and other-wrist alarms 2 s sooner (one confirming
window), other_wrist-5 at 18 s.

Against issue 5's goal: fewer than one false alarm per device-hour with labels is met (upper end of the
interval included, above). Detection within 10 s of the onset is not: the orientation check sees a
turned sensor within 4–6 s only when the device is in a set of an exercise it has already seen held one
way, and the behavioural scenarios (new person, fatigue) take minutes or are not detected with the model
frozen.

What the sensor shows (2026-12-06, the columns "sensor turned > 20°"): each drifting device is generated
again without its scenario (the same person, workout and noise; the scenario's parameters are drawn
either way), and the angle between the two streams' mean specific force is taken window by window from
the onset. In 9 of 10 devices of each sensor scenario that angle exceeds 20° in the very first window,
rests included (a rest is a posture held with the forearm off the vertical, and gestures); one strap
shows it after 26 s (a deadlift set: the arm hangs along the axis the strap turned about), one other
wrist after 10 s. So a turned sensor is visible at once; the detectors miss it, not the physics: rest
is never a reference (its posture and gestures vary from rest to rest: it gave every false orientation
alarm), and an exercise needs 5 labelled windows of it on the device before its direction is trusted.
Earlier notes said that a strap turned at rest leaves gravity where it was; in the simulator it does not.

Within-set check, postures held still, real recordings (2026-12-06, later). Chosen on seeds 20000 and
30000 (30 devices per scenario, 40 quiet devices for 30 min each), then run once on this seed:
- A set's own first windows are a reference (`detector` `set`): consecutive labelled windows of one
  class, from the fourth on (the first three make its direction), turned beyond max(30°, 6 × the set's
  spread) twice in a row. Tuning seeds, within 10 s: strap_rotated 17 → 18, other_wrist 16 → 20 of 60;
  false alarms unchanged (0.48 per device-hour, all error). This seed: other_wrist 4 → 5 within 10 s
  (7/10 detected), strap_rotated 4, false alarms 0.20 as before.
- Real recordings (the new section above) showed the per-class check firing 4.3 times per device-hour on
  UCI HAPT (27 alarms: sitting and lying, 20–92° apart from one bout to the next, the phone fixed at the
  waist). A class or set of which more than a quarter of the windows move under 0.5 m/s²
  (`window_motion`, the spread of the specific force about its window mean, which no turn of the
  sensor changes) is now neither a reference nor checked: UCI HAPT 27 → 0 alarms, the simulator's
  figures unchanged (every simulated exercise moves more). A turned window must also move like the
  set's others (within 1.5×) for the set check: muvr's set alarms 4 → 1. muvr stays at 3.6 per
  device-hour: each of its files is one set whose label also covers picking the weights up, lying down
  on the bench and putting them down; the alarms fall there. The same motion rule on the per-class check
  took 2 of muvr's 9 such alarms and 2 of 60 strap detections on the tuning seeds: not adopted.

- Without labels, the same check within a run (`detector` `run`): consecutive windows the model does not
  call rest, none held still, each moving within 1.5× of the run's geometric mean motion (a set, as far
  as can be told without its label). Tuning seeds, no labels, within 10 s: strap_rotated 0 → 3, other_wrist
  0 → 12 of 60, no false alarm added (0.56 per device-hour, all the ADWIN orientation check); with labels,
  other_wrist 20 → 22. Without the model's rest left out of runs: 0.9–20 false alarms per device-hour.
  This seed, no labels: strap_rotated 0 → 1, other_wrist 1 → 4 of 10 within 10 s, false alarms 0.81 as
  before; with labels unchanged.

Real people through each fold's model (the section above, `--folds`: `benchmarks/real_data.py` run as
`--datasets exermote`, `--datasets barbell uci-hapt` and `--datasets muvr`, each with its own `--work`,
their data-set folders linked into one): the error detector (HDDM_A) fired on none of them. With labels,
muvr's alarms are the per-class and set checks at the edges of its one-set files (see above), barbell's
one is fold A's rest, a class its model never learnt (it calls it overhead press, so the rest is a run
to the run check), exermote's one a burpee set at 27°. Without labels, 3 of exermote's 4 alarms (the
ADWIN check keyed by the predicted class) fall on windows the model calls rest: a person at rest holds
the arm any way. Leaving predicted rest out of that check removed them but, in the simulator (tuning
seeds, no labels), cut the sensor turns detected at all within 300 s from 15 to 8 (strap_rotated) and 32
to 24 (other_wrist) of 60, with the same false alarms there: not adopted; the simulated rest is held more
alike from one rest to the next than exermote's people hold theirs.

What is left of "within 10 s" (tuning seeds, 120 sensor-scenario devices, 38 detected within 10 s): 56
onsets fall in a rest (rest is 56 % of the simulated workout time), 47 of them with no exercise window
in the next 8 s. At rest a strap turned about the forearm looks like the wrist rolled, which people do
all the time between sets: a check of the rest's own usual direction (ignoring gestures, 3–4 windows
turned alike to fire) reached 4 of 60 within 10 s at 0.38 false alarms per device-hour, and 6 of 60 at
7 per device-hour: not adopted. Of the 30 misses with the onset in a set, 12 are turns that gravity
barely shows (under 20°: deadlift, row, the presses, lunges: the arm hangs or points along the axis the
strap turned about), the others sets that began one or two windows before the onset or ended one window
after it, and loosely held sit-ups on the other wrist (their set spread puts the limit above the turn;
a lower multiple of the spread gave sit-up false alarms first).

The gyroscope for the turns gravity does not show: studied, not built (2026-12-06; tuning seeds 20000
and 30000, 10 devices per sensor scenario each, the simulator's streams compared window by window with
their twins without the scenario, as above; a script outside the repository, no model). A strap turned
about the forearm also turns the axis the wrist rotates about in the sensor's frame, so the gyroscope
might show what gravity hides. Where gravity is turned by less than 20° (the lifts above), the window's
main rotation axis is turned by a median of 40–77° (bench press, deadlift, overhead press, row). But in
those very lifts the axis is loose from one window to the next within a quiet set (the largest eigenvalue
of the window's sum of ω ωᵀ holds only 50–70% of its trace; the axis strays from the set's by a median
of 21–45° and 72–86° at the 95th percentile), while it is steady where gravity already tells (curl,
jumping jack, running, walking: under 6° at the 95th percentile). Comparing the whole normalised tensor
(ω ωᵀ over the window, trace 1) with the rest of its set instead: beyond the 99th percentile of quiet
windows of the same lift are, of the turned windows that gravity misses, row 78% and 25% (the two seeds),
deadlift 22% and 52%, bench press – and 8%, overhead press 0% and 0%, lunge – and 2%. So it would reach
some rows and deadlifts at a per-window false rate near 1% before any confirmation, a few of the 12
such misses of 120, and it serves only a model that reads the gyroscope (the simulator's `default.pt`
reads the accelerometer alone, so the pipeline would have to keep the gyroscope for the monitor). Not
built; a lead if real sensors show steadier axes than the simulator.

How soon a behavioural drift can show at all (2026-12-06, later; `python benchmarks/drift_bound.py`, 40 s,
tuning seeds 20000 and 30000, 30 devices per scenario each, the same devices as this script's; no model,
no detector). The simulator starts a new person or fatigue at the end of the set or rest under way, and
the new person begins with a rest. So, from the onset: no new person does any exercise window within 10 s
(0 of 60; the first comes a median 34 s after the onset), and no check can see what the person does
differently before that. Fatigue: 33 of 60 devices have an exercise window within 10 s, but only 11 of
60 a set of a class done before the onset (19 of 60 within 300 s), the only reference of the same person
a per-class check has. And that set moves only a little less: its first 3 windows' mean log
`window_motion` lies a median 0.21 below the same class's sets before the onset (0.81×; quartiles −0.41
and −0.09), where quiet devices' sets spread with a standard deviation of 0.14 (99% within −0.48 and
+0.45); 2 of those 19 fall outside that range. So within 10 s of the onset, the behavioural scenarios are
out of reach of any detector for every new person and for most fatigued ones, whatever its thresholds;
the goal can be met in the simulator only for the sensor scenarios, and there only where the onset falls
in or just before a set (above).
"""


def run(streams: dict[str, DeviceStream], duration: float, labels: bool, model_path: Path) -> dict:
    """Every device's detections [(t from its start, signal)] and wrong windows [t]."""
    model, _ = load_checkpoint(model_path)
    pipeline = Pipeline(StatefulClassifier(model))
    monitor = Monitor()
    window_s = model.config.window_seconds
    events: dict[str, list] = defaultdict(list)
    wrong: dict[str, list] = defaultdict(list)
    step = 2.0
    for _ in range(int(duration / step)):
        for name, stream in streams.items():
            chunk = stream.read(step)
            acc = chunk.acc * np.float32(G_STANDARD) if chunk.unit == "g" else chunk.acc
            pipeline.add(SampleBatch(name, chunk.t, acc.astype(np.float32)), arrival=0.0)
        for p in pipeline.classify_ready():
            stream = streams[p.device]
            t = p.t_end - stream.t0
            found = monitor.observe(p.device, p.t_end, p.magnitude, p.confidence, p.mean_acc, p.label,
                                    p.motion)
            truth = str(stream.truth_label(p.t_end - 1.0))
            if truth != p.label:
                wrong[p.device].append(t)
            # as the consumer labels windows: only where one label holds from the window's start to its end
            span = str(stream.truth_label(p.t_end - window_s + 0.02))
            if labels and span == truth == str(stream.truth_label(p.t_end)):
                found += monitor.labelled(p.device, p.t_end, truth, p.label, p.mean_acc, p.motion)
            events[p.device] += [(t, e.signal) for e in found if e.device == p.device]
    return {"events": events, "wrong": wrong}


def turned_after(stream: DeviceStream, horizon: float, window: float = 2.0,
                 in_exercise: bool = False) -> float | None:
    """Seconds from a sensor scenario's onset to the first window whose mean specific force points more
    than VISIBLE_DEG away from where it would point without the drift: the same device, person and
    workout again without the scenario (its parameters are drawn either way, so the streams match).
    ``in_exercise``: the first such window that holds no rest (at rest, a strap turned about the forearm
    looks like the wrist rolled, which people do between sets all the time)."""
    onset = stream.scenario_start
    drifted, twin = (DeviceStream(stream.device, seed=stream.seed, rate=stream.rate,
                                  placement=stream.placement, scenario=scenario, scenario_start=onset,
                                  t0=stream.t0) for scenario in (stream.scenario, None))
    a, b = drifted.read(onset + horizon), twin.read(onset + horizon)
    n = min(len(a.t), len(b.t))
    for start in np.arange(stream.t0 + onset, stream.t0 + onset + horizon - window, window):
        rows = (a.t[:n] >= start) & (a.t[:n] < start + window)
        if rows.any() and not (in_exercise and (a.label[:n][rows] == REST).any()):
            u, v = a.acc[:n][rows].mean(axis=0), b.acc[:n][rows].mean(axis=0)
            cos = float(u @ v / (np.linalg.norm(u) * np.linalg.norm(v) + 1e-12))
            if np.degrees(np.arccos(np.clip(cos, -1.0, 1.0))) > VISIBLE_DEG:
                return float(start - stream.t0 - onset)
    return None


REAL = {"uci-hapt": "uci-hapt", "exermote": "exermote", "barbell": "barbell-metamotion", "muvr": "muvr-gym"}


def real_alarms(source: Path, window: float = 2.0) -> tuple[dict, list[str]]:
    """The labelled orientation checks on real recordings in which no sensor is known to have moved:
    each device's samples cut into ``window``-second windows, every window within one label fed to
    ``Monitor.labelled`` as the consumer feeds it, with its true class as the prediction (the error
    detector, which needs a model of each data set, is left out). Every alarm is a false one."""
    rows, lines = {}, []
    if not source.is_dir():  # said, not silently left out of the page
        print(f"drift: no real recordings at {source} (--source): their section is left out", file=sys.stderr)
        return rows, lines
    for name, folder in REAL.items():
        if not (source / folder).is_dir():
            print(f"drift: no {name} data set at {source / folder} (--source): its row is left out", file=sys.stderr)
            continue
        rec = load_dataset(name, source / folder)
        monitor, alarms, seconds = Monitor(), Counter(), 0.0
        for device in np.unique(rec.device):
            mine = rec.device == device
            t, acc, label = rec.t[mine], rec.acc[mine], rec.label[mine]
            edges = np.searchsorted(t, np.arange(t[0], t[-1], window))
            for a, b in zip(edges[:-1], edges[1:], strict=True):
                if b - a < 3:  # a gap in the recording
                    continue
                seconds += window
                truth = label[a]
                if truth and (label[a:b] == truth).all():
                    found = monitor.labelled(str(device), float(t[b - 1]), str(truth), str(truth),
                                             acc[a:b].mean(axis=0), window_motion(acc[a:b]))
                    alarms.update(f"{e.detector} ({e.signal}, {truth})" for e in found if e.device == device)
        hours = seconds / 3600
        rows[name] = {"devices": int(len(np.unique(rec.device))), "device_hours": round(hours, 2),
                      "alarms": dict(alarms), "per_device_hour": round(sum(alarms.values()) / hours, 2)}
    if rows:
        lines = ["## Real recordings, no drift known (labelled orientation checks only)", "",
                 "Each device's samples cut into 2 s windows; every window within one label fed to the "
                 "monitor with its true class as the prediction, so the error detector (which needs a model "
                 "of each data set) is left out. No sensor is known to have moved: every alarm is false.", "",
                 "| data set | devices | device-hours | alarms | per device-hour |", "|---|---|---|---|---|"]
        lines += [f"| {n} | {r['devices']} | {r['device_hours']} | "
                  f"{', '.join(f'{k}: {v}' for k, v in r['alarms'].items()) or 'none'} | "
                  f"{r['per_device_hour']} |"
                  for n, r in rows.items()]
        lines.append("")
    return rows, lines


def fold_alarms(folds: Path) -> tuple[dict, list[str]]:
    """Every detector over real people, through models trained without them: each fold of
    ``benchmarks/real_data.py --work FOLDS`` (``<data set>/<fold>/model.pt`` and ``test.csv``) evaluated
    as ``harstream evaluate`` does, its drift alarms summed per data set
    (``models.evaluate.drift_alarms``)."""
    from models.evaluate import evaluate
    from stream.recording import read_recording

    rows: dict[str, dict] = {}
    for model_path in sorted(folds.glob("*/*/model.pt")):
        name = model_path.parent.parent.name
        model, info = load_checkpoint(model_path)
        drift = evaluate(model, read_recording(model_path.parent / "test.csv"), info["version"])["drift"]
        row = rows.setdefault(name, {"folds": 0, "device_hours": 0.0,
                                     "with_labels": Counter(), "without_labels": Counter()})
        row["folds"] += 1
        row["device_hours"] += drift["device_hours"]
        for mode in ("with_labels", "without_labels"):
            row[mode].update(drift[mode]["by_detector"])
    lines = []
    if rows:
        lines = ["## Real recordings through each fold's model (every detector)", "",
                 f"The folds of `python benchmarks/real_data.py --work {folds}`: each test person's "
                 "recording "
                 "streamed through the model trained without them (`harstream evaluate`, which reports the "
                 "monitor's alarms), the monitor fed as the consumer feeds it. Nothing is known to drift in "
                 "these recordings.", "",
                 "| data set | folds | device-hours | with labels | per device-hour | without labels "
                 "| per device-hour |", "|---|---|---|---|---|---|---|"]
        for name, r in rows.items():
            cells = []
            for mode in ("with_labels", "without_labels"):
                n = sum(r[mode].values())
                cells += [", ".join(f"{k} {v}" for k, v in sorted(r[mode].items())) or "none",
                          f"{n / r['device_hours']:.2f}"]
            lines.append(f"| {name} | {r['folds']} | {r['device_hours']:.2f} | " + " | ".join(cells) + " |")
        lines.append("")
    out = {name: {"folds": r["folds"], "device_hours": round(r["device_hours"], 3),
                  "with_labels": dict(r["with_labels"]), "without_labels": dict(r["without_labels"])}
           for name, r in rows.items()}
    return out, lines


def measure(args, drifting: dict, quiet: dict, labels: bool) -> tuple[dict, list[str]]:
    """One run of the drifting and the quiet devices; the figures and their markdown section."""
    rows = {}
    drift_run = run(drifting, args.onset + args.after, labels, args.model)
    for s in SCENARIOS:
        names = [n for n in drifting if n.startswith(s)]
        delays, from_wrong, alarms, signals = [], [], 0, Counter()
        visible, from_visible, in_set, from_set = [], [], [], []
        for n in names:
            onset = drifting[n].scenario_onset or args.onset
            fired = [(t, sig) for t, sig in drift_run["events"][n] if t >= WARM_UP]
            alarms += sum(1 for t, _ in fired if t < onset)
            after = [(t, sig) for t, sig in fired if t >= onset]
            if after:
                delays.append(after[0][0] - onset)
                signals[after[0][1]] += 1
            first_wrong = next((t for t in drift_run["wrong"][n] if t >= onset), None)
            seen = [t for t, _ in after if first_wrong is not None and t >= first_wrong]
            if seen:
                from_wrong.append(seen[0] - first_wrong)
            shown = turned_after(drifting[n], args.after) if s in SENSOR_SCENARIOS else None
            if shown is not None:  # a detection before the window that shows the turn counts as at once
                visible.append(shown)
                from_visible.append(max(0.0, after[0][0] - onset - shown) if after else None)
            shown = turned_after(drifting[n], args.after, in_exercise=True) if s in SENSOR_SCENARIOS else None
            if shown is not None:
                in_set.append(shown)
                from_set.append(max(0.0, after[0][0] - onset - shown) if after else None)
        rows[s] = {"turned_visible_median_s": round(float(np.median(visible)), 1) if visible else None,
                   "within_10s_of_visible": (f"{sum(d is not None and d <= 10 for d in from_visible)}"
                                             f"/{len(from_visible)}") if s in SENSOR_SCENARIOS else None,
                   "turned_in_exercise_median_s": round(float(np.median(in_set)), 1) if in_set else None,
                   "within_10s_of_exercise": (f"{sum(d is not None and d <= 10 for d in from_set)}"
                                              f"/{len(from_set)}") if s in SENSOR_SCENARIOS else None,
                   "detected": f"{len(delays)}/{len(names)}",
                   "delay_median_s": round(float(np.median(delays)), 1) if delays else None,
                   "delay_within_10s": sum(d <= 10 for d in delays),
                   "from_first_wrong_median_s": (round(float(np.median(from_wrong)), 1) if from_wrong
                                                 else None),
                   "first_signal": dict(signals),
                   "alarms_before_onset": alarms}
    quiet_run = run(quiet, args.quiet_minutes * 60.0, labels, args.model)
    counted = [(n, t, sig) for n, ev in quiet_run["events"].items() for t, sig in ev if t >= WARM_UP]
    hours = args.quiet_devices * (args.quiet_minutes * 60.0 - WARM_UP) / 3600
    by_signal = Counter(sig for _, _, sig in counted)
    rate = len(counted) / hours
    # a 95% interval for a Poisson rate (Wilson–Hilferty approximation of the chi-square quantiles)
    k = len(counted)
    lo = 0.0 if k == 0 else k * (1 - 1 / (9 * k) - 1.96 / (3 * np.sqrt(k))) ** 3 / hours
    hi = (k + 1) * (1 - 1 / (9 * (k + 1)) + 1.96 / (3 * np.sqrt(k + 1))) ** 3 / hours
    out = {"labels": labels, "scenarios": rows,
           "no_drift": {"device_hours": round(hours, 2), "alarms": k, "per_device_hour": round(rate, 2),
                        "interval_95": [round(lo, 2), round(hi, 2)], "by_signal": dict(by_signal)}}
    lines = [
        f"## {'Every device labels its windows' if labels else 'No labels'}", "",
        "| scenario | detected | delay from onset, median (s) | within 10 s | from the first wrong window, "
        f"median (s) | sensor turned > {VISIBLE_DEG:g}°, median from onset (s) | within 10 s of that "
        "| turned in an exercise (not rest), median from onset (s) | within 10 s of that "
        "| first detector | alarms before the onset |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for s, r in rows.items():
        lines.append(f"| {s} | {r['detected']} | {r['delay_median_s']} | {r['delay_within_10s']} | "
                     f"{r['from_first_wrong_median_s']} | "
                     f"{r['turned_visible_median_s'] if s in SENSOR_SCENARIOS else '–'} | "
                     f"{r['within_10s_of_visible'] or '–'} | "
                     f"{r['turned_in_exercise_median_s'] if s in SENSOR_SCENARIOS else '–'} | "
                     f"{r['within_10s_of_exercise'] or '–'} | "
                     f"{', '.join(f'{k} {v}' for k, v in r['first_signal'].items()) or '–'} | "
                     f"{r['alarms_before_onset']} |")
    lines += ["", f"No drift: **{rate:.2f} false alarms per device-hour** ({k} in {hours:.1f} device-hours; "
              f"95% interval {lo:.2f}–{hi:.2f}); by detector: "
              + (", ".join(f"{s} {c}" for s, c in by_signal.items()) or "none") + ".", ""]
    return out, lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, default=10, help="devices per drift scenario")
    parser.add_argument("--onset", type=float, default=120.0, help="device seconds before the drift")
    parser.add_argument("--after", type=float, default=300.0, help="device seconds after the onset")
    parser.add_argument("--quiet-devices", type=int, default=40, help="devices without drift")
    parser.add_argument("--quiet-minutes", type=float, default=30.0, help="how long they run")
    parser.add_argument("--labels", choices=("all", "none", "both"), default="both",
                        help="every device labels its windows, none does, or one run of each (default)")
    parser.add_argument("--model", type=Path, default=default_model_path(),
                        help="checkpoint (default: the shipped model)")
    parser.add_argument("--seed", type=int, default=7000,
                        help="picks the simulated people and workouts (default: 7000, held out from the "
                             "thresholds' choice)")
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "datasets",
                        help="real recordings (../shared/datasets) for the false alarms on real people; "
                             "skipped where absent")
    parser.add_argument("--folds", type=Path, default=None,
                        help="benchmarks/real_data.py's --work folder: every detector over each fold's test "
                             "people, through the model trained without them")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "drift.md",
                        help="the page to write, and its .json beside it (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.folds is not None and not any(args.folds.glob("*/*/model.pt")):  # before minutes of simulation
        parser.error(f"--folds {args.folds} holds no <data set>/<fold>/model.pt: give the --work folder of a "
                     "finished `python benchmarks/real_data.py` run")
    torch.set_num_threads(1)
    started = time.monotonic()

    def drifting() -> dict[str, DeviceStream]:  # the same people and workouts for every run
        return {f"{s}-{k}": DeviceStream(f"{s}-{k}", seed=args.seed + 1000 * i + k, scenario=s,
                                         scenario_start=args.onset)
                for i, s in enumerate(SCENARIOS) for k in range(args.devices)}

    def quiet() -> dict[str, DeviceStream]:
        return {f"quiet-{k}": DeviceStream(f"quiet-{k}", seed=args.seed + 9000 + k)
                for k in range(args.quiet_devices)}

    results, lines = {}, ["# Drift detection: delay and false alarms"]
    for mode in (["all", "none"] if args.labels == "both" else [args.labels]):
        out, section = measure(args, drifting(), quiet(), mode == "all")
        results[mode] = out
        lines += section
    results["real"], section = real_alarms(args.source)
    lines += section
    if args.folds is not None:
        results["folds"], section = fold_alarms(args.folds)
        lines += section
    wall = time.monotonic() - started
    command = ("python benchmarks/drift.py " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    lines[1:1] = ["", f"Reproduce: `{command}` ({time.strftime('%Y-%m-%d')}, {wall:.0f} s). The consumer's "
                  f"`Monitor` fed as the consumer feeds it (labels only on windows that one label covers), "
                  f"without a broker, in device time, model frozen (`{args.model.name}`). "
                  f"{args.devices} devices per scenario, drift at {args.onset:.0f} s, {args.after:.0f} s "
                  f"after; {args.quiet_devices} devices without drift for {args.quiet_minutes:g} min. "
                  f"Detections in the first {WARM_UP:.0f} s are not counted. "
                  + (f"**Seed {args.seed} was used to choose the monitor's thresholds: not a held-out figure.**"
                     if args.seed in TUNED_ON else
                     f"Seed {args.seed}; the monitor's thresholds were chosen on seeds "
                     f"{' and '.join(map(str, TUNED_ON))} (other simulated people): this is a held-out figure."),
                  ""]
    if args.seed == 7000:
        lines += [HISTORY.rstrip("\n")]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"command": command, "seed": args.seed,
                                                         "held_out": args.seed not in TUNED_ON,
                                                         "tuned_on_seeds": list(TUNED_ON), "results": results,
                                                         "wall_seconds": round(wall, 1)}, indent=1))
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
