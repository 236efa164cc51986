"""A promoted version that cannot be written (session 14, ops probe p1). A learning consumer with every version kept
(`--keep-versions` unbounded, the default) filled its disk, about 4.7 GB a day; then each labelled sequence ended in
an ERROR with a 16-line traceback (write_atomic's OSError ENOSPC: 143 in 48 s). A version that cannot be written is
now one warning, counted (``learner.save_failures``), said again at most once a minute, not served (every version
served has its file), tried again at the next promotion; and none is written where the versions folder's file system
would be left below a floor kept free."""

from __future__ import annotations

import errno
import logging
import queue
import shutil
import threading
import time
from collections import namedtuple

import numpy as np
import pytest

import models.checkpoint
import models.finetune
from models.finetune import LearnerConfig, OnlineLearner
from models.learner_process import _arrays, learner_loop
from tests.test_online import toy_model, toy_sequence

Usage = namedtuple("Usage", "total used free")


def _config(tmp_path, **extra) -> LearnerConfig:
    # a promotion chance at every sequence once 16 windows are scored (ties included): several in a few sequences
    return LearnerConfig(adapt="shared", lr=1e-2, promotion_windows=16, min_updates_between_promotions=1,
                         min_updates_between_ties=1, cpu_share=0, versions_dir=tmp_path / "models", **extra)


class Writer:
    """The checkpoint writer, failing while ``failing`` (ENOSPC), counting its calls then."""

    def __init__(self, real) -> None:
        self.real, self.failing, self.calls = real, False, 0

    def __call__(self, path, data) -> None:
        if self.failing:
            self.calls += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self.real(path, data)


@pytest.fixture
def writer(monkeypatch):
    w = Writer(models.checkpoint.write_atomic)
    monkeypatch.setattr(models.checkpoint, "write_atomic", w)  # what save_checkpoint calls
    monkeypatch.setattr(models.finetune, "write_atomic", w, raising=False)
    return w


