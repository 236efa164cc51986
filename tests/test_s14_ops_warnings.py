"""What an ops probe found the log got wrong. A shared state store that stops answering was a WARNING at every
consumer cycle (507 lines in 20 s with Redis killed): now one when it stops, at most one a minute while it stays
so, and one INFO line when it answers again. A device clock that steps back by less than clock_reset (30 s)
dropped that much data as late with nothing in the log: now a warning, at most once a minute, naming how many
samples and the devices with the most."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from models.state import StatefulClassifier
from stream import shared_state
from stream.decode import SequenceCheck
from stream.pipeline import Pipeline
from stream.shared_state import MemoryStore, RedisStore, SharedDevices, StoreError
from tests.helpers import imu, wait
from tests.test_consumer_monitor import _consumer
from tests.test_scaleout import stream_of


# -- the shared store unreachable -------------------------------------------------------------------
class _Unplugged(MemoryStore):
    """A store that refuses every call while ``down``, as RedisStore does when Redis is gone."""

    def __init__(self) -> None:
        super().__init__()
        self.down = True

    def load_records(self, devices):
        if self.down:
            raise StoreError("Redis load failed: Error 111 connecting to 127.0.0.1:16379. Connection refused.")
        return super().load_records(devices)

    def commit(self, updates):
        if self.down:
            raise StoreError("Redis commit failed: Error 111 connecting to 127.0.0.1:16379. Connection refused.")
        return super().commit(updates)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _redis_down():
    """A RedisStore on a free port where nothing listens, and a function that starts Redis there."""
    pytest.importorskip("redis", reason="the redis package is not installed (pip install redis)")
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("no redis-server to start")
    port = _free_port()
    pidfile = Path(tempfile.mkdtemp(prefix="harstream-redis-")) / "redis.pid"
    store = RedisStore(f"redis://127.0.0.1:{port}/0", f"harstream-test:{uuid.uuid4().hex[:8]}", ttl=60,
                       timeout=1.0)
    started = []

    def start() -> None:
        subprocess.run([server, "--port", str(port), "--save", "", "--appendonly", "no", "--daemonize", "yes",
                        "--pidfile", str(pidfile)], check=True, capture_output=True, timeout=20)
        started.append(port)
        import redis
        client = redis.Redis(port=port, socket_connect_timeout=1)

        def answers() -> bool:
            try:
                return bool(client.ping())
            except (redis.RedisError, OSError):
                return False
        assert wait(answers, 10.0)
        client.close()

    def stop() -> None:
        if started and wait(pidfile.exists, 5.0):
            pid = int(pidfile.read_text())
            os.kill(pid, signal.SIGKILL)  # the one started here, by its pid
            wait(lambda: not Path(f"/proc/{pid}").exists(), 5.0)
        shutil.rmtree(pidfile.parent, ignore_errors=True)
    return store, start, stop


@pytest.fixture(params=["memory", "redis"])
def unreachable(request):
    """(store, make it answer) for a store that does not answer yet."""
    if request.param == "memory":
        store = _Unplugged()
        yield store, lambda: setattr(store, "down", False)
        return
    store, start, stop = _redis_down()
    try:
        yield store, start
    finally:
        store.close()
        stop()


def _records(caplog) -> list[tuple[int, str]]:
    return [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "stream.shared_state"]


def test_a_store_that_does_not_answer_is_one_warning_a_minute_and_its_return_one_line(
        unreachable, tiny_model, caplog, monkeypatch):
    store, revive = unreachable
    r = SharedDevices(store, Pipeline(StatefulClassifier(tiny_model)), SequenceCheck(), reorder_wait=60.0)
    batches = stream_of("dev", 8, seed=1)
    published: list = []
    with caplog.at_level(logging.INFO, logger="stream.shared_state"):
        for x in batches:  # a message a cycle, every one held: the store does not answer
            r.hold(x, time.monotonic())
            for _ in range(5):
                r.apply()
                published += r.commit(r.pipeline.classify_ready())
        assert r.held == 8 and not published and r.counts["store_errors"] == 40
        lines = _records(caplog)
        assert len(lines) == 1 and lines[0][0] == logging.WARNING, lines  # not one a try
        assert "does not answer" in lines[0][1] and "111" in lines[0][1], lines
        assert r.summary()["store_errors"] == 40 and r.summary()["store_down_s"] >= 0
        monkeypatch.setattr(shared_state, "STORE_WARNING_INTERVAL", 0.0)  # a minute later
        r.apply()
        lines = _records(caplog)
        assert len(lines) == 2 and lines[1][0] == logging.WARNING
        assert "has not answered for" in lines[1][1] and "(41 tries" in lines[1][1] and "8 messages held" in lines[1][1]
        monkeypatch.setattr(shared_state, "STORE_WARNING_INTERVAL", 60.0)
        revive()
        for _ in range(3):
            r.apply()
            published += r.commit(r.pipeline.classify_ready())
        lines = _records(caplog)
        assert len(lines) == 3 and lines[2][0] == logging.INFO, lines
        assert "answers again, after" in lines[2][1] and "(41 failed tries)" in lines[2][1]
        assert r.held == 0 and r.sequence.snapshot()["dev"] == 7 and published  # caught up
        assert r.summary()["store_down_s"] == 0.0
        # down again: a warning again, at once (a new outage, not the last one's minute)
        if isinstance(store, _Unplugged):
            store.down = True
            r.hold(stream_of("dev", 9, seed=1)[8], time.monotonic())
            r.apply()
            r.commit(r.pipeline.classify_ready())
            assert [lv for lv, _ in _records(caplog)][3:] == [logging.WARNING]


# -- a device clock stepping back by less than clock_reset ------------------------------------------
def _late_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and "dropped as late" in r.getMessage()]


def _send(c, device: str, seqs, t0) -> None:
    for seq in seqs:
        c.handle(f"har/{device}/imu", imu(seq, t0(seq), n=25, rate=25.0), time.monotonic())
    c._classify()


def test_a_clock_stepping_back_less_than_clock_reset_is_a_warning_naming_the_device(caplog):
    c = _consumer(progress_interval=0)
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        for device in ("dev-a", "dev-b", "dev-c"):
            _send(c, device, range(40), lambda s: s * 1.0)  # 40 s, in order
        c._publish_metrics()
        assert _late_warnings(caplog) == []  # nothing late: nothing said
        assert c.last_metrics["late_samples"] == 0
        _send(c, "dev-a", range(40, 60), lambda s: s - 20.0)  # its clock steps back 20 s: 20 s dropped
        _send(c, "dev-a", [60], lambda s: 40.0)  # caught up
        _send(c, "dev-b", [40], lambda s: 39.0)  # a message 1 s behind: 25 samples late
        _send(c, "dev-c", range(40, 45), lambda s: s - 40.0)  # back 40 s: a new session, nothing dropped
        c._publish_metrics()
        warnings = _late_warnings(caplog)
        assert len(warnings) == 1, warnings
        assert warnings[0].startswith("525 samples dropped as late (525 since start; dev-a 500, dev-b 25)"), warnings
        assert "less than 30 s" in warnings[0] and "reorder window" in warnings[0]
        assert c.last_metrics["late_samples"] == 525 and c.last_metrics["clock_resets"] == 1
        _send(c, "dev-b", [41], lambda s: 38.0)  # 25 more, within the minute: counted, not said
        c._publish_metrics()
        assert len(_late_warnings(caplog)) == 1 and c.last_metrics["late_samples"] == 550
        c._late_warnings.reset()  # the minute over
        c._publish_metrics()
        assert _late_warnings(caplog)[-1].startswith("25 samples dropped as late (550 since start; dev-b 25)")
        c._publish_metrics()
        assert len(_late_warnings(caplog)) == 2  # none late since: nothing more


def test_the_late_warning_names_five_devices_at_most(caplog):
    c = _consumer(progress_interval=0)
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        for k in range(7):
            device = f"d{k}"
            _send(c, device, range(10), lambda s: s * 1.0)
            _send(c, device, range(10, 10 + k + 1), lambda s: 5.0)  # k + 1 messages at 5 s: late
        c._publish_metrics()
    (warning,) = _late_warnings(caplog)
    assert warning.startswith("700 samples dropped as late (700 since start; d6 175, d5 150, d4 125, d3 100, "
                              "d2 75 and 2 more devices)"), warning
