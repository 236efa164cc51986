"""Model versions, session 13, second look at the commands' answers (``answers``): the dashboard's Model page
takes the answer naming its own command, the learner process comes back to the version served when its weights
could not be read on the serving side, and no command's answer is lost when the learner process hands over
several versions while it stops."""

from __future__ import annotations

import time

import orjson
import pytest

from stream.mqtt import connect
from tests.helpers import wait
from tests.test_dashboard import Collector, app_feed, app_test, prefix  # noqa: F401 (fixtures)
from tests.test_s13_versions import _model, _promoted, _still, consumer, learner_says  # noqa: F401 (fixtures)

VERSIONS = [{"version": "v1", "created": 1.0e9, "metrics": {}, "path": "/x/v1.pt"},
            {"version": "v2", "created": 1.1e9, "metrics": {}, "path": "/x/v2.pt"}]


def _rolled_back(pub, topic: str, model, app_feed):  # noqa: F811
    """Consumer c1 online with its model message (``model()``), and the Model page's Roll back clicked (to v1,
    the one earlier version) and sent; the page returned."""
    pub.publish(f"{topic}/status", b"online", qos=1, retain=True)
    model()
    assert wait(lambda: (app_feed.store.consumers() or [None])[0] is not None
                and app_feed.store.consumers()[0].model is not None)
    at = app_test().run()
    at.switch_page("pages/model.py").run()
    at.button(key="rollback-c1").click().run()
    assert not at.exception and at.success and not at.error
    return at


@pytest.mark.broker
def test_the_model_page_takes_the_answer_naming_its_command(broker_url, prefix, app_feed):  # noqa: F811
    """The page took any refusal stamped after its command (less 5 s) for its answer: another command's refusal
    (`harstream versions`, another page) was shown as the refusal of the page's own, and a refusal was no longer
    shown once a later model message (an automatic promotion) had replaced the retained one. It now sends an id
    and shows the message answering it, carried out or refused."""
    pub = connect(broker_url, "test-versions2-pub")
    watch = Collector(broker_url, [f"{prefix}/_consumer/+/command"])
    topic = f"{prefix}/_consumer/c1"

    def model(**extra) -> None:
        pub.publish(f"{topic}/model", orjson.dumps({"serving": "v2", "versions": VERSIONS, "answers": None,
                                                   **extra}), qos=1, retain=True).wait_for_publish(5)

    try:
        at = _rolled_back(pub, topic, model, app_feed)
        (_, payload), = watch.wait_for(lambda t, p: t.endswith("/command"))
        model(answers="someone-else", refused={"action": "promote", "version": None,
                                               "reason": "another user's promote", "t": time.time()})
        assert wait(lambda: app_feed.store.consumers()[0].model.get("answers") == "someone-else")
        at.run()
        assert not at.exception and not at.error, "another command's refusal was shown as the page's"
        command = orjson.loads(payload)
        assert {k: v for k, v in command.items() if k != "id"} == {"action": "rollback", "version": "v1"}
        assert isinstance(command.get("id"), str) and command["id"], command
        reason = "version 'v1' cannot be read: gone"
        model(answers=command["id"], refused={"action": "rollback", "version": "v1", "reason": reason,
                                              "t": time.time()})
        model(serving="v3")  # an automatic promotion right after: the retained message answers nothing
        assert wait(lambda: app_feed.store.consumers()[0].model.get("serving") == "v3")
        at.run()
        assert not at.exception and not at.success
        (error,) = at.error
        assert reason in error.value and "rollback" in error.value and command["id"] not in error.value

        at.button(key="promote-c1").click().run()
        (_, payload), = watch.wait_for(lambda t, p: t.endswith("/command") and b"promote" in p)
        command = orjson.loads(payload)
        model(serving="v4", answers=command["id"])
        model(serving="v4")
        assert wait(lambda: any(a.get("answers") == command["id"] for a in app_feed.store.consumers()[0].answers))
        at.run()
        assert not at.exception and not at.error
        (done,) = at.success
        assert "carried out" in done.value and "v4" in done.value
    finally:
        for kind in ("status", "model"):
            pub.publish(f"{topic}/{kind}", b"", qos=1, retain=True).wait_for_publish(5)
        pub.disconnect()
        pub.loop_stop()
        watch.close()


