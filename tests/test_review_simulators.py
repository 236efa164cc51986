"""Defects found by a review of the simulators (motion, workout, publisher, replay, training)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from simulators.workout import DeviceStream

# -- 1. a generated block whose every sample is lost silenced the stream for good ----------------------------

def test_a_block_with_every_sample_lost_does_not_silence_the_stream():
    # loss bursts (0.3-2.5 s) longer than a block of 1 s: whole blocks are lost
    d = DeviceStream("x", seed=1, scenario="loss_burst", scenario_start=5.0, block=1.0)
    counts = [len(d.read(1.0)) for _ in range(60)]
    assert sum(counts[10:]) > 40 * 50 * 0.5, counts  # bursts take a share, not everything after one
    assert len(d._blocks) <= 2  # noqa: SLF001 (nothing piles up unread)


def test_a_one_sample_block_before_a_sensor_scenario_dropped_does_not_silence_the_stream():
    # the block before a sensor scenario's onset is cut at the onset: here one sample (k = 3000), which
    # this person's sensor drops (drop rate about 2 %); the publisher's devices start scenarios at such times
    d = DeviceStream("x", seed=48, scenario="strap_rotated", scenario_start=60.02)
    assert len(d.read(60.0)) > 2900
    assert len(d.read(30.0)) > 30 * 50 * 0.9


# -- 2. the simulator's one connection, driven from its publishing thread, never came back after a broker restart

MOSQUITTO = shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto", "/usr/local/sbin/mosquitto")
                                               if Path(p).exists()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def _restartable_mosquitto(tmp_path: Path):
    """A private Mosquitto (no persistence) on a free port; yields (url, stop(), start())."""
    from stream.mqtt import BrokerURL, broker_answers
    if MOSQUITTO is None:
        pytest.skip("the mosquitto binary is not installed")
    port = _free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\n")
    url = BrokerURL.parse(f"mqtt://127.0.0.1:{port}")
    procs: list[subprocess.Popen] = []

    def start() -> None:
        procs.append(subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while not broker_answers(url, timeout=0.2):
            assert time.monotonic() < deadline, "mosquitto did not start"
            time.sleep(0.05)

    def stop() -> None:
        procs[-1].terminate()
        procs[-1].wait(10)

    start()
    try:
        yield url, stop, start
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)


def _run_in_thread(sim) -> tuple[threading.Thread, list[BaseException]]:
    errors: list[BaseException] = []

    def target() -> None:
        try:
            sim.run()
        except BaseException as exc:  # noqa: BLE001 (reported by the test)
            errors.append(exc)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, errors


def test_simulator_publishes_again_after_a_broker_restart(tmp_path):
    from simulators.publisher import Simulator, SimulatorConfig
    from stream.mqtt import connect
    with _restartable_mosquitto(tmp_path) as (url, stop, start):
        sim = Simulator(SimulatorConfig(broker=url, devices=2, speed=1.0, prefix="rs",
                                        record=str(tmp_path / "truth.csv")))
        thread, errors = _run_in_thread(sim)
        time.sleep(1.5)
        stop()
        time.sleep(0.5)
        start()
        got: list[bytes] = []
        watch = connect(url, "test-watch", on_message=lambda c, u, m: got.append(m.payload),
                        subscriptions=[("rs/+/imu", 0)])
        deadline = time.monotonic() + 15
        while len(got) < 20 and time.monotonic() < deadline:
            time.sleep(0.1)
        watch.disconnect()
        watch.loop_stop()
        sim.stop()
        thread.join(20)
        assert not thread.is_alive() and not errors, errors
        assert len(got) >= 20, f"{len(got)} imu messages after the broker came back"
        assert (tmp_path / "truth.csv").exists()


def test_simulator_stopped_while_its_broker_is_down_stops_cleanly_and_writes_its_record(tmp_path):
    from simulators.publisher import Simulator, SimulatorConfig
    with _restartable_mosquitto(tmp_path) as (url, stop, _):
        sim = Simulator(SimulatorConfig(broker=url, devices=2, speed=1.0, prefix="rs",
                                        record=str(tmp_path / "truth.csv")))
        thread, errors = _run_in_thread(sim)
        time.sleep(1.0)
        stop()  # down for the rest of the test
        time.sleep(1.0)
        sim.stop()
        thread.join(20)
        assert not thread.is_alive() and not errors, errors
        assert (tmp_path / "truth.csv").exists()


# -- 3. a device's retained status was not put back to "online" when its connection came back ----------------

@pytest.mark.parametrize("client_per_device", [False, True])
def test_devices_are_online_again_after_their_connection_comes_back(tmp_path, client_per_device):
    # a broker restarted without persistence forgets the retained "online"; with a connection per device a
    # connection lost otherwise leaves the will's "offline" there: either way the device streams again
    from simulators.publisher import Simulator, SimulatorConfig
    from stream.mqtt import connect
    with _restartable_mosquitto(tmp_path) as (url, stop, start):
        sim = Simulator(SimulatorConfig(broker=url, devices=2, speed=1.0, prefix="rs",
                                        client_per_device=client_per_device))
        thread, errors = _run_in_thread(sim)
        time.sleep(1.0)
        stop()
        time.sleep(0.5)
        start()
        status: dict[str, bytes] = {}
        imu: set[str] = set()

        def on_message(client, userdata, msg) -> None:
            device, kind = msg.topic.split("/")[1:]
            if kind == "status":
                status[device] = msg.payload
            else:
                imu.add(device)

        watch = connect(url, "test-watch", on_message=on_message,
                        subscriptions=[("rs/+/imu", 0), ("rs/+/status", 1)])
        deadline = time.monotonic() + 15
        while (len(imu) < 2 or len(status) < 2) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.3)
        watch.disconnect()
        watch.loop_stop()
        sim.stop()
        thread.join(20)
        assert not errors, errors
        assert imu == {"sim-000", "sim-001"}
        assert status == {"sim-000": b"online", "sim-001": b"online"}


# -- 4. no simulated people: an error that named numpy's concatenation or tuple unpacking ----------------------

@pytest.mark.parametrize("n", [0, -2])
def test_simulating_no_people_is_refused_naming_the_count(n):
    from simulators.training import simulated_training_data
    from simulators.workout import simulate_recording
    with pytest.raises(ValueError, match="'n_devices' must be at least 1"):
        simulate_recording(n, 5.0)
    for placements in (("wrist",), ("wrist", "upper_arm", "waist")):
        with pytest.raises(ValueError, match="'n_devices' must be at least 1"):
            simulated_training_data(n, 5.0, placements=placements)
