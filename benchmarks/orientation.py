"""How a device is worn: the cost of the orientation fits (models.orientation), on real devices.

For every person-held-out fold of the real data sets that have a gyroscope (the folds of
``benchmarks/real_data.py``), the orientation reference is built from the other people's windows as
``harstream train`` builds it, and the held-out devices' windows are fed to ``Orienter`` the way the
consumer feeds them (one window per device per call, no budget). No model is trained: the fits do not
depend on one. Each device is fitted by:

- ``incremental``: the ``Orienter`` as it is, which keeps each device's sums of scores between its
  stages and scores only the windows added since;
- ``from scratch``: the same code with the sums thrown away before every stage (every stage scores
  all of the device's windows again), the baseline of this run;
- with ``--against REV``, the ``models/orientation.py`` of that git revision, loaded from
  ``git show`` into a module of its own, as a second baseline.

Writes ``docs/orientation.md`` and ``docs/orientation.json``. Reported: the fitting time per device
(all its stages), the longest single fit (how late a consumer cycle that runs it is), their ratios
against the baselines, and whether every device ended with the same turn (within 0.1 degrees) and the
same decision.

    python benchmarks/orientation.py [--datasets exermote barbell uci-hapt] [--against dd6f16b]
                                     [--recordings /tmp/harimport] [--docs docs]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from real_data import SOURCE, folds, recording  # noqa: E402

from models.data import labelled_streams  # noqa: E402
from models.orientation import OrientationConfig, Orienter  # noqa: E402
from models.rnn import ModelConfig  # noqa: E402
from models.train import orientation_reference  # noqa: E402
from stream.recording import read_recording  # noqa: E402

DATASETS = ("exermote", "barbell", "uci-hapt")  # the ones with a gyroscope


def device_windows(rec, window: int, rate: float) -> dict[str, np.ndarray]:
    """Each device's whole windows (N, window, 6), its gap-free runs in order."""
    out: dict[str, list[np.ndarray]] = defaultdict(list)
    for s in labelled_streams(rec, rec.classes, rate, gyro=True):
        n = len(s.x) // window
        if n:
            out[s.device].append(s.x[:n * window].reshape(n, window, 6))
    return {d: np.concatenate(w) for d, w in out.items()}


def timed(orienter_cls, fresh_cache: bool):
    """An Orienter class that times every fit per device (and, with ``fresh_cache``, forgets the sums
    kept between stages)."""

    class Timed(orienter_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.fit_seconds: dict[str, list[float]] = defaultdict(list)

        def _decide(self, device, features, margin, last, *rest):
            if fresh_cache and rest:
                rest = ({},)
            started = time.perf_counter()
            super()._decide(device, features, margin, last, *rest)
            self.fit_seconds[device].append(time.perf_counter() - started)

    return Timed


def feed(orienter, windows: dict[str, np.ndarray], limit: int) -> None:
    """One window per device per call, round by round, as a consumer cycle would."""
    for k in range(limit):
        devices = [d for d, w in windows.items() if len(w) > k]
        if not devices:
            break
        orienter.apply(devices, np.stack([windows[d][k] for d in devices]))


def load_revision(rev: str):
    """models/orientation.py as it was at ``rev``, as a module of its own."""
    done = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:models/orientation.py"],
                          capture_output=True, text=True)
    if done.returncode != 0:  # git's reason (an unknown revision, no such file there), not a traceback
        said = done.stderr.strip().splitlines()
        raise SystemExit(f"orientation: --against {rev}: " + (said[-1] if said else "git show failed"))
    text = done.stdout
    path = Path(tempfile.mkdtemp()) / ("orientation_" + re.sub(r"\W", "_", rev) + ".py")
    path.write_text(text)
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def outcome(orienter, device: str) -> tuple[bool, np.ndarray | None]:
    return device in orienter.decided, orienter.turns.get(device)


def same(a: tuple, b: tuple) -> bool:
    (decided_a, Ra), (decided_b, Rb) = a, b
    if decided_a != decided_b or (Ra is None) != (Rb is None):
        return False
    return Ra is None or np.degrees(Rotation.from_matrix(Ra.T @ Rb).magnitude()) < 0.1


