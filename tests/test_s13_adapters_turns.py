"""Per-device adapters (adapters.pt) are fitted to a device's windows as served, turned as the orientation part of
consumer-state.pt says. Where that part could not be restored, the devices are served unturned: the adapters are
not loaded (they start afresh, learnt again from labels) instead of serving those devices turned wrongly."""

from __future__ import annotations

import logging

import pytest
import torch

from models.personal import DeviceAdapters
from stream.consumer import ADAPTERS_FILE
from stream.persist import STATE_FILE, save_state
from tests.test_s13_restores import _resave
from tests.test_second_look_adapt import CLASSES, _consumer, _model


def _files(tmp_path, orientation) -> None:
    adapters = DeviceAdapters(len(CLASSES), names=CLASSES)
    adapters.load_state_dict({"d": {"M": torch.eye(3) * 1.1, "b": torch.tensor([0.3, -0.1, 0.2]),
                                    "c": torch.zeros(2), "active": True}})
    adapters.save(tmp_path / ADAPTERS_FILE)
    save_state(tmp_path, "v", {}, {}, {}, orientation={"decided": ["d"], "turns": {}})
    _resave(tmp_path / STATE_FILE, lambda blob: blob.update(orientation=orientation))


@pytest.mark.parametrize("orientation", ["turned", {"decided": ["d"], "turns": {"d": [1.0] * 9}}],
                         ids=["no dict", "no rotation"])
def test_adapters_are_not_loaded_when_the_orientation_part_is_refused(tmp_path, caplog, orientation):
    _files(tmp_path, orientation)
    with caplog.at_level(logging.WARNING):
        consumer = _consumer(_model([]), tmp_path)
    try:
        assert consumer.learner.adapters.entry("d") is None  # before: loaded, and d served turned wrongly
        assert "not loading the per-device adapters" in caplog.text
    finally:
        consumer.store.close()


def test_adapters_are_loaded_when_the_orientation_part_is_restored(tmp_path, caplog):
    _files(tmp_path, {"decided": ["d"], "turns": {}})
    consumer = _consumer(_model([]), tmp_path)
    try:
        assert consumer.learner.adapters.entry("d") is not None
        assert "not loading the per-device adapters" not in caplog.text
    finally:
        consumer.store.close()


def test_adapters_are_not_loaded_when_the_whole_state_file_is_refused(tmp_path, caplog):
    _files(tmp_path, {"decided": ["d"], "turns": {}})
    (tmp_path / STATE_FILE).write_bytes(b"not a checkpoint")
    with caplog.at_level(logging.WARNING):
        consumer = _consumer(_model([]), tmp_path)
    try:
        assert consumer.learner.adapters.entry("d") is None
    finally:
        consumer.store.close()
