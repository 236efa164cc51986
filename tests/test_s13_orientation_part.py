"""A malformed orientation part of consumer-state.pt costs how devices are worn only: before, load_state took
anything but a dict there for a malformed file, and every device's state started afresh."""

from __future__ import annotations

import logging

import pytest
import torch

from stream.persist import STATE_FILE
from tests.test_persist_faults import _life
from tests.test_s13_restores import _checkpointed, _resave, _stop
from tests.test_second_look_adapt import _model


@pytest.mark.parametrize("orientation", ["turned", torch.zeros(3), [1, 2]], ids=["a string", "a tensor", "a list"])
def test_an_orientation_part_that_is_no_dict_costs_the_turns_only(tmp_path, caplog, orientation):
    state = _checkpointed(tmp_path)
    _resave(tmp_path / STATE_FILE, lambda blob: blob.update(orientation=orientation))
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        second = _life(tmp_path, _model([]))
    try:
        assert "dev" in second.pipeline.classifier.bank  # before: the whole state refused as malformed
        for a, b in zip(second.pipeline.classifier.bank.get("dev"), state, strict=True):
            torch.testing.assert_close(a, b)
        assert "not restoring how devices are worn" in caplog.text
    finally:
        _stop(second)
