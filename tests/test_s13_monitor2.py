"""The drift events a killed life announced after its checkpoint, taken up at the next start (a second look at
``Monitor.replay_events`` and ``EventStore.drift_after``).

- A device whose clock went back in the killed life (a new session: a device restarted, taken off and put on
  again) and drifted then: its events' time ``t`` is of its new clock, the restored monitor's last window of
  its old one. The next life's first window of the device, before that last window, reset its clock
  (``Monitor._clock_reset``), the cooldown taken up with it, and the drift under way was announced again.
- ``drift_after`` scanned the whole drift table (up to ``max_rows`` events) at every start."""

from __future__ import annotations

import sqlite3

import numpy as np

from stream.monitor import Monitor
from stream.store import EventStore
from tests.test_s12_monitor_restart import _round_trip

WALL = 1.7e9  # the wall clock (``received``) when the monitor's clock is 0


def _session(t0: float, n: int, scale: float, seed: int) -> list[tuple]:
    """``n`` windows of device "dev" 2 s apart from device time ``t0``, the magnitude times ``scale``."""
    rng = np.random.default_rng(seed)
    return [(t0 + 2.0 * k, (9.81 + rng.normal(0, 0.3)) * scale, float(rng.uniform(0.8, 0.99))) for k in range(n)]


def _feed(mon: Monitor, windows: list[tuple], now: list[float]) -> list[tuple]:
    """Each window as the consumer feeds it, the monitor's clock 2 s on each; its events as the store's rows."""
    rows = []
    for t, magnitude, confidence in windows:
        now[0] += 2.0
        rows += [(WALL + now[0], e.device, e.detector, e.signal, e.t, e.value, int(e.needs_labels))
                 for e in mon.observe("dev", t, magnitude, confidence)]
    return rows


def test_a_drift_after_the_device_clock_went_back_in_the_killed_life_is_not_announced_again():
    """Checkpointed in the device's old session (its clock at 1598 s); then the device restarted (its clock
    from 2 s) sending g as m/s²: the killed life announced the fall at t 8. The next life, restored from the
    checkpoint and the fall taken up, announced it again at t 76 (before: its first window, at 62, was before
    the old session's last and reset the device's clock, the cooldown with it). Now the event itself says
    the clock went back, as observe saw it: the fall is a repeat, and the old session's orientation and
    label times are forgotten as the killed life forgot them."""
    old, new = _session(1000.0, 300, 1.0, seed=3), _session(2.0, 120, 1 / 9.81, seed=4)
    now = [0.0]
    life = Monitor(clock=lambda: now[0])
    _feed(life, old, now)
    life._last_label_t["dev"] = 1596.0  # labelled in its old session
    snapshot = _round_trip(life.snapshot())
    announced = _feed(life, new[:30], now)
    assert [(r[1], r[3]) for r in announced] == [("dev", "input_magnitude"), ("_all", "input_magnitude")]
    mon = Monitor(clock=lambda: now[0])
    mon.restore(snapshot)
    assert mon._devices["dev"].last_t == 1598.0
    assert mon.replay_events(announced, now=WALL + now[0]) == 2
    last_t, labelled = mon._devices["dev"].last_t, "dev" in mon._last_label_t
    assert _feed(mon, new[30:], now) == []  # before: [(..., "dev", "ADWIN", "input_magnitude", 76.0, ...)]
    assert last_t == announced[0][4]  # the new session's (before: the old one's, 1598)
    assert not labelled and "dev" not in life._last_label_t
    assert mon.summary()["drift_counts"]["ADWIN:input_magnitude:repeated"] >= 1
    assert mon.device_summary("dev")["drifts"] == life.device_summary("dev")["drifts"] == 1


def test_events_labelled_late_or_of_a_clock_going_on_reset_nothing():
    """Only an event ``observe`` reported says where the device's clock was: a labelled window's (labels come
    late) before the last window is no clock going back, nor is an event after it."""
    now = [0.0]
    mon = Monitor(clock=lambda: now[0])
    _feed(mon, _session(1000.0, 50, 1.0, seed=5), now)
    mon._last_label_t["dev"] = 1090.0
    rows = [(WALL + 200.0, "dev", "set", "orientation", 1050.0, 40.0, 0),
            (WALL + 201.0, "dev", "HDDMA", "error", 1060.0, 0.5, 0),
            (WALL + 202.0, "dev", "ADWIN", "confidence", 1100.0, 0.5, 1)]
    assert mon.replay_events(rows, now=WALL + 210.0) == 3
    dev = mon._devices["dev"]
    assert dev.last_t == 1098.0 and mon._last_label_t["dev"] == 1090.0
    assert dev.fired == {"orientation": 1050.0, "error": 1060.0, "confidence": 1100.0}


def _old_store(path) -> None:
    """An event store as harstream wrote it before: its drift table without the index."""
    EventStore(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX IF EXISTS drift_received")
        db.executemany("INSERT INTO drift (received, device, detector, signal, t, value, needs_labels) "
                       "VALUES (?, ?, 'ADWIN', 'confidence', ?, 0.4, 1)",
                       [(WALL + i, f"d{i % 7}", float(i)) for i in range(2000)])
    db.close()


def test_the_drift_events_after_a_checkpoint_are_found_by_an_index(tmp_path, monkeypatch):
    """At every start the consumer asks for the drift events received after its checkpoint, a few of up to
    ``max_rows``: SQLite scanned the whole table for them (7 ms at 100,000 events, 53 ms at 1,000,000);
    now it searches an index on ``received``, which a store written before gets when opened. The events
    are the same, oldest first, those received at the time asked for not among them."""
    path = tmp_path / "events.db"
    _old_store(path)
    store = EventStore(path)
    asked = []
    query = store.query

    def spied(sql, params=()):
        asked.append((sql, params))
        return query(sql, params)

    monkeypatch.setattr(store, "query", spied)
    try:
        rows = store.drift_after(WALL + 1995.0)
        assert [r[0] for r in rows] == [WALL + 1996.0, WALL + 1997.0, WALL + 1998.0, WALL + 1999.0]
        assert rows[0] == (WALL + 1996.0, "d1", "ADWIN", "confidence", 1996.0, 0.4, 1)
        (sql, params), = asked
        with sqlite3.connect(path) as db:
            plan = " ".join(str(step[-1]) for step in db.execute(f"EXPLAIN QUERY PLAN {sql}", params))
        db.close()
        assert "USING INDEX drift_received" in plan, plan  # before: "SCAN drift"
    finally:
        store.close()
