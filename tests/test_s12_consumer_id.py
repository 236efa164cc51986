"""The consumer's id in a new state directory: consumers started at the same moment agree on one id.

Before, each wrote its own random id over the others' (the last writer won), while the one that took the
state directory's lock went on under its own: its next life read another id, so the broker's persistent
session it had (and the QoS 1 messages kept for it) was never taken up again."""

from __future__ import annotations

import multiprocessing as mp

import pytest

from stream.consumer import ConsumerConfig

STARTS = 8


def _start(directory, barrier, out) -> None:
    barrier.wait()
    out.put(ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=directory, learn=False).consumer_id)


@pytest.mark.parametrize("attempt", range(3))
def test_consumers_started_together_on_a_new_state_directory_agree_on_its_id(tmp_path, attempt):
    ctx = mp.get_context("fork")
    barrier, out = ctx.Barrier(STARTS), ctx.Queue()
    starts = [ctx.Process(target=_start, args=(tmp_path, barrier, out)) for _ in range(STARTS)]
    for process in starts:
        process.start()
    for process in starts:
        process.join(timeout=60)
    assert [process.exitcode for process in starts] == [0] * STARTS  # before, some died on the shared .tmp
    ids = [out.get(timeout=5) for _ in starts]
    kept = (tmp_path / "consumer-id").read_text()
    assert ids == [kept] * STARTS  # whichever of them takes the lock, its next life reads the id it used
    assert [p.name for p in tmp_path.iterdir()] == ["consumer-id"]  # no temporary file left behind


def test_the_id_kept_is_read_and_never_rewritten(tmp_path):
    (tmp_path / "consumer-id").write_text("harstream-consumer-kept\n")
    before = (tmp_path / "consumer-id").stat().st_mtime_ns
    assert ConsumerConfig(broker="mqtt://127.0.0.1:1", state_dir=tmp_path, learn=False).consumer_id \
        == "harstream-consumer-kept"
    assert (tmp_path / "consumer-id").stat().st_mtime_ns == before
