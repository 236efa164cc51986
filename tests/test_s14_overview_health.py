"""The Overview page says what the consumer's metrics report failing (ops probe, s14): a full disk under
--state-dir (event store, acknowledgement journal, model versions) and a shared store that does not answer.
Before, the consumer went on serving and said so in its log only; the page showed nothing."""

from __future__ import annotations

import orjson
import pytest

from stream.mqtt import connect
from tests.helpers import wait
from tests.test_dashboard import app_feed, app_test, prefix  # noqa: F401 (fixtures)

HEALTHY = {"store": {"written": 10, "dropped": 0, "pending": 0, "errors": 0, "failing": False},
           "journal": {"errors": 0, "failing": False, "held": 0},
           "learner": {"updates": 1, "save_failures": 0},
           "shared": {"group": "g", "held": 0, "devices": 3, "store_down_s": 0.0}}
FAILING = {"store": {"written": 10, "dropped": 0, "pending": 706, "errors": 14, "failing": True},
           "journal": {"errors": 3, "failing": True, "held": 41},
           "learner": {"updates": 1, "save_failures": 5},
           "shared": {"group": "g", "held": 804, "devices": 3, "store_down_s": 20.4}}


@pytest.mark.broker
def test_the_overview_page_shows_what_fails_under_the_consumer(broker_url, prefix, app_feed):  # noqa: F811
    pub = connect(broker_url, "test-health-pub")
    topic = f"{prefix}/_consumer/c1"

    def metrics(t: float, body: dict) -> None:
        pub.publish(f"{topic}/metrics", orjson.dumps({"t": t, "model": "v1", **body}), qos=1,
                    retain=True).wait_for_publish(5)
        assert wait(lambda: ((app_feed.store.consumers() or [None])[0] is not None
                             and (app_feed.store.consumers()[0].metrics or {}).get("t") == t))

    try:
        pub.publish(f"{topic}/status", b"online", qos=1, retain=True).wait_for_publish(5)
        metrics(1.0, HEALTHY)
        at = app_test().run()
        assert not at.exception and not at.warning
        metrics(2.0, FAILING)
        at.run()
        assert not at.exception
        warnings = [w.value for w in at.warning]
        assert len(warnings) == 3, warnings
        assert "event store cannot write (14 failed writes; 706 events" in warnings[0]
        assert "journal cannot write (3 failed writes): 41 windows" in warnings[1]
        assert "not answered for 20 s" in warnings[2] and "holds 804 messages" in warnings[2]
        assert any("5 model versions could not be saved" in c.value for c in at.caption)
        metrics(3.0, {**HEALTHY, "store": {"failing": "yes", "errors": "many"}, "shared": {"store_down_s": True}})
        at.run()  # malformed parts: nothing said of them, nothing broken
        assert not at.exception and not at.warning
    finally:
        for kind in ("status", "metrics"):
            pub.publish(f"{topic}/{kind}", b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
