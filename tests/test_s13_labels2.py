"""A second look at the windows waiting for labels kept in the checkpoint (c5982b9).

1. After a ``kill -9``, the next life took up the checkpoint's waiting windows even where the killed life had
   resolved them after the checkpoint (its journal says how far it classified): each was scored and taught a
   second time, and where the device's clock had gone back meanwhile, labelled with the new session's label.
2. A history part of ``consumer-state.pt`` holding tensors that ``weights_only`` reads but that are no plain CPU
   tensors (sparse, meta, needing grad) raised RuntimeError / NotImplementedError out of the restore: the
   consumer did not start. One holding float64 states handed them to the learner, whose LSTM refuses them.
3. The rest of the file: a tensor where a number belongs that converts to none (a meta one), or device states
   that are sparse, meta or float64, likewise stopped the consumer from starting (``load_state`` let them by).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from stream.persist import STATE_FILE, load_state
from tests.test_consumer_monitor import _label
from tests.test_persist_faults import _life, _send
from tests.test_s12_restart_labels import _send_new_clock
from tests.test_second_look_labels import scored_windows


def _checkpointed(tmp_path, model):
    """A life (acknowledging after the window, journalling) whose device "dev", labelled rest from 0, has 5
    windows waiting at its checkpoint; the life goes on. Returns it, the windows' ends and what it scores."""
    first = _life(tmp_path, model)
    scored = scored_windows(first)
    _label(first, "dev", "rest")
    for seq in range(12):
        _send(first, "dev", seq)
    assert first.checkpoint()
    kept = [w.t_end for w in first.history.waiting("dev")]
    assert len(kept) == 5
    return first, kept, scored


def _kill(life) -> None:
    """As a kill -9 leaves it: no final checkpoint; the journal and what the store wrote stay."""
    life.store.flush(5.0)
    life.store.close()
    life.journal.close()


def _of(scored, kept) -> list[tuple[float, str]]:
    return [(round(t, 2), label) for t, label in scored if any(abs(t - k) < 1e-6 for k in kept)]


@pytest.mark.parametrize("after", [2, 6])
def test_a_window_the_killed_life_resolved_after_its_checkpoint_is_not_resolved_again(tiny_model, tmp_path,
                                                                                       after):
    first, kept, scored = _checkpointed(tmp_path, tiny_model)
    for seq in range(12, 12 + after):  # 2 s more: the first 2 windows pass their lateness; 6 s: all 5
        _send(first, "dev", seq)
    resolved = _of(scored, kept)
    assert len(resolved) == (2 if after == 2 else 5)
    _kill(first)
    second = _life(tmp_path, tiny_model)
    try:
        again = scored_windows(second)
        # before: all 5 restored, those resolved before the kill too
        assert [round(w.t_end, 2) for w in second.history.waiting("dev")] == [round(k, 2) for k in kept][len(resolved):]
        for seq in range(12 + after, 24):
            _send(second, "dev", seq)
        # each of the checkpoint's windows scored once over the two lives, with its label
        assert sorted(resolved + _of(again, kept)) == [(round(k, 2), "rest") for k in kept]
    finally:
        second.store.close()


def test_windows_the_killed_life_resolved_when_the_clock_went_back_are_not_labelled_by_the_new_session(
        tiny_model, tmp_path):
    first, kept, scored = _checkpointed(tmp_path, tiny_model)
    _label(first, "dev", "curl", 0.0)  # the device restarted after the checkpoint: its new session's label
    for seq in range(6):
        _send_new_clock(first, "dev", seq)
    assert _of(scored, kept) == [(round(k, 2), "rest") for k in kept]  # its session ended: resolved, theirs
    _kill(first)
    second = _life(tmp_path, tiny_model)
    try:
        again = scored_windows(second)
        assert second.history.waiting("dev") == []
        for seq in range(6, 12):
            _send_new_clock(second, "dev", seq)
        assert _of(again, kept) == []  # before: all 5 again, as curl (the new session's label)
        assert {label for _, label in again} == {"curl"}  # the new session goes on being scored
    finally:
        second.store.close()


@pytest.mark.parametrize("lateness", [4.0, 0.0])
def test_after_a_clean_stop_every_window_kept_is_taken_up_whatever_the_lateness(tiny_model, tmp_path, lateness):
    first, kept, _ = _checkpointed(tmp_path, tiny_model)
    assert first.checkpoint(final=True)  # the journal rotates: the next life reads no mark of it
    _kill(first)
    second = _life(tmp_path, tiny_model, label_lateness=lateness)
    try:
        again = scored_windows(second)
        assert [w.t_end for w in second.history.waiting("dev")] == pytest.approx(kept)
        for seq in range(12, 18):
            _send(second, "dev", seq)
        assert _of(again, kept) == [(round(k, 2), "rest") for k in kept]
    finally:
        second.store.close()


