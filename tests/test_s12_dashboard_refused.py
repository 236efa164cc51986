"""The Model page shows a consumer's refusal of the command it sent (the retained model message's
``refused``); before, it said "Sent" and nothing more, whatever the consumer answered."""

from __future__ import annotations

import time

import orjson
import pytest

from stream.mqtt import connect
from tests.helpers import wait
from tests.test_dashboard import app_feed, app_test, prefix  # noqa: F401 (fixtures)

VERSIONS = [{"version": "v1", "created": 1.0e9, "metrics": {}, "promoted": True},
            {"version": "v2", "created": 1.1e9, "metrics": {}, "promoted": True}]


@pytest.mark.broker
def test_the_model_page_shows_the_consumers_refusal_of_its_command(broker_url, prefix, app_feed):  # noqa: F811
    pub = connect(broker_url, "test-refused-pub")
    consumer = f"{prefix}/_consumer/c1"
    try:
        pub.publish(f"{consumer}/status", b"online", qos=1, retain=True)
        pub.publish(f"{consumer}/model", orjson.dumps({"serving": "v2", "versions": VERSIONS,
                                                       "refused": {"action": "rollback", "version": "v0",
                                                                   "reason": "an old refusal", "t": 1.0e9}}),
                    qos=1, retain=True).wait_for_publish(5)
        assert wait(lambda: (app_feed.store.consumers() or [None])[0] is not None
                    and app_feed.store.consumers()[0].model is not None)
        at = app_test().run()
        at.switch_page("pages/model.py").run()
        at.button(key="rollback-c1").click().run()
        assert not at.exception and at.success and not at.error  # a refusal from before is no answer
        reason = "version v1's file is gone: deleted since it was listed"
        pub.publish(f"{consumer}/model", orjson.dumps({"serving": "v2", "versions": VERSIONS, "refused": {
            "action": "rollback", "version": "v1", "reason": reason, "t": time.time()}}),
            qos=1, retain=True).wait_for_publish(5)
        assert wait(lambda: (app_feed.store.consumers()[0].model or {}).get("refused", {}).get("reason") == reason)
        at.run()
        assert not at.exception and not at.success
        (error,) = at.error
        assert "refused" in error.value and reason in error.value and "rollback" in error.value
    finally:
        for topic in ("status", "model"):
            pub.publish(f"{consumer}/{topic}", b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
