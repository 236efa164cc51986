"""adapters.pt is written at a checkpoint only when an adapter changed since it was last written, and written
cheaply: each part stacked for every device (version 2 of the file); version 1 (a dict of tensors per device,
what harstream wrote before) is still read.

Found by a soak (3,184 devices, 919 with labels, --adapt both): ``updates`` and ``turned`` count for the whole
life, so once one adapter had learnt every checkpoint (every 30 s, on the serving thread) rewrote them all: 919
adapters 0.39-0.55 s a checkpoint, 10,000 (``max_devices``) 3.5 s and 11 MB."""

from __future__ import annotations

import logging
import os

import pytest
import torch

from models.learner_process import _numpy
from models.personal import AdapterConfig, DeviceAdapters
from stream.consumer import ADAPTERS_FILE
from tests.test_s13_restores import ADAPTERS
from tests.test_second_look_adapt import CLASSES, _consumer, _model

TURN = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


def _entry(seed: float, scores: int = 3, active: bool = True, k: int = len(CLASSES)) -> dict:
    return {"M": torch.eye(3) * (1.0 + seed), "b": torch.tensor([seed, -seed, 0.5]), "c": torch.full((k,), seed),
            "active": active, "scores": torch.tensor([[i % 2, 1] for i in range(scores)], dtype=torch.int8)}


class _SaveSpy:
    def __init__(self, monkeypatch):
        self.paths = []
        real = DeviceAdapters.save

        def save(adapters, path):
            self.paths.append(path)
            return real(adapters, path)

        monkeypatch.setattr(DeviceAdapters, "save", save)


def test_a_checkpoint_rewrites_adapters_pt_only_after_an_adapter_changed(tmp_path, monkeypatch):
    spy = _SaveSpy(monkeypatch)
    path = tmp_path / ADAPTERS_FILE
    consumer = _consumer(_model([]), tmp_path)
    try:
        learner = consumer.learner
        consumer.checkpoint()
        assert spy.paths == [] and not path.exists()  # nothing learnt: nothing written
        learner._apply(("adapter", "d", _numpy(_entry(0.1))))  # an adapter the learner process reports
        consumer.checkpoint()
        assert spy.paths == [path]
        inode = os.stat(path).st_ino
        for _ in range(3):  # before: every checkpoint rewrote every adapter (updates > 0 for good)
            consumer.checkpoint()
        assert spy.paths == [path] and os.stat(path).st_ino == inode
        learner._apply(("adapter", "e", _numpy(_entry(0.2))))
        consumer.checkpoint()
        consumer.checkpoint()
        assert len(spy.paths) == 2 and os.stat(path).st_ino != inode
        learner.turn("d", TURN)  # the orientation step turned the device anew: its adapter with it
        consumer.checkpoint()
        consumer.checkpoint()
        assert len(spy.paths) == 3
        learner.turn("nobody", TURN)  # a device without an adapter: nothing changed
        consumer.checkpoint()
        assert len(spy.paths) == 3
        learner.adapters.forget("e")  # dropped
        consumer.checkpoint()
        assert len(spy.paths) == 4
        # a failed write is tried again at the next checkpoint
        learner._apply(("adapter", "d", _numpy(_entry(0.3))))
        real = DeviceAdapters._stacked

        def full(self):
            raise OSError(28, "No space left on device")

        monkeypatch.setattr(DeviceAdapters, "_stacked", full)
        assert consumer.checkpoint() is False
        monkeypatch.setattr(DeviceAdapters, "_stacked", real)
        consumer.checkpoint()
        assert len(spy.paths) == 6
        consumer.checkpoint()
        assert len(spy.paths) == 6
        kept = {d: learner.adapters.entry(d) for d in learner.adapters._adapters}
    finally:
        consumer.store.close()
    assert set(kept) == {"d"}
    torch.testing.assert_close(kept["d"]["M"], _entry(0.3)["M"])
    # the next life reads them back: not changed, not written again until one is
    again = _consumer(_model([]), tmp_path)
    try:
        torch.testing.assert_close(again.learner.adapters.entry("d")["M"], kept["d"]["M"])
        again.checkpoint()
        assert len(spy.paths) == 6
        again.learner._apply(("adapter", "d", _numpy(_entry(0.4))))
        again.checkpoint()
        assert len(spy.paths) == 7
    finally:
        again.store.close()


