"""Reviewer's findings on the learner process, per-device adapters, and how the consumer talks to them."""

import queue
import threading
import time

import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.finetune import LearnerConfig, OnlineLearner, Sequence
from models.learner_process import LearnerProcess, _arrays, learner_loop
from models.personal import AdapterConfig, DeviceAdapters
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


def test_the_serving_copy_of_the_adapters_and_a_restart_keep_to_max_devices():
    """The learner drops the least recently updated adapter beyond ``max_devices``; the serving process's
    copy (and the adapters file it saves, loaded again at a restart) kept every device ever adapted, and
    went on serving the adapters the learner had dropped."""
    model = _model()
    cfg = LearnerConfig(adapter=AdapterConfig(max_devices=3), cpu_share=1.0, below_serving=False)
    serving_side = LearnerProcess(model, cfg)  # not started: its copy is fed what a learner reports
    learner = OnlineLearner(model, cfg)
    inbox, outbox = queue.Queue(), queue.Queue()
    thread = threading.Thread(target=learner_loop, args=(learner, inbox, outbox), daemon=True)
    thread.start()
    rng = np.random.default_rng(0)
    for i in range(10):
        inbox.put(("sequence", _arrays(_sequence(f"dev{i}", rng))))
        deadline = time.monotonic() + 30
        while learner.adapters.updates <= i and time.monotonic() < deadline:
            time.sleep(0.01)
    inbox.put(("stop",))
    thread.join(30)
    while True:
        try:
            serving_side._apply(outbox.get_nowait())
        except queue.Empty:
            break
    kept = list(learner.adapters.state_dict())
    assert kept == ["dev7", "dev8", "dev9"]
    assert list(serving_side.adapters.state_dict()) == kept
    assert set(serving_side.adapters.devices()) <= set(kept)

    restarted = DeviceAdapters(2, AdapterConfig(max_devices=3))
    restarted.load_state_dict({f"old{i}": {"M": torch.eye(3), "b": torch.zeros(3), "c": torch.zeros(2),
                                           "active": True} for i in range(5)})
    assert list(restarted.state_dict()) == ["old2", "old3", "old4"] and len(restarted) == 3


def test_an_adapters_file_of_a_model_of_other_classes_is_not_loaded(tmp_path):
    """adapters.pt said only how many classes its model had: a consumer restarted on a model of as many
    classes, but others, took them (and their class biases) as its own."""
    old = LearnerProcess(_model(classes=("down", "up")), LearnerConfig())
    old.adapters.load_state_dict({"phone": {"M": 2 * torch.eye(3), "b": torch.zeros(3),
                                            "c": torch.tensor([1.0, 0.0]), "active": True}})
    old.adapters.save(tmp_path / "adapters.pt")
    other = LearnerProcess(_model(classes=("sit", "walk")), LearnerConfig())
    assert other.adapters.load(tmp_path / "adapters.pt") == 0
    assert len(other.adapters) == 0 and other.adapters.state_dict() == {}
    same = LearnerProcess(_model(classes=("down", "up")), LearnerConfig())
    assert same.adapters.load(tmp_path / "adapters.pt") == 1 and same.adapters.devices() == ["phone"]


def test_a_restored_adapter_keeps_the_comparison_that_serves_it(tmp_path):
    """Saved and restored (a restart; also how the learner process gets the adapters), an adapter lost
    the scores that decide whether it is served: the device's first labelled sequence after the restart,
    too few windows to judge on, withdrew an adapter that got all of them right and the plain network none."""
    from models.checkpoint import default_model_path, load_checkpoint
    from tests.test_personal import TURN, windows_of
    torch.manual_seed(0)
    model, _ = load_checkpoint(default_model_path())
    classes = list(model.config.classes)
    xs, ys = windows_of(seed=11, seconds=120.0, classes=classes, turn=TURN)
    state = tuple(s[:, 0] for s in model.initial_state(1))
    live = DeviceAdapters(len(classes), names=classes)
    last = (len(xs) - 4) // 4 * 4
    for i in range(0, last, 4):
        live.learn(model, "d", xs[i:i + 4], ys[i:i + 4], state)
    assert live.devices() == ["d"]
    live.save(tmp_path / "adapters.pt")
    restored = DeviceAdapters(len(classes), names=classes)
    assert restored.load(tmp_path / "adapters.pt") == 1 and restored.devices() == ["d"]
    kept = live.learn(model, "d", xs[last:last + 4], ys[last:last + 4], state)
    again = restored.learn(model, "d", xs[last:last + 4], ys[last:last + 4], state)
    assert kept["active"] and again["active"] == kept["active"], (kept, again)
    assert restored.devices() == ["d"]
    assert again["plain_accuracy"] == kept["plain_accuracy"]


def test_a_promotion_that_cannot_be_saved_does_not_end_the_learner(tmp_path):
    """A promote command whose version could not be written (a full disk, the versions folder gone)
    raised out of the learner loop: the learner process ended and labels were no longer learnt."""
    import shutil
    learner = OnlineLearner(_model(), LearnerConfig(versions_dir=tmp_path / "models", serving_version="start",
                                                    cpu_share=1.0))
    shutil.rmtree(tmp_path / "models")
    (tmp_path / "models").write_text("not a folder")
    inbox, outbox = queue.Queue(), queue.Queue()
    thread = threading.Thread(target=learner_loop, args=(learner, inbox, outbox), daemon=True)
    thread.start()
    inbox.put(("promote", {"forced": True}))
    inbox.put(("sequence", _arrays(_sequence("d", np.random.default_rng(0)))))
    deadline = time.monotonic() + 30
    while learner.adapters.updates < 1 and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert thread.is_alive(), "the learner loop ended on a failed promotion"
    assert learner.adapters.updates == 1 and learner.version == "start"
    inbox.put(("stop",))
    thread.join(30)
    assert not thread.is_alive()


