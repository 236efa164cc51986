"""``Pipeline.late_by_device`` forgets an evicted device (found by a churn soak, session 15): it kept a count for
every device ever late, for good; the total stays in ``late_samples``, and a device that comes back is warned of
from its new count."""

from __future__ import annotations

import logging
import time

from tests.test_consumer_monitor import _consumer
from tests.test_s14_ops_warnings import _late_warnings, _send


def test_an_evicted_device_leaves_the_late_counts_and_comes_back_counted_afresh(caplog):
    c = _consumer(progress_interval=0)
    c._late_warnings.interval = 0.0  # every warning said (LATE_WARNING_INTERVAL, taken at the consumer's start)
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        _send(c, "dev-a", range(40), lambda s: s * 1.0)
        _send(c, "dev-a", range(40, 60), lambda s: s - 20.0)  # its clock steps back 20 s: 500 samples late
        c._publish_metrics()
        assert _late_warnings(caplog)[-1].startswith("500 samples dropped as late (500 since start; dev-a 500)")
        c._last_seen["dev-a"] = time.monotonic() - c.config.idle_timeout - 1
        c._evict_idle()
        assert "dev-a" not in c.pipeline.buffers and "dev-a" not in c.pipeline.late_by_device
        c._publish_metrics()
        assert c.last_metrics["late_samples"] == 500 and len(_late_warnings(caplog)) == 1
        _send(c, "dev-a", range(60, 70), lambda s: s - 20.0)  # back, in order: nothing late
        _send(c, "dev-a", [70], lambda s: 45.0)  # a message 4 s behind: 25 samples late
        c._publish_metrics()
        warnings = _late_warnings(caplog)
        assert len(warnings) == 2 and warnings[-1].startswith(
            "25 samples dropped as late (525 since start; dev-a 25)"), warnings
        assert c.last_metrics["late_samples"] == 525
