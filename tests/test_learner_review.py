"""Reviewer's findings on the learner process, per-device adapters, and how the consumer talks to them."""


import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.finetune import LearnerConfig, Sequence
from models.learner_process import LearnerProcess
from models.rnn import HARNet, ModelConfig


def _model(classes=("down", "up"), hidden=16) -> HARNet:
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=classes, hidden=hidden, layers=1, window=10, hop=10, patch=5, front="linear"))


def _sequence(device: str, rng) -> Sequence:
    return Sequence(device, torch.from_numpy(rng.normal(0, 1, (4, 10, 3)).astype(np.float32)),
                    torch.from_numpy(rng.integers(0, 2, 4)), (torch.zeros(1, 16), torch.zeros(1, 16)))


def _save_version(directory, model) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    version = save_checkpoint(directory / "incoming.tmp.pt", model, {"parent": None, "online": {}})
    (directory / "incoming.tmp.pt").rename(directory / f"{version}.pt")
    return version


@pytest.mark.parametrize("other", [dict(classes=("a", "b", "c")), dict(classes=("sit", "walk")), dict(hidden=8)])
def test_a_rollback_to_a_version_of_another_architecture_is_refused(tmp_path, other):
    """The versions folder lists every checkpoint in it (a consumer restarted with another --model leaves
    its starting model there). A rollback to one of other classes or shape was sent to the learner, which
    served it and handed it back: the consumer's set_model raised in its serving loop."""
    versions = tmp_path / "models"
    foreign = _save_version(versions, _model(**other))
    serving = _model()
    learner = LearnerProcess(serving, LearnerConfig(versions_dir=versions, serving_version="start"))
    assert foreign in [v.version for v in learner.versions]
    with pytest.raises(ValueError, match="another architecture"):
        learner.rollback(foreign)
    learner.rollback("start")  # the starting model (saved in the folder) is still a rollback target
