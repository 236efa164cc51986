"""The Model page tells how many labelled sequences a learner process that ended took with it unlearnt
(``learner.lost_sequences`` of the consumer's metrics, e81d39f); before, the page said it was started again
and nothing of what was lost."""

from __future__ import annotations

import pytest

from stream.mqtt import connect
from tests.test_dashboard import app_feed, app_test, prefix  # noqa: F401 (fixtures)
from tests.test_s13_supervise import learner_metrics


@pytest.mark.broker
def test_the_model_page_shows_the_sequences_a_learner_process_lost(broker_url, prefix, app_feed):  # noqa: F811
    pub = connect(broker_url, "test-lost-pub")
    topic = f"{prefix}/_consumer/c1"

    def metrics(t: float, **learner) -> None:
        learner_metrics(pub, topic, app_feed, t, **learner)

    try:
        pub.publish(f"{topic}/status", b"online", qos=1, retain=True).wait_for_publish(5)
        metrics(1.0, alive=False, restarting=True, restarts=1, lost_sequences=6)
        at = app_test().run()
        at.switch_page("pages/model.py").run()
        assert not at.exception and not at.error
        (warning,) = at.warning
        assert "being started again" in warning.value and "6 labelled sequences" in warning.value
        metrics(2.0, alive=True, restarting=False, restarts=2, lost_sequences=1234)
        at.run()
        assert not at.exception and not at.error and not at.warning
        assert any("started again 2 times" in c.value and "1,234 labelled sequences" in c.value for c in at.caption)
        metrics(3.0, alive=True, restarting=False, restarts=2, lost_sequences=0)  # none lost: nothing said
        at.run()
        assert not any("labelled sequences" in c.value for c in at.caption)
        metrics(4.0, alive=True, restarting=False, restarts=2, lost_sequences="many")  # malformed: not shown
        at.run()
        assert not at.exception and not any("labelled sequences" in c.value for c in at.caption)
    finally:
        for kind in ("status", "metrics"):
            pub.publish(f"{topic}/{kind}", b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
