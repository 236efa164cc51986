"""The restores of a consumer's start-up other than the device states and the waiting windows (c7ea157), against
values ``torch.load(weights_only=True)`` reads but that are no plain numbers or CPU tensors: sparse tensors, meta
ones, tensors needing grad or with their negative bit set, float64 or int tensors where a float or an int
belongs. A bad part is to be warned about and dropped (that part starts afresh), never a consumer that does not
start or serve, never such a tensor reaching serving or learning.

1. The orientation snapshot (``Orienter.restore``): a turn given as a tensor needing grad or with its negative
   bit set raised RuntimeError (``numpy()`` refuses both), which the consumer did not catch: it did not start.
2. The serving model (serving.pt, ``load_checkpoint``): a tensor as the model version was taken and every
   prediction's publication then failed (no JSON); a tensor in the model's config (a float one as the window)
   made the model, whose serving then failed, or stayed in its config.
3. Controls, which held before: the drift monitor and adapters.pt with such tensors.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from models.checkpoint import save_checkpoint
from models.personal import DeviceAdapters
from stream.consumer import ADAPTERS_FILE, SERVING_MODEL
from stream.persist import STATE_FILE
from tests.test_persist_faults import _life, _send
from tests.test_second_look_adapt import CLASSES, UPSIDE_DOWN, _consumer, _model
from tests.test_second_look_adapt import _send as _send6


def _resave(path, change) -> None:
    """``path`` rewritten with ``change`` applied to its raw blob (as weights_only reads it back)."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    change(blob)
    torch.save(blob, path)


def _stop(life) -> None:
    life.store.close()
    if life.journal is not None:
        life.journal.close()


def _sends(consumer, start: int = 100, n: int = 3) -> int:
    """How many windows ``n`` messages from ``start`` made (a restarted life skips those acknowledged)."""
    before = consumer.stats.windows
    for seq in range(start, start + n):
        _send(consumer, "dev", seq)
    return consumer.stats.windows - before


def _checkpointed(tmp_path) -> tuple:
    """A first life on ``tmp_path`` with device "dev" (3 windows of the 6-channel model), stopped after its
    final checkpoint; "dev"'s state then."""
    rng = np.random.default_rng(0)
    first = _life(tmp_path, _model([]))
    for seq in range(3):
        _send6(first, "dev", seq, rng)
        first._classify()
    state = first.pipeline.classifier.bank.get("dev")
    assert first.checkpoint(final=True)
    _stop(first)
    return state


# -- the shared helper ------------------------------------------------------------------------------------------
def test_plain_tensor_makes_dense_float_cpu_tensors_without_grad_or_refuses():
    from stream.persist import plain_tensor  # new: every restore's
    t = torch.tensor([1.0, -2.0, 3.0])
    for x in (t.double(), t.clone().requires_grad_(), torch._neg_view(-t), t.half()):
        y = plain_tensor(x, "x")
        assert y.dtype == torch.float32 and not y.requires_grad and not y.is_neg()
        torch.testing.assert_close(y, t)
    assert plain_tensor(t, "x", torch.float64).dtype == torch.float64
    for x in (t.to_sparse(), torch.empty(3, device="meta"), t.long(), t.to(torch.complex64), [1.0], 1.0):
        with pytest.raises(TypeError, match="x: a dense float tensor"):
            plain_tensor(x, "x")


# -- 1. the orientation snapshot --------------------------------------------------------------------------------
TURN = torch.from_numpy(UPSIDE_DOWN).reshape(-1).float()
TURNS = {
    "tensor needing grad": lambda: TURN.clone().requires_grad_(),
    "tensor with its negative bit": lambda: torch._neg_view(-TURN),
    "float64 tensor": lambda: TURN.double(),
    "numbers needing grad": lambda: [x.clone().requires_grad_() for x in TURN],
    "sparse tensor": lambda: TURN.to_sparse(),
    "meta tensor": lambda: torch.empty(9, device="meta"),
    "numbers on the meta device": lambda: [torch.empty((), device="meta")] * 9,
}
TAKEN = {"tensor needing grad", "tensor with its negative bit", "float64 tensor", "numbers needing grad"}


@pytest.mark.parametrize("kind", list(TURNS))
def test_an_orientation_snapshot_of_tensors_read_but_not_plain_costs_the_turns_only(tmp_path, caplog, kind):
    _checkpointed(tmp_path)
    rng = np.random.default_rng(1)
    turn = TURNS[kind]()
    _resave(tmp_path / STATE_FILE, lambda blob: blob.update(orientation={"decided": ["x"], "turns": {"x": turn}}))
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        second = _life(tmp_path, _model([]))  # before: RuntimeError (grad, negative bit), no consumer
    try:
        orienter = second.pipeline.classifier.orienter
        assert "dev" in second.pipeline.classifier.bank  # the devices' state restored all the same
        if kind in TAKEN:  # as plain as the others once detached, resolved, float64: taken
            R = orienter._parked["x"]
            assert isinstance(R, np.ndarray) and R.dtype == np.float64
            np.testing.assert_allclose(R, UPSIDE_DOWN, atol=1e-7)
        else:
            assert "x" not in orienter._parked and "x" not in orienter.turns
            assert "not restoring how devices are worn" in caplog.text
        before = second.stats.windows
        for seq in range(3, 6):
            _send6(second, "dev", seq, rng)
            second._classify()
        assert second.stats.windows > before
    finally:
        _stop(second)


