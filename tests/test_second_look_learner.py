"""Second look at the learner process's reader thread and the serving copy of the adapters."""

import operator
import time

import numpy as np
import torch

from models.finetune import LearnerConfig, Sequence
from models.learner_process import LearnerProcess
from models.personal import AdapterConfig, DeviceAdapters
from models.rnn import HARNet, ModelConfig


def _model() -> HARNet:
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=("down", "up"), hidden=16, layers=1, window=10, hop=10, patch=5, front="linear"))


class _Unreadable:
    """Pickles, but raises when unpickled (as a message the serving process cannot read would)."""

    def __init__(self, error: type) -> None:
        self.error = error

    def __reduce__(self):
        if self.error is ZeroDivisionError:
            return operator.truediv, (1, 0)
        return int, ("not a number",)  # ValueError


def test_a_message_that_cannot_be_read_does_not_end_the_reader_thread():
    """The reader thread ended on an exception while unpickling a message (a ValueError was taken for the
    queue closing, anything else escaped the thread): the learner went on learning, but serving never
    heard from it again (no adapters, no counters, nothing more sent once queue_size were in flight) and
    still reported it alive. The message is read whole before it is unpickled: the next ones are intact."""
    learner = LearnerProcess(_model(), LearnerConfig(below_serving=False, cpu_share=1.0)).start()
    try:
        learner._outbox.put(_Unreadable(ZeroDivisionError))
        learner._outbox.put(_Unreadable(ValueError))
        time.sleep(1.0)
        assert learner._reader.is_alive()
        rng = np.random.default_rng(0)
        learner.submit(Sequence("d", torch.from_numpy(rng.normal(0, 1, (4, 10, 3)).astype(np.float32)),
                                torch.tensor([0, 1, 0, 1]), (torch.zeros(1, 16), torch.zeros(1, 16))))
        deadline = time.monotonic() + 30
        while learner.adapters.updates < 1 and time.monotonic() < deadline:
            learner.poll()
            time.sleep(0.02)
        assert learner.adapters.updates == 1 and learner.alive
    finally:
        learner.stop(timeout=10)
    assert not learner._reader.is_alive()


def test_the_serving_copy_drops_the_least_recently_updated_adapter_not_the_first_made():
    """The learner moves a device's adapter to the end on each update; the serving copy must too, or
    beyond max_devices it drops (and stops serving) another device than the learner did."""
    copy = DeviceAdapters(2, AdapterConfig(max_devices=3))

    def update(device):
        copy.load_state_dict({device: {"M": torch.eye(3), "b": torch.zeros(3), "c": torch.zeros(2), "active": True}})

    for device in ("a", "b", "c", "a", "d"):  # the learner: a b c, a again (b c a), d (b dropped)
        update(device)
    assert list(copy.state_dict()) == ["c", "a", "d"] and sorted(copy.devices()) == ["a", "c", "d"]