def test_adapters_dropped_beyond_max_devices_are_a_change():
    adapters = DeviceAdapters(len(CLASSES), AdapterConfig(max_devices=2), names=CLASSES)
    adapters.load_state_dict({"a": _entry(0.1), "b": _entry(0.2)})
    adapters._saved_changes = adapters._changes  # as after a save
    assert not adapters.unsaved
    adapters.load_state_dict({"c": _entry(0.3)})  # "a" dropped
    assert adapters.unsaved and list(adapters._adapters) == ["b", "c"]


def test_the_stacked_file_keeps_every_adapter_in_order_with_its_comparison(tmp_path):
    adapters = DeviceAdapters(len(CLASSES), names=CLASSES)
    adapters.load_state_dict({"z": _entry(0.1, scores=0, active=False), "a": _entry(0.2, scores=16),
                              "m": _entry(0.3, scores=5, active=False), "n": _entry(0.4, scores=1)})
    adapters.save(tmp_path / ADAPTERS_FILE)
    assert not adapters.unsaved
    blob = torch.load(tmp_path / ADAPTERS_FILE, weights_only=True)
    # a tensor per part, not five per device (torch.save pickles each tensor as an object of its own)
    assert blob["version"] == 2 and blob["devices"] == ["z", "a", "m", "n"]
    assert sum(isinstance(v, torch.Tensor) for v in blob.values()) == 6 and blob["M"].shape == (4, 3, 3)
    loaded = DeviceAdapters(len(CLASSES), names=CLASSES)
    assert loaded.load(tmp_path / ADAPTERS_FILE) == 4
    assert not loaded.unsaved  # the file holds them
    assert list(loaded._adapters) == ["z", "a", "m", "n"]  # least recently updated first: dropped first
    assert sorted(loaded.devices()) == ["a", "n"]  # the active ones are served
    for d in "zamn":
        want, got = adapters.entry(d), loaded.entry(d)
        for k in ("M", "b", "c", "scores"):
            torch.testing.assert_close(got[k], want[k])
        assert got["active"] == want["active"]
    x = torch.randn(2, 25, 3)
    torch.testing.assert_close(loaded.apply(["a", "z"], x)[0], adapters.apply(["a", "z"], x)[0])


def test_no_adapters_save_and_load(tmp_path):
    DeviceAdapters(len(CLASSES), names=CLASSES).save(tmp_path / ADAPTERS_FILE)
    assert DeviceAdapters(len(CLASSES), names=CLASSES).load(tmp_path / ADAPTERS_FILE) == 0


def _old_file(path, entries: dict, names=CLASSES, scores=True) -> None:
    """adapters.pt as harstream wrote it before version 2 (DeviceAdapters.save at b35455c, to the byte of its
    blob): {"format", "classes", "adapters": {device: {"M", "b", "c", "active", "scores"}}, "names"}."""
    blob = {"format": "harstream.adapters", "classes": len(CLASSES),
            "adapters": {d: {"M": e["M"].clone(), "b": e["b"].clone(), "c": e["c"].clone(), "active": e["active"],
                             **({"scores": e["scores"].reshape(-1, 2)} if scores else {})}
                         for d, e in entries.items()}}
    if names is not None:
        blob["names"] = list(names)
    torch.save(blob, path)


@pytest.mark.parametrize("kind", ["names and scores", "no names", "no scores"])
def test_an_adapters_file_of_the_old_format_is_read(tmp_path, kind):
    entries = {"old": _entry(0.5, scores=8), "idle": _entry(0.7, active=False)}
    _old_file(tmp_path / ADAPTERS_FILE, entries, names=None if kind == "no names" else CLASSES,
              scores=kind != "no scores")
    adapters = DeviceAdapters(len(CLASSES), names=CLASSES)
    assert adapters.load(tmp_path / ADAPTERS_FILE) == 2
    assert not adapters.unsaved and adapters.devices() == ["old"]
    torch.testing.assert_close(adapters.entry("old")["M"], entries["old"]["M"])
    assert len(adapters.entry("old")["scores"]) == (0 if kind == "no scores" else 8)
    adapters.load_state_dict({"old": _entry(0.6)})  # the next save writes version 2
    adapters.save(tmp_path / ADAPTERS_FILE)
    again = DeviceAdapters(len(CLASSES), names=CLASSES)
    assert again.load(tmp_path / ADAPTERS_FILE) == 2
    torch.testing.assert_close(again.entry("old")["M"], _entry(0.6)["M"])
    torch.testing.assert_close(again.entry("idle")["b"], entries["idle"]["b"])