class _Alive:
    """The learner process as LearnerProcess sees it, for a learner_loop run in a thread of the test."""
    exitcode = None

    def is_alive(self) -> bool:
        return True


def _in_threads(tmp_path, unreadable: int):
    """A LearnerProcess whose learner runs in a thread (learner_loop, as in its process), on a real pipe; the
    weights of its first ``unreadable`` promotions (a command's, or its own) come as a message the serving side
    cannot read. Returns (LearnerProcess, OnlineLearner, served: list of (version) handed to on_promote, stop)."""
    import threading

    from models.checkpoint import checkpoint_bytes
    from models.finetune import LearnerConfig, OnlineLearner
    from models.learner_process import LearnerProcess, learner_loop
    from tests.test_s13_versions import _model
    config = LearnerConfig(adapt="shared", versions_dir=tmp_path / "models", serving_version="tiny",
                           below_serving=False)
    served: list[str] = []
    lp = LearnerProcess(_model(), config, on_promote=lambda model, version: served.append(version))
    left = [unreadable]

    def promoted(model, version: str) -> None:  # as the learner process's own on_promote, the first unreadable
        if left[0] > 0:
            left[0] -= 1
            lp._outbox._sem.acquire()  # as put does: get releases it
            with lp._outbox._wlock:
                lp._outbox._writer.send_bytes(b"\x80\x04cno_such_module\nWeights\n.")
            return
        lp._outbox.put(("model", checkpoint_bytes(model)[0], version, [v.to_dict() for v in learner.versions]))

    learner = OnlineLearner(_model(), config, on_promote=promoted)
    lp._process = _Alive()
    lp._reading.set()
    lp._reader = threading.Thread(target=lp._read, args=(lp._process,), daemon=True)
    lp._reader.start()
    loop = threading.Thread(target=learner_loop, args=(learner, lp._inbox, lp._outbox), daemon=True)
    loop.start()

    def stop() -> None:
        lp._inbox.put(("stop",))
        loop.join(10)
        lp._reading.clear()
        lp._reader.join(5)

    return lp, learner, served, stop


def _nudge(learner, by: float) -> None:
    """The challenger's weights moved (as learning does): its promotion is a new version."""
    import torch
    with torch.no_grad():
        for p in learner.challenger.parameters():
            p.add_(by)


def test_the_learner_goes_back_to_the_version_served_when_its_weights_could_not_be_read(tmp_path):
    """A promote the learner process carried out but whose weights the serving side could not read is refused
    (6584066), but the learner process went on training from those weights, never served: its comparison and its
    next promotions were of them, and its next promotion was served as their child. It is now sent back to the
    version served, and the refusal says so."""
    lp, learner, served, stop = _in_threads(tmp_path, unreadable=1)
    answers = []
    try:
        _nudge(learner, 0.1)
        lp.promote({"forced": True}, answer=lambda model, version, reason: answers.append((version, reason)))
        assert wait(lambda: lp.poll() >= 0 and answers, timeout=10)
        ((version, reason),) = answers
        assert version is None and "could not be read here" in reason and "sent back to tiny" in reason
        assert wait(lambda: lp.poll() >= 0 and learner.version == "tiny", timeout=10), \
            f"the learner trains from {learner.version}, never served (serving {lp.version})"
        assert wait(lambda: lp.poll() >= 0 and served == ["tiny"], timeout=10)  # its rollback, served as it was
        assert lp.version == "tiny"
    finally:
        stop()


def test_an_automatic_promotion_not_read_sends_the_learner_back_and_a_later_one_is_left_alone(tmp_path):
    """The same for an automatic promotion (no command), once; a learner that has moved on to a version served
    since is not sent back."""
    lp, learner, served, stop = _in_threads(tmp_path, unreadable=1)
    try:
        _nudge(learner, 0.1)
        learner.promote({"windows": 24})  # as _maybe_promote does, in the learner's thread in its process:
        lp._outbox.put(("counters", {"updates": 0, "skipped": 0, "dropped": 0, "taken": 0, "rested": 0.0,
                                      "comparison": learner.comparison(), "version": learner.version}))
        assert wait(lambda: lp.poll() >= 0 and learner.version == "tiny", timeout=10)
        assert wait(lambda: lp.poll() >= 0 and served == ["tiny"], timeout=10)
        _nudge(learner, 0.2)
        lp.promote({"forced": True})  # readable this time: served, and the learner stays on it
        assert wait(lambda: lp.poll() >= 0 and len(served) == 2, timeout=10)
        assert served[1] == learner.version == lp.version != "tiny"
        lp._inbox.put(("resync", "tiny", "tiny"))  # a learner no longer on the version named stays
        lp.promote({"forced": True})
        assert wait(lambda: lp.poll() >= 0 and len(served) == 3, timeout=10)
        assert served[2] == served[1] == learner.version
    finally:
        stop()


