"""Evicted devices' states are written once, in segment files, not at every checkpoint (stream.persist.EvictedSegments).

Before, every checkpoint wrote every evicted state (up to ``max_evicted``, 100,000) on the serving thread: 0.6–1.6 s
and 104 MB every 30 s in a fleet whose ids keep changing (``python benchmarks/checkpoint.py``)."""

from __future__ import annotations

import logging
import time
from collections import OrderedDict

import torch

from stream.persist import MAX_SEGMENTS, STATE_FILE, EvictedSegments, load_state, save_state
from tests.test_consumer_restart import _life, _send


def _state():
    return (torch.randn(2, 8), torch.randn(2, 8))


def _segments(directory):
    return sorted(p.name for p in directory.glob("evicted-*.pt"))


def _assert_restored(directory, evicted):
    restored = load_state(directory)["evicted"]
    assert restored.keys() == evicted.keys()
    for d, state in evicted.items():
        for a, b in zip(state, restored[d], strict=True):
            assert torch.equal(a, b)


def test_a_checkpoint_writes_only_the_states_evicted_since_the_last(tmp_path):
    evicted = {f"e{i}": _state() for i in range(300)}
    segments = EvictedSegments(tmp_path)
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)
    assert segments.written == 300 and len(_segments(tmp_path)) == 1
    inline = len(torch.load(tmp_path / STATE_FILE, weights_only=True)["evicted"])
    assert inline == 0  # the states are in the segment, not in the checkpoint itself
    for i in range(5):
        del evicted[f"e{i}"]  # came back, or forgotten
    evicted.update((f"n{i}", _state()) for i in range(7))
    evicted["e100"] = _state()  # back and evicted again: its state is another one, written again
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)
    assert segments.written == 8 and len(_segments(tmp_path)) == 2
    _assert_restored(tmp_path, evicted)
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)  # nothing changed: nothing written
    assert segments.written == 0 and len(_segments(tmp_path)) == 2
    _assert_restored(tmp_path, evicted)


def test_a_restarted_consumer_writes_again_only_what_was_evicted_since_its_start(tiny_model, tmp_path):
    first = _life(tmp_path, tiny_model, idle_timeout=0.0)
    for device in ("a", "b", "c"):
        for seq in range(3):
            _send(first, device, seq)
    time.sleep(0.01)
    first._evict_idle()
    first.checkpoint(final=True)
    first.store.close()
    assert first._segments.written == 3 and len(_segments(tmp_path)) == 1
    second = _life(tmp_path, tiny_model, idle_timeout=0.0)
    try:
        assert set(second._evicted) == {"a", "b", "c"}
        for seq in range(3, 6):
            _send(second, "a", seq)  # back: its state leaves the evicted ones
        for seq in range(3):
            _send(second, "d", seq)
        time.sleep(0.01)
        second._evict_idle()  # a and d evicted now
        second.checkpoint(final=True)
        assert second._segments.written == 2  # b and c stay where the first life wrote them
        _assert_restored(tmp_path, second._evicted)
    finally:
        second.store.close()


def test_segments_mostly_gone_are_folded_into_the_next_and_removed(tmp_path):
    evicted = {f"e{i}": _state() for i in range(100)}
    segments = EvictedSegments(tmp_path)
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)
    first = _segments(tmp_path)
    for i in range(60):
        del evicted[f"e{i}"]
    evicted.update((f"n{i}", _state()) for i in range(10))
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)
    assert segments.written == 50  # the 40 left of the first segment and the 10 new
    assert _segments(tmp_path) != first and len(_segments(tmp_path)) == 1
    _assert_restored(tmp_path, evicted)


def test_the_segment_files_stay_few_and_small_under_churn(tmp_path):
    evicted: OrderedDict[str, tuple] = OrderedDict((f"e{i}", _state()) for i in range(50))
    segments = EvictedSegments(tmp_path)
    for k in range(300):  # 3 evicted a checkpoint, the oldest forgotten beyond 50
        saved = dict(evicted)
        save_state(tmp_path, "v", {}, {}, saved, segments=segments)
        evicted.update((f"c{k}-{j}", _state()) for j in range(3))
        while len(evicted) > 50:
            evicted.popitem(last=False)
        assert len(_segments(tmp_path)) <= MAX_SEGMENTS + 1
    index = torch.load(tmp_path / STATE_FILE, weights_only=True)["evicted_segments"]
    assert sum(s["rows"] for s in index) <= 2 * 50 + 3
    _assert_restored(tmp_path, saved)


def test_a_segment_lost_costs_only_its_own_devices(tmp_path, caplog):
    evicted = {f"e{i}": _state() for i in range(10)}
    segments = EvictedSegments(tmp_path)
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)
    newer = {f"n{i}": _state() for i in range(4)}
    save_state(tmp_path, "v", {}, {}, {**evicted, **newer}, segments=segments)
    first, second = sorted(_segments(tmp_path), key=lambda n: int(n[8:-3]))
    (tmp_path / first).unlink()
    with caplog.at_level(logging.WARNING, logger="stream.persist"):
        state = load_state(tmp_path)
    assert state["evicted"].keys() == newer.keys()
    assert any("10 evicted devices" in r.getMessage() and first in r.getMessage() for r in caplog.records)
    (tmp_path / second).write_bytes(b"torn")
    assert load_state(tmp_path)["evicted"] == {}  # the rest of the state is read all the same


