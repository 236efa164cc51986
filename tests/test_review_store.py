"""Review of the event store and the consumer's state directory: what a second consumer on one state
directory did, and a checkpoint that cannot be written (a full disk)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_persist_faults import _life

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