def test_no_answer_is_lost_when_the_learner_hands_over_several_versions_while_it_stops(tmp_path):
    """LearnerProcess.stop polls until the learner process has stopped, with no swap applied in between: of two
    versions handed over (a command's, then an automatic promotion), the first was replaced unserved, and the
    model message answering the command was never published (`harstream versions` waited its --timeout). Each is
    now served and said in turn."""
    from models.checkpoint import checkpoint_bytes
    sent = []
    c = _still(tmp_path)
    c._client.on_publish = lambda topic, body: sent.append(body) if topic.endswith("/model") else None
    try:
        first, v1 = _promoted(tmp_path / "models", _model(), "tiny", 0.1)
        second, v2 = _promoted(tmp_path / "models", first, v1, 0.1)
        listed = [v.to_dict() for v in c.learner.versions]
        c._command(orjson.dumps({"action": "promote", "id": "p1"}))
        # what the learner process said, as LearnerProcess.stop applies it: poll after poll, no cycle between
        for message in [("command", "promote"), ("model", checkpoint_bytes(first)[0], v1, listed),
                        ("answered", "promote", None), ("model", checkpoint_bytes(second)[0], v2, listed)]:
            c.learner._apply(message)
        c._apply_swap()  # as the consumer's run does after stop
        assert [(m["serving"], m["answers"]) for m in sent] == [(v1, "p1"), (v2, None)], sent
        assert c.pipeline.classifier.version == v2
    finally:
        c.store.close()


def test_serving_pt_at_a_swap_is_the_file_the_learner_wrote_linked(tmp_path):
    """6584066 wrote serving.pt at every swap on the serving thread (the weights serialised, synced, renamed, the
    directory synced), an automatic promotion's too: up to 2.5 a second at the default --learn-cpu, each 3 ms
    (median) to 184 ms (a dd writing meanwhile). The learner process has written and synced the same weights in
    the version's file before handing them over: serving.pt is now that file, linked (0.2 ms, 35 ms at worst).
    Without a file to link, it is written as before; a restart serves it either way."""
    from models.checkpoint import checkpoint_bytes, load_checkpoint
    from stream.consumer import SERVING_MODEL
    c = _still(tmp_path)
    try:
        weights, version = _promoted(tmp_path / "models", _model(), "tiny", 0.1)
        listed = [*(v.to_dict() for v in c.learner.versions),
                  {"version": version, "created": 1.0, "parent": "tiny", "metrics": {},
                   "path": str(tmp_path / "models" / f"{version}.pt")}]
        c.learner._apply(("model", checkpoint_bytes(weights)[0], version, listed))  # as poll hands it over
        c._apply_swap()
        assert (tmp_path / SERVING_MODEL).samefile(tmp_path / "models" / f"{version}.pt")
        assert c._client.sent[-1][1]["serving"] == version
        other, unfiled = _promoted(tmp_path / "elsewhere", weights, version, 0.1)
        (tmp_path / "elsewhere" / f"{unfiled}.pt").unlink()  # listed, its file gone: written
        c.learner._apply(("model", checkpoint_bytes(other)[0], unfiled,
                          [*listed, {**listed[-1], "version": unfiled, "path": str(tmp_path / "gone.pt")}]))
        c._apply_swap()
        assert load_checkpoint(tmp_path / SERVING_MODEL)[1]["version"] == unfiled
        assert not (tmp_path / SERVING_MODEL).samefile(tmp_path / "models" / f"{version}.pt")
        assert not (tmp_path / f"{SERVING_MODEL}.tmp").exists()
        assert load_checkpoint(tmp_path / "models" / f"{version}.pt")[1]["version"] == version  # left as it was
    finally:
        c.store.close()
    again = _still(tmp_path)  # killed before any checkpoint
    try:
        assert again.pipeline.classifier.version == unfiled
    finally:
        again.store.close()
