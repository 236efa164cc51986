"""Second look at a device's new session (``seq`` 0 after a higher one, cb6856e) in the consumer's live path.

1. The broker's copy (MQTT DUP) of the current session's ``seq`` 0, after higher ``seq``s, reset the sequence
   check's last ``seq`` to 0: the next message counted a gap of every message since (after ``seq`` 0-19, a copy
   of 0 then 20 gave ``lost_samples`` 190) and its samples were counted as late. It is a redelivery: dropped,
   counted in ``acks.redelivered``, the sequence check untouched.
2. Acknowledging after the window, the old session's last windows and the new session's first ones published in
   one cycle released the device's held messages up to the *latest* window end of the cycle, the old session's,
   which lies after the whole new session's start: the new session's messages whose samples no published window
   holds yet (its partial window) were acknowledged, and the journal's ``safe_seq`` claimed them. Now a cycle
   releases up to the device's last window (its current session's), on the new-session path (cb6856e) and on the
   clock going back more than 30 s alike.
3. Labels (``WindowHistory``) and the drift monitor (``Monitor._clock_reset``) found a device's new session only by
   a window ending before the last one, which a clock back more than 30 s always gives, but a ``seq`` 0 that
   restarts the grid inside the last session's partial window does not: the new session's labels then named
   the old session's last windows. The buffer's grid restart is now the one signal (``Window.new_session``)
   for both paths. (The LSTM state and the orientation fit are carried over a new session on both paths alike.)
4. The sequence check's newest sample of a device (which tells a restart whose ``seq`` 0 was lost) ran on over a
   new session: after a clock gone back, a later restart was measured against the session before's newest and
   refused as ``backwards_seq``. It starts afresh at ``seq`` 0.
"""

from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from models.state import StatefulClassifier
from stream.buffers import DeviceBuffer
from stream.consumer import Consumer, ConsumerConfig


def _payload(seq: int, t0: float, n: int = 10, rate: float = 50.0) -> bytes:
    t = t0 + np.arange(n) / rate
    acc = np.stack([np.sin(7 * t), np.cos(5 * t), 9.81 + np.sin(3 * t)], axis=1)
    return orjson.dumps({"seq": seq, "t": t.round(4).tolist(), "acc": acc.round(4).tolist()})


class _Client:
    """Publishes nowhere; keeps the predictions' times and the acknowledged mids."""

    def __init__(self) -> None:
        self.predictions: list[float] = []
        self.acked: list[int] = []

    def publish(self, topic, payload=None, qos=0, retain=False):
        if topic.endswith("/prediction"):
            self.predictions.append(orjson.loads(payload)["t"])

    def ack(self, mid, qos):
        self.acked.append(mid)


def _consumer(tiny_model, after_window: bool = False) -> Consumer:
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", prefix="tp", learn=False),
                 StatefulClassifier(tiny_model, "tiny"))
    c._client = _Client()
    if after_window:  # as run() sets it up with a persistent session (no journal: none needed here)
        c.after_window = True
        c.acks.client = c._client
    return c


def _send(c: Consumer, seq: int, t0: float, dup: bool = False, mid: int = 0, qos: int = 0, n: int = 10,
          rate: float = 50.0) -> None:
    c.handle("tp/dev/imu", _payload(seq, t0, n, rate), time.monotonic(), mid=mid, qos=qos, dup=dup)