def _resave(tmp_path, change) -> None:
    """consumer-state.pt rewritten with ``change`` applied to its raw blob (as weights_only reads it back)."""
    blob = torch.load(tmp_path / STATE_FILE, map_location="cpu", weights_only=True)
    change(blob)
    torch.save(blob, tmp_path / STATE_FILE)


def _stopped(tmp_path, model) -> None:
    first, _, _ = _checkpointed(tmp_path, model)
    assert first.checkpoint(final=True)
    _kill(first)


def _history(change):
    def apply(blob):
        blob["history"] = dict(blob["history"])
        change(blob["history"])
    return apply


@pytest.mark.parametrize("kind", ["sparse t_end", "meta samples", "samples needing grad", "sparse state"])
def test_a_history_of_tensors_read_but_not_plain_costs_its_windows_only(tiny_model, tmp_path, caplog, kind):
    _stopped(tmp_path, tiny_model)
    _resave(tmp_path, _history({
        "sparse t_end": lambda h: h.update(t_end=h["t_end"].to_sparse()),
        "meta samples": lambda h: h.update(samples=torch.empty_like(h["samples"], device="meta")),
        "samples needing grad": lambda h: h.update(samples=h["samples"].clone().requires_grad_()),
        "sparse state": lambda h: h.update(state=[s.to_sparse() for s in h["state"]]),
    }[kind]))
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        second = _life(tmp_path, tiny_model)  # before: RuntimeError / NotImplementedError, no consumer
    try:
        assert "dev" in second.pipeline.classifier.bank
        if kind == "samples needing grad":  # as plain as the others once detached: taken
            assert len(second.history.waiting("dev")) == 5
        else:
            assert second.history.waiting("dev") == []
            assert "not restoring the windows waiting for labels" in caplog.text
        _send(second, "dev", 12)
        assert second.stats.windows
    finally:
        second.store.close()


def test_restored_windows_have_float32_states_the_model_takes(tiny_model, tmp_path):
    _stopped(tmp_path, tiny_model)
    _resave(tmp_path, _history(lambda h: h.update(state=[s.double() for s in h["state"]])))
    second = _life(tmp_path, tiny_model)
    try:
        waiting = second.history.waiting("dev")
        assert len(waiting) == 5
        assert {s.dtype for w in waiting for s in w.state} == {torch.float32}  # before: float64
        w = waiting[0]  # as the learner runs a sequence from its first window's state (before: RuntimeError)
        windows = torch.from_numpy(np.stack([w.samples]))
        tiny_model.step_logits(windows.reshape(1, -1, windows.shape[-1]), tuple(s.unsqueeze(1) for s in w.state))
    finally:
        second.store.close()


@pytest.mark.parametrize("kind", ["meta watermark", "sparse device state", "meta device state",
                                  "float64 device state"])
def test_a_state_file_with_tensors_that_are_not_plain_does_not_stop_the_consumer(tiny_model, tmp_path, caplog,
                                                                                 kind):
    _stopped(tmp_path, tiny_model)

    def devices(f):  # the file's device states, stacked by group since persist's version 3
        return lambda blob: blob.update(devices=[{**g, "parts": [f(t) for t in g["parts"]]} for g in blob["devices"]])

    _resave(tmp_path, {
        # a version 3 file's (version 4 keeps the numbers per device as JSON, where no tensor can be)
        "meta watermark": lambda blob: blob.update(format_version=3, sequences={}, anchors={}, plain=None,
                                                   watermarks={"dev": torch.empty((), device="meta")}),
        "sparse device state": devices(lambda t: t.to_sparse()),
        "meta device state": devices(lambda t: torch.empty_like(t, device="meta")),
        "float64 device state": devices(lambda t: t.double()),
    }[kind])
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        second = _life(tmp_path, tiny_model)  # before: RuntimeError / NotImplementedError, no consumer
    try:
        if kind == "float64 device state":  # a float type the bank converts: restored
            assert load_state(tmp_path)["devices"]["dev"][0].dtype == torch.float32
            assert "dev" in second.pipeline.classifier.bank
        else:  # the file refused as malformed: the devices start afresh
            assert "not restoring device state" in caplog.text and "malformed" in caplog.text
            assert "dev" not in second.pipeline.classifier.bank
        _send(second, "dev", 12)
        assert second.stats.windows
    finally:
        second.store.close()