def _until(outbox: queue.Queue, seen: list, predicate, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            seen.append(outbox.get(timeout=0.1))
        except queue.Empty:
            continue
        if predicate(seen[-1]):
            return True
    return False


def test_a_version_that_cannot_be_written_is_one_warning_not_served_and_tried_again(tmp_path, writer, caplog):
    caplog.set_level(logging.INFO)
    config = _config(tmp_path, min_free_bytes=0, min_free_fraction=0.0)
    outbox: queue.Queue = queue.Queue()
    learner = OnlineLearner(toy_model(), config,  # the starting version is saved before the disk fills
                            on_promote=lambda model, version: outbox.put(("model", None, version)))  # as _child's
    start, kept = learner.version, [v.version for v in learner.versions]
    writer.failing = True
    inbox: queue.Queue = queue.Queue()
    loop = threading.Thread(target=learner_loop, args=(learner, inbox, outbox), daemon=True)
    loop.start()
    seen: list = []
    rng = np.random.default_rng(0)
    try:
        for i in range(30):
            inbox.put(("sequence", _arrays(toy_sequence(rng))))
            assert _until(outbox, seen, lambda m, n=i + 1: m[0] == "counters" and m[1]["learnt"] == n)
        assert writer.calls >= 5, f"only {writer.calls} promotion chances in 30 sequences"
        counters = [m[1] for m in seen if m[0] == "counters"][-1]
        assert counters["save_failures"] == writer.calls == learner.save_failures
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert not errors, f"{len(errors)} errors or tracebacks, the first: {errors[0].getMessage()}"
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        said = warnings[0].getMessage()
        assert "No space left on device" in said and str(config.versions_dir) in said and "--keep-versions" in said
        # nothing served without its file: no weights handed over, the learner trains from the version served
        assert not [m for m in seen if m[0] == "model"] and learner.version == start and learner.served == start
        assert [v.version for v in learner.versions] == kept and not (config.versions_dir / "incoming.pt").exists()
        assert learner.updates == 30  # learning went on

        # an operator's promote: refused with the reason, no traceback, counted, no second warning within the minute
        inbox.put(("promote", {"forced": True}))
        assert _until(outbox, seen, lambda m: m[0] == "answered")
        assert seen[-1][2] is not None and "No space left on device" in seen[-1][2]
        assert learner.save_failures == writer.calls
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
        assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1

        writer.failing = False  # space freed: the next promotion chance writes and serves it
        failures = learner.save_failures
        for _ in range(20):
            inbox.put(("sequence", _arrays(toy_sequence(rng))))
            if _until(outbox, seen, lambda m: m[0] == "model", timeout=2):
                break
        model = [m for m in seen if m[0] == "model"]
        assert model, "no promotion once the writer works again"
        version = model[0][2]
        assert (config.versions_dir / f"{version}.pt").exists() and learner.save_failures == failures
        assert any("saved again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
    finally:
        inbox.put(("stop",))
        loop.join(10)


def test_failures_are_said_again_at_most_once_a_minute(tmp_path, writer, caplog):
    caplog.set_level(logging.WARNING, logger="models.finetune")
    learner = OnlineLearner(toy_model(), _config(tmp_path, min_free_bytes=0, min_free_fraction=0.0))
    writer.failing = True
    now = [1000.0]
    learner._clock = lambda: now[0]
    rng = np.random.default_rng(1)

    def sequences(n: int) -> None:
        for _ in range(n):
            learner.learn(toy_sequence(rng))

    sequences(20)
    assert learner.save_failures >= 3 and len(caplog.records) == 1
    before = learner.save_failures
    now[0] += 59.0
    sequences(6)
    assert learner.save_failures > before and len(caplog.records) == 1
    before = learner.save_failures
    now[0] += 2.0
    sequences(6)
    assert learner.save_failures > before + 1 and len(caplog.records) == 2, [r.getMessage() for r in caplog.records]
    again = caplog.records[1].getMessage()  # at the first failure past the minute: all since the first counted
    assert "still not saved" in again and f"{before} more promotions not served in the last 61 s" in again
    assert f"save_failures {before + 1})" in again


def test_no_version_is_written_below_the_floor_kept_free(tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    free = [50_000_000]  # 50 MB of a 1 TB disk: below max(1%, 100 MB)
    real = shutil.disk_usage

    def usage(path):
        if str(path).startswith(str(tmp_path)):
            return Usage(1_000_000_000_000, 1_000_000_000_000 - free[0], free[0])
        return real(path)

    learner = OnlineLearner(toy_model(), _config(tmp_path))
    monkeypatch.setattr(shutil, "disk_usage", usage)
    rng = np.random.default_rng(2)
    promoted = []
    learner.on_promote = lambda model, version: promoted.append(version)
    for _ in range(20):
        learner.learn(toy_sequence(rng))
    assert not promoted and learner.save_failures >= 3
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [f"{learner.config.serving_version}.pt"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "--keep-versions" in warnings[0] and "50 MB free" in warnings[0], warnings
    assert "10000 MB kept free" in warnings[0]  # 1% of 1 TB, larger than 100 MB

    free[0] = 20_000_000_000  # room again
    for _ in range(20):
        learner.learn(toy_sequence(rng))
        if promoted:
            break
    assert promoted and (tmp_path / "models" / f"{promoted[0]}.pt").exists()


def test_the_consumer_metrics_show_the_save_failures(tmp_path):
    from tests.test_s13_versions import _still
    c = _still(tmp_path)
    counters = {"updates": 5, "skipped": 0, "dropped": 0, "taken": 5, "learnt": 5, "rested": 0.0,
                "comparison": c.learner.comparison(), "version": c.learner.version, "save_failures": 3}
    try:
        c.learner._apply(("counters", counters))
        assert c.learner.save_failures == 3
        c.learner._carried["save_failures"] = 2  # an earlier life's, as a restart carries them
        c.learner._apply(("counters", counters))
        c._publish_metrics()
        metrics = [body for topic, body in c._client.sent if topic.endswith("/metrics")][-1]
        assert metrics["learner"]["save_failures"] == 5
    finally:
        c.store.close()

