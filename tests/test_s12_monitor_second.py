"""Second look at the drift monitor across a restart (904cb9a, 828e8b2): what a snapshot may hold and still
be read with ``weights_only``, and what ``restore`` may raise (the consumer catches ValueError only)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stream.monitor import Monitor
from stream.persist import load_state, save_state
from tests.test_s12_monitor_restart import (
    _close,
    _feed,
    _leaves,
    _refused,
    _replaced,
    _same,
    _snapshot_and_target,
    _target,
    _windows,
)


def _numpy_fed() -> Monitor:
    """A monitor fed numpy scalars where the API says float: device times as np.float64 (a caller's array
    element), motions as np.float32 (``window_motion`` on float32 windows without float()): a run of moving
    windows mixes its share held still from a np.bool_, a np.float64."""
    mon = Monitor(clock=lambda: 0.0)
    for device, t0, magnitude, confidence, mean, predicted, motion, truth in _windows(40, change_at=100):
        t = np.float64(t0)
        mon.observe(device, t, np.float32(magnitude), np.float32(confidence), mean.astype(np.float32), predicted,
                    np.float32(motion))
        if truth is not None:
            mon.labelled(device, t, truth, predicted, mean, np.float32(motion))
    return mon


def test_a_snapshot_of_numpy_fed_numbers_is_read_back_with_weights_only(tmp_path):
    """Before, the numpy scalars went into the snapshot as they were: torch.load(weights_only=True) refuses
    their global, so load_state refused the whole checkpoint ('unreadable consumer state') and the next
    life lost every device's recurrent state, not only the monitor. Now every number is written as a
    Python float or int, and the monitor read back is the same."""
    mon = _numpy_fed()
    assert type(mon._devices["lab"].run.still) is not float  # the np.float64 the old snapshot wrote as it was
    device = {"lab": (torch.zeros(2, 16), torch.zeros(2, 16))}
    save_state(tmp_path, "v1", device, {"lab": 3}, {}, monitor=mon.snapshot())
    state = load_state(tmp_path)
    assert set(state["devices"]) == {"lab"}
    restored = Monitor(clock=lambda: 0.0)
    restored.restore(state["monitor"])
    _same(mon, restored)
    later = _windows(60, change_at=45)[80:]
    _close(_feed(restored, later), _feed(mon, later))


TENSORS = (torch.tensor([1.0, 2.0]), torch.zeros(0), torch.tensor([[1.0]]), torch.tensor([1 + 2j]),
           torch.tensor([1.0], requires_grad=True))


@pytest.mark.filterwarnings("ignore:Converting a tensor with requires_grad")
def test_a_tensor_anywhere_in_a_snapshot_is_a_value_error():
    """weights_only reads tensors anywhere in a file: one where a number, a flag or the version belongs, or a
    series that requires grad, raised torch's RuntimeError (bool() of several values, int() or float() of
    a complex one, numpy() of one requiring grad), which the consumer's ``except ValueError`` did not
    catch: its start-up ended there. Now each is a ValueError naming the snapshot, the monitor unchanged."""
    snapshot, target = _snapshot_and_target()
    before = target.summary()
    refused = 0
    for path in [*_leaves(snapshot), ("series",)]:
        for new in TENSORS:
            if _refused(target, _replaced(snapshot, path, new), before, path):
                refused += 1
            else:  # a tensor of one real value where a number fits is taken: then the target again
                target = _target()
    assert refused > 300
