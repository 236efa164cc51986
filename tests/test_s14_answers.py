"""Session 14: one matcher of a command's answer (``stream.versions.answer``) serves ``harstream versions`` and
the dashboard's Model page. The page took, from a consumer from before ``answers``, any refusal stamped after
its command for its answer, another command's too; ``versions`` took only a refusal naming the command."""

from __future__ import annotations

import time

import orjson
import pytest

from stream.mqtt import connect
from tests.helpers import wait
from tests.test_dashboard import app_feed, app_test, prefix  # noqa: F401 (fixtures)
from tests.test_s13_versions2 import _rolled_back

VERSIONS = [{"version": "v1", "created": 1.0e9, "metrics": {}, "path": "/x/v1.pt"},
            {"version": "v2", "created": 1.1e9, "metrics": {}, "path": "/x/v2.pt"}]


@pytest.mark.broker
def test_the_model_page_does_not_take_another_commands_refusal_from_a_consumer_before_answers(
        broker_url, prefix, app_feed):  # noqa: F811
    """A consumer from before ``answers`` names no command in its model messages: the page read any refusal
    stamped after its command as its answer, and showed another command's (a promote refused, after the page's
    rollback) as the refusal of its rollback. It now takes only a refusal naming its command (action, and a
    rollback's version), as ``harstream versions`` did."""
    pub = connect(broker_url, "test-s14-answers-pub")
    topic = f"{prefix}/_consumer/c1"

    def model(**extra) -> None:  # no "answers": a consumer from before it
        pub.publish(f"{topic}/model", orjson.dumps({"serving": "v2", "versions": VERSIONS, **extra}),
                    qos=1, retain=True).wait_for_publish(5)

    try:
        at = _rolled_back(pub, topic, model, app_feed)
        model(refused={"action": "promote", "version": None, "reason": "another user's promote", "t": time.time()})
        assert wait(lambda: (app_feed.store.consumers()[0].model.get("refused") or {}).get("action") == "promote")
        at.run()
        assert not at.exception and not at.error, "another command's refusal was shown as the page's"
        assert at.success and "Sent" in at.success[0].value
        model(refused={"action": "rollback", "version": "v0", "reason": "another user's rollback", "t": time.time()})
        assert wait(lambda: (app_feed.store.consumers()[0].model.get("refused") or {}).get("version") == "v0")
        at.run()
        assert not at.exception and not at.error, "a rollback to another version was taken for the page's"
        reason = "version 'v1' cannot be read: gone"
        model(refused={"action": "rollback", "version": "v1", "reason": reason, "t": time.time()})
        assert wait(lambda: (app_feed.store.consumers()[0].model.get("refused") or {}).get("reason") == reason)
        at.run()
        assert not at.exception and not at.success
        (error,) = at.error
        assert reason in error.value and "rollback" in error.value
    finally:
        for kind in ("status", "model"):
            pub.publish(f"{topic}/{kind}", b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()


# -- the matcher itself, as each caller reads it -----------------------------------------------------------
def _refused(action: str, version: str | None, t: float = 100.0, **extra) -> dict:
    return {"serving": "v2", "refused": {"action": action, "version": version, "reason": "no", "t": t}, **extra}


def test_a_message_naming_the_command_answers_it_and_one_naming_another_or_none_does_not():
    from stream.versions import answer, refusal
    rollback = {"action": "rollback", "version": "v1", "id": "abc"}
    start, auto = {"serving": "v2", "answers": None}, {"serving": "v3", "answers": None}
    other = _refused("rollback", "v1", answers="xyz")  # the same command by someone else: theirs
    mine = {"serving": "v1", "answers": "abc"}
    assert answer([start, other, auto], rollback) is None
    assert answer([start, other, mine, auto], rollback) is mine
    refused = _refused("promote", None, t=0.0, answers="abc")  # named: its content is not checked
    assert answer([auto, refused], rollback) is refused and refusal(refused, rollback) == "no"
    assert answer([{"serving": "v1", "answers": 7}], {**rollback, "id": 7}) is not None  # integer ids too


def test_from_a_consumer_before_answers_a_refusal_must_name_the_command_and_follow_it():
    """What the page reads (``sent_at``, no message from before its command): refusals only, naming the
    command, stamped after it was sent (less 5 s of clocks)."""
    from stream.versions import REFUSAL_SLACK, answer
    rollback, promote = {"action": "rollback", "version": "v1", "id": "a"}, {"action": "promote", "id": "b"}
    assert answer([_refused("promote", None, t=100.0)], rollback, sent_at=100.0) is None
    assert answer([_refused("rollback", "v0", t=100.0)], rollback, sent_at=100.0) is None
    assert answer([_refused("rollback", "v1", t=90.0)], rollback, sent_at=100.0) is None  # an old refusal
    assert answer([_refused("rollback", "v1", t=100.0 - REFUSAL_SLACK)], rollback, sent_at=100.0) is not None
    assert answer([_refused("promote", None, t=101.0)], promote, sent_at=100.0) is not None
    assert answer([{"serving": "v1"}], rollback, sent_at=100.0) is None  # carried out: not told without before


def test_from_a_consumer_before_answers_versions_reads_what_a_message_says():
    """What ``harstream versions`` reads (the messages since its command, what the consumer said before it)."""
    from stream.versions import ConsumerModels, answer
    before = ConsumerModels("c", serving="v2", versions=[{"version": "v1"}, {"version": "v2"}])
    rollback, promote = {"action": "rollback", "version": "v1", "id": "a"}, {"action": "promote", "id": "b"}
    assert answer([{"serving": "v2"}, {"serving": "v1"}], rollback, before=before) == {"serving": "v1"}
    assert answer([_refused("rollback", "v0")], rollback, before=before) is None
    assert answer([_refused("rollback", "v1", t=0.0)], rollback, before=before) is not None  # no clock here
    assert answer([{"serving": "v3"}], promote, before=before) == {"serving": "v3"}  # a version not listed
    assert answer([{"serving": "v2"}], promote, before=before) == {"serving": "v2"}  # still the one served
    # another's rollback to v1 carried out, then a promotion from it that learnt nothing: v1 again
    assert answer([{"serving": "v1"}], promote, before=before) is None
    assert answer([{"serving": "v1"}, {"serving": "v1", "n": 2}], promote, before=before) == {"serving": "v1", "n": 2}
    assert answer([_refused("rollback", "v1"), {"serving": "v4"}], promote, before=before) == {"serving": "v4"}
