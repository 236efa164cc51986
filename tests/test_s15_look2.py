"""Second look at 87dc07d (adapters.pt version 2, written only when changed) and 886d125 (the dashboard forgets
devices silent 10 minutes; the simulator clears its retained status).

- A version 2 file whose per-device comparison counts are huge: their int64 sum wraps around, so counts whose
  sum is not the pairs there are passed the check, and the devices took one another's comparisons.
- A device forgotten while "online" (a sensor idle 11 minutes, connected) came back "? unknown": its status
  is published once, retained, and the dashboard had dropped it; the overview no longer counted it online.
- History from a consumer whose clock is ahead of the dashboard's (another host's) moved the store's clock
  ahead: every live device it had not seen was then dropped as from before the forget horizon ("too_old").
"""

from __future__ import annotations

import logging
import sqlite3
import time

import orjson
import torch

from dashboard.live import LiveStore, load_history
from models.personal import DeviceAdapters
from stream.store import SCHEMA
from tests.helpers import imu


def _prediction(t: float) -> bytes:
    return orjson.dumps({"t": t, "label": "squat", "confidence": 0.9, "probs": {"squat": 0.9, "rest": 0.1},
                         "model": "v1"})


def test_a_stacked_file_whose_comparison_counts_wrap_around_is_refused(tmp_path, caplog):
    adapters = DeviceAdapters(4)
    adapters.load_state_dict({d: {"M": torch.eye(3), "b": torch.zeros(3), "c": torch.zeros(4), "active": True,
                                  "scores": torch.ones(2, 2, dtype=torch.int8)} for d in ("x", "y", "z")})
    path = tmp_path / "adapters.pt"
    adapters.save(path)
    blob = torch.load(path, weights_only=True)
    big = 2**63 - 1
    blob["scored"] = torch.tensor([big, big, 8])  # summed in int64: 6, the pairs of the file
    assert int(blob["scored"].sum()) == blob["scores"].shape[0] == 6
    torch.save(blob, path)
    loaded = DeviceAdapters(4)
    with caplog.at_level(logging.WARNING):
        assert loaded.load(path) == 0  # was 3: x with all 6 pairs, y with none, z with 2 of x's and y's
    assert loaded.entry("x") is None and "not loading device adapters" in caplog.text


def test_a_device_forgotten_while_online_comes_back_online():
    store = LiveStore("har", forget_after=60.0)
    store.handle("har/wear/status", b"online", now=1000.0, retained=True)  # on subscribing: the broker's copy
    store.handle("har/wear/imu", imu(0, 10.0), now=1001.0)
    store.handle("har/gone/status", b"online", now=1001.0)
    for i in range(1, 14):  # another device streams on while both are idle, connected
        store.handle("har/other/imu", imu(i, 10.0 + i), now=1001.0 + 6 * i)
    assert store.device_ids() == ["other"]  # forgotten
    store.handle("har/gone/status", b"offline", now=1080.0)  # one stopped meanwhile: its "online" goes
    assert store.device_ids() == ["other"]
    store.handle("har/wear/imu", imu(1, 90.0), now=1090.0)  # resumes, never publishing its status again
    store.handle("har/gone/imu", imu(1, 90.0), now=1090.0)
    assert store.device("wear").status == "online"  # was None: "? unknown"
    assert store.device("gone").status is None
    overview = store.overview(now=1091.0)
    assert overview.online == 1 and overview.total == 3


def test_history_from_a_clock_ahead_of_the_dashboards_drops_no_live_device(tmp_path):
    path = tmp_path / "events.db"
    db = sqlite3.connect(path)
    db.executescript(SCHEMA)
    db.execute("INSERT INTO predictions (received, device, t, label, confidence, model, latency_ms) "
               "VALUES (?, 'earlier', 5.0, 'squat', 0.9, 'v1', 3.0)", (time.time() + 900,))  # 15 min ahead
    db.commit()
    db.close()
    store = LiveStore("har")
    assert load_history(store, str(path)) == 1
    store.handle("har/live/prediction", _prediction(1.0))
    store.handle("har/live/imu", imu(0, 1.0))
    assert store.device_ids() == ["earlier", "live"]  # was ["earlier"], the live one dropped as too old
    assert "too_old" not in store.counters()["dropped"]
