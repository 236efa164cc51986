"""Second look at a consumer started on a full disk (1076b96): an event store whose open fails with SQLite's 'disk
I/O error' was taken for one on a full disk whatever the cause, so a failing disk (EIO) was a WARNING and a writer
retrying for good. It is taken so only where the file system has no room; with room it is refused, named an I/O
error. The I/O error itself is faked (a failing disk cannot be made here); the free space is the file system's."""

from __future__ import annotations

import logging
import sqlite3

import pytest

from stream import store as store_module
from stream.store import EventStore, StoreError


def _io_error_on_open(monkeypatch):
    def failing(self, *args):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(EventStore, "_connect", failing)


def test_an_io_error_opening_the_store_with_room_is_refused_as_one(tmp_path, monkeypatch):
    """Before: opened, one WARNING 'cannot be opened now', and the writer trying again every 5 s for good."""
    EventStore(tmp_path / "events.db").close()
    _io_error_on_open(monkeypatch)
    with pytest.raises(StoreError, match="I/O error, not a full disk") as raised:
        EventStore(tmp_path / "events.db")
    assert str(tmp_path / "events.db") in str(raised.value) and "bytes free" in str(raised.value)


def test_an_io_error_opening_the_store_on_a_full_file_system_is_a_warning(tmp_path, monkeypatch, caplog):
    _io_error_on_open(monkeypatch)
    monkeypatch.setattr(store_module, "_free_bytes", lambda directory: 4096)  # what a full tmpfs has left
    caplog.set_level(logging.WARNING, logger="stream.store")
    store = EventStore(tmp_path / "events.db")
    try:
        assert store.failing and store.errors == 1
        assert any("cannot be opened now" in r.getMessage() for r in caplog.records)
    finally:
        store.close(timeout=0.5)


def test_no_room_tells_a_full_disk_from_a_failing_one(tmp_path, monkeypatch):
    io = sqlite3.OperationalError("disk I/O error")
    full = sqlite3.OperationalError("database or disk is full")
    path = tmp_path / "events.db"
    assert store_module._free_bytes(tmp_path) > store_module.NO_ROOM_BYTES  # the test's own file system
    assert not store_module._no_room(io, path)
    assert store_module._no_room(full, path)  # SQLite says so itself
    monkeypatch.setattr(store_module, "_free_bytes", lambda directory: 0)  # no inode or byte left
    assert store_module._no_room(io, path)
    monkeypatch.setattr(store_module, "_free_bytes", lambda directory: None)  # cannot be told: not put down to it
    assert not store_module._no_room(io, path)
