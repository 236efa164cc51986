"""A third look at the adapters that follow a device's turn (934f2db and its second look): the paths a
turn can be lost on without ``Orienter.on_turn`` hearing of it."""

from __future__ import annotations

import numpy as np
import torch

from models.orientation import Orienter
from tests.test_orientation import TWO_STAGES, _Scripted, _windows
from tests.test_second_look_adapt import UPSIDE_DOWN, _adapter_file, _consumer, _model, _send


def test_a_turn_beyond_the_parked_ones_at_a_restore_is_not_dropped_unreported():
    """A restarted consumer restores the orienter before it sets ``on_turn`` (its adapters are loaded after):
    a settled device dropped there, beyond MAX_PARKED, came back unturned with nothing told, while its
    adapter, loaded next, stayed expressed for the turn (the device served turned twice, 1a59123's defect).
    Every turn restored is either still there when the device sends again or reported undone."""
    w = _windows(15)
    orienter = Orienter(_Scripted([3.5, 3.5] * 3, TWO_STAGES))
    for device in ("a", "x", "y"):
        for i in range(15):
            orienter.apply([device], w[i:i + 1])
    R = orienter.turns["a"]
    snapshot = orienter.snapshot()
    again = Orienter(_Scripted([], TWO_STAGES))
    again.MAX_PARKED = 2
    again.restore(snapshot)
    seen = []
    again.on_turn = lambda device, Q: seen.append((device, Q))  # as the consumer does, after restore
    again.evict("z")  # an unknown device: nothing
    for device in ("a", "x", "y"):
        out = again.apply([device], w[:1])
        reported = [Q for d, Q in seen if d == device]
        if reported:  # dropped: reported as undone
            np.testing.assert_allclose(reported[0], R.T, atol=1e-9)
            np.testing.assert_array_equal(out, w[:1])
        else:  # kept: served turned as before
            assert device in again.turns, f"{device}'s turn dropped unreported"



def test_an_adapter_of_a_device_dropped_beyond_the_parked_ones_at_a_restart_is_turned_back(tmp_path, monkeypatch):
    """The consumer: a device settled upside down, its adapter expressed for that turn (adapters.pt); at the
    restart its turn is dropped beyond MAX_PARKED and it comes back unturned: its adapter must be turned back
    (M R), as 1a59123 does for one dropped at an eviction; it stayed M, applied on top of unturned windows."""
    first = _consumer(_model([3.5] * 4), tmp_path)
    rng = np.random.default_rng(0)
    for seq in range(15):
        for device in ("d", "e"):
            _send(first, device, seq, rng)
        first._classify()
    assert first.pipeline.classifier.orienter.decided == {"d", "e"}
    first.checkpoint(final=True)
    first.store.close()
    M = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) * 1.1
    _adapter_file(tmp_path, M)  # device "d"'s, fitted to its windows turned upside down
    monkeypatch.setattr(Orienter, "MAX_PARKED", 1)
    second = _consumer(_model([]), tmp_path)
    try:
        orienter = second.pipeline.classifier.orienter
        if "d" in orienter._parked:  # kept: its adapter as it was
            torch.testing.assert_close(second.learner.adapters.entry("d")["M"], M)
        else:  # dropped: it comes back unturned, and its adapter turned back with it
            torch.testing.assert_close(second.learner.adapters.entry("d")["M"],
                                       M @ torch.from_numpy(UPSIDE_DOWN).float())
    finally:
        second.store.close()


def test_a_restore_beyond_the_parked_ones_drops_the_least_recently_parked_not_a_device_in_use():
    """The snapshot listed settled devices sorted by name, and a restore parks them in that order, dropping
    the first beyond MAX_PARKED: a device in use at the checkpoint (named "a") lost its turn, served
    unturned after the restart, while one evicted long before kept its own."""
    w = _windows(15)
    orienter = Orienter(_Scripted([3.5, 3.5] * 3, TWO_STAGES))
    orienter.MAX_PARKED = 2
    for device in ("x", "y", "a"):
        for i in range(15):
            orienter.apply([device], w[i:i + 1])
        if device != "a":
            orienter.evict(device)  # x then y: parked; a is in use
    again = Orienter(_Scripted([], TWO_STAGES))
    again.MAX_PARKED = 2
    again.restore(orienter.snapshot())
    assert list(again._parked) == ["y", "a"]  # x, parked first, goes
    out = again.apply(["a"], w[:1])
    np.testing.assert_allclose(out[0, :, :3], w[0, :, :3] @ orienter.turns["a"].T, atol=1e-5)
