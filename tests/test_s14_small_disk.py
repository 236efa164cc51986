"""The free-space floor below which no model version is written (9a31e58: the larger of 1% and 100 MB) is at most
a tenth of a small file system: on a 25 MB one (a disk-full probe's tmpfs) no version was ever saved, 20 MB free
or not."""

from __future__ import annotations

import shutil

import numpy as np

from models.finetune import OnlineLearner
from tests.test_online import toy_model, toy_sequence
from tests.test_s14_version_save import Usage, _config


def test_versions_are_saved_on_a_small_file_system_with_room(tmp_path, monkeypatch):
    real = shutil.disk_usage

    def usage(path):  # a 25 MB file system with 20 MB free: room for many 280 kB versions
        if str(path).startswith(str(tmp_path)):
            return Usage(25_000_000, 5_000_000, 20_000_000)
        return real(path)

    learner = OnlineLearner(toy_model(), _config(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", usage)
    promoted = []
    learner.on_promote = lambda model, version: promoted.append(version)
    rng = np.random.default_rng(4)
    for _ in range(20):
        learner.learn(toy_sequence(rng))
    assert promoted and learner.save_failures == 0
    assert all((tmp_path / "models" / f"{v}.pt").exists() for v in promoted)
