import numpy as np
import pytest
import torch

from models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from models.rnn import HARNet, ModelConfig
from models.state import StatefulClassifier


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_window_by_window_equals_whole_stream(cell):
    torch.manual_seed(0)
    cfg = ModelConfig(classes=("a", "b", "c"), cell=cell, hidden=12, layers=2, window=20, hop=20, patch=5)
    model = HARNet(cfg).eval()
    x = torch.randn(2, 7 * 20, 3) * 3
    with torch.no_grad():
        steps, _ = model.step_logits(x)  # whole stream at once
        whole = steps.reshape(2, 7, 4, -1).mean(dim=2)
        torch.testing.assert_close(model.window_logits(steps), whole)
        state, windowed = None, []
        for k in range(7):
            logits, state = model(x[:, k * 20:(k + 1) * 20], state)
            windowed.append(logits)
    torch.testing.assert_close(torch.stack(windowed, dim=1), whole, atol=1e-5, rtol=1e-5)


def test_batched_classifier_matches_one_device_at_a_time(tiny_model):
    rng = np.random.default_rng(0)
    streams = {f"d{i}": rng.normal(size=(5, 20, 3)).astype(np.float32) * 4 for i in range(6)}
    batched = StatefulClassifier(tiny_model)
    single = StatefulClassifier(tiny_model)
    for k in range(5):
        devices = list(streams)
        probs = batched.classify(devices, np.stack([streams[d][k] for d in devices]))
        for i, d in enumerate(devices):
            alone = single.classify([d], streams[d][k][None])
            np.testing.assert_allclose(probs[i], alone[0], atol=1e-5)
    assert len(batched.bank) == 6
    # carried state matters: the same window gives a different answer after history than fresh
    fresh = StatefulClassifier(tiny_model).classify(["d0"], streams["d0"][4][None])
    assert not np.allclose(fresh[0], probs[0], atol=1e-4)


def test_a_batch_beyond_max_batch_is_split_with_the_same_answers(tiny_model, monkeypatch):
    import models.state
    rng = np.random.default_rng(1)
    devices = [f"d{i}" for i in range(20)]
    whole, split = StatefulClassifier(tiny_model), StatefulClassifier(tiny_model)
    for _ in range(3):
        windows = rng.normal(size=(20, 20, 3)).astype(np.float32) * 4
        monkeypatch.setattr(models.state, "MAX_BATCH", 64)
        p_whole, before_whole = whole.classify_with_state(devices, windows)
        monkeypatch.setattr(models.state, "MAX_BATCH", 7)  # passes of 7, 7 and 6
        p_split, before_split = split.classify_with_state(devices, windows)
        np.testing.assert_allclose(p_split, p_whole, atol=1e-5)
        for a, b in zip(before_split, before_whole, strict=True):
            assert a.shape[1] == 20
            torch.testing.assert_close(a, b)
    for d in devices:  # and every device's state moved on the same
        for a, b in zip(split.bank.get(d), whole.bank.get(d), strict=True):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_state_bank_grows_and_reuses_slots(tiny_model):
    clf = StatefulClassifier(tiny_model)
    window = np.zeros((1, 20, 3), np.float32)
    for i in range(100):  # more than the initial capacity
        clf.classify([f"d{i}"], window)
    assert len(clf.bank) == 100 and clf.bank.capacity >= 100
    clf.bank.evict("d3")
    assert "d3" not in clf.bank
    clf.classify(["new"], window)
    assert len(clf.bank) == 100


def test_checkpoint_round_trip(tmp_path, tiny_model):
    tiny_model.set_normalisation(torch.tensor([1.0, 2, 3, 4]), torch.tensor([2.0, 2, 2, 2]))
    path = tmp_path / "m.pt"
    version = save_checkpoint(path, tiny_model, {"note": "test"})
    model, info = load_checkpoint(path)
    assert info["version"] == version and info["metadata"]["note"] == "test"
    assert model.config == tiny_model.config
    x = torch.randn(3, 20, 3)
    torch.testing.assert_close(model(x)[0], tiny_model(x)[0])


def test_checkpoint_errors_are_clear(tmp_path, tiny_model):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a harstream checkpoint"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.pt")
    path = tmp_path / "old.pt"
    save_checkpoint(path, tiny_model)
    blob = torch.load(path, weights_only=True)
    blob["format_version"] = 99
    torch.save(blob, path)
    with pytest.raises(CheckpointError, match="format version 99"):
        load_checkpoint(path)


def test_loading_never_executes_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    path = tmp_path / "evil.pt"
    torch.save({"format": "harstream.checkpoint", "payload": Evil()}, path)
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_config_validation():
    with pytest.raises(ValueError, match="cell"):
        ModelConfig(classes=("a",), cell="transformer")
    with pytest.raises(ValueError, match="multiple"):
        ModelConfig(classes=("a",), window=22, hop=22, patch=5)


def test_state_can_be_set_after_the_bank_grew_during_inference(tiny_model):
    clf = StatefulClassifier(tiny_model)
    clf.classify([f"d{i}" for i in range(100)], np.zeros((100, 20, 3), np.float32))
    state = clf.bank.get("d5")
    clf.bank.set("new-device", state)
    for a, b in zip(state, clf.bank.get("new-device"), strict=True):
        torch.testing.assert_close(a, b)