def test_an_orientation_snapshot_naming_a_device_by_no_string_is_refused():
    from models.orientation import Orienter
    from tests.test_orientation import TWO_STAGES, _Scripted
    orienter = Orienter(_Scripted([], TWO_STAGES))
    with pytest.raises(ValueError, match="a device id expected"):  # before: parked as "tensor(1.)"
        orienter.restore({"decided": [torch.tensor(1.0)], "turns": {}})
    assert not orienter._parked


# -- 2. the serving model ---------------------------------------------------------------------------------------
SERVING = {
    "version a tensor": lambda blob: blob.update(model_version=torch.tensor(1.0)),
    "metadata a tensor": lambda blob: blob.update(metadata=torch.zeros(2)),
    "window a float tensor": lambda blob: blob["config"].update(window=torch.tensor(20.0)),
    "window a float": lambda blob: blob["config"].update(window=20.0),
    "hop a tensor needing grad": lambda blob: blob["config"].update(hop=torch.tensor(20.0, requires_grad=True)),
    "rate a float64 tensor": lambda blob: blob["config"].update(rate=torch.tensor(25.0, dtype=torch.float64)),
    "classes a list of tensors": lambda blob: blob["config"].update(classes=[torch.tensor(1.0)] * 3),
}


@pytest.mark.parametrize("kind", list(SERVING))
def test_a_serving_model_with_tensors_where_plain_values_belong_is_not_restored(tiny_model, tmp_path, caplog,
                                                                               kind):
    save_checkpoint(tmp_path / SERVING_MODEL, tiny_model)
    _resave(tmp_path / SERVING_MODEL, SERVING[kind])
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        life = _life(tmp_path, tiny_model)
    try:
        assert "not restoring" in caplog.text and SERVING_MODEL in caplog.text
        classifier = life.pipeline.classifier
        assert classifier.version == "tiny"  # the model it was started with, its config plain
        assert all(not isinstance(v, torch.Tensor) for v in classifier.model.config.to_dict().values())
        assert _sends(life) > 0  # before: TypeError out of each window (version, window)
    finally:
        _stop(life)


def test_a_plain_serving_model_is_restored(tiny_model, tmp_path):
    """Control: the checks refuse no file as written."""
    torch.manual_seed(1)
    for p in tiny_model.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    version = save_checkpoint(tmp_path / SERVING_MODEL, tiny_model)
    life = _life(tmp_path, tiny_model)
    try:
        assert life.pipeline.classifier.version == version
        assert _sends(life) > 0
    finally:
        _stop(life)


# -- 3. controls: the drift monitor and adapters.pt -------------------------------------------------------------
MONITOR = {
    "series needing grad": lambda m: m.update(series=m["series"].clone().requires_grad_()),
    "sparse series": lambda m: m.update(series=m["series"].to_sparse()),
    "series with its negative bit": lambda m: m.update(series=torch._neg_view(-m["series"])),
    "a meta number": lambda m: m.update(event_counts={"adwin:confidence": torch.empty((), device="meta")}),
}


@pytest.mark.parametrize("kind", list(MONITOR))
def test_a_monitor_snapshot_of_tensors_read_but_not_plain_costs_the_monitor_only(tiny_model, tmp_path, caplog,
                                                                                 kind):
    first = _life(tmp_path, tiny_model)
    _sends(first)
    assert first.checkpoint(final=True)
    _stop(first)
    _resave(tmp_path / STATE_FILE, lambda blob: MONITOR[kind](blob["monitor"]))
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        second = _life(tmp_path, tiny_model)
    try:
        assert "dev" in second.pipeline.classifier.bank
        if kind != "series with its negative bit":  # numpy() refuses it: the monitor starts afresh
            assert "not restoring the drift monitor" in caplog.text
        assert _sends(second, 200) > 0
    finally:
        _stop(second)


ADAPTERS = {
    "float64": lambda t: t.double(),
    "needing grad": lambda t: t.clone().requires_grad_(),
    "negative bit": lambda t: torch._neg_view(-t),
    "sparse": lambda t: t.to_sparse(),
    "meta": lambda t: torch.empty_like(t, device="meta"),
}


@pytest.mark.parametrize("kind", list(ADAPTERS))
def test_an_adapters_file_of_tensors_read_but_not_plain_serves_float32_or_nothing(tmp_path, caplog, kind):
    M = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]) * 1.1
    adapters = DeviceAdapters(len(CLASSES), names=CLASSES)
    adapters.load_state_dict({"d": {"M": M, "b": torch.tensor([0.3, -0.1, 0.2]), "c": torch.zeros(2),
                                    "active": True}})
    adapters.save(tmp_path / ADAPTERS_FILE)
    # the parts stacked for every device since adapters.pt's version 2 (the old file: tests/test_s15_adapters.py)
    _resave(tmp_path / ADAPTERS_FILE, lambda blob: blob.update(M=ADAPTERS[kind](blob["M"])))
    with caplog.at_level(logging.WARNING):
        consumer = _consumer(_model([]), tmp_path)
    try:
        loaded = consumer.learner.adapters
        if kind in ("sparse", "meta"):
            assert loaded.entry("d") is None and "not loading device adapters" in caplog.text
        else:
            served = loaded._serving["d"]
            assert all(t.dtype == torch.float32 and not t.requires_grad and not t.is_neg() for t in served)
            torch.testing.assert_close(served[0], M)
    finally:
        consumer.store.close()
