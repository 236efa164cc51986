"""Samples that never came (gaps in a device's seq numbers) are a warning in the log, at most once a minute: they
were counted in the metrics only, and a soak run lost a whole downtime at every restart (publishers at QoS 0)
with nothing in the log."""

import logging
import time

from tests.helpers import imu
from tests.test_consumer_monitor import _consumer


def _send(c, seqs) -> None:
    for seq in seqs:
        c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic())
    c._classify()


def _warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "never came" in r.getMessage()]


def test_samples_that_never_came_are_a_warning_at_most_once_a_minute(caplog):
    c = _consumer(progress_interval=0)
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        _send(c, range(3))
        c._publish_metrics()
        assert _warnings(caplog) == []  # nothing lost: nothing said
        _send(c, [5, 6])  # seq 3 and 4 never came: 50 samples
        c._publish_metrics()
        assert len(_warnings(caplog)) == 1 and _warnings(caplog)[0].startswith("50 samples never came (50 since")
        _send(c, [9])  # 50 more (7, 8), within the minute: counted, not said
        c._publish_metrics()
        assert len(_warnings(caplog)) == 1 and c.last_metrics["lost_samples"] == 100
        c._lost_warnings.reset()  # the minute over
        c._publish_metrics()
        assert _warnings(caplog)[-1].startswith("50 samples never came (100 since start")
        c._publish_metrics()
        assert len(_warnings(caplog)) == 2  # no new loss: nothing more