def test_polling_never_waits_for_a_learner_that_gets_no_cpu():
    """A promoted model comes back as checkpoint bytes (280 kB for the default model), more than a pipe
    holds: the learner writes it a part at a time. ``poll`` read it on the serving thread, so a learner
    starved mid-message (SCHED_IDLE on a busy machine; here SIGSTOP) stalled serving until it ran again."""
    import os
    import signal

    from models.checkpoint import default_model_path, load_checkpoint
    model, _ = load_checkpoint(default_model_path())
    promoted = []
    learner = LearnerProcess(model, LearnerConfig(adapt="shared", below_serving=False),
                             on_promote=lambda m, v: promoted.append(v)).start()
    stopped = False
    try:
        learner.promote({"forced": True})
        deadline = time.monotonic() + 60
        while not learner._outbox._reader.poll(0.05) and time.monotonic() < deadline:
            pass
        time.sleep(1.0)  # the learner has written what the pipe holds and waits for it to be read
        os.kill(learner._process.pid, signal.SIGSTOP)
        stopped = True
        done = threading.Event()
        poller = threading.Thread(target=lambda: (learner.poll(), done.set()), daemon=True)
        started = time.monotonic()
        poller.start()
        assert done.wait(3.0), "poll waited for a learner that gets no CPU"
        assert time.monotonic() - started < 3.0
        os.kill(learner._process.pid, signal.SIGCONT)
        stopped = False
        deadline = time.monotonic() + 60
        while not promoted and time.monotonic() < deadline:
            learner.poll()
            time.sleep(0.02)
        assert len(promoted) == 1  # and it comes through once the learner runs again
    finally:
        if stopped:
            os.kill(learner._process.pid, signal.SIGCONT)
        learner.stop(timeout=10)


def test_an_adapters_file_of_double_or_non_finite_numbers_never_breaks_serving(tmp_path):
    """An adapters file (read with weights_only) whose tensors were float64 was loaded and served as is:
    the batched pass raised for every device in the batch; one of NaN served its device NaN."""
    def entry(dtype=torch.float32, fill=None):
        M = torch.eye(3, dtype=dtype) if fill is None else torch.full((3, 3), fill)
        return {"M": M, "b": torch.zeros(3, dtype=dtype), "c": torch.zeros(2, dtype=dtype), "active": True}
    torch.save({"format": "harstream.adapters", "classes": 2,
                "adapters": {"double": entry(torch.float64), "nan": entry(fill=float("nan"))}}, tmp_path / "a.pt")
    adapters = DeviceAdapters(2)
    adapters.load(tmp_path / "a.pt")
    assert adapters.devices() == ["double"]
    x = torch.randn(3, 10, 3)
    out, _ = adapters.apply(["double", "nan", "plain"], x)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, x)


def test_a_command_to_a_learner_process_that_has_ended_is_refused(tmp_path):
    """With the learner process gone (killed, or ended by a bug), a promote or rollback command was
    accepted (the consumer answered nothing) and never carried out."""
    import os
    import signal
    learner = LearnerProcess(_model(), LearnerConfig(versions_dir=tmp_path / "models", serving_version="start",
                                                     below_serving=False)).start()
    try:
        os.kill(learner._process.pid, signal.SIGKILL)
        learner._process.join(30)
        with pytest.raises(ValueError, match="learner process has stopped"):
            learner.promote({"forced": True})
        with pytest.raises(ValueError, match="learner process has stopped"):
            learner.rollback("start")
    finally:
        learner.stop(timeout=5)


def test_a_rollback_to_a_version_saved_before_a_config_field_existed_is_accepted(tmp_path):
    """A version file written before a ModelConfig field was added (it lacks the field, which has a default)
    is the same architecture as load_checkpoint reads it: the rollback is not refused."""
    versions = tmp_path / "models"
    version = _save_version(versions, _model())
    path = versions / f"{version}.pt"
    blob = torch.load(path, map_location="cpu", weights_only=True)
    del blob["config"]["conv_layers"]  # as if saved before the field existed
    torch.save(blob, path)
    learner = LearnerProcess(_model(), LearnerConfig(versions_dir=versions, serving_version="start"))
    learner.rollback(version)  # no ValueError


def test_a_rollback_to_a_version_saved_before_the_conv_front_end_is_of_the_same_architecture(tmp_path):
    """A checkpoint without 'front' in its config loads as the linear front end it was (load_checkpoint);
    the rollback's check read it with today's default, conv, and refused a version of the very model
    served as 'another architecture'."""
    versions = tmp_path / "models"
    serving = _model()  # linear
    old = _save_version(versions, _model())
    blob = torch.load(versions / f"{old}.pt", weights_only=True)
    del blob["config"]["front"]  # as files written before the field existed
    torch.save(blob, versions / f"{old}.pt")
    learner = LearnerProcess(serving, LearnerConfig(versions_dir=versions, serving_version="start"))
    learner.rollback(old)  # refused before: "a model of another architecture"