NOT_PLAIN = ADAPTERS  # tensors weights_only reads that are no plain ones (test_s13_restores)


@pytest.mark.parametrize("kind", list(NOT_PLAIN))
def test_an_old_format_file_of_tensors_read_but_not_plain_serves_float32_or_nothing(tmp_path, caplog, kind):
    entry = _entry(0.1)
    M = entry["M"]
    _old_file(tmp_path / ADAPTERS_FILE, {"d": dict(entry, M=NOT_PLAIN[kind](M))})
    adapters = DeviceAdapters(len(CLASSES), names=CLASSES)
    with caplog.at_level(logging.WARNING):
        adapters.load(tmp_path / ADAPTERS_FILE)
    if kind in ("sparse", "meta"):
        assert adapters.entry("d") is None and "not loading device adapters" in caplog.text
    else:
        served = adapters._serving["d"]
        assert all(t.dtype == torch.float32 and not t.requires_grad and not t.is_neg() for t in served)
        torch.testing.assert_close(served[0], M)


MALFORMED = {
    "a newer version": lambda blob: blob.update(version=3),
    "devices not a list": lambda blob: blob.update(devices="ab"),
    "a device twice": lambda blob: blob.update(devices=["a", "a"]),
    "M of another shape": lambda blob: blob.update(M=blob["M"][:1]),
    "scores that are not pairs": lambda blob: blob.update(scores=blob["scores"].reshape(-1, 1)),
    "scored not summing to the scores": lambda blob: blob.update(scored=blob["scored"] + 1),
    "scored negative": lambda blob: blob.update(scored=torch.tensor([-1, blob["scores"].shape[0] + 1])),
    "scores of floats": lambda blob: blob.update(scores=blob["scores"].float()),
    "active missing": lambda blob: blob.pop("active"),
    "c not a tensor": lambda blob: blob.update(c=[[0.0, 0.0], [0.0, 0.0]]),
}


@pytest.mark.parametrize("kind", list(MALFORMED))
def test_a_malformed_stacked_file_is_warned_about_and_none_loaded(tmp_path, caplog, kind):
    adapters = DeviceAdapters(len(CLASSES), names=CLASSES)
    adapters.load_state_dict({"a": _entry(0.1), "b": _entry(0.2, scores=4)})
    adapters.save(tmp_path / ADAPTERS_FILE)
    blob = torch.load(tmp_path / ADAPTERS_FILE, weights_only=True)
    MALFORMED[kind](blob)
    torch.save(blob, tmp_path / ADAPTERS_FILE)
    loaded = DeviceAdapters(len(CLASSES), names=CLASSES)
    with caplog.at_level(logging.WARNING):
        assert loaded.load(tmp_path / ADAPTERS_FILE) == 0
    assert loaded.entry("a") is None and "not loading device adapters" in caplog.text


def test_a_stacked_adapter_not_finite_is_passed_over_and_the_others_loaded(tmp_path):
    adapters = DeviceAdapters(len(CLASSES), names=CLASSES)
    adapters.load_state_dict({"a": _entry(0.1), "b": _entry(0.2)})
    adapters.save(tmp_path / ADAPTERS_FILE)
    blob = torch.load(tmp_path / ADAPTERS_FILE, weights_only=True)
    blob["b"][1, 0] = float("nan")
    torch.save(blob, tmp_path / ADAPTERS_FILE)
    loaded = DeviceAdapters(len(CLASSES), names=CLASSES)
    loaded.load(tmp_path / ADAPTERS_FILE)
    assert loaded.entry("a") is not None and loaded.entry("b") is None