# -- 1. a DUP copy of seq 0 within the current session -------------------------------------------------------
@pytest.mark.parametrize("qos", [0, 1])
def test_a_dup_copy_of_seq_0_leaves_the_sequence_check_alone(tiny_model, qos):
    """seq 0-19 (0.2 s each from device time 100), the broker's copy of seq 0, then seq 20: no gap, nothing
    late, nothing rejected; the copy is counted as redelivered (before: lost_samples 190, late_samples 10)."""
    c = _consumer(tiny_model, after_window=bool(qos))
    for seq in range(20):
        _send(c, seq, 100.0 + seq * 0.2, mid=seq + 1, qos=qos)
        c._classify()
    windows = c.stats.windows
    _send(c, 0, 100.0, dup=True, mid=500, qos=qos)  # its first delivery long acknowledged: a new mid
    for seq in range(20, 24):
        _send(c, seq, 100.0 + seq * 0.2, mid=seq + 1, qos=qos)
    c._classify()
    assert c.sequence.lost_samples == 0
    assert c.sequence.last("dev") == 23
    assert c.pipeline.late_samples == 0 and c._late_fills == 0
    assert not c.stats.rejected
    assert c.acks.counts["redelivered"] == 1
    assert c.pipeline.buffers["dev"].clock_resets == 0
    assert c.stats.windows == windows + 1  # seq 20-23 completed a window: the session goes on
    if qos:
        assert 500 in c._client.acked  # the copy acknowledged at once


def test_a_dup_seq_0_that_starts_a_new_session_is_still_taken(tiny_model):
    """Not a copy of this session's seq 0: a DUP seq 0 whose samples follow the device's newest (a restarted
    device whose seq 0 reached us only as the broker's second try), and one whose clock went back more than
    30 s (a new clock, as before) are taken, the numbering anew: the next seq is no regression."""
    c = _consumer(tiny_model)
    for seq in range(10):
        _send(c, seq, 100.0 + seq * 0.2)
    _send(c, 0, 102.0, dup=True)  # right after the newest
    _send(c, 1, 102.2)
    assert not c.stats.rejected and c.sequence.last("dev") == 1
    _send(c, 0, 50.0, dup=True)  # 50 s back
    _send(c, 1, 50.2)
    assert not c.stats.rejected and c.sequence.last("dev") == 1
    assert c.pipeline.buffers["dev"].clock_resets == 1
    assert c.sequence.lost_samples == 0 and c.acks.counts["redelivered"] == 0


# -- 2. acknowledgements when two sessions' windows share a cycle ----------------------------------------------
@pytest.mark.parametrize("t0_new", [100.0, 20.0], ids=["seq0-new-clock", "clock-back-over-30s"])
def test_a_new_sessions_partial_window_stays_held_when_the_old_sessions_last_window_shares_its_cycle(
        tiny_model, t0_new):
    """Acknowledging after the window (tiny model: 20 samples at 25 Hz, 0.8 s windows). Session A: 10 messages
    of 0.4 s from device time 100; its last message completes its last window (103.96), and before the cycle
    classifies it, the device restarts (session B, seq 0-2 from ``t0_new``: one window and 10 samples of the
    next). Published together, A's 103.96 released all of B's messages, seq 2 (its samples in B's partial window,
    in no published window) too; now seq 2 stays held and safe_seq is 1."""
    c = _consumer(tiny_model, after_window=True)
    for seq in range(10):
        _send(c, seq, 100.0 + seq * 0.4, mid=seq + 1, qos=1, rate=25.0)
        if seq < 9:
            c._classify()
    for seq in range(3):  # A's last window still waits for the cycle
        _send(c, seq, t0_new + seq * 0.4, mid=100 + seq, qos=1, rate=25.0)
    c._classify()
    assert c._client.predictions[-2:] == pytest.approx([103.96, t0_new + 0.76])
    assert c.pipeline.buffers["dev"].clock_resets == 1
    assert 102 not in c._client.acked  # B's seq 2: in B's partial window only
    assert list(c.acks.held) == [102]
    assert c.acks.safe_seq("dev", c.sequence.last("dev")) == 1
    assert {100, 101} <= set(c._client.acked)  # B's first window's messages are released
    assert c._watermarks["dev"] == pytest.approx(t0_new + 0.76)  # the grid the next life resumes on: B's


