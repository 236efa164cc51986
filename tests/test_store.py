"""The event store: one row per window even when a prediction is published twice."""

import sqlite3

from stream.store import EventStore


def test_a_window_stored_twice_is_one_row_and_old_stores_are_deduplicated(tmp_path):
    path = tmp_path / "events.db"
    # a store written before windows were unique: two copies of one window
    events = EventStore(path)
    events.close()
    with sqlite3.connect(path) as db:
        db.execute("DROP INDEX predictions_window")
        for _ in range(2):
            db.execute("INSERT INTO predictions (received, device, t, label, confidence, model, latency_ms) "
                       "VALUES (1, 'dev-a', 10.0, 'squat', 0.9, 'v1', 5)")
    events = EventStore(path)  # deduplicates, then keeps windows unique
    for _ in range(3):  # at-least-once output after a restart: the same window again
        events.prediction("dev-a", 12.0, "squat", 0.8, "v1", 5.0)
    events.prediction("dev-b", 12.0, "rest", 0.7, "v1", 5.0)  # same t, another device: its own row
    events.label("dev-a", "squat", 9.0, None)
    events.label("dev-a", "squat", 9.0, None)  # labels have no natural key: both kept
    assert events.flush()
    rows = events.query("SELECT device, t FROM predictions ORDER BY device, t")
    labels = events.query("SELECT COUNT(*) FROM labels")
    events.close()
    assert rows == [("dev-a", 10.0), ("dev-a", 12.0), ("dev-b", 12.0)]
    assert labels == [(2,)]