def markdown(rows: list[dict], kinds: list[str], args, seconds: float) -> str:
    devices = sum(r["devices"] for r in rows)
    total = {k: sum(r["seconds"][k] for r in rows) for k in kinds}
    longest = {k: max(r["longest_fit"][k] for r in rows) for k in kinds}
    command = "python benchmarks/orientation.py --datasets " + " ".join(args.datasets)
    command += f" --against {args.against}" if args.against else ""
    command += f" --seed {args.seed}" if args.seed else ""  # another reference sample: other figures
    lines = [
        "# How a device is worn: the cost of the orientation fits",
        "",
        f"Reproduce: `OMP_NUM_THREADS=1 {command}` ({time.strftime('%Y-%m-%d')}, {os.cpu_count()} CPU "
        f"cores, {platform.machine()}, {seconds:.0f} s). The held-out devices of every person-held-out "
        "fold (as `benchmarks/real_data.py` cuts them), each fed window by window to an `Orienter` whose "
        "reference holds the other people's windows; no model involved. Every device's stages (5, 15, "
        "30, 45 windows) on one core; the baselines are measured in the same run.",
        "",
        f"{devices} devices, {sum(r['turned'] for r in rows)} of them turned.",
        "",
        "| fitting | per device (ms) | × incremental | longest single fit (ms) | × incremental "
        "| same turn and decision as from scratch | largest gain difference (nats/window) |",
        "|---|---|---|---|---|---|---|",
    ]
    for k in kinds:
        lines.append(f"| {k} | {total[k] * 1e3 / devices:.1f} | {total[k] / total[kinds[0]]:.2f} | "
                     f"{longest[k] * 1e3:.1f} | {longest[k] / longest[kinds[0]]:.2f} | "
                     f"{sum(r['same_outcome'][k] for r in rows)}/{devices} | "
                     f"{max(r['largest_gain_difference'][k] for r in rows):.1e} |")
    lines += ["", "Per fold (ms per device, " + ", ".join(kinds) + "):", ""]
    for r in rows:
        lines.append(f"- {r['data']} / {r['fold']}: {r['devices']} devices, "
                     + ", ".join(f"{r['seconds'][k] * 1e3 / r['devices']:.1f}" for k in kinds))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS),
                        help="the data sets with a gyroscope (default: all three)")
    parser.add_argument("--against", metavar="REV",
                        help="also time models/orientation.py of this git revision (a second baseline)")
    parser.add_argument("--recordings", type=Path, default=Path("/tmp/harimport"),
                        help="folder of <name>.csv recording files (imported when missing)")
    parser.add_argument("--source", type=Path, default=SOURCE,
                        help="the real data sets as published (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0,
                        help="of the reference sample, as harstream train --seed (default: 0)")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs",
                        help="writes orientation.md and orientation.json here (default: %(default)s)")
    args = parser.parse_args(argv)
    started = time.monotonic()
    mc = ModelConfig()
    config = OrientationConfig()
    kinds = {"incremental": timed(Orienter, False), "from scratch": timed(Orienter, True)}
    old = None
    if args.against:
        old = load_revision(args.against)
        kinds[args.against] = timed(old.Orienter, False)
    rows = []
    for name in args.datasets:
        try:
            rec = read_recording(recording(name, args.recordings, args.source))
        except (subprocess.CalledProcessError, FileNotFoundError) as exc:
            print(f"{name}: no recording file and cannot import it ({exc}); skipped", file=sys.stderr)
            continue
        for fold, mask in folds(name, rec):
            # the reference exactly as harstream train keeps it
            ref = orientation_reference(labelled_streams(rec.take(~mask), rec.classes, mc.rate, gyro=True),
                                        mc.window, args.seed)
            windows = device_windows(rec.take(mask), mc.window, mc.rate)
            seconds, longest, outcomes, gains = {}, {}, {}, {}
            for kind, cls in kinds.items():
                if kind == args.against:  # the same sample, in the old code's classes
                    orienter = cls(old.Reference(ref.g, ref.a, ref.e, old.OrientationConfig()))
                else:
                    orienter = cls(ref)
                feed(orienter, windows, config.windows)
                fits = orienter.fit_seconds
                seconds[kind] = sum(sum(v) for v in fits.values())
                longest[kind] = max((max(v) for v in fits.values()), default=0.0)
                outcomes[kind] = {d: outcome(orienter, d) for d in windows}
                gains[kind] = dict(orienter.gains)
            base = outcomes["from scratch"]
            agree = {kind: int(sum(same(o[d], base[d]) for d in windows)) for kind, o in outcomes.items()}
            gain_diff = {kind: float(max((abs(g[d] - gains["from scratch"][d]) for d in g), default=0.0))
                         for kind, g in gains.items()}
            row = {"data": name, "fold": fold, "devices": len(windows),
                   "turned": int(sum(R is not None for _, R in base.values())),
                   "seconds": seconds, "longest_fit": longest, "same_outcome": agree,
                   "largest_gain_difference": gain_diff}
            rows.append(row)
            print(f"{name} / {fold}: {len(windows)} devices, "
                  + ", ".join(f"{k} {v * 1e3 / max(len(windows), 1):.1f} ms/device "
                              f"(longest fit {longest[k] * 1e3:.1f} ms, same outcome {agree[k]})"
                              for k, v in seconds.items()), flush=True)
    if not rows:
        print("no data set found", file=sys.stderr)
        return 1
    text = markdown(rows, list(kinds), args, time.monotonic() - started)
    print("\n" + text)
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "orientation.md").write_text(text)
    (args.docs / "orientation.json").write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
