"""Second look at e81d39f (the learner keeps the version served; sequences lost with a learner process counted;
stop keeps to its timeout): a learner that drifted a second time to the same version never served was not sent
back."""

from __future__ import annotations

from models.finetune import LearnerConfig
from tests.helpers import wait
from tests.test_s13_versions2 import _nudge
from tests.test_s14_learner import _unwire, _wired


def test_a_learner_that_drifts_again_to_a_version_once_sent_back_from_is_sent_back_again(tmp_path):
    """The serving side sends a learner that trains from a version it never served back to the one served
    (``resync``), once per such version: each of its counters names that version until it has gone back. But the
    version stayed marked for good: a learner that came to it again (a rollback to it, whose weights again could
    not be read here) was never sent back, and trained on from weights never served, while the answer said it
    was sent back. Found by a random run of promotions and rollbacks (/tmp/s14sec/fuzz_keep.py, seed 1)."""
    config = LearnerConfig(adapt="shared", versions_dir=tmp_path / "models", serving_version="tiny",
                           below_serving=False, keep_versions=2)
    lp, learner, loop, unreadable = _wired(config)
    answers = []

    def answer(model, version, reason) -> None:
        answers.append((version, reason))

    try:
        _nudge(learner, 0.1)
        lp.promote({"forced": True}, answer=answer)
        assert wait(lambda: lp.poll() >= 0 and len(answers) == 1, timeout=10)
        served = answers[0][0]
        assert served is not None and lp.version == served

        _nudge(learner, 0.2)  # a promotion whose weights cannot be read here: the learner is sent back
        unreadable[0] = True
        lp.promote({"forced": True}, answer=answer)
        assert wait(lambda: lp.poll() >= 0 and len(answers) == 2, timeout=10)
        assert answers[1][0] is None and f"sent back to {served}" in answers[1][1]
        drifted = learner.versions[-1].version
        assert drifted != served
        # and its weights handed over (the learner takes the version before on_promote): else that takes the flag
        assert wait(lambda: lp.poll() >= 0 and learner.version == served and lp.handed == 3, timeout=10)

        unreadable[0] = True  # a rollback to that version, whose weights again cannot be read here
        lp.rollback(drifted, answer=answer)
        assert wait(lambda: lp.poll() >= 0 and len(answers) == 3, timeout=10)
        assert answers[2][0] is None and f"sent back to {served}" in answers[2][1]
        assert wait(lambda: lp.poll() >= 0 and learner.version == served, timeout=10), \
            f"the learner trains from {learner.version}, never served (serving {lp.version})"
        assert lp.version == served
    finally:
        _unwire(lp, loop)