def test_a_segment_a_kill_left_unnamed_is_never_overwritten_and_is_removed(tmp_path):
    (tmp_path / "evicted-7.pt").write_bytes(b"written before the kill, its checkpoint not")
    (tmp_path / "evicted-8.pt.tmp").write_bytes(b"half")
    segments = EvictedSegments(tmp_path)
    evicted = {"a": _state()}
    save_state(tmp_path, "v", {}, {}, evicted, segments=segments)
    assert _segments(tmp_path) == ["evicted-8.pt"] and not list(tmp_path.glob("*.tmp"))
    _assert_restored(tmp_path, evicted)


def test_a_checkpoint_with_the_states_inline_is_read_and_its_states_move_to_a_segment(tmp_path):
    evicted = {f"e{i}": _state() for i in range(5)}
    save_state(tmp_path, "v", {}, {}, evicted)  # as harstream wrote it before segments
    state = load_state(tmp_path)
    assert state["evicted_segments"] == []
    _assert_restored(tmp_path, evicted)
    segments = EvictedSegments(tmp_path)
    segments.adopt(state["evicted_segments"], state["evicted"])
    save_state(tmp_path, "v", {}, {}, state["evicted"], segments=segments)
    assert segments.written == 5
    _assert_restored(tmp_path, evicted)


def test_a_segment_index_naming_a_path_is_refused(tmp_path):
    save_state(tmp_path, "v", {}, {}, {"a": _state()}, segments=EvictedSegments(tmp_path))
    blob = torch.load(tmp_path / STATE_FILE, weights_only=True)
    blob["evicted_segments"][0]["file"] = "../elsewhere.pt"
    torch.save(blob, tmp_path / STATE_FILE)
    try:
        load_state(tmp_path)
    except ValueError as exc:
        assert "elsewhere" in str(exc)
    else:
        raise AssertionError("a segment outside the state directory was read")


# -- found by a second look at the first version (5adba88) ----------------------------------------------------
def test_the_segments_of_a_checkpoint_set_aside_as_unreadable_are_kept_with_it(tiny_model, tmp_path):
    first = _life(tmp_path, tiny_model, idle_timeout=0.0)
    for seq in range(3):
        _send(first, "a", seq)
    time.sleep(0.01)
    first._evict_idle()
    first.checkpoint(final=True)
    first.store.close()
    named = _segments(tmp_path)
    (tmp_path / STATE_FILE).write_bytes(b"damaged")
    second = _life(tmp_path, tiny_model)  # set aside, every device afresh
    try:
        assert list(tmp_path.glob(f"{STATE_FILE}.unreadable-*"))
        second.checkpoint(final=True)
        assert set(named) <= set(_segments(tmp_path))  # before: removed, the file set aside named nothing left
    finally:
        second.store.close()


def test_a_segment_that_cannot_be_read_now_refuses_the_start_and_is_kept(tmp_path):
    from stream.persist import StateRefused
    save_state(tmp_path, "v", {}, {}, {"a": _state()}, segments=EvictedSegments(tmp_path))
    (name,) = _segments(tmp_path)
    data = (tmp_path / name).read_bytes()
    (tmp_path / name).unlink()
    (tmp_path / name).mkdir()  # reading it is an OSError (IsADirectoryError), as EACCES or EIO would be
    try:
        load_state(tmp_path)
    except StateRefused as exc:
        assert name in str(exc)
    else:  # before: taken for lost, and removed at the next checkpoint
        raise AssertionError("a segment that could not be read was taken for lost")
    (tmp_path / name).rmdir()
    (tmp_path / name).write_bytes(data)
    assert load_state(tmp_path)["evicted"].keys() == {"a"}


def test_the_evicted_devices_come_back_least_recently_seen_first(tmp_path):
    evicted = OrderedDict((f"old{i}", _state()) for i in range(10))
    segments = EvictedSegments(tmp_path)
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)
    for i in range(6):
        del evicted[f"old{i}"]
    evicted.update((f"new{i}", _state()) for i in range(3))  # the old segment is folded after the new ones
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)
    assert list(load_state(tmp_path)["evicted"]) == list(evicted)  # before: new0..2 first, forgotten first


def test_no_checkpoint_writes_again_more_than_its_budget_of_older_states(tmp_path, monkeypatch):
    import stream.persist as persist
    monkeypatch.setattr(persist, "FOLD_BUDGET", 20)
    evicted = OrderedDict((f"e{i}", _state()) for i in range(100))
    segments = EvictedSegments(tmp_path)
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)
    for i in range(70):  # 30 of 100 still count: mostly gone, but more than the budget
        del evicted[f"e{i}"]
    evicted["n"] = _state()
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)
    assert segments.written == 1
    for i in range(70, 85):  # 15 left: within the budget, folded
        del evicted[f"e{i}"]
    evicted["m"] = _state()
    save_state(tmp_path, "v", {}, {}, dict(evicted), segments=segments)
    assert segments.written == 16 and len(_segments(tmp_path)) == 2
    _assert_restored(tmp_path, evicted)


def test_a_new_segment_never_takes_the_name_of_one_the_checkpoint_names(tmp_path):
    segments = EvictedSegments(tmp_path)
    save_state(tmp_path, "v", {}, {}, {"a": _state()}, segments=segments)
    (name,) = _segments(tmp_path)
    (tmp_path / name).unlink()  # lost: the checkpoint still names it
    again = EvictedSegments(tmp_path)
    again.adopt(load_state(tmp_path)["evicted_segments"], {})
    save_state(tmp_path, "v", {}, {}, {"b": _state()}, segments=again)
    assert _segments(tmp_path) != [name]  # before: the same name, which the last checkpoint names for "a"
