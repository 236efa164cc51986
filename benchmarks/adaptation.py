"""Adaptation benchmark: drift scenarios through a real broker, frozen model vs online fine-tuning.

For each scenario (strap rotated, other wrist, new person, fatigue) a few simulated devices switch
into it at ``--onset`` seconds; identical streams go to several consumers on their own topic prefixes:
one frozen (``--no-learn``), and one per ``--adapt`` setting learning online from the labels that
every device publishes (``device``: per-device adapters, the default; ``shared``: fine-tuning the
shared network). A
group of devices without drift measures false alarms. The simulator runs ``--speed`` times faster
than real time (device time is what every figure below is measured in).

Reported per scenario and consumer: accuracy before the drift, in the first minute after it, after
60 and after 180 seconds of labelled data; the delay until a detector fires on the device; false
alarms per device-hour without drift.

    python benchmarks/adaptation.py [--devices 4] [--speed 5] [--onset 60] [--model MODEL]
                                    [--adapt device shared]

Writes ``docs/adaptation.md`` and ``docs/adaptation.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulators.workout import DeviceStream  # noqa: E402
from stream.broker import EmbeddedBroker  # noqa: E402
from stream.mqtt import BrokerURL, broker_answers, connect  # noqa: E402

SCENARIOS = ("strap_rotated", "other_wrist", "new_person", "fatigue")
BINS = {"before": (-60, 0), "first_minute": (0, 60), "after_60s_labels": (60, 120), "after_180s_labels": (180, 240)}


def publish(url: BrokerURL, prefixes: list[str], streams: dict[str, DeviceStream], duration: float,
            speed: float, interval: float, stop: threading.Event) -> None:
    client = connect(url, "adapt-pub")
    seq: dict[str, int] = defaultdict(int)
    last_label: dict[str, str] = {}
    start = time.monotonic()
    ticks = int(duration / interval)
    for tick in range(ticks):
        if stop.is_set():
            break
        delay = start + tick * interval / speed - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        for name, stream in streams.items():
            chunk = stream.read(interval)
            if len(chunk.t) == 0:
                continue
            labels = []
            for i in [0, *(np.flatnonzero(chunk.label[1:] != chunk.label[:-1]) + 1).tolist()]:
                if last_label.get(name) != chunk.label[i]:
                    last_label[name] = str(chunk.label[i])
                    labels.append(orjson.dumps({"label": str(chunk.label[i]), "t": float(chunk.t[i])}))
            body = orjson.dumps({"seq": seq[name], "t": chunk.t, "acc": chunk.acc, "unit": chunk.unit},
                                option=orjson.OPT_SERIALIZE_NUMPY)
            seq[name] += 1
            for prefix in prefixes:
                for label in labels:
                    client.publish(f"{prefix}/{name}/label", label, qos=1)
                client.publish(f"{prefix}/{name}/imu", body, qos=1)
    client.loop_stop()
    client.disconnect()


def _said(err) -> str:
    """The last line a consumer wrote to ``err`` (a file): its one-line error, or a traceback's last line."""
    err.seek(0)
    lines = [x.strip() for x in err.read().decode(errors="replace").splitlines() if x.strip()]
    return lines[-1] if lines else "nothing said"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--broker", default=os.environ.get("HARSTREAM_BROKER", "mqtt://127.0.0.1:1883"),
                        help="mqtt://host:port; the embedded broker is started there where nothing answers "
                             "(default: HARSTREAM_BROKER, else %(default)s)")
    parser.add_argument("--model", default=None, help="checkpoint (default: the shipped model)")
    parser.add_argument("--devices", type=int, default=4, help="devices per scenario")
    parser.add_argument("--quiet-devices", type=int, default=12, help="devices without drift (false alarms)")
    parser.add_argument("--onset", type=float, default=60.0,
                        help="device seconds before the drift; above 20, the detectors' warm-up, whose alarms are "
                             "not counted (default: %(default)s)")
    parser.add_argument("--speed", type=float, default=5.0, help="times faster than real time")
    parser.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS,
                        help="drift scenarios of the simulator (default: all four)")
    parser.add_argument("--seed", type=int, default=100, help="picks the simulated people (default: %(default)s)")
    parser.add_argument("--adapt", nargs="+", default=["device", "shared"], choices=("device", "shared", "both"),
                        help="one fine-tuning consumer per setting of `harstream consume --adapt`")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "adaptation.md",
                        help="the page to write, and its .json beside it (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.onset > 20:  # false alarms are counted after the warm-up: over none, "per hour" was negative
        parser.error(f"--onset must be above 20 s (the detectors' warm-up), got {args.onset:g}")
    from models.checkpoint import CheckpointError, default_model_path, load_checkpoint
    try:  # a wrong --model is named now, not by consumers that never come online
        load_checkpoint(args.model or default_model_path())
    except CheckpointError as exc:
        raise SystemExit(f"adaptation: {exc}") from None
    args.out.parent.mkdir(parents=True, exist_ok=True)  # now, not after the run

    url = BrokerURL.parse(args.broker)
    embedded = None
    if not broker_answers(url):
        if url.tls:  # the embedded broker listens on plain TCP: nothing here would reach it over TLS
            raise SystemExit(f"adaptation: nothing answers at {url}, and the embedded broker speaks plain MQTT "
                             f"only: start a TLS broker there, or pass --broker mqtt://{url.host}:{url.port}")
        embedded = EmbeddedBroker(url).start()
    duration = args.onset + 240.0
    tag = uuid.uuid4().hex[:6]
    prefixes = {"frozen": f"adaptF{tag}", **{f"online ({m})": f"adapt{m[0].upper()}{tag}" for m in args.adapt}}
    which_of = {p: w for w, p in prefixes.items()}
    streams: dict[str, DeviceStream] = {}
    scenario_of: dict[str, str | None] = {}
    for s_index, scenario in enumerate([*args.scenarios, None]):
        count = args.devices if scenario else args.quiet_devices
        for k in range(count):
            name = f"{(scenario or 'none').replace('_', '')}-{k}"
            streams[name] = DeviceStream(name, seed=args.seed + 100 * s_index + k, scenario=scenario,
                                         scenario_start=args.onset)
            scenario_of[name] = scenario
    predictions: dict[str, list] = defaultdict(list)
    drifts: dict[str, list] = defaultdict(list)
    lock = threading.Lock()

    online: set[str] = set()

    def on_message(client, userdata, msg):
        if "/_consumer/" in msg.topic:  # a consumer's retained status
            if msg.payload == b"online":
                online.add(msg.topic.split("/")[0])
            return
        prefix, device, kind = msg.topic.split("/")
        which = which_of[prefix]
        body = orjson.loads(msg.payload)
        with lock:
            (predictions if kind == "prediction" else drifts)[(which, device)].append(body)

    watcher = connect(url, "adapt-watch", on_message=on_message,
                      subscriptions=[(f"{p}/+/{kind}", 1) for p in prefixes.values()
                                     for kind in ("prediction", "drift")]
                      + [(f"{p}/_consumer/+/status", 1) for p in prefixes.values()])
    consumers: dict[str, tuple[subprocess.Popen, object]] = {}  # prefix -> (process, its stderr kept)
    try:
        for which, prefix in prefixes.items():
            cmd = [sys.executable, "-m", "stream.cli", "consume", "--broker", args.broker, "--prefix", prefix,
                   "--id", f"adapt-{which.split()[-1].strip('()')}-{tag}", "--metrics-interval", "5"]
            if args.model:
                cmd += ["--model", args.model]
            if which == "frozen":
                cmd.append("--no-learn")
            else:
                cmd += ["--adapt", which[len("online ("):-1]]
            err = tempfile.TemporaryFile()
            consumers[prefix] = (subprocess.Popen(cmd, stderr=err), err)
        deadline = time.monotonic() + 180  # every consumer up and subscribed (slow on a loaded machine)
        while len(online) < len(prefixes) and time.monotonic() < deadline:
            for prefix, (c, err) in consumers.items():
                if c.poll() is not None:
                    raise SystemExit(f"adaptation: the {which_of[prefix]} consumer exited with status "
                                     f"{c.returncode}: {_said(err)}")
            time.sleep(0.2)
        if len(online) < len(prefixes):  # without them there is nothing to measure: the page is left as it was
            raise SystemExit("adaptation: consumers not online after 180 s: "
                             + ", ".join(which_of[p] for p in prefixes.values() if p not in online))
        time.sleep(1.0)
        stop = threading.Event()
        started = time.monotonic()
        print(f"adaptation: {len(streams)} devices, {duration:.0f} device-seconds at {args.speed:g}x",
              file=sys.stderr)
        publish(url, list(prefixes.values()), streams, duration, args.speed, 0.5, stop)
        time.sleep(8)
    finally:
        for c, _ in consumers.values():
            c.send_signal(signal.SIGTERM)
        for c, err in consumers.values():
            try:
                c.wait(30)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
            err.close()
        watcher.disconnect()
        watcher.loop_stop()
        if embedded:
            embedded.stop()
    wall = time.monotonic() - started

    results = {}
    for scenario in [*args.scenarios, None]:
        names = [n for n, s in scenario_of.items() if s == scenario]
        row = {}
        for which in prefixes:
            hits = {b: [] for b in BINS}
            delays, alarms = [], 0
            from_error = []  # delay from the first wrong window after the onset (drift seen in the output)
            by_signal: dict[str, int] = defaultdict(int)
            for name in names:
                stream = streams[name]
                onset = stream.scenario_onset if scenario else args.onset
                origin = stream.t0
                first_wrong = None
                for p in predictions[(which, name)]:
                    middle = p["t"] - 1.0
                    rel = middle - origin - (onset if onset is not None else args.onset)
                    truth = stream.truth_label(middle)
                    if rel >= 0 and p["label"] != truth and first_wrong is None:
                        first_wrong = rel
                    for b, (lo, hi) in BINS.items():
                        if lo <= rel < hi:
                            hits[b].append(p["label"] == truth)
                fired = sorted(d["t"] - origin - (onset or args.onset) for d in drifts[(which, name)])
                for d in drifts[(which, name)]:
                    x = d["t"] - origin - (onset or args.onset)
                    quiet = (x < 0 if scenario else True) and x > -args.onset + 20
                    by_signal[f"{d['signal']}{'' if quiet else ' (after onset)'}"] += 1
                if scenario:
                    after = [x for x in fired if x >= 0]
                    if after:
                        delays.append(after[0])
                    seen = [x for x in fired if first_wrong is not None and x >= first_wrong]
                    if seen:
                        from_error.append(seen[0] - first_wrong)
                    alarms += sum(1 for x in fired if x < 0 and x > -args.onset + 20)
                else:
                    alarms += sum(1 for x in fired if x > -args.onset + 20)  # after a warm-up of 20 s
            quiet_hours = len(names) * (duration - 20) / 3600 if not scenario else len(names) * (args.onset - 20) / 3600
            row[which] = {
                **{b: (round(float(np.mean(v)), 3) if v else None) for b, v in hits.items()},
                "windows": {b: len(v) for b, v in hits.items()},
                "detection_delay_s": {"median": round(float(np.median(delays)), 1) if delays else None,
                                      "detected": f"{len(delays)}/{len(names)}",
                                      "median_from_first_wrong_window": round(float(np.median(from_error)), 1)
                                      if from_error else None} if scenario else None,
                "false_alarms_per_device_hour": round(alarms / quiet_hours, 2) if quiet_hours else None,
                "events_by_signal": dict(by_signal),
            }
        results[scenario or "no_drift"] = row
    out = {"command": " ".join(["python benchmarks/adaptation.py", *(sys.argv[1:] if argv is None else argv)]),
           "wall_seconds": round(wall, 1), "speed": args.speed,
           "devices_per_scenario": args.devices, "quiet_devices": args.quiet_devices, "results": results}
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1))
    lines = ["# Adaptation to drift: frozen model vs online learning", "",
             f"Reproduce: `{out['command']}` ({wall:.0f} s wall time at {args.speed:g}x real time).", "",
             "Accuracy of each consumer's predictions against the simulator's truth, by device time relative "
             "to the drift's onset; every device publishes its labels from the start. Detection delay: "
             "device seconds from the onset to the first drift event on that device (any detector), median "
             "over the devices where one fired (how many); and from the device's first wrong window after "
             "the onset (a drift that begins during a rest shows only when the next set starts).", "",
             "| scenario | consumer | before | first minute | after 60 s of labels | after 180 s | detection delay (s) "
             "| … from the first wrong window (s) | false alarms / device-hour |",
             "|---|---|---|---|---|---|---|---|---|"]
    for scenario, row in results.items():
        for which, r in row.items():
            fmt = lambda x: "-" if x is None else f"{x:.0%}"  # noqa: E731
            det = r["detection_delay_s"]
            lines.append(f"| {scenario} | {which} | {fmt(r['before'])} | {fmt(r['first_minute'])} | "
                         f"{fmt(r['after_60s_labels'])} | {fmt(r['after_180s_labels'])} | "
                         f"{'-' if not det else str(det['median']) + ' (' + det['detected'] + ')'} | "
                         f"{'-' if not det else det['median_from_first_wrong_window']} | "
                         f"{r['false_alarms_per_device_hour']} |")
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
