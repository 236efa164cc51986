"""Review of the event store and the consumer's state directory: what a second consumer on one state
directory did, and a checkpoint that cannot be written (a full disk)."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from stream.persist import load_state
from tests.test_persist_faults import _life, _send

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys, time, torch
from pathlib import Path
from models.rnn import HARNet, ModelConfig
from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
torch.manual_seed(0)
model = HARNet(ModelConfig(classes=("rest", "squat", "walking"), hidden=16, layers=2, window=20, hop=20, patch=5,
                           rate=25.0)).eval()
consumer = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=Path(sys.argv[1]), learn=False),
                    StatefulClassifier(model, "tiny"))
print("ready", flush=True)
time.sleep(120)
"""


def _holder(state_dir: Path) -> subprocess.Popen:
    """A consumer in a process of its own on ``state_dir``, started and waiting."""
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(state_dir)], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        pytest.fail(f"the first consumer did not start: {line}{proc.stderr.read()[-2000:]}")
    return proc


# -- 1. two consumers on one state directory -----------------------------------------------------------------
def test_a_second_consumer_on_a_state_dir_in_use_is_refused_in_one_line(tmp_path, capsys):
    """Both ran: with the directory's one consumer-id they took the broker session from each other every
    second, and their checkpoints shared one temporary file (one died: 'No such file or directory:
    consumer-state.pt.tmp'). The second is refused, naming the first's pid; after a kill -9 of the first, a
    next consumer takes the directory at once."""
    from stream.cli import main
    first = _holder(tmp_path)
    try:
        assert main(["consume", "--state-dir", str(tmp_path), "--broker", "mqtt://127.0.0.1:1", "--no-learn",
                     "--duration", "1"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(tmp_path) in err and "in use" in err and str(first.pid) in err, err
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    second = _holder(tmp_path)  # the kernel released the lock of the killed process
    second.kill()
    second.wait(10)


def test_the_same_process_may_open_its_state_dir_again(tmp_path, tiny_model):
    """A consumer restarted in its process (as the tests' lives are) is not refused by its own lock."""
    first = _life(tmp_path, tiny_model)
    first.journal.close()
    first.store.close()
    second = _life(tmp_path, tiny_model)
    second.journal.close()
    second.store.close()


# -- 2. a checkpoint that cannot be written ---------------------------------------------------------------------
def test_a_checkpoint_that_cannot_be_written_leaves_no_temporary_file_and_serving_goes_on(
        tmp_path, tiny_model, monkeypatch):
    """A full disk at a checkpoint (here fsync reports ENOSPC, as it does where space is allocated late):
    checkpoint() raised, which ended the consumer's service loop, and the half-written consumer-state.pt.tmp
    stayed, holding what space was left (the event store and the journal could then write nothing: seen on
    a full tmpfs). Now it is warned about and tried again: no temporary file is left, the last checkpoint
    stands with its journal (not rotated), and a next life resumes from them; once space is back the
    checkpoint is written and the journal rotated."""
    consumer = _life(tmp_path, tiny_model)
    try:
        for seq in range(3):
            _send(consumer, "dev", seq)
        assert consumer.checkpoint()
        generation = consumer.journal.generation
        for seq in range(3, 6):
            _send(consumer, "dev", seq)
        assert consumer.store.flush(5)
        fsync = os.fsync

        def full(fd):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        monkeypatch.setattr(os, "fsync", full)
        assert consumer.checkpoint() is False
        assert consumer.checkpoint(final=True) is False
        assert not list(tmp_path.glob("*.tmp")), sorted(p.name for p in tmp_path.iterdir())
        assert load_state(tmp_path)["journal"] == generation == consumer.journal.generation
        _send(consumer, "dev", 6)  # serving goes on, journalled
        marks = dict(consumer._watermarks)
        monkeypatch.setattr(os, "fsync", fsync)
        nxt = _life(tmp_path, tiny_model)  # a kill now: the next life resumes from the journal kept
        try:
            assert nxt._resume == marks
        finally:
            nxt.journal.close()
            nxt.store._abandon.set()
        assert consumer.checkpoint()
        assert consumer.journal.generation == generation + 1
        assert load_state(tmp_path)["watermarks"] == marks
    finally:
        consumer.journal.close()
        consumer.store.close()


def test_a_state_file_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch):
    from stream.persist import save_state
    save_state(tmp_path, "v", {}, {"dev": 1}, {})
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        save_state(tmp_path, "v", {}, {"dev": 2}, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["consumer-state.pt"]
    assert load_state(tmp_path)["sequences"] == {"dev": 1}


def test_a_model_or_adapter_file_that_cannot_be_written_leaves_no_temporary_file(tmp_path, monkeypatch, tiny_model):
    """The state file's write left none (7240fd7), but the serving model's and the adapters' (through
    models.checkpoint.write_atomic) still left their half-written .tmp on a full disk."""
    from models.checkpoint import load_checkpoint, save_checkpoint
    target = tmp_path / "serving.pt"
    version = save_checkpoint(target, tiny_model)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "full")))
    with pytest.raises(OSError):
        save_checkpoint(target, tiny_model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serving.pt"]
    monkeypatch.undo()
    assert load_checkpoint(target)[1]["version"] == version
