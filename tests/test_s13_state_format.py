"""consumer-state.pt keeps device states stacked (persist version 3): torch.save pickled every device's tensors as
objects of their own, so 100,000 evicted devices took 7 s to save on the serving thread and 16 s to load (0.3 s
and 0.8 s stacked; /tmp/s13/evict/measure.py). Files of versions 1 and 2 still load."""

from __future__ import annotations

import io

import pytest
import torch

from stream.persist import STATE_FILE, load_state, save_state


def _raw(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_device_states_are_stacked_by_shape_and_come_back_as_saved(tmp_path):
    devices = {f"d{i}": (torch.randn(2, 8), torch.randn(2, 8)) for i in range(5)}
    devices["other"] = (torch.randn(1, 4), torch.randn(1, 4))  # another architecture's state: a group of its own
    evicted = {f"e{i}": (torch.randn(2, 8), torch.randn(2, 8)) for i in range(3)}
    save_state(tmp_path, "v", devices, {"d0": 3}, evicted)
    raw = _raw(tmp_path / STATE_FILE)
    assert raw["format_version"] >= 3  # 4 since the numbers per device are one JSON string (tests/test_s16_evicted.py)
    assert sorted(len(g["names"]) for g in raw["devices"]) == [1, 5]  # before: one tensor list per device
    assert all(p.shape[0] == len(g["names"]) for g in raw["devices"] for p in g["parts"])
    state = load_state(tmp_path)
    for saved, loaded in ((devices, state["devices"]), (evicted, state["evicted"])):
        assert saved.keys() == loaded.keys()
        for d in saved:
            for a, b in zip(saved[d], loaded[d], strict=True):
                torch.testing.assert_close(a, b)


def test_a_version_2_file_still_loads(tmp_path):
    save_state(tmp_path, "v", {}, {}, {})
    raw = _raw(tmp_path / STATE_FILE)
    state = (torch.ones(2, 8), torch.zeros(2, 8))
    raw.pop("plain", None)  # version 4's; a version 2 file has its numbers per device as dicts of their own
    raw.update(format_version=2, devices={"d": list(state)}, evicted={"e": list(state)}, sequences={"d": 5},
               watermarks={"d": 12.5}, anchors={"d": [12.5, 0.1, 0.2, 9.8]})
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    (tmp_path / STATE_FILE).write_bytes(buffer.getvalue())
    loaded = load_state(tmp_path)
    torch.testing.assert_close(loaded["devices"]["d"][0], state[0])
    torch.testing.assert_close(loaded["evicted"]["e"][1], state[1])
    assert (loaded["sequences"], loaded["watermarks"]) == ({"d": 5}, {"d": 12.5})
    assert loaded["anchors"] == {"d": (12.5, [0.1, 0.2, 9.8])}


@pytest.mark.parametrize("group", [
    {"names": ["a", "b"], "parts": [torch.zeros(3, 2, 8)]},  # 3 rows for 2 devices
    {"names": "ab", "parts": [torch.zeros(2, 2, 8)]},
    {"names": ["a", 1], "parts": [torch.zeros(2, 2, 8)]},
    {"names": ["a"], "parts": [torch.zeros(1, 2, 8).to_sparse()]},
    {"names": ["a"]},
    ["a"],
], ids=["rows", "names a string", "a name no string", "sparse", "no parts", "no dict"])
def test_a_malformed_group_is_a_malformed_file(tmp_path, group):
    save_state(tmp_path, "v", {}, {}, {})
    raw = _raw(tmp_path / STATE_FILE)
    raw["devices"] = [group]
    buffer = io.BytesIO()
    torch.save(raw, buffer)
    (tmp_path / STATE_FILE).write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="malformed"):
        load_state(tmp_path)
