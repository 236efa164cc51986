"""`harstream record` (session 14): a sensor of one's own, recorded from MQTT into a recording file.

A newcomer found no way to record a sensor: README says "train on recordings of it", but only the importers and
`simulate --record` wrote recording files. `harstream record` subscribes to <prefix>/+/imu, the phone formats'
topics (--adapter, decoded as consume decodes them) and <prefix>/+/label, and writes what it received, labelled,
sorted by device and time, when it stops (--duration, SIGTERM). Also:

- `simulate --record` wrote gx,gy,gz, though the simulator never publishes a gyroscope: `train --data` on the
  file made a model that refuses every simulated device (no_gyro). Now only with --record-gyro.
- recording files were written with \\r\\n line ends (the csv module's default): `grep ',squat$'` found no row.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import numpy as np
import orjson
import pytest

from stream.mqtt import connect
from stream.recording import Recording, read_recording, write_recording
from tests.helpers import imu, wait

ROOT = Path(__file__).resolve().parents[1]


def _publisher(url):
    return connect(url, "test-pub")


def _send(client, topic: str, payload: bytes) -> None:
    client.publish(topic, payload, qos=1).wait_for_publish(10)


def _android(t0: float, n: int) -> bytes:
    """Android sensor events (ns since boot), a phone lying still screen up."""
    return orjson.dumps([{"type": "android.sensor.accelerometer", "timestamp": int((t0 + i / 50) * 1e9),
                          "values": [0.1, 0.2, 9.81]} for i in range(n)])


def _until_subscribed(client, topic: str, seen) -> None:
    """Publish something refused (not JSON) on ``topic`` until ``seen()``: the recorder's subscriptions are live."""
    for _ in range(200):
        _send(client, topic, b"not json")
        if wait(seen, 0.2):
            return
    raise AssertionError("the recorder never received a message")


