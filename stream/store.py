"""The event store: predictions, labels, drift events and model versions in SQLite (WAL mode).

The consumer writes through a bounded queue drained by one writer thread in batches, so the
serving loop never waits for the disk; when the queue is full, events are dropped and counted.
A batch that fails to be written (the database locked beyond the busy timeout, a full disk) is kept
and tried again on a new connection, backing off up to ``RETRY_MAX`` seconds (counted: ``errors``;
``failing`` while the last try failed): the writer never gives up while the store is open.
Retention is bounded by age and by row count per table. The dashboard reads history from it.
"""

from __future__ import annotations

import logging
import os
import queue
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path
from urllib.parse import quote

import orjson

__all__ = ["EventStore", "StoreError", "read_only_uri"]

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
CREATE INDEX IF NOT EXISTS drift_received ON drift (received);
CREATE TABLE IF NOT EXISTS models (
    id INTEGER PRIMARY KEY, received REAL NOT NULL, version TEXT NOT NULL, event TEXT NOT NULL,
    detail TEXT);
"""

# A prediction's key: its window (device, t) and when the cycle that published it ran (``received``, written
# in the journal line too). The same prediction put again (from a killed life's journal) is one row; a
# device whose clock restarted (a new session, a recording replayed) has rows of its own for the same t.
WINDOW_KEY = ("device", "t", "received")
UNIQUE_WINDOW = f"CREATE UNIQUE INDEX IF NOT EXISTS predictions_window ON predictions ({', '.join(WINDOW_KEY)})"
# INSERT OR IGNORE where a row has a natural key: the same prediction stored twice is one row
INSERT = {"predictions": "INSERT OR IGNORE"}
# a prediction without its publication time (a journal line of an older harstream): stored only where no
# row of its window exists, as the store did then
WINDOW_ONLY = "predictions_window_only"

TABLES = {
    "predictions": ("received", "device", "t", "label", "confidence", "model", "latency_ms"),
    "labels": ("received", "device", "label", "start", "end_"),
    "drift": ("received", "device", "detector", "signal", "t", "value", "needs_labels"),
    "models": ("received", "version", "event", "detail"),
}


BUSY_TIMEOUT = 2.0  # seconds a write waits for another connection's lock before it fails (and is tried again)
OPEN_BUSY_TIMEOUT = 30.0  # seconds opening the store (its schema, a one-time re-keying) waits for a lock
RETRY_FIRST = 0.2  # seconds before a failed batch is tried again, doubling up to RETRY_MAX
RETRY_MAX = 5.0
WARN_EVERY = 60.0  # seconds between warnings while writes keep failing
# an I/O error opening the store is taken for a full disk only with less than this free (or no inode left): SQLite
# says 'disk I/O error' where it cannot make its -shm file, but also on a failing disk, which is to be refused
NO_ROOM_BYTES = 1 << 20


class StoreError(sqlite3.DatabaseError, ValueError):
    """A file that cannot be opened as an event store (its message names it). A ``ValueError`` too, so
    the command line reports it in one line, as it does other unreadable files."""


def read_only_uri(path: str | Path) -> str:
    """The SQLite URI opening ``path`` read-only: the path quoted, so '#', '?' and '%' in it stay its own."""
    return f"file:{quote(str(Path(path).resolve()))}?mode=ro"


class EventStore:
    """Append-only event tables with bounded retention."""

    def __init__(self, path: str | Path, max_rows: int = 1_000_000, max_age_s: float = 7 * 86400.0,
                 queue_size: int = 100_000) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self.max_age_s = max_age_s
        self.dropped = 0
        self.dropped_predictions = 0  # of ``dropped``: predictions (the journal holds them; see Consumer)
        self.written = 0
        self.errors = 0  # failed attempts to write a batch (each is tried again) or to prune
        self.failing = False  # the last attempt to write failed: the writer is backing off
        self._queue: queue.Queue[tuple[str, tuple]] = queue.Queue(queue_size)
        self._stop = threading.Event()  # write what is queued, then stop
        self._abandon = threading.Event()  # stop now (close() timed out on a failing store)
        self._prepared = False  # its schema is there (_prepare): done by the writer where a full disk put it off
        try:
            # another connection may hold the write lock a while (a previous life still flushing, a backup,
            # the sqlite3 shell): the re-keying of an older store waits for it rather than fail
            with closing(self._connect(OPEN_BUSY_TIMEOUT)) as db:
                self._prepare(db)
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorname", "").startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or \
                    "locked" in str(exc):  # a healthy store another connection holds: not to be moved away
                raise StoreError(f"{self.path}: the event store is locked by another connection beyond "
                                 f"{OPEN_BUSY_TIMEOUT:g} s ({exc}); is another consumer using this state "
                                 "directory? Try again once it is released") from exc
            if not _no_room(exc, self.path):
                if _io_error(exc):  # with room: a failing disk, not a full one (taken for one, retried for good)
                    raise StoreError(f"{self.path}: the event store cannot be opened: an I/O error, not a "
                                     f"full disk ({_free_bytes(self.path.parent)} bytes free) "
                                     f"({type(exc).__name__}: {exc}); check the disk, or move it away to start "
                                     "a new one") from exc
                raise _unusable(self.path, exc) from exc
            # a full disk (WAL mode cannot even make its -shm file: 'disk I/O error'): nothing wrong with the
            # file, whose moving away the error advised. Before, a consumer restarted on a full disk stopped here
            self.errors += 1
            self.failing = True
            log.warning("event store %s cannot be opened now (%s: %s): events are queued (up to %d) and written "
                        "once it can be, tried again as a failed write is", self.path, type(exc).__name__, exc,
                        queue_size)
        except sqlite3.DatabaseError as exc:  # not a database, a foreign schema, unreadable
            raise _unusable(self.path, exc) from exc
        self._thread = threading.Thread(target=self._writer, name="event-store", daemon=True)
        self._thread.start()

    def _prepare(self, db: sqlite3.Connection) -> None:
        """The tables and indexes, in one transaction."""
        with db:
            db.executescript(SCHEMA)
            # one row per prediction (WINDOW_KEY); a store keyed by (device, t) alone is re-keyed, and
            # one written before windows were unique is deduplicated first (by window, as then)
            key = [row[2] for row in db.execute("PRAGMA index_info(predictions_window)")]
            if key != list(WINDOW_KEY):
                if not key:
                    db.execute("DELETE FROM predictions WHERE id NOT IN "
                               "(SELECT MIN(id) FROM predictions GROUP BY device, t)")
                db.execute("DROP INDEX IF EXISTS predictions_window")
                db.execute(UNIQUE_WINDOW)
        self._prepared = True

    def _connect(self, timeout: float = BUSY_TIMEOUT) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=timeout)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable across crashes of the process
        return db

    @property
    def pending(self) -> int:
        """Events queued and not yet written."""
        return self._queue.unfinished_tasks

    # -- writers (any thread; never block unless asked to) ---------------------------------------------
    def _put(self, table: str, row: tuple, block: bool = False, timeout: float | None = None,
             count: bool = True) -> bool:
        """Queue one row; False if the queue stayed full (then dropped, and counted unless not ``count``)."""
        try:
            self._queue.put((table, row), block, timeout)
            return True
        except queue.Full:
            if count:
                self.dropped += 1
                self.dropped_predictions += table in ("predictions", WINDOW_ONLY)
            return False

    def prediction(self, device: str, t: float, label: str, confidence: float, model: str, latency_ms: float,
                   received: float | None = None, *, block: bool = False, timeout: float | None = None,
                   count: bool = True) -> bool:
        """``received``: when the cycle that published it ran (the same time in its journal line), so that
        the same prediction put twice is one row; None: one row per window (device, t) at most. ``block``:
        wait for room in a full queue (up to ``timeout`` s, None: for good) rather than drop it at once
        (predictions put again from a journal, which may be more than the queue holds). False if it was
        not queued (counted as dropped unless not ``count``: a journal's put that will be tried again)."""
        if received is None:
            return self._put(WINDOW_ONLY, (time.time(), device, t, label, confidence, model, latency_ms), block,
                             timeout, count)
        return self._put("predictions", (received, device, t, label, confidence, model, latency_ms), block,
                         timeout, count)

    def label(self, device: str, label: str, start: float, end: float | None) -> None:
        self._put("labels", (time.time(), device, label, start, end))

    def drift(self, event: dict) -> None:
        self._put("drift", (time.time(), event["device"], event["detector"], event["signal"], event["t"],
                            event["value"], int(event["needs_labels"])))

    def model_event(self, version: str, event: str, detail: dict | None = None) -> None:
        self._put("models", (time.time(), version, event, orjson.dumps(detail or {}).decode()))

    # -- the writer thread --------------------------------------------------------------------
    def _writer(self) -> None:
        """Drain the queue in batches until closed. A batch whose write fails is kept and tried again
        (on a new connection, after a back-off): one error never ends the thread."""
        db: sqlite3.Connection | None = None
        batch: dict[str, list[tuple]] = {}
        delay = RETRY_FIRST
        last_prune = time.monotonic()
        last_warning = -WARN_EVERY
        while not self._abandon.is_set():
            if not batch:
                if self._stop.is_set() and self._queue.empty():
                    break
                batch = self._take()
            if batch:
                try:
                    if db is None:
                        db = self._connect()
                    if not self._prepared:  # opened on a full disk
                        self._prepare(db)
                    self._write(db, batch)
                except sqlite3.Error as exc:  # locked beyond the busy timeout, disk full, I/O error
                    self.errors += 1
                    self.failing = True
                    if time.monotonic() - last_warning >= WARN_EVERY:
                        last_warning = time.monotonic()
                        log.warning("event store %s: writing %d events failed (%s: %s); trying again, "
                                    "%d failures so far", self.path, sum(map(len, batch.values())),
                                    type(exc).__name__, exc, self.errors)
                    db = _close_quietly(db)  # a new connection for the next try
                    self._abandon.wait(delay)
                    delay = min(2 * delay, RETRY_MAX)
                    continue
                except Exception:  # not the database's fault (a row it cannot take): not worth a retry
                    log.exception("event store %s: %d events could not be written; dropped", self.path,
                                  sum(map(len, batch.values())))
                    self.dropped += self._done(batch)
                    batch = {}
                    continue
                self.written += self._done(batch)
                batch = {}
                delay = RETRY_FIRST
                if self.failing:
                    self.failing = False
                    log.info("event store %s: writing again (after %d failures)", self.path, self.errors)
            if db is not None and time.monotonic() - last_prune > 30:
                last_prune = time.monotonic()
                try:
                    self.prune(db)
                except sqlite3.Error as exc:
                    self.errors += 1
                    log.warning("event store %s: pruning failed (%s); trying again later", self.path, exc)
                    db = _close_quietly(db)
        _close_quietly(db)

    def _take(self) -> dict[str, list[tuple]]:
        """The next batch: what is queued (waiting up to 0.2 s for the first), up to 5000 rows of a table."""
        batch: dict[str, list[tuple]] = {}
        try:
            table, row = self._queue.get(timeout=0.2)
            batch.setdefault(table, []).append(row)
            while len(batch.get(table, ())) < 5000:
                table, row = self._queue.get_nowait()
                batch.setdefault(table, []).append(row)
        except queue.Empty:
            pass
        return batch

    @staticmethod
    def _write(db: sqlite3.Connection, batch: dict[str, list[tuple]]) -> None:
        """One transaction: all of the batch or (on an error) none of it."""
        with db:
            for table, rows in batch.items():
                if table == WINDOW_ONLY:
                    cols = TABLES["predictions"]
                    db.executemany(f"INSERT OR IGNORE INTO predictions ({','.join(cols)}) SELECT "
                                   f"{','.join('?' * len(cols))} WHERE NOT EXISTS (SELECT 1 FROM predictions "
                                   "WHERE device = ? AND t = ?)", [(*row, row[1], row[2]) for row in rows])
                    continue
                cols = TABLES[table]
                db.executemany(f"{INSERT.get(table, 'INSERT')} INTO {table} ({','.join(cols)}) VALUES "
                               f"({','.join('?' * len(cols))})", rows)

    def _done(self, batch: dict[str, list[tuple]]) -> int:
        n = sum(len(r) for r in batch.values())
        for _ in range(n):
            self._queue.task_done()
        return n

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
        """Write what is queued, then stop; a store still failing after ``timeout`` is given up (what is
        left unwritten is logged; the consumer's journal keeps the predictions)."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self._abandon.set()
            log.warning("event store %s: closed with %d events not written (%d write failures)", self.path,
                        self._queue.unfinished_tasks, self.errors)
            self._thread.join(min(timeout, 2.0))

    # -- readers (the dashboard, tests) ----------------------------------------------------------
    def query(self, sql: str, params: tuple = ()) -> list[tuple]:
        db = sqlite3.connect(read_only_uri(self.path), uri=True, timeout=10)
        try:
            return db.execute(sql, params).fetchall()
        finally:
            db.close()

    def drift_after(self, received: float) -> list[tuple]:
        """The drift events received after ``received`` (wall-clock s), oldest first, as written: (received,
        device, detector, signal, t, value, needs_labels) (``Monitor.replay_events`` takes them up at a
        start). A store that cannot be read is a ``StoreError``. Found by the index on ``received``: the
        table holds up to ``max_rows`` events, and ``ORDER BY id`` alone has SQLite scan all of them in id
        order (a start-up cost growing with the store: 7 ms at 100,000 rows, 53 ms at 1,000,000); ``+id`` has
        it sort the few found instead."""
        try:
            return self.query("SELECT received, device, detector, signal, t, value, needs_labels FROM drift "
                              "WHERE received > ? ORDER BY +id", (float(received),))
        except sqlite3.Error as exc:
            raise StoreError(f"{self.path}: its drift events cannot be read ({type(exc).__name__}: {exc})") from exc

    def flush(self, timeout: float = 10.0, until_failure: bool = False) -> bool:
        """Wait until everything queued so far is written; False on timeout, and with ``until_failure``
        as soon as a write fails (the writer then backs off: waiting on would only block the caller)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline and self._thread.is_alive():
            if until_failure and self.failing:
                break
            time.sleep(0.02)
        return not self._queue.unfinished_tasks


def _no_room(exc: sqlite3.OperationalError, path: Path) -> bool:
    """Whether ``exc`` opening ``path`` is for want of room: the disk full (SQLITE_FULL), or an I/O error (what
    SQLite says where it cannot make its -wal or -shm file) where the file system has less than NO_ROOM_BYTES
    free or no inode left. An I/O error with room is a failing disk (or file system): not to be taken for a full
    one, whose store is opened later, when the writer can."""
    name = getattr(exc, "sqlite_errorname", "")
    if name.startswith("SQLITE_FULL") or str(exc) == "database or disk is full":
        return True
    free = _free_bytes(path.parent)
    return _io_error(exc) and free is not None and free < NO_ROOM_BYTES


def _io_error(exc: sqlite3.OperationalError) -> bool:
    return getattr(exc, "sqlite_errorname", "").startswith("SQLITE_IOERR") or str(exc) == "disk I/O error"


def _free_bytes(directory: Path) -> int | None:
    """Bytes free to this process in ``directory``'s file system, 0 where no inode is left; None where it cannot be
    told (then an I/O error is not put down to a full disk)."""
    try:
        st = os.statvfs(directory)
    except OSError:
        return None
    if st.f_files and not st.f_favail:
        return 0
    return st.f_bavail * st.f_frsize


def _unusable(path: Path, exc: sqlite3.DatabaseError) -> StoreError:
    return StoreError(f"{path}: cannot be used as the event store ({type(exc).__name__}: {exc}); move it away "
                      "to start a new one")


def _close_quietly(db: sqlite3.Connection | None) -> None:
    """Close ``db`` if open, whatever state a failed write left it in; returns None (no connection)."""
    if db is not None:
        try:
            db.close()
        except sqlite3.Error:
            pass
    return None
