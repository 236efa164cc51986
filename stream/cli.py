"""The ``harstream`` command line.

Every command that connects takes ``--broker mqtt://[user:pass@]host:port`` (or ``mqtts://``),
defaulting to ``$HARSTREAM_BROKER`` or mqtt://127.0.0.1:1883. SIGINT and SIGTERM stop every
command cleanly with exit status 0.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import signal
import sys
import threading
from pathlib import Path

from stream.mqtt import BrokerURL, default_broker

log = logging.getLogger("harstream")

EPILOG = "Docs: README.md and DESIGN.md. Environment: HARSTREAM_BROKER sets the default --broker."
ADAPT_CHOICES = ("device", "shared", "both")  # what learns from labels: consume --adapt, demo --adapt
ADAPT_DEFAULT = "device"


def _broker_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--broker", default=default_broker(), metavar="URL",
                   help="mqtt://[user:pass@]host:port or mqtts://... (default: %(default)s)")
    p.add_argument("--ca-file", default=None, help="CA certificate file for mqtts:// brokers")
    p.add_argument("--prefix", default="har", help="topic prefix (default: %(default)s)")


def _interval(text: str) -> float:
    """argparse type of --interval: seconds of samples per message, at least MIN_INTERVAL."""
    from simulators.publisher import check_interval
    try:
        return check_interval(float(text))
    except ValueError:
        from simulators.publisher import MIN_INTERVAL
        raise argparse.ArgumentTypeError(f"must be a number of seconds, at least {MIN_INTERVAL:g}: {text!r}") from None


def _speed(text: str) -> float:
    """argparse type of --speed: 0 (as fast as possible) or a positive factor of real time."""
    from simulators.publisher import check_speed
    try:
        return check_speed(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be 0 (as fast as possible) or a positive number: {text!r}") from None


def _at_least_one(text: str) -> int:
    """argparse type of a count that must be 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def _finite(text: str, ok, what: str) -> float:
    """A finite number for which ``ok(value)`` holds, else argparse's error saying it must be ``what``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and ok(value)):
        raise argparse.ArgumentTypeError(f"must be {what}: {text!r}")
    return value


def _positive(text: str) -> float:
    """argparse type of a finite number above 0 (a rate, a duration)."""
    return _finite(text, lambda v: v > 0, "a finite number above 0")


def _seconds(text: str) -> float:
    """argparse type of a finite number of seconds, 0 or more."""
    return _finite(text, lambda v: v >= 0, "a finite number of seconds, 0 or more")


def _fraction(text: str) -> float:
    """argparse type of a share, 0 to 1."""
    return _finite(text, lambda v: 0 <= v <= 1, "a fraction from 0 to 1")


def _reorder(text: str) -> float:
    """argparse type of --reorder: seconds, 0 or more and under the 30 s by which a device's clock going back
    is a restart (stream.buffers.DeviceBuffer's clock_reset, which refused a longer hold only once a device
    arrived)."""
    return _finite(text, lambda v: 0 <= v < 30, "a number of seconds, 0 or more and under 30")


def _model_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, metavar="MODEL",
                   help="checkpoint file (default: the small model shipped with harstream)")


def _on_signals(stop) -> None:
    """Call ``stop()`` on SIGINT or SIGTERM (main thread only)."""
    def handler(signum, frame):
        log.info("%s received, stopping", signal.Signals(signum).name)
        stop()
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def _load_model(path: str | None):
    from models.checkpoint import default_model_path, load_checkpoint
    return load_checkpoint(path or default_model_path())


# -- commands ------------------------------------------------------------------------------------
def cmd_broker(args) -> int:
    from stream.broker import check_address, run_broker
    url = BrokerURL.parse(args.broker)
    if url.tls:  # clients asking for TLS would never reach it
        print(f"harstream broker: the embedded broker speaks plain MQTT only, not {url}: run a TLS broker "
              f"(deploy/mosquitto/), or pass --broker mqtt://{url.host}:{url.port}", file=sys.stderr)
        return 2
    if url.username:  # clients may still send them: it takes anyone
        print("harstream broker: the embedded broker takes anonymous clients; the user and password in --broker "
              "are not asked of anyone", file=sys.stderr, flush=True)
    check_address(url.host, url.port)  # one line, exit status 2, when the address is taken
    print(f"embedded MQTT broker (amqtt) on mqtt://{url.host}:{url.port}; Ctrl-C stops it", flush=True)
    run_broker(url.host, url.port)
    return 0


def cmd_consume(args) -> int:
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    model, info = _load_model(args.model)
    from models.finetune import LearnerConfig
    learner = LearnerConfig(k1=args.k1, k2=args.k2, optimiser=args.optimiser, lr=args.lr, clip=args.clip,
                            adapt=args.adapt, cpu_share=args.learn_cpu, keep_versions=args.keep_versions)
    config = ConsumerConfig(broker=BrokerURL.parse(args.broker, args.ca_file), prefix=args.prefix,
                            consumer_id=args.id, metrics_interval=args.metrics_interval,
                            max_wait=args.max_wait, learn=not args.no_learn, learner=learner,
                            torch_threads=args.torch_threads,
                            state_dir=Path(args.state_dir) if args.state_dir else None,
                            checkpoint_interval=args.checkpoint_interval, idle_timeout=args.idle_timeout,
                            qos=args.qos, shared_group=args.shared, state_store=args.state_store,
                            reorder_wait=args.reorder_wait,
                            health_file=Path(args.health_file) if args.health_file else None,
                            adapters=tuple(args.adapter or ()), reorder=args.reorder,
                            ack=args.ack, mqtt_protocol=args.mqtt, max_unacked=args.max_unacked,
                            ack_stall=args.ack_stall, label_lateness=args.label_lateness)
    consumer = Consumer(config, StatefulClassifier(model, info["version"]))
    _on_signals(consumer.stop)
    if args.duration:
        timer = threading.Timer(args.duration, consumer.stop)
        timer.daemon = True  # stopped sooner (SIGTERM), the process must not wait for it
        timer.start()
    # What the process holds now (torch, numpy, river, the model: some 220,000 objects) lives as long as
    # the process: kept out of the cyclic collector's full passes, which stall the service thread. A
    # full pass took 105-130 ms at 3,000 devices, about every 10-15 s (the worst second's p99 latency).
    import gc
    gc.collect()
    gc.freeze()
    consumer.run()
    return 0


def cmd_simulate(args) -> int:
    from simulators.publisher import Simulator, SimulatorConfig
    config = SimulatorConfig(
        broker=BrokerURL.parse(args.broker, args.ca_file), devices=args.devices, rate=args.rate,
        interval=args.interval, duration=args.duration, speed=args.speed, seed=args.seed,
        prefix=args.prefix, placement=args.placement, label_fraction=args.labels,
        scenario=args.scenario, scenario_start=args.scenario_start,
        client_per_device=args.client_per_device, record=args.record, record_gyro=args.record_gyro,
        qos=args.qos, device_prefix=args.device_prefix,
    )
    simulator = Simulator(config)
    _on_signals(simulator.stop)
    simulator.run()
    return 0


def cmd_record(args) -> int:
    from stream.record import RecordConfig, Recorder, check_out, format_summary, parse_devices, recover
    if args.recover:  # a spool a killed recorder left: written as --out, no broker
        config = RecordConfig(broker=BrokerURL.parse(args.broker, args.ca_file), out=args.out, prefix=args.prefix,
                              overwrite=args.overwrite)
        # as the end of a recording: the file is written whole (a traceback before); kill -9 leaves the spool
        _on_signals(lambda: log.info("--recover writes %s whole first; the spool stays until it is written", args.out))
        summary = recover(config)
        print(format_summary(summary), flush=True)
        return 0 if summary["written"] else 1
    check_out(args.out, args.overwrite)  # before connecting: what could not be written at the end is refused now
    config = RecordConfig(broker=BrokerURL.parse(args.broker, args.ca_file), out=args.out, prefix=args.prefix,
                          adapters=tuple(args.adapter or ()), devices=parse_devices(args.devices),
                          duration=args.duration, qos=args.qos, overwrite=args.overwrite)
    recorder = Recorder(config)
    _on_signals(recorder.stop)
    summary = recorder.run(progress=not args.quiet)
    print(format_summary(summary), flush=True)
    return 0 if summary["written"] else 1


def cmd_replay(args) -> int:
    from simulators.replay import replay
    from stream.mqtt import connect
    from stream.recording import read_recording
    url = BrokerURL.parse(args.broker, args.ca_file)
    client = connect(url, "replay")  # a broker that does not answer is said before a long read of the file
    try:
        rec = read_recording(args.file)
    except BaseException:
        client.disconnect()
        client.loop_stop()
        raise
    stop = threading.Event()
    _on_signals(stop.set)
    sent = replay(rec, url, prefix=args.prefix, speed=args.speed, labels=args.labels, interval=args.interval,
                  stop=stop, progress=not args.quiet, qos=args.qos, client=client)
    print(f"replayed {sent['samples']} samples of {sent['devices']} devices in {sent['messages']} messages"
          + (f" (stopped: {sent['planned_messages']} planned)" if sent["stopped"] else ""))
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    from stream.versions import choose_consumer, format_listing, list_consumers, named, send_command
    url = BrokerURL.parse(args.broker, args.ca_file)
    found = list_consumers(url, args.prefix)
    if args.rollback is None and not args.promote:
        if args.consumer is not None:
            found = {args.consumer: named(found, args.consumer)}
        print(json.dumps({k: c.to_dict() for k, c in found.items()}, indent=2) if args.json
              else format_listing(found))
        return 0
    chosen = choose_consumer(found, args.consumer, args.rollback)
    action = "rollback" if args.rollback is not None else "promote"
    if action == "rollback" and chosen.serving == args.rollback:
        print(json.dumps(chosen.to_dict(), indent=2) if args.json
              else f"consumer {chosen.consumer} already serves {args.rollback}")
        return 0
    # with --json, stdout holds the JSON alone: what goes on meanwhile is said on stderr
    print(f"asking consumer {chosen.consumer} (serving {chosen.serving}) to "
          + (f"roll back to {args.rollback}" if action == "rollback" else "promote its challenger") + " ...",
          file=sys.stderr if args.json else sys.stdout, flush=True)
    after = send_command(url, args.prefix, chosen.consumer, action, args.rollback, timeout=args.timeout)
    same = action == "promote" and after.serving == chosen.serving
    print(json.dumps(after.to_dict(), indent=2) if args.json else
          f"consumer {after.consumer} serves {after.serving}"
          + (" (its challenger had learnt nothing new: the same weights)" if same else ""))
    return 0


def _check_out(path: Path) -> None:
    """Refuse, before any work, a checkpoint path that could not be written after it (ValueError, one line)."""
    if path.is_dir():
        raise ValueError(f"--out {path} is a directory; give the checkpoint file to write")
    parent = path.parent
    if not parent.is_dir():
        raise ValueError(f"--out {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"--out {path}: folder {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"--out {path} exists and is not writable")


def cmd_train(args) -> int:
    _check_out(args.out)
    from models.checkpoint import save_checkpoint
    from models.rnn import ModelConfig
    from models.train import TrainConfig, train
    from stream.recording import read_recording
    if args.simulated:
        from simulators.training import simulated_training_data
        placements = ["wrist", "upper_arm", "waist"] if args.sim_placement == "mixed" else [args.sim_placement]
        exercises = args.sim_exercises.split(",") if args.sim_exercises else None
        print(f"simulating {args.sim_devices} people x {args.sim_minutes:g} min ({'/'.join(placements)}) "
              "for training ...", flush=True)
        rec = simulated_training_data(args.sim_devices, args.sim_minutes * 60.0, seed=args.seed,
                                      placements=placements, exercises=exercises)
        sources = [f"simulated:{args.sim_devices}x{args.sim_minutes:g}min:{args.sim_placement}:seed{args.seed}"
                   + (f":{args.sim_exercises}" if args.sim_exercises else "")]
    else:
        from stream.recording import concat_recordings
        recs = [read_recording(f) for f in args.data]
        rec = concat_recordings(recs)
        sources = [str(f) for f in args.data]
    # the gyroscope helps where every file has it (docs/results.md); a model that reads it can only
    # serve devices that send it, hence --no-gyro. Simulated people: the accelerometer, so the model
    # made that way (the shipped default) serves every device, as the simulator's publisher sends no gyro
    gyro = not args.simulated and rec.gyro is not None and not args.no_gyro
    print(f"inputs: accelerometer{' and gyroscope' if gyro else ''}"
          + ("" if gyro or args.no_gyro or args.simulated else
             " (no training file has gx, gy, gz)" if all(r.gyro is None for r in recs) else
             " (not every training file has gx, gy, gz)"),
          flush=True)
    mc = ModelConfig(classes=("_",), cell=args.cell, hidden=args.hidden, layers=args.layers, rate=args.rate,
                     window=args.window, hop=args.window, patch=args.patch, input_channels=6 if gyro else 3)
    tc = TrainConfig(epochs=args.epochs, tbptt=args.tbptt, seed=args.seed, max_minutes=args.max_minutes,
                     p_any_orientation=args.any_orientation, p_mid_start=args.mid_start,
                     max_rotation_deg=args.max_rotation, orientation=not args.no_orientation)
    model, report = train(rec, mc, tc, progress=not args.quiet)
    version = save_checkpoint(args.out, model, {"command": " ".join(["harstream", *sys.argv[1:]]),
                                                "data": sources, "report": report})
    # the validation figure is the validated run's; the model saved, unless told otherwise, the refit's
    best, refit = report["best"], report.get("refit")
    if "accuracy" not in best:
        told = "nothing held out, nothing validated"
    else:
        if best["accuracy"] is None:  # it said "validation accuracy None, macro F1 None", and not why
            told = (f"nothing could be validated: held-out {report['held_out']} gave no labelled window of "
                    f"{args.window} samples at {args.rate:g} Hz (too short, or t never advances: see the warnings "
                    f"above), so the validated run's epoch {best['epoch']} of {report['epochs_run']} was kept "
                    "for want of a score; ")
        else:
            told = (f"validation accuracy {best['accuracy']}, macro F1 {best['macro_f1']}, of the validated run "
                    f"(best epoch {best['epoch']} of {report['epochs_run']}) on held-out {report['held_out']}; ")
        if refit is None:
            told += "the model saved is that run's"
        elif not refit["used"]:
            told += (f"the model saved is that run's: the time budget of {args.max_minutes:g} min left the refit "
                     f"on everyone {refit['steps'] or refit['steps_fit']} optimiser steps, fewer than the "
                     f"{best['step']} to that run's best epoch")
        else:
            done = refit["epochs_done"]
            told += (f"the model saved was then refitted on everyone, those held out too, for {done:g} "
                     f"epoch{'' if done == 1 else 's'} (not validated)")
            if refit["out_of_time"]:
                told += (f": a shorter refit than the validated run's {refit['epochs_planned']:g}, cut by the "
                         f"time budget of {args.max_minutes:g} min")
    print(f"saved {args.out} (version {version}): {len(report['classes'])} classes; {told}")
    if report.get("orientation_windows"):
        print(f"kept how the training sensors were worn ({report['orientation_windows']} windows): a device worn "
              "turned is served turned back (--no-orientation: not)")
    return 0


def cmd_evaluate(args) -> int:
    from models.evaluate import confusion_lines, evaluate
    from stream.recording import read_recording
    model, info = _load_model(args.model)
    rec = read_recording(args.data)
    try:
        report = evaluate(model, rec, info["version"], progress=not args.json)
    except ValueError as exc:  # no window at all, a model reading a gyroscope the file lacks: which file
        raise ValueError(f"{args.data}: {exc}") from None
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"model {info['version']} on {args.data}: {report['windows']} labelled windows "
          f"({report['windows_total']} in all)")
    print(f"accuracy {report['accuracy']}, macro F1 {report['macro_f1']}"
          + ("" if report["windows"] else ": no window has a label to score it by"))
    if report["unknown_classes"]:
        print(f"classes the model does not know: {', '.join(report['unknown_classes'])}")
    print("recall: " + ", ".join(f"{c} {r:.3f}" for c, r in report["recall"].items()))
    drift = report["drift"]
    runs = [f"{mode.replace('_', ' ')} {d['alarms']} ({d['per_device_hour']} per device-hour)"
            for mode, d in drift.items() if mode != "device_hours"]
    print(f"drift alarms over {drift['device_hours']} device-hours (false ones where nothing drifted): "
          + "; ".join(runs))
    print("\n".join(confusion_lines(report["labels"], report["confusion"])))
    return 0


def cmd_import(args) -> int:
    from models.importers import import_dataset
    summary = import_dataset(args.dataset, args.src, args.out, progress=True, overwrite=args.overwrite)
    print(json.dumps(summary, indent=2))
    return 0


def cmd_dashboard(args) -> int:
    from dashboard.launch import run_dashboard
    return run_dashboard(args)


def cmd_bench(args) -> int:
    from stream.bench import run_bench
    results = []
    for n in args.devices:
        r = run_bench(args.broker, n, args.duration, interval=args.interval, model_path=args.model,
                      learn=args.learn, labelled=int(n * args.labelled), quiet=args.json)
        results.append(r)
        if not args.json:
            lat = r["latency_ms"]
            print(f"{n:>6} devices: {r['sustained_samples_per_s']:>9.0f} of {r['offered_samples_per_s']:.0f} "
                  f"samples/s ({'real time' if r['real_time'] else 'NOT real time'}), latency p50 {lat['p50']} "
                  f"p99 {lat['p99']} max {lat['max']} ms, consumer {r['consumer_cpu_cores']} cores, "
                  f"{r['memory_bytes_per_device']} B/device, dropped {r['dropped']}, lost {r['lost_samples']}; "
                  f"{r['speedup_per_core_vs_baseline']}x the baseline's samples/s per core", flush=True)
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0]))
    return 0


def cmd_demo(args) -> int:
    from stream.demo import run_demo
    return run_demo(args)


def _version() -> str:
    """The installed package's version."""
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("harstream")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "(not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="harstream",
        description="Live exercise recognition from accelerometer streams over MQTT, with a stateful LSTM "
                    "per device.",
        epilog=EPILOG,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("demo",
                       help="the main job: broker (embedded unless one answers), simulator, consumer, dashboard",
                       description="Runs the whole system on this machine: uses the broker at --broker when it "
                                   "answers, else starts the embedded one there; starts a consumer, a simulator "
                                   "and the dashboard (http://127.0.0.1:8501, or a free port when that one is "
                                   "taken), and prints live predictions beside the simulator's truth. The "
                                   "simulator publishes every device's true labels, so the consumer fine-tunes "
                                   "on them as it runs: each device's adapter (--adapt device, harstream "
                                   "consume's default), or the shared network, whose model versions the "
                                   "dashboard's Model page promotes and rolls back (--adapt shared or both).")
    _broker_args(p)
    _model_arg(p)
    p.add_argument("--devices", type=_at_least_one, default=5, help="simulated devices (default: %(default)s)")
    p.add_argument("--duration", type=_positive, default=None, help="seconds to run (default: until Ctrl-C)")
    p.add_argument("--no-dashboard", action="store_true", help="headless: do not start the dashboard")
    p.add_argument("--adapt", default=ADAPT_DEFAULT, choices=ADAPT_CHOICES,
                   help="what the consumer fine-tunes on the simulator's labels, as harstream consume --adapt: "
                        "each device's adapter, the shared network (model versions to promote and roll back on "
                        "the dashboard's Model page), or both (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="simulator seed (default: %(default)s)")
    p.add_argument("--state-dir", default=None,
                   help="keep the consumer's state, model versions and event store here; the dashboard shows "
                        "its history (default: nothing kept)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("broker", help="run the embedded MQTT broker (amqtt)",
                       description="Runs the embedded MQTT broker (amqtt) in the foreground, for a machine with no "
                                   "broker of its own: plain MQTT over TCP, anonymous, with no TLS, WebSockets, "
                                   "passwords or ACL. For phones and anything beyond this machine use Mosquitto "
                                   "with deploy/mosquitto/ (docs/phone.md).")
    p.add_argument("--broker", default=default_broker(), metavar="URL",
                   help="address to listen on: its host and port only (user:pass and mqtts:// are not "
                        "applied: it listens plain and anonymous) (default: %(default)s)")
    p.set_defaults(func=cmd_broker)

    p = sub.add_parser("consume", help="classify every device's windows and publish predictions",
                       description="Subscribes to <prefix>/+/imu, keeps an LSTM state per device, classifies "
                                   "every ready window in one batched pass and publishes "
                                   "<prefix>/<device>/prediction, plus retained status and metrics on "
                                   "<prefix>/_consumer/<id>/{status,metrics}. Replicas scale out with --shared "
                                   "GROUP (an MQTT shared subscription) and --state-store redis://... (each "
                                   "device's state in Redis, so any replica takes any device's next message).",
                       epilog="Environment: HARSTREAM_BROKER, HARSTREAM_CONSUMER_ID, HARSTREAM_STATE_DIR, "
                              "HARSTREAM_SHARED_GROUP, HARSTREAM_STATE_STORE and HARSTREAM_HEALTH_FILE set the "
                              "defaults of --broker, --id, --state-dir, --shared, --state-store, --health-file.")
    env = os.environ.get
    _broker_args(p)
    _model_arg(p)
    p.add_argument("--id", default=env("HARSTREAM_CONSUMER_ID", ""),
                   help="consumer id (MQTT client id; default: random, kept in --state-dir)")
    p.add_argument("--metrics-interval", type=_positive, default=5.0,
                   help="seconds between metrics (default: %(default)s)")
    p.add_argument("--max-wait", type=_seconds, default=0.02,
                   help="seconds a ready window may wait to share a batch (default: %(default)s)")
    p.add_argument("--duration", type=_positive, default=None, help="stop after this many seconds")
    p.add_argument("--torch-threads", type=_at_least_one, default=1,
                   help="torch intra-op threads (default: %(default)s)")
    p.add_argument("--adapter", action="append", metavar="'PATTERN = NAME[@DEVICE]'",
                   help="also read a phone format on topics matching PATTERN; NAME is sensor_logger, "
                        "sensor_logger_ios, android or csv; the device is the topic level under the first '+' "
                        "(NAME@DEVICE: a fixed device id, for a PATTERN without '+') (repeatable; see "
                        "docs/phone.md)")
    p.add_argument("--reorder", type=_reorder, default=0.0,
                   help="seconds to hold each device's samples to merge out-of-order batches (phones: 0.2; "
                        "adds that much latency; default: %(default)s)")
    p.add_argument("--label-lateness", type=_seconds, default=4.0,
                   help="seconds of device time a labelled device's windows wait for late labels before they are "
                        "scored and learnt from (a label sent after that misses them; memory grows with it: at "
                        "most 3600 windows a device; default: %(default)s)")
    p.add_argument("--state-dir", default=env("HARSTREAM_STATE_DIR") or None,
                   help="folder for checkpoints of device state, model versions and the event store "
                        "(events.db); restored on start (default: none, nothing kept)")
    p.add_argument("--checkpoint-interval", type=_positive, default=30.0,
                   help="seconds between checkpoints (default: %(default)s)")
    p.add_argument("--idle-timeout", type=_positive, default=300.0,
                   help="seconds without samples before a device leaves memory, its state kept (default: %(default)s)")
    p.add_argument("--qos", type=int, default=1, choices=(0, 1), help="subscription QoS for samples (default: 1)")
    p.add_argument("--ack", default="auto", choices=("auto", "after-window", "on-receipt"),
                   help="when QoS 1 samples are acknowledged to the broker: after-window (once every sample of "
                        "a message is in a published window, so a restart, even kill -9, loses none: needs a "
                        "persistent session, i.e. --state-dir or --id), on-receipt (when queued); auto: "
                        "after-window with a persistent session over MQTT 5, else on-receipt (default: auto)")
    p.add_argument("--mqtt", default="auto", choices=("auto", "5", "3.1.1"),
                   help="MQTT protocol; auto: 5 when acknowledging after the window (its Receive Maximum lifts "
                        "the broker's in-flight limit), with 3.1.1 as a fallback (default: auto)")
    p.add_argument("--max-unacked", type=int, default=20_000, metavar="N",
                   help="QoS 1 messages held unacknowledged at most (MQTT 5 Receive Maximum); beyond, the oldest "
                        "is acknowledged and counted in acks.forced; about devices x messages per window are "
                        "held (default: %(default)s)")
    p.add_argument("--ack-stall", type=_positive, default=2.0, metavar="SECONDS",
                   help="acknowledge all held messages when nothing arrives for this long (a broker in-flight "
                        "limit below what the open windows hold; counted in acks.forced) (default: %(default)s)")
    p.add_argument("--health-file", default=env("HARSTREAM_HEALTH_FILE") or None, metavar="FILE",
                   help="write the latest metrics (JSON, with the time 't') to FILE every --metrics-interval, "
                        "for health checks (default: none)")
    g = p.add_argument_group("scale-out (replicas)")
    g.add_argument("--shared", default=env("HARSTREAM_SHARED_GROUP", ""), metavar="GROUP",
                   help="take samples through the shared subscription $share/GROUP/<prefix>/+/imu, so the "
                        "replicas of GROUP split them; turns fine-tuning off (default: no group)")
    g.add_argument("--state-store", default=env("HARSTREAM_STATE_STORE") or None, metavar="URL",
                   help="redis://host:port/db: every device's state lives there, applied in seq order and "
                        "exactly once whichever replica gets a message (default: in memory and --state-dir)")
    g.add_argument("--reorder-wait", type=_seconds, default=5.0, metavar="SECONDS",
                   help="with --state-store, how long a message waits for its device's earlier ones (on "
                        "other replicas) before the gap is accepted as lost; keep it above the replicas' "
                        "queueing delay (default: %(default)s)")
    g = p.add_argument_group("online fine-tuning (truncated BPTT on labelled windows)")
    g.add_argument("--no-learn", action="store_true", help="serve only; ignore labels for training")
    g.add_argument("--adapt", default=ADAPT_DEFAULT, choices=ADAPT_CHOICES,
                   help="what learns from labels: a small adapter per labelling device on the frozen shared "
                        "network (measured best: docs/personal.md), the shared network itself (every "
                        "device's predictions change), or both (default: %(default)s)")
    g.add_argument("--optimiser", default="adam", choices=("adam", "rmsprop", "sgd"),
                   help="optimiser of the fine-tuning (default: %(default)s)")
    g.add_argument("--lr", type=_positive, default=1e-3, help="learning rate (default: %(default)s)")
    g.add_argument("--k1", type=_at_least_one, default=4, help="windows between weight updates (default: %(default)s)")
    g.add_argument("--k2", type=_at_least_one, default=4, help="windows backpropagated through (default: %(default)s)")
    g.add_argument("--clip", type=_positive, default=1.0, help="gradient norm clipping (default: %(default)s)")
    g.add_argument("--keep-versions", type=_at_least_one, default=None, metavar="N",
                   help="keep at most N model versions (files in --state-dir's models/ and the list): beyond, "
                        "a promotion deletes the oldest promoted one not served (default: every version, so "
                        "that any can be rolled back to; shared fine-tuning promotes at most once per 24 "
                        "labelled windows, a tie once per 20 updates, each a file of the model's size: "
                        "under steady labels about 13 a thousand windows, so bound it for a long run)")
    g.add_argument("--learn-cpu", type=_fraction, default=0.2, metavar="SHARE",
                   help="share of one core the learner may use over time, so that a flood of labels never "
                        "slows serving; beyond it sequences wait, and the oldest are dropped (0: no limit; "
                        "default: %(default)s)")
    p.set_defaults(func=cmd_consume)

    p = sub.add_parser("simulate", help="publish simulated accelerometer streams",
                       description="Publishes N simulated people doing workouts (sets of exercises with rests) "
                                   "on <prefix>/<device>/imu at 50 Hz in real time.")
    _broker_args(p)
    p.add_argument("--devices", type=_at_least_one, default=5, help="number of devices (default: %(default)s)")
    p.add_argument("--rate", type=_positive, default=50.0, help="sample rate in Hz (default: %(default)s)")
    p.add_argument("--interval", type=_interval, default=0.2,
                   help="seconds of samples per message, at least 0.01 (default: %(default)s)")
    p.add_argument("--duration", type=_positive, default=None,
                   help="seconds of samples to publish per device, in the devices' time: at --speed 10 it takes a "
                        "tenth as long (default: until stopped)")
    p.add_argument("--speed", type=_speed, default=1.0,
                   help="1 real time, 10 ten times faster, 0 as fast as possible (default: 1)")
    p.add_argument("--seed", type=int, default=0, help="seed; device k uses seed + k (default: %(default)s)")
    p.add_argument("--device-prefix", default="sim", metavar="NAME",
                   help="device ids are NAME-000, NAME-001, ...: two simulators on one --prefix need different "
                        "ones, or their devices collide (default: %(default)s)")
    p.add_argument("--qos", type=int, default=0, choices=(0, 1),
                   help="QoS of the samples: at 1 a consumer with --state-dir (a persistent session) gets what "
                        "was published while it was down, as far as the broker queues it (default: %(default)s)")
    p.add_argument("--placement", default="wrist", choices=("wrist", "upper_arm", "waist"),
                   help="where the simulated sensor sits (default: %(default)s; the shipped model learnt wrist)")
    p.add_argument("--labels", type=_fraction, default=0.0, metavar="FRACTION",
                   help="share of devices that publish their true labels, 0..1 (default: %(default)s)")
    p.add_argument("--scenario", default=None,
                   help="drift scenario: strap_rotated, other_wrist, fatigue, units_g, new_person, "
                        "unseen_exercise, loss_burst or clock_skew (default: none)")
    p.add_argument("--scenario-start", type=_seconds, default=60.0,
                   help="seconds from each device's first sample until its scenario starts (default: %(default)s)")
    p.add_argument("--client-per-device", action="store_true",
                   help="one MQTT client and last will per device (by default one client publishes every "
                        "device: a killed simulator then leaves their retained status 'online')")
    p.add_argument("--record", default=None, metavar="FILE",
                   help="at the end, write everything published with the whole truth (labels; the scenario "
                        "and its onset per device in FILE.scenario.json) to a recording file; without the "
                        "gyroscope, which is not published (a model trained on it with gx,gy,gz could not serve "
                        "the simulator's devices)")
    p.add_argument("--record-gyro", action="store_true",
                   help="with --record, also write the simulator's gyroscope (gx,gy,gz), never published: for "
                        "studies; train --data on it makes a model that reads the gyroscope (--no-gyro: not)")
    p.set_defaults(func=cmd_simulate)

    p = sub.add_parser("record", help="write what sensors publish (and the labels sent) to a recording file",
                       description="Subscribes to <prefix>/+/imu, the phone formats' topics of --adapter (decoded as "
                                   "harstream consume decodes them) and <prefix>/+/label, and writes every sample "
                                   "received, labelled by the labels received (a label holds from its time until "
                                   "the device's next; a start/end span where it covers; late ones count), to a "
                                   "recording file for train --data and evaluate --data. Samples go to FILE.spool "
                                   "as they come (synced every second); when it stops (--duration, Ctrl-C or "
                                   "SIGTERM) FILE is written from it, sorted by device and time, and the spool "
                                   "removed. After a kill -9 or a crash, --recover writes FILE from the spool left "
                                   "(all but the last second or so). A message received twice (same seq) is "
                                   "dropped; a refused payload is counted and logged. gx,gy,gz are written only "
                                   "when every sample had the gyroscope (else left out, and said). A device whose "
                                   "clock went back (a restart) gets rows of its own, <device>.s2, and the file a "
                                   "subject column.",
                       epilog="Example: harstream record --out mine.csv --adapter 'sensorlogger/+ = sensor_logger'; "
                              "then harstream train --data mine.csv --out mine.pt (docs/phone.md).")
    _broker_args(p)
    p.add_argument("--out", required=True, type=Path, metavar="FILE",
                   help="recording file to write (tried before recording; an existing one is refused)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists, when the recording stops")
    p.add_argument("--adapter", action="append", metavar="'PATTERN = NAME[@DEVICE]'",
                   help="also record a phone format on topics matching PATTERN, as harstream consume --adapter "
                        "(repeatable; docs/phone.md)")
    p.add_argument("--devices", default=None, metavar="ID,...",
                   help="record only these devices (comma-separated; default: every device)")
    p.add_argument("--duration", type=_positive, default=None,
                   help="stop after this many seconds (default: until Ctrl-C or SIGTERM)")
    p.add_argument("--qos", type=int, default=1, choices=(0, 1), help="subscription QoS of the samples "
                   "(default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    p.add_argument("--recover", action="store_true",
                   help="record nothing: write --out from the spool (--out's name + .spool) that a harstream record "
                        "killed or crashed left, labels included, and remove the spool")
    p.set_defaults(func=cmd_record)

    p = sub.add_parser("replay", help="publish a recording file over MQTT",
                       description="Publishes every device of a recording file on <prefix>/<device>/imu (seq from "
                                   "0) at the file's own times. Replayed again, a device's seq starting at 0 "
                                   "tells a running consumer that a new session begins: it classifies the file "
                                   "again, however short (replicas with --state-store do not yet: a run shorter "
                                   "than 30 s is dropped as late; DESIGN.md, \"seq counts messages\").")
    _broker_args(p)
    p.add_argument("file", help="recording file (CSV, see DESIGN.md)")
    p.add_argument("--speed", type=_speed, default=1.0,
                   help="1 real time, 10 ten times faster, 0 as fast as possible (default: 1)")
    p.add_argument("--labels", action="store_true", help="also publish the file's labels")
    p.add_argument("--interval", type=_interval, default=0.2,
                   help="seconds of samples per message, at least 0.01 (default: %(default)s); a message the "
                        "consumer would refuse (too many samples, too many bytes, too long a span) is split")
    p.add_argument("--qos", type=int, default=1, choices=(0, 1), help="QoS of the samples (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser("dashboard", help="the live Streamlit dashboard",
                       description="Serves the dashboard (Streamlit) on --address:--port; it subscribes to the "
                                   "broker once per server process.")
    _broker_args(p)
    p.add_argument("--address", default="127.0.0.1", help="address to listen on (default: %(default)s, localhost only)")
    p.add_argument("--port", type=int, default=8501, help="port (default: %(default)s)")
    p.add_argument("--state-dir", default=os.environ.get("HARSTREAM_STATE_DIR"),
                   help="the consumer's --state-dir: history from its event store (events.db) on start "
                        "(default: $HARSTREAM_STATE_DIR, else none)")
    p.set_defaults(func=cmd_dashboard)

    p = sub.add_parser("train", help="train a classifier on simulated data or recording files",
                       description="Trains a recurrent classifier with truncated BPTT, validates it on held-out "
                                   "people and writes one checkpoint file (--out) for consume, evaluate and "
                                   "demo (--model). The shipped model's command and defaults: README.md.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--simulated", action="store_true", help="train on freshly simulated people")
    src.add_argument("--data", nargs="+", type=Path, metavar="FILE", help="recording files")
    p.add_argument("--out", required=True, type=Path, metavar="MODEL", help="checkpoint to write")
    p.add_argument("--cell", default="lstm", choices=("lstm", "gru", "rnn"),
                   help="recurrent cell (default: %(default)s)")
    p.add_argument("--hidden", type=_at_least_one, default=64, help="units per recurrent layer (default: %(default)s)")
    p.add_argument("--layers", type=_at_least_one, default=2, help="recurrent layers (default: %(default)s)")
    p.add_argument("--rate", type=_positive, default=25.0, help="model sample rate in Hz (default: %(default)s)")
    p.add_argument("--window", type=_at_least_one, default=50,
                   help="samples per window at --rate (default: %(default)s)")
    p.add_argument("--patch", type=_at_least_one, default=5, help="samples per recurrent step (default: %(default)s)")
    p.add_argument("--epochs", type=_at_least_one, default=40,
                   help="at most this many epochs (early stopping; default: %(default)s)")
    p.add_argument("--tbptt", type=_at_least_one, default=8,
                   help="windows per truncated-BPTT segment: the error flows back through this many, then the "
                        "state is carried on detached (default: %(default)s; 4 before 2026-12-06, "
                        "docs/results.md)")
    p.add_argument("--max-minutes", type=_positive, default=None,
                   help="bound the whole training, the validated run and the refit on everyone together, to "
                        "about this long: the validated run stops at half of it, mid-epoch if need be, keeping its "
                        "best model so far; the refit has the rest, and where that holds fewer optimiser steps "
                        "than the validated model took, the validated model is saved (default: no limit)")
    p.add_argument("--any-orientation", type=float, default=0.0, metavar="FRACTION",
                   help="train this fraction of the streams in a random orientation, for sensors that people "
                        "wear every which way (a phone in an armband or a pocket); costs accuracy where the "
                        "orientation tells exercises apart, e.g. a wristband (default: %(default)s)")
    p.add_argument("--max-rotation", type=float, default=30.0, metavar="DEG",
                   help="augmentation: turn each training stream about a random axis by up to this many degrees, "
                        "for straps and placements that differ between people (default: %(default)s)")
    p.add_argument("--mid-start", type=float, default=0.25, metavar="FRACTION",
                   help="start this fraction of the training streams at a random point, from a fresh state, as a "
                        "device that connects in the middle of an exercise (default: %(default)s)")
    p.add_argument("--no-gyro", action="store_true",
                   help="read the accelerometer only, even where every --data file has gx, gy, gz (by default "
                        "the model then reads the gyroscope too, and serves only devices that send it; "
                        "--simulated always trains on the accelerometer alone)")
    p.add_argument("--no-orientation", action="store_true",
                   help="keep no sample of how the training data's sensors were worn; by default a model that "
                        "reads the gyroscope keeps one, and serves a device worn upside down or turned on the "
                        "limb turned back, chosen from its first 10 to 90 s without labels (models/orientation.py)")
    p.add_argument("--sim-devices", type=_at_least_one, default=40, help="simulated people (default: %(default)s)")
    p.add_argument("--sim-minutes", type=_positive, default=10.0,
                   help="minutes per simulated person (default: %(default)s)")
    p.add_argument("--sim-placement", default="wrist", choices=("wrist", "upper_arm", "waist", "mixed"),
                   help="where the simulated sensor sits; mixed spreads people over all three (default: %(default)s)")
    p.add_argument("--sim-exercises", default=None, metavar="A,B,...",
                   help="simulate only these exercises (comma-separated; default: all; 'rest' is always useful)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the simulated people, the split and the training (default: %(default)s)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("versions", help="list the model versions each consumer keeps; roll back to one or promote",
                       description="Lists, for every consumer on the broker, the model version it serves and every "
                                   "version it keeps (their files are in its --state-dir, models/). --rollback "
                                   "VERSION makes a consumer serve (and fine-tune from) that version again; "
                                   "--promote makes it serve the challenger it is fine-tuning now, without waiting "
                                   "for it to win on recent labels. Either waits until the consumer confirms.")
    _broker_args(p)
    p.add_argument("--consumer", default=None, metavar="ID",
                   help="the consumer to list or command (needed for a command when several consumers learn)")
    act = p.add_mutually_exclusive_group()
    act.add_argument("--rollback", default=None, metavar="VERSION", help="serve this earlier version again")
    act.add_argument("--promote", action="store_true", help="serve the challenger being fine-tuned now")
    p.add_argument("--timeout", type=_positive, default=30.0,
                   help="seconds to wait for the consumer to confirm a command (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("evaluate", help="stream a recording file through the stateful classifier and score it",
                       description="Streams FILE through the same stateful pipeline as live data and reports "
                                   "accuracy, macro F1, per-class recall, the confusion matrix and the number of "
                                   "windows; also the alarms of the consumer's drift monitor over the same "
                                   "windows, with the file's labels fed and without (on a recording where "
                                   "nothing drifted, its false alarms).")
    _model_arg(p)
    p.add_argument("--data", required=True, type=Path, metavar="FILE", help="recording file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("bench", help="throughput and latency of the consumer through a real broker",
                       description="Runs the real consumer against the broker at --broker (Mosquitto when it "
                                   "answers, else the embedded one) with N simulated devices at 50 Hz from "
                                   "pre-generated payloads (devices join over the first 4 s of an 8 s warm-up, "
                                   "as independent devices do), and reports sustained samples/s, latency "
                                   "percentiles (p99 of the worst second and of the median second), CPU and "
                                   "memory per device, against a stateless sliding-window baseline measured in "
                                   "the same run. Its devices and consumer use a topic prefix of their own "
                                   "(bench + 6 hex digits), so a run never meets other clients on the broker.")
    # --broker alone: stream.bench.run_bench picks its own prefix and connects without a CA file (it took
    # --prefix and --ca-file from _broker_args and ignored both)
    p.add_argument("--broker", default=default_broker(), metavar="URL",
                   help="mqtt://[user:pass@]host:port, or mqtts://... with a certificate the system trusts "
                        "(default: %(default)s)")
    _model_arg(p)
    p.add_argument("--devices", type=_at_least_one, nargs="+", default=[1000],
                   help="device counts to run, each at least 1 (default: 1000)")
    p.add_argument("--duration", type=_positive, default=30.0, help="measured seconds per run (default: %(default)s)")
    p.add_argument("--interval", type=_interval, default=0.5,
                   help="seconds of samples per message, at least 0.01 (default: %(default)s)")
    p.add_argument("--learn", action="store_true", help="online fine-tuning on (with --labelled devices)")
    p.add_argument("--labelled", type=_fraction, default=0.0, metavar="FRACTION",
                   help="share of devices publishing labels, 0..1 (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("import", help="turn a real data set into a recording file",
                       description="Reads a published data set of labelled accelerometer recordings from its folder "
                                   "and writes it as one recording file (DESIGN.md), for train, evaluate and replay; "
                                   "prints a summary (rows, devices, people, rows per class, duration).",
                       epilog="Example: harstream import muvr ../shared/datasets/muvr-gym muvr.csv")
    p.add_argument("dataset", choices=("uci-hapt", "barbell", "muvr", "exermote"), help="which data set SRC holds")
    p.add_argument("src", type=Path, help="the data set's folder as published")
    p.add_argument("out", type=Path, help="recording file to write (an existing one is refused)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=cmd_import)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, ConnectionError, OSError, RuntimeError) as exc:
        # user-facing failures (bad files, unreachable brokers, bad options): one clear line
        log.debug("failure", exc_info=True)
        print(f"harstream {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
