"""Defects found by a review of the command line, the simulators, recording files and the dashboard."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream.mqtt import connect
from stream.recording import Recording

ROOT = Path(__file__).resolve().parents[1]


def _prefix() -> str:
    return f"hartest{uuid.uuid4().hex[:8]}"


def _collect(broker_url, topics: list[str]):
    """A subscribed client and the (topic, payload) list it fills."""
    got: list[tuple[str, bytes]] = []
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        with lock:
            got.append((msg.topic, msg.payload))

    watch = connect(broker_url, f"test-watch-{uuid.uuid4().hex[:6]}", on_message=on_message,
                    subscriptions=[(t, 1) for t in topics])
    return watch, got


def _stop(client) -> None:
    client.disconnect()
    client.loop_stop()


def _labelled_recording(rate: float = 50.0) -> Recording:
    """One device, 16 s: squat 0-4 s, unlabelled 4-8 s, curl 8-12 s, squat again 12-16 s."""
    t = np.round(np.arange(0, 16, 1 / rate), 4)
    label = np.where(t < 4, "squat", np.where(t < 8, "", np.where(t < 12, "curl", "squat")))
    rng = np.random.default_rng(0)
    return Recording(device=np.full(len(t), "dev1"), t=t, acc=rng.normal(0, 1, (len(t), 3)).astype(np.float32),
                     label=label)


# -- 1. replay --labels publishes each labelled run as a span ------------------------------------------
@pytest.mark.broker
def test_replay_labels_are_spans_that_leave_unlabelled_stretches_unlabelled(broker_url):
    from simulators.replay import replay
    from stream.labels import EPS, LabelBook, decode_label
    rec = _labelled_recording()
    prefix = _prefix()
    watch, got = _collect(broker_url, [f"{prefix}/+/label", f"{prefix}/+/imu"])
    try:
        sent = replay(rec, broker_url, prefix=prefix, speed=0, labels=True, qos=1)
        deadline = time.monotonic() + 10
        while sum(t.endswith("/imu") for t, _ in got) < sent["messages"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        _stop(watch)
    labels = [orjson.loads(p) for t, p in got if t.endswith("/label")]
    assert [(m["label"], m["start"]) for m in labels] == [("squat", 0.0), ("curl", 8.0), ("squat", 12.0)]
    assert all("t" not in m and m["end"] > m["start"] for m in labels)
    # each span's label is published before the imu message holding the run's first sample
    order = [(t.rsplit("/", 1)[1], orjson.loads(p)) for t, p in got]
    for m in labels:
        i = next(k for k, (kind, b) in enumerate(order) if kind == "label" and b == m)
        j = next(k for k, (kind, b) in enumerate(order) if kind == "imu" and b["t"][0] <= m["start"] <= b["t"][-1])
        assert i < j
    book = LabelBook()
    for m in labels:
        book.add("dev1", *decode_label(orjson.dumps(m)))
    span = 49 / 25  # the default model's window: 50 samples at 25 Hz
    window = lambda t_end: book.window_label("dev1", t_end - span + EPS, t_end)  # noqa: E731 (as WindowHistory)
    assert window(1.96) == "squat"
    assert window(3.98) == "squat"  # ends on the run's last sample: inside the run
    assert window(4.02) is None  # reaches into the unlabelled stretch
    assert book.at("dev1", 6.0) is None  # the unlabelled stretch is not the squat before it
    assert window(7.96) is None and window(9.9) is None and window(9.96) == "curl"
    assert window(11.98) == "curl" and window(12.04) is None and window(15.98) == "squat"


# -- 2. --interval and --speed are validated -----------------------------------------------------------
@pytest.mark.parametrize("command", ["simulate", "replay"])
@pytest.mark.parametrize("option, value", [("--interval", "0"), ("--interval", "-1"), ("--interval", "1e-9"),
                                           ("--interval", "nan"), ("--interval", "inf"), ("--speed", "-1"),
                                           ("--speed", "nan")])
def test_interval_and_speed_refused_on_the_command_line(command, option, value, capsys):
    from stream.cli import build_parser
    args = [command, "f.csv"] if command == "replay" else [command]
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([*args, f"{option}={value}"])
    assert exc.value.code == 2
    assert option in capsys.readouterr().err


@pytest.mark.parametrize("command", ["simulate", "replay"])
def test_speed_zero_and_small_intervals_accepted(command):
    from stream.cli import build_parser
    args = [command, "f.csv"] if command == "replay" else [command]
    ns = build_parser().parse_args([*args, "--speed", "0", "--interval", "0.02"])
    assert ns.speed == 0.0 and ns.interval == 0.02


@pytest.mark.parametrize("interval, speed", [(0.0, 1.0), (-1.0, 1.0), (1e-9, 1.0), (0.2, -1.0)])
def test_interval_and_speed_refused_by_simulator_and_replay(interval, speed):
    from simulators.publisher import SimulatorConfig
    from simulators.replay import replay
    from stream.mqtt import BrokerURL
    url = BrokerURL.parse("mqtt://127.0.0.1:9")  # never reached: refused before connecting
    with pytest.raises(ValueError, match="interval|speed"):
        SimulatorConfig(broker=url, interval=interval, speed=speed)
    with pytest.raises(ValueError, match="interval|speed"):
        replay(_labelled_recording(), url, interval=interval, speed=speed)


# -- 3. train checks --out before training -----------------------------------------------------------
@pytest.mark.parametrize("where", ["directory", "no_parent"])
def test_train_refuses_an_unwritable_out_before_training(where, tmp_path, monkeypatch, capsys):
    import models.train
    import simulators.training
    from stream.cli import main

    def must_not_run(*a, **k):
        raise AssertionError("trained (or simulated) before checking --out")
    monkeypatch.setattr(models.train, "train", must_not_run)
    monkeypatch.setattr(simulators.training, "simulated_training_data", must_not_run)
    out = tmp_path / "outdir" if where == "directory" else tmp_path / "missing" / "m.pt"
    if where == "directory":
        out.mkdir()
    assert main(["train", "--simulated", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err
    assert list(tmp_path.rglob("*.tmp")) == []


# -- 4. device ids in recording files are checked --------------------------------------------------------
@pytest.mark.parametrize("device", ["a/b", "d,1", "_lead", "x" * 65, "dev 1", "+", "#"])
def test_recording_refuses_device_ids_the_consumer_would_refuse(device, tmp_path):
    import csv

    from stream.recording import RecordingError, read_recording
    path = tmp_path / "r.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerows([["device", "t", "ax", "ay", "az", "label"], ["ok1", 0, 0, 0, 9.8, "squat"],
                     ["ok1", 0.04, 0, 0, 9.8, "squat"], [device, 0.0, 0, 0, 9.8, "squat"]])
    with pytest.raises(RecordingError, match=rf"{path.name}:4: device id .* is not valid"):
        read_recording(path)


def test_recording_keeps_valid_device_ids(tmp_path):
    from stream.recording import read_recording
    path = tmp_path / "r.csv"
    path.write_text("device,t,ax,ay,az,label\nA.b_c-9,0,0,0,9.8,squat\n" + f"{'x' * 64},0,0,0,9.8,\n")
    assert read_recording(path).device.tolist() == ["A.b_c-9", "x" * 64]


# -- 5. encodings: a byte order mark is read, bytes that are not UTF-8 name file and line -----------------
def test_recording_with_a_byte_order_mark(tmp_path):
    from stream.recording import read_recording
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfdevice,t,ax,ay,az,label\nd1,0,0,0,9.8,squat\n")
    assert read_recording(path).device.tolist() == ["d1"]


@pytest.mark.parametrize("encoding, line", [("latin-1", 3000), ("utf-16", 1)])
def test_recording_not_utf8_names_file_and_line(encoding, line, tmp_path):
    from stream.recording import RecordingError, read_recording
    rows = ["device,t,ax,ay,az,label"] + [f"d1,{i * 0.04:.2f},0,0,9.8,squat" for i in range(1, 2999)]
    rows.append("d1,200,0,0,9.8,développé")  # line 3000: far beyond the text reader's first block
    path = tmp_path / "enc.csv"
    path.write_bytes(("\n".join(rows) + "\n").encode(encoding))
    with pytest.raises(RecordingError, match=rf"enc\.csv:{line}: not UTF-8"):
        read_recording(path)


# -- 6. --scenario-start counts from each device's own first published sample ---------------------------
@pytest.mark.broker
def test_scenario_starts_scenario_start_after_each_devices_first_sample(broker_url, tmp_path):
    from simulators.publisher import Simulator, SimulatorConfig
    prefix = _prefix()
    watch, got = _collect(broker_url, [f"{prefix}/+/imu"])
    record = tmp_path / "truth.csv"
    sim = Simulator(SimulatorConfig(broker=broker_url, devices=4, duration=5.0, speed=0, prefix=prefix,
                                    scenario="units_g", scenario_start=2.0, record=str(record)))
    try:
        sim.run()
        deadline = time.monotonic() + 10
        while len(got) < sim.published_messages and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        _stop(watch)
    assert len(got) == sim.published_messages == 4 * 25
    onsets = orjson.loads((tmp_path / "truth.csv.scenario.json").read_bytes())["onset_device_time"]
    messages: dict[str, list[dict]] = {}
    for topic, payload in got:
        messages.setdefault(topic.split("/")[1], []).append(orjson.loads(payload))
    assert sorted(messages) == sorted(onsets)
    for device, bodies in messages.items():
        bodies.sort(key=lambda b: b["seq"])
        first = bodies[0]["t"][0]
        assert onsets[device] is not None and abs(onsets[device] - first - 2.0) < 0.05, (device, first)
        # published in m/s2 until the message that reaches the onset, in g from it on
        switch = next(i for i, b in enumerate(bodies) if b["unit"] == "g")
        assert bodies[switch - 1]["t"][-1] < onsets[device] <= bodies[switch]["t"][-1] + 0.03  # 1/rate + jitter
        assert all(b["unit"] == "g" for b in bodies[switch:])


# -- 7. a retained "online" of a device not heard from shows as silent -----------------------------------
def test_device_online_but_silent_is_shown_as_such():
    from dashboard.common import SILENT_AFTER, status_text
    now = 1000.0
    assert status_text("online", now - 1.0, now, SILENT_AFTER) == "● online"
    assert status_text("online", now - SILENT_AFTER - 1.0, now, SILENT_AFTER) == "◌ online, silent"
    assert status_text("online", None, now, SILENT_AFTER) == "◌ online, silent"  # only the retained copy
    assert status_text("offline", None, now, SILENT_AFTER) == "○ offline"
    assert status_text("online") == "● online"  # consumers: their status has a will of its own


@pytest.fixture
def app_feed(broker_url, monkeypatch):
    """The feed the dashboard's pages share, for a prefix of this test's own (as tests/test_dashboard.py)."""
    monkeypatch.setenv("HARSTREAM_BROKER", f"mqtt://{broker_url.host}:{broker_url.port}")
    monkeypatch.setenv("HARSTREAM_PREFIX", _prefix())
    from dashboard.common import _shared_feed, get_feed
    feed = get_feed()
    deadline = time.monotonic() + 10
    while not feed.connected and time.monotonic() < deadline:
        time.sleep(0.05)
    yield feed
    _shared_feed.clear()


@pytest.mark.broker
def test_overview_counts_only_devices_heard_from_as_online(app_feed):
    from streamlit.testing.v1 import AppTest
    store, p = app_feed.store, app_feed.prefix
    now = time.time()
    store.handle(f"{p}/ghost-1/status", b"online", now=now - 120, retained=True)  # a killed simulator's
    store.handle(f"{p}/live-1/status", b"online", now=now)
    store.handle(f"{p}/live-1/imu", orjson.dumps({"seq": 0, "t": [1.0, 1.02], "acc": [[0, 0, 9.8]] * 2}), now=now)
    at = AppTest.from_file(str(ROOT / "dashboard" / "pages" / "overview.py"), default_timeout=30)
    at.run()
    assert not at.exception
    online = next(m for m in at.metric if m.label.startswith("Online"))
    assert online.value == "1"
    assert at.dataframe[0].value["status"].tolist() == ["● online", "◌ online, silent"]  # heard from first


# -- 9. `harstream broker` on an address in use: one line, not three tracebacks ----------------------------
def test_broker_on_an_address_in_use_says_so_in_one_line():
    import socket
    import subprocess
    import sys
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "stream.cli", "broker", "--broker", f"mqtt://127.0.0.1:{port}"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"harstream broker: error: cannot listen on mqtt://127.0.0.1:{port}: address already in use"]


# -- 10. bench --devices must be at least 1 ------------------------------------------------------------------
@pytest.mark.parametrize("devices", ["0", "-3"])
def test_bench_refuses_no_devices(devices, capsys):
    from stream.bench import run_bench
    from stream.cli import build_parser
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["bench", "--devices", "100", devices])
    assert exc.value.code == 2 and "--devices" in capsys.readouterr().err
    with pytest.raises(ValueError, match="devices"):  # before a broker or a consumer is started
        run_bench("mqtt://127.0.0.1:9", int(devices), 1.0)


# -- 11. a replay stopped early reports what it sent, not what it planned ------------------------------------
@pytest.mark.broker
def test_replay_stopped_early_reports_what_was_sent(broker_url):
    from simulators.replay import replay
    rec = _labelled_recording()  # 16 s: 80 messages of 0.2 s
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    sent = replay(rec, broker_url, prefix=_prefix(), speed=1.0, stop=stop)  # real time: stopped at ~0.5 s
    assert sent["planned_messages"] == 80 and sent["stopped"]
    assert 1 <= sent["messages"] <= 5 and sent["devices"] == 1
    assert sent["samples"] == sum(min(50 * 0.2, 10) for _ in range(sent["messages"]))
    done = replay(rec, broker_url, prefix=_prefix(), speed=0)
    assert done["messages"] == done["planned_messages"] == 80 and not done["stopped"] and done["samples"] == len(rec)


def test_consume_with_a_duration_stops_at_once_on_sigterm(broker_url, tmp_path):
    """``consume --duration`` armed a timer that kept the process alive until the duration was over,
    however early it was asked to stop."""
    import signal
    import subprocess
    import sys

    prefix = f"rvterm{uuid.uuid4().hex[:6]}"
    health = tmp_path / "health.json"
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "consume", "--broker", str(broker_url),
                             "--prefix", prefix, "--no-learn", "--duration", "300",
                             "--health-file", str(health)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not health.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert health.exists(), "the consumer did not start"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_version_prints_the_installed_package_version(capsys):
    from importlib.metadata import version

    from stream.cli import main
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"harstream {version('harstream')}"


@pytest.mark.parametrize("args, option", [
    (["simulate", "--rate", "inf"], "--rate"),  # an OverflowError's traceback
    (["simulate", "--rate", "0"], "--rate"),
    (["simulate", "--devices", "0"], "--devices"),
    (["simulate", "--scenario-start", "nan"], "--scenario-start"),  # numpy's "cannot convert float NaN"
    (["simulate", "--duration", "-5"], "--duration"),
    (["train", "--simulated", "--out", "m.pt", "--sim-devices", "0"], "--sim-devices"),  # named n_devices
    (["demo", "--duration", "nan"], "--duration"),
    (["consume", "--duration", "0"], "--duration"),
    (["bench", "--duration", "-1"], "--duration"),
])
def test_counts_rates_and_durations_out_of_range_are_refused_naming_the_option(args, option, capsys):
    from stream.cli import build_parser
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(args)
    assert exc.value.code == 2
    assert f"argument {option}:" in capsys.readouterr().err
