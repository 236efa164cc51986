"""A consumer run in a terminal says how it goes in its log every progress_interval seconds (it said nothing
between its start and its stop: a newcomer could not tell it was working without an MQTT client)."""

import logging
import time

from tests.helpers import imu
from tests.test_consumer_monitor import _consumer


def _run(c, caplog) -> list[str]:
    with caplog.at_level(logging.INFO, logger="stream.consumer"):
        for seq in range(4):
            c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic())
            c._classify()
        c.handle("har/dev/imu", b"not json", time.monotonic())
        time.sleep(0.02)
        c._publish_metrics()
    return [r.getMessage() for r in caplog.records if "windows in the last" in r.getMessage()]


def test_the_consumer_logs_its_progress(caplog):
    c = _consumer(progress_interval=0.01)
    lines = _run(c, caplog)
    assert len(lines) == 1, lines
    windows = c.stats.windows
    assert windows > 0
    assert lines[0].startswith(f"1 device; {windows} windows in the last") and f"{windows} since start" in lines[0]
    assert "not learning (--no-learn)" in lines[0] and "'bad_json': 1" in lines[0]
    c._publish_metrics()  # within the interval again: no second line
    assert len([r for r in caplog.records if "windows in the last" in r.getMessage()]) == 1


def test_no_progress_lines_when_asked_for_none(caplog):
    assert _run(_consumer(progress_interval=0), caplog) == []
