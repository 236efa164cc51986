"""Publishing simulated devices over MQTT in real time (or as fast as possible).

Every ``interval`` seconds each device publishes the samples it produced since its last message on
``har/<device>/imu``; devices are spread evenly across the interval so the broker sees a steady flow.
Labels (the simulator's truth) go to ``har/<device>/label`` whenever the exercise changes, for the
chosen fraction of devices.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

import numpy as np
import orjson

from simulators.workout import DeviceStream
from stream.mqtt import BrokerURL, connect

__all__ = ["SimulatorConfig", "Simulator", "MIN_INTERVAL", "check_interval", "check_speed"]

BLOCK = 10.0  # s: samples a simulated device generates at a time
INFLIGHT_QOS1 = 65535  # QoS 1 messages a simulator's client may have unacknowledged
MIN_INTERVAL = 0.01  # s: the shortest message interval of a simulator or a replay (100 messages/s per device)


def check_interval(interval: float) -> float:
    """``interval`` (seconds of samples per message) if at least ``MIN_INTERVAL`` and finite; else ValueError."""
    if not (isinstance(interval, (int, float)) and MIN_INTERVAL <= interval < float("inf")):
        raise ValueError(f"'interval' must be a number of seconds, at least {MIN_INTERVAL:g} (got {interval!r})")
    return float(interval)


def check_speed(speed: float) -> float:
    """``speed`` if finite and not negative (0: as fast as possible); else ValueError."""
    if not (isinstance(speed, (int, float)) and 0 <= speed < float("inf")):
        raise ValueError(f"'speed' must be 0 (as fast as possible) or more (got {speed!r})")
    return float(speed)

log = logging.getLogger(__name__)


@dataclass
class SimulatorConfig:
    broker: BrokerURL
    devices: int = 5  # number of simulated devices
    rate: float = 50.0  # Hz, sensor sample rate
    interval: float = 0.2  # seconds of samples per message
    duration: float | None = None  # seconds; None runs until stopped
    speed: float = 1.0  # 1 = real time; 0 = as fast as possible
    seed: int = 0  # device k uses seed + k
    prefix: str = "har"
    device_prefix: str = "sim"  # device ids are <device_prefix>-000, -001, ...
    placement: str = "wrist"
    label_fraction: float = 0.0  # share of devices that publish their true labels
    scenario: str | None = None  # drift scenario name (see simulators.workout.SCENARIOS)
    scenario_start: float = 60.0  # seconds after each device's first published sample
    client_per_device: bool = False  # one MQTT client (and last will) per device
    record: str | None = None  # write everything published, with the whole truth, to this recording file
    # and the gyroscope in it (gx,gy,gz), which is never published: a model trained on such a file reads it, and
    # refuses every simulated device (no_gyro); for studies only
    record_gyro: bool = False
    qos: int = 0  # QoS of the samples: at 1 a consumer's persistent session (--state-dir) gets what it missed

    def __post_init__(self) -> None:
        if self.devices < 1:
            raise ValueError("'devices' must be at least 1")
        if not 0.0 <= self.label_fraction <= 1.0:
            raise ValueError("'label_fraction' must be within [0, 1]")
        check_interval(self.interval)
        check_speed(self.speed)
        if not self.device_prefix or any(c in self.device_prefix for c in "/+#"):
            raise ValueError(f"'device_prefix' must be a non-empty name without / + # (got {self.device_prefix!r})")
        if self.qos not in (0, 1):
            raise ValueError(f"'qos' must be 0 or 1 (got {self.qos!r})")


class Simulator:
    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self._stop = threading.Event()
        self.published_messages = 0
        self.published_samples = 0
        self.late_ticks = 0  # ticks that ended over an interval behind schedule (could not keep up)
        self.max_lag = 0.0  # seconds the publisher was behind real time at worst
        rng = np.random.default_rng(config.seed)
        labelled = rng.random(config.devices) < config.label_fraction
        t0 = time.time()
        n = config.devices
        # Devices generate samples in blocks; left aligned, all 2,000 would build their next block in the
        # same tick (seconds of work at once). Device k skips a share k / n of its first block (``run``), so
        # that block boundaries spread evenly over time: its first published sample is ``skip`` s into its
        # stream, and its scenario takes effect ``scenario_start`` s after that sample, as on every device.
        self._skip = [BLOCK * k / n if n > 1 else 0.0 for k in range(n)]
        self.devices = [
            DeviceStream(
                f"{config.device_prefix}-{k:03d}" if n <= 1000 else f"{config.device_prefix}-{k:05d}",
                seed=config.seed + k,
                rate=config.rate,
                placement=config.placement,
                scenario=config.scenario,
                scenario_start=config.scenario_start + self._skip[k],
                t0=t0,
                block=BLOCK,
            )
            for k in range(n)
        ]
        self._labelled = {d.device for d, flag in zip(self.devices, labelled, strict=True) if flag}
        self._seq = {d.device: 0 for d in self.devices}
        self._recorded: list[tuple] = []  # (device, chunk) when recording
        # QoS 1: a device's seq 0 until the broker acknowledges it, and its chunks read meanwhile (sent after)
        self._first: dict[str, object] = {}
        self._held: dict[str, list] = {}
        self.unsent_messages = 0  # chunks still held at the end (their device's seq 0 never acknowledged)
        self._last_label: dict[str, str] = {}

    def stop(self) -> None:
        self._stop.set()

    def _topic(self, device: str, kind: str) -> str:
        return f"{self.config.prefix}/{device}/{kind}"

    def _clients(self) -> dict[str, object]:
        cfg = self.config
        # a device's retained status is "online" again on every (re)connection: a broker restarted without
        # persistence has forgotten it, and a connection lost otherwise has left its will's "offline" there
        if not cfg.client_per_device:
            client = connect(cfg.broker, "simulator", on_connected=lambda c: self._online(c, self.devices))
            # drive the network loop from the publishing thread: paho then writes each message at once
            # instead of waking its own thread through a socket pair (a third of the CPU at 2,000 devices)
            client.loop_stop()
            clients = {d.device: client for d in self.devices}
        else:
            clients = {
                d.device: connect(cfg.broker, "sim", client_id=d.device,
                                  will=(self._topic(d.device, "status"), b"offline"),
                                  on_connected=lambda c, d=d: self._online(c, [d]))
                for d in self.devices
            }
        if cfg.qos:  # paho's default of 20 unacknowledged would hold a tick of many devices to 20 messages;
            # its setter refuses a connected client (for a change to or from 0, no limit), so the attribute is
            # raised directly, to the most message ids MQTT has (more in flight and two would share an id)
            for client in set(clients.values()):
                client._max_inflight_messages = INFLIGHT_QOS1  # noqa: SLF001
        return clients

    def _online(self, client, devices: list[DeviceStream]) -> None:
        for d in devices:
            client.publish(self._topic(d.device, "status"), b"online", qos=1, retain=True)

    def run(self) -> None:
        cfg = self.config
        clients = self._clients()
        n = len(self.devices)  # (each device's "online" went out as its client connected)
        log.info("simulating %d devices at %.0f Hz on %s (%s)", cfg.devices, cfg.rate, cfg.broker,
                 "real time" if cfg.speed == 1 else f"speed {cfg.speed}" if cfg.speed else "as fast as possible")
        # each device skips its share of the first block (see __init__); this also builds the first blocks
        for skip, device in zip(self._skip, self.devices, strict=True):
            device.read(skip)
        manual = [c for c in set(clients.values()) if c._thread is None]  # noqa: SLF001 (paho has no getter)
        start = time.monotonic()
        tick = 0
        self.max_lag = 0.0
        try:
            while not self._stop.is_set():
                sim_time = tick * cfg.interval
                if cfg.duration is not None and sim_time >= cfg.duration:
                    break
                for client in manual:
                    self._drive(client)
                for i, device in enumerate(self.devices):
                    if cfg.speed > 0:
                        # spread devices over the interval instead of bursting all at once
                        due = start + (sim_time + cfg.interval * (i + 1) / n) / cfg.speed
                        delay = due - time.monotonic()
                        if delay > 0.002 and self._stop.wait(delay):
                            break
                    self._publish_chunk(clients[device.device], device)
                tick += 1
                if cfg.speed > 0:
                    lag = time.monotonic() - (start + tick * cfg.interval / cfg.speed)
                    self.max_lag = max(self.max_lag, lag)
                    self.late_ticks += lag > cfg.interval
        finally:
            self._flush_held(clients)
            for d in self.devices:
                # "offline" for those listening now, then the broker's copy cleared (an empty retained
                # message): a simulated device does not come back under its id as a sensor would, and each
                # retained "offline" stayed on the broker for good, one per device id ever simulated (3,184
                # after a soak; a new QoS 1 subscriber then got only about 1,020 of the retained statuses,
                # stock Mosquitto's queue, and missed live devices' "online"). MQTT 5's message expiry
                # would need a v5 connection, which the embedded amqtt broker does not speak.
                topic = self._topic(d.device, "status")
                clients[d.device].publish(topic, b"offline", qos=1, retain=True)
                info = clients[d.device].publish(topic, b"", qos=1, retain=True)
            for client in manual:
                client.loop_start()  # let paho's thread flush what it still holds (if not already running)
            try:
                info.wait_for_publish(10)
            except (RuntimeError, ValueError) as exc:  # not connected (the broker down): no status to flush
                log.warning("could not publish the devices' offline status: %s", exc)
            for client in set(clients.values()):
                client.disconnect()
                client.loop_stop()
            elapsed = time.monotonic() - start
            if cfg.record:
                self._write_record()
            if self.unsent_messages:
                log.warning("%d messages never sent: their device's seq 0 was not acknowledged (the broker "
                            "down?); sent after it, a resent seq 0 would start a new session", self.unsent_messages)
            log.info("simulator stopped: %d messages, %d samples in %.1f s (%.0f samples/s); %d of %d ticks "
                     "ended more than one interval late, largest lag %.3f s", self.published_messages,
                     self.published_samples, elapsed, self.published_samples / max(elapsed, 1e-9),
                     self.late_ticks, tick, self.max_lag)

    @staticmethod
    def _drive(client) -> None:
        """One turn of the network loop of a client driven from the publishing thread. paho reconnects a
        lost connection only in its own thread: while the connection is lost that thread runs (with
        paho's back-off), and once connected again the publishing thread takes the client back."""
        if client._thread is not None:  # noqa: SLF001 (paho has no getter)
            if client.is_connected():
                client.loop_stop()
            return
        client.loop(timeout=0)  # acknowledgements, keep-alive, leftover writes
        if not client.is_connected():
            client.loop_start()

    def _write_record(self) -> None:
        """The whole truth of what was published: samples in m/s², labels, and the drift scenario (and the
        gyroscope, not published, only with ``record_gyro``)."""
        from stream.recording import Recording, write_recording
        if not self._recorded:
            return
        names, chunks = zip(*self._recorded, strict=True)
        order = sorted(range(len(names)), key=lambda i: names[i])  # each device's rows together, in time
        scale = {"g": np.float32(9.80665), "m/s2": np.float32(1.0)}
        rec = Recording(
            device=np.concatenate([np.full(len(chunks[i].t), names[i]) for i in order]),
            t=np.concatenate([chunks[i].t for i in order]),
            acc=np.concatenate([chunks[i].acc * scale[chunks[i].unit] for i in order]).astype(np.float32),
            label=np.concatenate([chunks[i].label.astype(str) for i in order]),
            gyro=(np.concatenate([chunks[i].gyro for i in order]).astype(np.float32) if self.config.record_gyro
                  else None),
            subject=np.concatenate([np.full(len(chunks[i].t), names[i]) for i in order]),
        )
        write_recording(self.config.record, rec)
        scenario = self.config.scenario
        if scenario:
            onsets = {d.device: d.scenario_onset for d in self.devices}
            with open(f"{self.config.record}.scenario.json", "w") as f:
                f.write(orjson.dumps({"scenario": scenario, "onset_device_time": onsets}).decode())
        log.info("wrote the truth of %d samples to %s", len(rec), self.config.record)

    def _settled(self, client, name: str, wait: float = 0.0) -> bool:
        """Whether ``name`` has no seq 0 awaiting the broker's acknowledgement (QoS 1), after reading what the
        broker sent for up to ``wait`` s. (paho's ``is_published`` raises for ever for a message published while
        the connection was down, though paho sends it again on reconnecting: its flag is read instead.)"""
        info = self._first.get(name)
        if info is None:
            return True
        deadline = time.monotonic() + wait
        while not info._published:  # noqa: SLF001 (see the docstring)
            left = deadline - time.monotonic()
            if client._thread is None and client.is_connected():  # noqa: SLF001 (driven from this thread)
                client.loop(timeout=max(left, 0.0))  # returns as soon as something arrives
            elif left > 0 and client.is_connected():  # (down: no acknowledgement to wait for)
                with info._condition:  # noqa: SLF001 (paho's thread sets the flag under it)
                    info._condition.wait(left)  # noqa: SLF001
            else:
                break
            if time.monotonic() >= deadline:
                break
        if not info._published:  # noqa: SLF001
            return False
        del self._first[name]
        return True

    def _flush_held(self, clients: dict) -> None:
        """At the end: send the chunks held for an unacknowledged seq 0, once it is (10 s at most in all)."""
        deadline = time.monotonic() + 10.0
        for name in list(self._held):
            if self._settled(clients[name], name, max(0.0, deadline - time.monotonic())):
                for chunk in self._held.pop(name):
                    self._send(clients[name], name, chunk)
        self.unsent_messages = sum(len(held) for held in self._held.values())

    def _publish_chunk(self, client, device: DeviceStream) -> None:
        chunk = device.read(self.config.interval)
        if len(chunk.t) == 0:
            return
        if self.config.record:
            self._recorded.append((device.device, chunk))
        name = device.device
        if self.config.qos:
            # seq 0 is acknowledged before anything after it leaves (as in simulators.replay): paho sends an
            # unacknowledged message again after a reconnection, the broker passes a publisher's copy on
            # without DUP, and a seq 0 after a higher one is a new session for the consumer (DESIGN.md, "seq
            # counts messages"). Normally acknowledged within the interval; else the device's chunks wait
            # (read on time, sent in order once it is) while the other devices go on.
            held = self._held.get(name)
            if held is not None or not self._settled(client, name, wait=0.005):
                if held is None or not self._settled(client, name):
                    self._held.setdefault(name, []).append(chunk)
                    return
                for early in self._held.pop(name):
                    self._send(client, name, early)
        self._send(client, name, chunk)

    def _send(self, client, name: str, chunk) -> None:
        if name in self._labelled:
            changes = np.flatnonzero(chunk.label[1:] != chunk.label[:-1]) + 1
            for i in [0, *changes.tolist()]:
                label = str(chunk.label[i])
                if self._last_label.get(name) != label:
                    self._last_label[name] = label
                    client.publish(self._topic(name, "label"),
                                   orjson.dumps({"label": label, "t": float(chunk.t[i])}), qos=1)
        body = {
            "seq": self._seq[name],
            "t": np.round(chunk.t, 4),
            "acc": np.round(chunk.acc, 4),
            "unit": chunk.unit,
        }
        info = client.publish(self._topic(name, "imu"), orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
                              qos=self.config.qos)
        if self.config.qos and self._seq[name] == 0:
            self._first[name] = info
        self._seq[name] += 1
        self.published_messages += 1
        self.published_samples += len(chunk.t)
