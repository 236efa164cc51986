"""A rollback is not undone by work done before it (dashboard walk, session 16: a consumer running
`--adapt shared` promoted a new version 0.6 s after an operator rolled back, on 24 windows labelled before
the rollback that its learner had not learnt yet)."""

import queue
import threading

import numpy as np
import torch

from models.finetune import LearnerConfig, OnlineLearner, Sequence
from models.learner_process import _arrays, learner_loop
from models.rnn import HARNet, ModelConfig


def _model() -> HARNet:
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=("down", "up"), hidden=16, layers=1, window=10, hop=10, patch=5,
                              front="linear"))


def _sequence(rng) -> Sequence:
    """Four windows, class 'up' when gravity points along +z, 'down' along -z: learnt in a few updates."""
    y = torch.from_numpy(rng.integers(0, 2, 4))
    x = torch.from_numpy(rng.normal(0, 1, (4, 10, 3)).astype(np.float32))
    x[:, :, 2] += torch.where(y == 1, 9.81, -9.81)[:, None]
    return Sequence("d", x, y, (torch.zeros(1, 16), torch.zeros(1, 16)))


def _config(tmp_path) -> LearnerConfig:
    return LearnerConfig(lr=1e-2, promotion_windows=16, versions_dir=tmp_path, serving_version="base",
                         adapt="shared", cpu_share=1.0, below_serving=False)


def _trained(learner: OnlineLearner, rng) -> OnlineLearner:
    """``learner`` after it learnt the task and promoted two versions."""
    for _ in range(60):
        learner.learn(_sequence(rng))
        if len(learner.versions) >= 3:
            return learner
    raise AssertionError(f"not promoted twice: {learner.comparison()}")


def _run(learner: OnlineLearner, items: list) -> list:
    """``items`` in the learner's inbox all at once (as a learner behind its labels finds them), learnt by
    ``learner_loop`` in a thread until it has learnt every sequence among them; what it said."""
    inbox, outbox = queue.Queue(), queue.Queue()
    for item in items:
        inbox.put(item)
    thread = threading.Thread(target=learner_loop, args=(learner, inbox, outbox), daemon=True)
    thread.start()
    said, sequences = [], sum(item[0] == "sequence" for item in items)
    while not any(m[0] == "counters" and m[1]["learnt"] == sequences for m in said):
        said.append(outbox.get(timeout=60))
    inbox.put(("stop",))
    thread.join(60)
    assert not thread.is_alive()
    while not outbox.empty():
        said.append(outbox.get())
    return said


def test_a_rollback_is_not_undone_by_windows_labelled_before_it(tmp_path):
    """Sequences labelled before a rollback and learnt after it (waiting in the learner's queue, as the
    consumer's learner at its CPU share falls behind) trained the challenger and were the promotion's held-out
    windows too: the version rolled back to was replaced by a new one at once, on no window labelled since.
    They are learnt, but only windows labelled after the rollback decide the next promotion."""
    rng = np.random.default_rng(0)
    promoted = []
    learner = _trained(OnlineLearner(_model(), _config(tmp_path), on_promote=lambda m, v: promoted.append(v)), rng)
    versions, updates = len(learner.versions), learner.updates
    backlog = [("sequence", _arrays(_sequence(rng))) for _ in range(20)]  # labelled before the rollback
    said = _run(learner, [*backlog, ("rollback", "base")])
    assert ("answered", "rollback", None) in said
    assert learner.version == "base", f"promoted {promoted[-1]} on windows labelled before the rollback"
    assert len(learner.versions) == versions
    assert learner.comparison()["windows"] == 0  # no window labelled since
    assert learner.updates == updates + 20  # the backlog was learnt all the same

    # fresh labels, learnt after the rollback: the challenger (better than the untrained base) is promoted
    # once it did better on windows labelled after the rollback, which it had not trained on yet
    learner = OnlineLearner(_model(), _config(tmp_path), on_promote=lambda m, v: promoted.append(v))
    learner.rollback("base")
    windows = 0
    while learner.version == "base" and windows < 400:
        learner.learn(_sequence(rng))
        windows += 4
    assert learner.version != "base"
    assert windows >= 16  # promotion_windows, all labelled after the rollback


def test_after_a_rollback_the_challenger_is_the_version_rolled_back_to(tmp_path):
    """The learner goes on from the rolled-back weights: its challenger, and the serving copy it compares
    with, are those weights, not the challenger it trained before; a promote command right after serves them
    again under the same version."""
    rng = np.random.default_rng(1)
    learner = _trained(OnlineLearner(_model(), _config(tmp_path)), rng)
    first = learner.versions[1]
    assert learner.version != first.version
    weights = torch.load(first.path, weights_only=True)["state_dict"]
    learner.rollback(first.version)
    for name, value in weights.items():
        assert torch.equal(learner.challenger.state_dict()[name], value), name
        assert torch.equal(learner.serving.state_dict()[name], value), name
    versions = len(learner.versions)
    assert learner.promote({"forced": True}) == first.version and len(learner.versions) == versions


def test_a_rollback_restarts_the_count_of_updates_before_a_promotion(tmp_path):
    """The updates since the last promotion counted those before the rollback: a challenger only as good
    as the version rolled back to (a tie, which waits ``min_updates_between_ties`` updates) was promoted at
    the first chance after it."""
    rng = np.random.default_rng(2)
    learner = _trained(OnlineLearner(_model(), _config(tmp_path)), rng)
    learner.learn(_sequence(rng))  # not promoted: its scores start again at a promotion
    assert learner._since_promotion > 0
    learner.rollback("base")
    assert learner._since_promotion == 0
