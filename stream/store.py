"""The event store: predictions, labels, drift events and model versions in SQLite (WAL mode).

The consumer writes through a bounded queue drained by one writer thread in batches, so the
serving loop never waits for the disk; when the queue is full, events are dropped and counted.
Retention is bounded by age and by row count per table. The dashboard reads history from it.
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
import time
from pathlib import Path

import orjson

__all__ = ["EventStore"]

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS predictions (
    id INTEGER PRIMARY KEY, received REAL NOT NULL, device TEXT NOT NULL, t REAL NOT NULL,
    label TEXT NOT NULL, confidence REAL NOT NULL, model TEXT NOT NULL, latency_ms REAL);
CREATE INDEX IF NOT EXISTS predictions_device_t ON predictions (device, t);
CREATE TABLE IF NOT EXISTS labels (
    id INTEGER PRIMARY KEY, received REAL NOT NULL, device TEXT NOT NULL, label TEXT NOT NULL,
    start REAL NOT NULL, end_ REAL);
CREATE INDEX IF NOT EXISTS labels_device ON labels (device, start);
CREATE TABLE IF NOT EXISTS drift (
    id INTEGER PRIMARY KEY, received REAL NOT NULL, device TEXT NOT NULL, detector TEXT NOT NULL,
    signal TEXT NOT NULL, t REAL NOT NULL, value REAL, needs_labels INTEGER);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY, received REAL NOT NULL, version TEXT NOT NULL, event TEXT NOT NULL,
    detail TEXT);
"""

UNIQUE_WINDOW = "CREATE UNIQUE INDEX IF NOT EXISTS predictions_window ON predictions (device, t)"
# INSERT OR IGNORE where a row has a natural key: the same window stored twice is one row
INSERT = {"predictions": "INSERT OR IGNORE"}

TABLES = {
    "predictions": ("received", "device", "t", "label", "confidence", "model", "latency_ms"),
    "labels": ("received", "device", "label", "start", "end_"),
    "drift": ("received", "device", "detector", "signal", "t", "value", "needs_labels"),
    "models": ("received", "version", "event", "detail"),
}


class EventStore:
    """Append-only event tables with bounded retention."""

    def __init__(self, path: str | Path, max_rows: int = 1_000_000, max_age_s: float = 7 * 86400.0,
                 queue_size: int = 100_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.dropped = 0
        self.written = 0
        self._queue: queue.Queue[tuple[str, tuple]] = queue.Queue(queue_size)
        self._stop = threading.Event()
        with self._connect() as db:
            db.executescript(SCHEMA)
            # one row per window: a prediction put again from a killed life's journal
            # is ignored; a store written before this index existed is deduplicated first
            try:
                db.execute(UNIQUE_WINDOW)
            except sqlite3.IntegrityError:
                db.execute("DELETE FROM predictions WHERE id NOT IN "
                           "(SELECT MIN(id) FROM predictions GROUP BY device, t)")
                db.execute(UNIQUE_WINDOW)
        self._thread = threading.Thread(target=self._writer, name="event-store", daemon=True)
        self._thread.start()

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=10)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes of the process
        return db

    # -- writers (any thread; never block) --------------------------------------------------------
    def _put(self, table: str, row: tuple) -> None:
        try:
            self._queue.put_nowait((table, row))
        except queue.Full:
            self.dropped += 1

    def prediction(self, device: str, t: float, label: str, confidence: float, model: str, latency_ms: float) -> None:
        self._put("predictions", (time.time(), device, t, label, confidence, model, latency_ms))

    def label(self, device: str, label: str, start: float, end: float | None) -> None:
        self._put("labels", (time.time(), device, label, start, end))

    def drift(self, event: dict) -> None:
        self._put("drift", (time.time(), event["device"], event["detector"], event["signal"], event["t"],
                            event["value"], int(event["needs_labels"])))

    def model_event(self, version: str, event: str, detail: dict | None = None) -> None:
        self._put("models", (time.time(), version, event, orjson.dumps(detail or {}).decode()))

    # -- the writer thread --------------------------------------------------------------------
    def _writer(self) -> None:
        db = self._connect()
        last_prune = time.monotonic()
        try:
            while not (self._stop.is_set() and self._queue.empty()):
                batch: dict[str, list[tuple]] = {}
                try:
                    table, row = self._queue.get(timeout=0.2)
                    batch.setdefault(table, []).append(row)
                    while len(batch.get(table, ())) < 5000:
                        table, row = self._queue.get_nowait()
                        batch.setdefault(table, []).append(row)
                except queue.Empty:
                    pass
                if batch:
                    with db:
                        for table, rows in batch.items():
                            cols = TABLES[table]
                            db.executemany(f"{INSERT.get(table, 'INSERT')} INTO {table} ({','.join(cols)}) VALUES "
                                           f"({','.join('?' * len(cols))})", rows)
                    n = sum(len(r) for r in batch.values())
                    self.written += n
                    for _ in range(n):
                        self._queue.task_done()
                if time.monotonic() - last_prune > 30:
                    self.prune(db)
                    last_prune = time.monotonic()
        except Exception:
            log.exception("event store writer failed; events are no longer stored")
        finally:
            db.close()

    def prune(self, db: sqlite3.Connection | None = None) -> None:
        """Drop rows older than max_age_s and beyond max_rows per table."""
        own = db is None
        db = db or self._connect()
        try:
            with db:
                for table in TABLES:
                    db.execute(f"DELETE FROM {table} WHERE received < ?", (time.time() - self.max_age_s,))
                    db.execute(f"DELETE FROM {table} WHERE id <= (SELECT MAX(id) FROM {table}) - ?",
                               (self.max_rows,))
        finally:
            if own:
                db.close()

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, then stop."""
        self._stop.set()
        self._thread.join(timeout)

    # -- readers (the dashboard, tests) ----------------------------------------------------------
    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        db = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=10)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.02)
        return not self._queue.unfinished_tasks