# -- 3. a new session whose first window does not go back ------------------------------------------------------
def test_a_new_session_ends_the_last_one_for_labels_and_monitor_though_its_windows_go_forward(tiny_model):
    """seq 0 (not a copy) restarts the grid at its first sample, at or before the buffer's newest; when that is
    inside the old session's partial window, the new session's first window ends *after* the old one's last.
    The labels' and the monitor's session end was only found by a window going back (as on a clock back more
    than 30 s, where it always does): here it was missed, and the new session's label named the old session's
    last window (squat labelled rest) and the monitor kept the old session's timings. The buffer's grid restart
    is now the one signal, whichever way the clock went."""
    c = _consumer(tiny_model)
    got: list[tuple[float, str | None]] = []
    c._collect = lambda w: got.append((round(w.t_end, 3), w.label))
    resets: list[str] = []
    reset = c.monitor._clock_reset
    c.monitor._clock_reset = lambda device, dev: (resets.append(device), reset(device, dev))
    c.handle("tp/dev/label", orjson.dumps({"label": "squat", "t": 99.0}), time.monotonic())
    for seq in range(5):  # session A: 100.0-101.96, windows 100.76 and 101.56, the rest partial
        _send(c, seq, 100.0 + seq * 0.4, rate=25.0)
        c._classify()
    c.handle("tp/dev/label", orjson.dumps({"label": "rest", "t": 100.78}), time.monotonic())  # session B's
    for seq in range(15):  # session B from 101.2: its first window ends at 101.96, after A's last
        _send(c, seq, 101.2 + seq * 0.4, rate=25.0)
        c._classify()
    assert c.pipeline.buffers["dev"].clock_resets == 1
    assert got[:2] == [(100.76, "squat"), (101.56, "squat")]  # A's windows on A's label
    assert got[2] == (101.96, "rest")
    assert resets == ["dev"]


@pytest.mark.parametrize("t0_new", [100.5, 40.0], ids=["new_clock", "clock-back-over-30s"])
def test_the_first_window_after_a_grid_restart_by_clock_says_it_starts_a_session(t0_new):
    """One mechanism for both ways a buffer restarts its grid on a new clock: the first window on the new grid,
    and it alone, is flagged; the session before's windows (flushed by the restart, reorder held) are not."""
    buf = DeviceBuffer("d", rate=25.0, window=25, reorder=0.3)
    t = 100.0 + np.arange(150) / 50  # 3 s at 50 Hz
    acc = np.tile([0.0, 0.0, 9.81], (150, 1))
    first = buf.push(t, acc, 0.0)
    assert first and not any(w.new_session for w in first)
    again = buf.push(t0_new - 100.0 + t, acc, 1.0, new_clock=t0_new > 50)
    assert buf.clock_resets == 1
    old, new = again[:1], again[1:]  # first the held samples' window, committed by the restart
    assert old[0].t_end == pytest.approx(102.96) and not old[0].new_session
    assert [w.new_session for w in new[:2]] == [True, False] and new[0].t_end == pytest.approx(t0_new + 0.96)
    gap = buf.push(t0_new + 10.0 + np.arange(50) / 50, acc[:50], 2.0)  # a gap restarts the grid: no session
    assert buf.gaps == 1 and not any(w.new_session for w in gap + buf.flush())


# -- 4. the sequence check's newest across a new session -------------------------------------------------------
def test_after_a_new_session_a_lost_seq_0_is_told_by_the_new_sessions_newest(tiny_model):
    """Session A up to device time 202, session B (seq 0, clock back) to 11, then B restarts with its seq 0 lost
    (QoS 0): seq 1 from 20, 9 s after B's newest, is a device numbering anew (``renumbered``). The sequence
    check still measured it against A's newest (202), refused it as backwards_seq, and so every message of the
    session until its seq passed B's last."""
    c = _consumer(tiny_model)
    for seq in range(10):
        _send(c, seq, 200.0 + seq * 0.2)
    for seq in range(5):
        _send(c, seq, 10.0 + seq * 0.2)
    assert c.pipeline.buffers["dev"].clock_resets == 1
    _send(c, 1, 20.0)
    assert not c.stats.rejected
    assert c.sequence.renumbered == 1 and c.sequence.last("dev") == 1