@pytest.mark.broker
def test_record_writes_samples_phone_events_and_labels_sorted_and_evaluate_reads_it(broker_url, tmp_path, capsys):
    from stream.record import RecordConfig, Recorder
    prefix = f"s14rec{uuid.uuid4().hex[:6]}"
    out = tmp_path / "mine.csv"
    recorder = Recorder(RecordConfig(broker=broker_url, out=out, prefix=prefix,
                                     adapters=(f"{prefix}-android/+ = android",)))
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(recorder.run(progress=False)), daemon=True)
    thread.start()
    pub = _publisher(broker_url)
    try:
        # the label topic is subscribed last (one connection's SUBSCRIBEs take effect in order)
        _until_subscribed(pub, f"{prefix}/probe/label", lambda: recorder.rejected["bad_json"] > 0)
        phone_route = f"{prefix}-android/phone-1"
        a = f"{prefix}/dev-a/imu"
        _send(pub, f"{prefix}/dev-a/label", orjson.dumps({"label": "squat", "t": 10.0}))
        _send(pub, a, imu(0, 10.0, n=3))
        _send(pub, a, imu(1, 10.06, n=2))
        _send(pub, a, imu(1, 10.06, n=2))  # the same message again (a publisher's QoS 1 copy)
        _send(pub, f"{prefix}/dev-b/imu", imu(1, 20.1, n=2))  # out of order: sorted in the file
        _send(pub, f"{prefix}/dev-b/imu", imu(0, 20.0, n=2))
        _send(pub, phone_route, _android(5.0, 5))
        _send(pub, f"{prefix}/phone-1/label", orjson.dumps({"label": "walking", "start": 5.01, "end": 5.05}))
        _send(pub, a, orjson.dumps({"seq": 2, "t": [1.0], "acc": [[1, 2]]}))  # malformed: bad_shape
        _send(pub, f"{prefix}/dev-a/label", b'{"label": 3}')  # malformed: bad_label
        # 8 s of a third device at 50 Hz, labelled only afterwards (a late label): enough for evaluate's windows
        for k in range(8):
            _send(pub, f"{prefix}/dev-c/imu", imu(k, 100.0 + k, n=50))
        _send(pub, f"{prefix}/dev-a/label", orjson.dumps({"label": "rest", "t": 10.05}))  # late, for dev-a
        _send(pub, f"{prefix}/dev-c/label", orjson.dumps({"label": "squat", "t": 100.0}))
        _send(pub, f"{prefix}/dev-c/label", orjson.dumps({"label": "rest", "start": 104.0, "end": 106.0}))
        assert wait(lambda: recorder.label_messages == 5 and recorder.samples == 5 + 4 + 5 + 400
                    and recorder.rejected["bad_label"] == 1)
    finally:
        recorder.stop()
        thread.join(30)
        pub.disconnect()
        pub.loop_stop()
    assert not thread.is_alive() and result["written"], result
    assert result["duplicate_messages"] == 1 and result["rejected"]["bad_shape"] == 1
    assert result["rejected"]["bad_label"] == 1 and result["rejected"]["bad_json"] >= 1
    raw = out.read_bytes()
    assert b"\r" not in raw
    rec = read_recording(out)
    assert rec.gyro is None and rec.subject is None
    rows = {d: (rec.t[s].round(4).tolist(), rec.label[s].tolist()) for d, s in rec.segments()}
    assert list(rows) == ["dev-a", "dev-b", "dev-c", "phone-1"]  # sorted by device
    assert rows["dev-a"] == ([10.0, 10.02, 10.04, 10.06, 10.08], ["squat"] * 3 + ["rest"] * 2)
    assert rows["dev-b"] == ([20.0, 20.02, 20.1, 20.12], [""] * 4)
    assert rows["phone-1"] == ([5.0, 5.02, 5.04, 5.06, 5.08], ["", "walking", "walking", "", ""])
    t_c, labels_c = np.asarray(rows["dev-c"][0]), np.asarray(rows["dev-c"][1])
    assert len(t_c) == 400 and (np.diff(t_c) > 0).all()
    assert set(labels_c[(t_c >= 104.0) & (t_c <= 106.0)]) == {"rest"}
    assert set(labels_c[(t_c < 104.0) | (t_c > 106.0)]) == {"squat"}  # holds until the next, around the span
    acc = {d: rec.acc[s] for d, s in rec.segments()}
    assert np.allclose(acc["phone-1"], [0.1, 0.2, 9.81])
    assert f"{prefix}" not in raw.decode()  # device ids, not topics
    # grep ',squat$' finds the rows (with \r\n line ends it found none)
    found = subprocess.run(["grep", "-c", ",squat$", str(out)], capture_output=True, text=True)
    assert int(found.stdout) == int((rec.label == "squat").sum()) > 0
    # and harstream evaluate reads it
    from stream.cli import main
    capsys.readouterr()
    assert main(["evaluate", "--data", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["windows"] > 0 and report["windows_total"] >= 3


@pytest.mark.broker
def _record_process(broker_url, prefix: str, out) -> tuple[subprocess.Popen, list[str], threading.Thread]:
    """``harstream record`` in a process of its own; the lines of its stderr gathered by a thread."""
    proc = subprocess.Popen([sys.executable, "-m", "stream.cli", "record", "--broker", str(broker_url),
                             "--prefix", prefix, "--out", str(out), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stderr), daemon=True)
    reader.start()
    return proc, lines, reader


def test_record_sigterm_writes_what_it_received(broker_url, tmp_path):
    prefix = f"s14sig{uuid.uuid4().hex[:6]}"
    out = tmp_path / "sig.csv"
    proc, lines, reader = _record_process(broker_url, prefix, out)
    pub = _publisher(broker_url)
    try:
        # the first refusal of each reason is logged at WARNING: not JSON until it is, then the samples, then a
        # bad_shape after them (one publisher, QoS 1: delivered in order), whose warning says they were taken
        for _ in range(200):
            _send(pub, f"{prefix}/probe/label", b"not json")  # the label topic is subscribed last
            if wait(lambda: any("bad_json" in line for line in lines), 0.2):
                break
        for k in range(3):
            _send(pub, f"{prefix}/watch-1/imu", imu(k, 50.0 + k * 0.2, n=10))
        _send(pub, f"{prefix}/watch-1/label", orjson.dumps({"label": "lunge", "t": 50.2}))
        _send(pub, f"{prefix}/watch-1/imu", orjson.dumps({"seq": 9, "acc": "x", "t": [1]}))
        assert wait(lambda: any("bad_shape" in line for line in lines))
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        pub.disconnect()
        pub.loop_stop()
    assert proc.returncode == 0, "".join(lines)
    assert "wrote 30 samples of 1 device to" in stdout and "bad_shape 1" in stdout, stdout
    rec = read_recording(out)
    assert len(rec) == 30 and set(rec.device.tolist()) == {"watch-1"}
    assert rec.label.tolist() == [""] * 10 + ["lunge"] * 20


def test_a_device_whose_clock_goes_back_gets_rows_of_its_own_and_mixed_gyroscope_is_left_out(tmp_path):
    from stream.mqtt import BrokerURL
    from stream.record import RecordConfig, Recorder
    recorder = Recorder(RecordConfig(broker=BrokerURL.parse("mqtt://127.0.0.1:1"), out=tmp_path / "x.csv",
                                     prefix="p", devices=frozenset({"w", "g"})))
    recorder.handle("p/w/label", orjson.dumps({"label": "squat", "t": 0.0}))
    recorder.handle("p/w/imu", imu(0, 500.0, n=5))
    recorder.handle("p/w/imu", imu(1, 500.1, n=5))
    recorder.handle("p/w/imu", imu(0, 3.0, n=5))  # restarted: seq 0, its clock back
    recorder.handle("p/w/label", orjson.dumps({"label": "rest", "t": 0.0}))  # the new session's
    recorder.handle("p/w/imu", imu(0, 3.0, n=5))  # its copy
    recorder.handle("p/other/imu", imu(0, 1.0, n=5))  # not among --devices
    gyro = {"seq": 0, "t": [7.0, 7.02], "acc": [[0, 0, 9.8]] * 2, "gyro": [[0.1, 0, 0]] * 2}
    recorder.handle("p/g/imu", orjson.dumps(gyro))
    summary = recorder.write()
    assert summary["written"] and summary["duplicate_messages"] == 1 and summary["sessions"] == 3
    assert summary["gyro"] is False and summary["gyro_dropped"] == {"w": 15}
    rec = read_recording(tmp_path / "x.csv")
    rows = {d: (len(rec.t[s]), set(rec.label[s].tolist()), set(rec.subject[s].tolist())) for d, s in rec.segments()}
    assert rows == {"g": (2, {""}, {"g"}), "w": (10, {"squat"}, {"w"}), "w.s2": (5, {"rest"}, {"w"})}


@pytest.mark.broker
@pytest.mark.parametrize("flag", [False, True])
def test_simulate_record_writes_the_gyroscope_only_when_asked(broker_url, tmp_path, flag):
    from simulators.publisher import Simulator, SimulatorConfig
    out = tmp_path / "truth.csv"
    Simulator(SimulatorConfig(broker=broker_url, devices=2, duration=1.0, speed=0, prefix=f"s14g{uuid.uuid4().hex[:6]}",
                              record=str(out), record_gyro=flag)).run()
    rec = read_recording(out)
    assert (rec.gyro is not None) is flag and len(rec) > 0


def test_recording_files_end_lines_with_newline_and_crlf_files_still_read(tmp_path):
    rec = Recording(device=np.array(["d", "d"]), t=np.array([0.0, 0.02]), acc=np.zeros((2, 3), np.float32),
                    label=np.array(["squat", "squat"]))
    path = tmp_path / "lf.csv"
    write_recording(path, rec)
    raw = path.read_bytes()
    assert b"\r" not in raw and raw.count(b"\n") == 3
    crlf = tmp_path / "crlf.csv"
    crlf.write_bytes(raw.replace(b"\n", b"\r\n"))
    assert read_recording(crlf).label.tolist() == ["squat", "squat"]


def test_record_help_and_simulate_record_gyro_option():
    from stream.cli import build_parser
    args = build_parser().parse_args(["record", "--out", "x.csv", "--adapter", "a/+ = android", "--devices", "a,b",
                                      "--duration", "5"])
    assert args.func.__name__ == "cmd_record" and args.duration == 5.0
    args = build_parser().parse_args(["simulate", "--record", "x.csv", "--record-gyro"])
    assert args.record_gyro
