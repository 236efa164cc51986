"""The drift monitor across a consumer restart: Monitor.snapshot / Monitor.restore (plain data, in the
consumer's checkpoint). Before, a restarted consumer's monitor started afresh: the live metrics dropped to
nothing, every device's orientation references had to be learnt again, and a change under way was missed."""

from __future__ import annotations

import io
import logging
import time

import numpy as np
import pytest
import torch

from stream.monitor import Monitor
from stream.persist import load_state, save_state
from tests.test_consumer_monitor import _label
from tests.test_consumer_restart import _life, _send

ROW, CURL = np.array([9.3, 1.5, 2.7]), np.array([1.0, 9.5, 2.0])
_C, _S = np.cos(np.radians(120)), np.sin(np.radians(120))
TURN = np.array([[1, 0, 0], [0, _C, -_S], [0, _S, _C]])  # a strap turned 120° about the forearm (x)


def _windows(n: int, change_at: int, seed: int = 5) -> list[tuple]:
    """``n`` windows of two devices. "lab" labels sets of rows and of curls (10 windows each, a rest of 5
    after each; the model 85 % right), "silent" labels nothing. From window ``change_at`` on, lab's strap
    is turned and silent sends g as m/s² (its magnitude a tenth)."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        t = 2.0 * k
        label = ("row",) * 10 + ("rest",) * 5 + ("curl",) * 10 + ("rest",) * 5
        label = label[k % 30]
        if label == "rest":  # held any way, still
            mean, motion = rng.normal(0, 6, 3), 0.2
        else:
            mean, motion = (ROW if label == "row" else CURL) + rng.normal(0, 0.3, 3), 3.0
        if k >= change_at:
            mean = TURN @ mean
        predicted = label if rng.random() < 0.85 else "squat"
        out.append(("lab", t, 9.81 + rng.normal(0, 0.3), float(rng.uniform(0.8, 0.99)), mean, predicted, motion,
                    label))
        silent = np.array([2.0, 9.0, 3.0]) + rng.normal(0, 0.3, 3)
        magnitude = 9.81 + rng.normal(0, 0.3)
        if k >= change_at:
            silent, magnitude = silent / 9.81, magnitude / 9.81
        out.append(("silent", t, magnitude, float(rng.uniform(0.8, 0.99)), silent, "squat",
                    float(rng.uniform(2.6, 3.2)), None))
    return out


def _feed(mon: Monitor, windows: list[tuple]) -> list[dict]:
    """Each window as the consumer feeds it (classified, then scored where labelled); the events."""
    events = []
    for device, t, magnitude, confidence, mean, predicted, motion, truth in windows:
        events += mon.observe(device, t, magnitude, confidence, mean, predicted, motion)
        if truth is not None:
            events += mon.labelled(device, t, truth, predicted, mean, motion)
    return [e.to_dict() for e in events]


def _round_trip(snapshot: dict):
    """As the checkpoint holds it: torch.save, then torch.load(weights_only=True), which runs no code."""
    buffer = io.BytesIO()
    torch.save(snapshot, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _restarted(mon: Monitor, clock=None) -> Monitor:
    new = Monitor(clock=clock or mon.clock)
    new.restore(_round_trip(mon.snapshot()))
    return new


def _same(a: Monitor, b: Monitor, devices=("lab", "silent")) -> None:
    assert a.summary() == b.summary()
    for device in devices:
        assert a.device_summary(device) == b.device_summary(device)


SLACK = 20.0  # device seconds: see _close


def _close(restored: list[dict], kept: list[dict]) -> None:
    """The alarms of a restored monitor are the ones of the monitor never restarted: the same (device,
    detector, signal), none more, none fewer, none earlier; the orientation checks' at the same window and
    the same value. An ADWIN that held more than TAIL inputs is fed only TAIL of them, so in a steady
    stream it sees a sharp change up to SLACK seconds (10 windows) later: a magnitude falling to a tenth
    after 200 steady windows, 8 s later on the device and 12 s overall."""
    def key(e: dict) -> tuple:
        return e["device"], e["detector"], e["signal"], e["t"]

    assert [key(e)[:3] for e in sorted(restored, key=key)] == [key(e)[:3] for e in sorted(kept, key=key)]
    for r, k in zip(sorted(restored, key=key), sorted(kept, key=key), strict=True):
        if r["signal"] == "orientation":
            assert r == k
        assert 0.0 <= r["t"] - k["t"] <= SLACK, (r, k)


def _alarms(summary: dict) -> dict:
    return {k: n for k, n in summary["drift_counts"].items() if not k.endswith(":repeated")}


def test_a_restored_monitor_gives_the_same_metrics_and_detects_what_it_would_have():
    """Restarted at window 200, where the strap turns (in the middle of a set of curls) and the silent
    device's units change: the restored monitor has the same summaries, and reports what the one never
    restarted reports: the turn at the same window, the magnitude falls (see _close). A monitor started
    afresh there, as before, reports none of them, and its live metrics start from nothing."""
    windows = _windows(260, change_at=200)
    before, after = windows[:400], windows[400:]
    kept = Monitor(clock=lambda: 0.0)
    assert _feed(kept, before) == []
    restored = _restarted(kept)
    _same(kept, restored)
    assert restored.summary()["labelled_windows"] == 200 and len(restored.summary()["confusion"]["labels"]) == 4
    expected = _feed(kept, after)
    _close(_feed(restored, after), expected)
    assert {(e["device"], e["signal"]) for e in expected} == {("lab", "orientation"), ("silent", "input_magnitude"),
                                                             ("_all", "input_magnitude")}
    assert [e["t"] for e in expected if e["signal"] == "orientation"] == [402.0]  # its second turned window
    _same(kept, restored)
    fresh = Monitor(clock=lambda: 0.0)  # the restarted consumer before: nothing kept
    assert _feed(fresh, after) == []
    assert fresh.summary()["labelled_windows"] == 60


def test_restoring_raises_no_alarm_of_its_own():
    """Restarted after each of the windows around the change (a detector firing on the last window before
    the snapshot among them), the restored monitor reports what the one never restarted does after that
    point (see _close): no alarm from the restore, none repeated, none lost."""
    windows = _windows(230, change_at=200)
    kept = Monitor(clock=lambda: 0.0)
    events = [_feed(kept, windows[i: i + 2]) for i in range(0, len(windows), 2)]
    assert [k for k, e in enumerate(events) if e] == [201, 202, 203]
    for at in range(195, 215):  # the monitor restarted after window ``at``
        mon = Monitor(clock=lambda: 0.0)
        _feed(mon, windows[: 2 * at + 2])
        mon = _restarted(mon)
        _close(_feed(mon, windows[2 * at + 2:]), [e for later in events[at + 1:] for e in later])
        assert _alarms(mon.summary()) == _alarms(kept.summary()), at
        assert mon.summary()["labelled_windows"] == kept.summary()["labelled_windows"]


def _two_falls(gap: float, restart: bool) -> tuple[list, dict]:
    """Device a's magnitude falls, then, ``gap`` s of the consumer's clock later, b's; restarted half way
    (a new process, whose monotonic clock starts near 0). When the overall alarms came, and drift counts."""
    now = [1.0e6]
    mon = Monitor(clock=lambda: now[0])
    overall = []

    def fall(device: str, t0: float) -> None:
        for i in range(200):
            overall.extend(e.t for e in mon.observe(device, t0 + 2.0 * i, 9.81 if i < 100 else 1.0, 0.9)
                           if e.device == "_all")

    fall("a", 1.7e9)
    now[0] += gap / 2
    if restart:
        mon = _restarted(mon, clock=lambda: now[0] - 0.99e6)
    now[0] += gap / 2
    fall("b", 500.0)
    return overall, mon.summary()["drift_counts"]


def test_the_overall_cooldown_holds_across_a_restart_in_a_new_process():
    """The overall detectors' cooldown runs on the consumer's monotonic clock, which starts anew in a new
    process: kept as how long ago each signal fired, b's alarms 400 s after a's are repeats across the
    restart as without it, and 800 s after are reported."""
    for gap in (400.0, 800.0):
        kept = _two_falls(gap, restart=False)
        assert _two_falls(gap, restart=True) == kept, gap
        assert ("ADWIN:input_magnitude:repeated" in kept[1]) == (gap == 400.0)


def test_only_the_devices_given_are_restored():
    """The consumer restores the monitor of the devices whose state it restored: another's would never be
    evicted, so never forgotten."""
    mon = Monitor()
    _feed(mon, _windows(30, change_at=100))
    new = Monitor()
    new.restore(_round_trip(mon.snapshot()), devices={"silent"})
    assert new.device_summary("lab") is None and new.device_summary("silent") == mon.device_summary("silent")
    assert new.summary()["labelled_windows"] == 30  # the overall metrics are everyone's


def _leaves(value, path=()):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _leaves(v, (*path, i))
    else:
        yield path


def _replaced(value, path, new):
    if not path:
        return new
    value = dict(value) if isinstance(value, dict) else list(value)
    value[path[0]] = _replaced(value[path[0]], path[1:], new)
    return value


def test_a_malformed_snapshot_is_a_value_error_and_changes_nothing():
    """Every field of a snapshot replaced with something of the wrong kind, another version, or not a dict:
    a ValueError saying so (never another exception, which would stop the consumer), the monitor as it was
    (or restored, where the replacement is one it can take, and then working on)."""
    snapshot, target = _snapshot_and_target()
    before = target.summary()
    for bad in (None, [], "snapshot", {**snapshot, "version": 3}):
        with pytest.raises(ValueError, match="monitor snapshot"):
            target.restore(bad)
    refused = 0
    for path in _leaves(snapshot):
        for new in ("x", -1, 1e300, None, [0.5], {"a": 1}, torch.tensor([float("nan")])):
            if _refused(target, _replaced(snapshot, path, new), before, path):
                refused += 1
            else:  # taken (an optional field, a number where one fits): it goes on; then the target again
                _feed(target, _windows(40, change_at=20, seed=9))
                target.summary()
                target = _target()
    assert refused > 100


def _refused(target: Monitor, snapshot: dict, before: dict, path) -> bool:
    """Whether ``target`` refuses ``snapshot``: a ValueError naming the snapshot, ``target`` as it was."""
    try:
        target.restore(snapshot)
    except ValueError as exc:
        assert "monitor snapshot" in str(exc)
        assert target.summary() == before, path
        return True
    return False


def _target() -> Monitor:
    """A monitor fed 5 windows of its own, to restore snapshots into."""
    target = Monitor()
    _feed(target, _windows(5, change_at=100, seed=9))
    return target


def _snapshot_and_target() -> tuple[dict, Monitor]:
    """The snapshot of a monitor fed 12 windows, read back as a checkpoint reads it, and a ``_target``."""
    mon = Monitor()
    _feed(mon, _windows(12, change_at=100))
    return _round_trip(mon.snapshot()), _target()


def test_the_snapshot_is_bounded_per_device():
    """A device's part of the snapshot does not grow with the windows it has sent (detector tails of TAIL
    inputs, its last windows, its classes): measured, a few kB for a device labelling 14 classes."""
    classes = [f"exercise-{k}" for k in range(14)]

    def size(windows: int, devices: int) -> int:
        rng = np.random.default_rng(3)
        mon = Monitor()
        for d in range(devices):
            for k in range(windows):
                label = classes[(k // 10) % len(classes)]
                mean = ROW + rng.normal(0, 0.3, 3)
                mon.observe(f"d{d}", 2.0 * k, 9.81, 0.9, mean, label, 3.0)
                mon.labelled(f"d{d}", 2.0 * k, label, label if rng.random() < 0.8 else classes[0], mean, 3.0)
        buffer = io.BytesIO()
        torch.save(mon.snapshot(), buffer)
        return len(buffer.getvalue())

    per_device = (size(300, 11) - size(300, 1)) / 10
    longer = (size(1500, 11) - size(1500, 1)) / 10
    assert 1000 < per_device < 6000, per_device  # measured: about 3.6 kB
    assert longer < per_device + 200, (per_device, longer)  # counts take a few more bytes, nothing else grows


def test_the_monitor_goes_through_save_state_and_load_state(tmp_path):
    """In the checkpoint (a key of its own): read back with weights_only, the same monitor. A checkpoint
    without it (older harstream) has none; a malformed one costs the monitor only, not the devices' state."""
    mon = Monitor()
    _feed(mon, _windows(60, change_at=100))
    device = {"dev": (torch.zeros(2, 16), torch.zeros(2, 16))}
    save_state(tmp_path, "v1", device, {"dev": 3}, {}, monitor=mon.snapshot())
    restored = Monitor()
    restored.restore(load_state(tmp_path)["monitor"])
    _same(mon, restored)
    save_state(tmp_path, "v1", device, {"dev": 3}, {})
    assert load_state(tmp_path)["monitor"] is None
    save_state(tmp_path, "v1", device, {"dev": 3}, {}, monitor={"version": 1, "devices": "garbage"})
    state = load_state(tmp_path)
    assert set(state["devices"]) == {"dev"}
    with pytest.raises(ValueError, match="monitor snapshot malformed"):
        Monitor().restore(state["monitor"])


def _labelled_life(tmp_path, tiny_model):
    c = _life(tmp_path, tiny_model)
    _label(c, "dev", "squat")
    for seq in range(12):
        _send(c, "dev", seq)
    return c


def test_a_restarted_consumer_keeps_its_live_metrics_and_references(tiny_model, tmp_path, caplog):
    """A consumer stopped (final checkpoint) and started again on the same state directory: its monitor's
    summaries are the last life's; a checkpoint whose monitor cannot be read is warned about and the
    consumer goes on with the devices' state, its monitor afresh."""
    first = _labelled_life(tmp_path, tiny_model)
    summary, device = first.monitor.summary(), first.monitor.device_summary("dev")
    assert summary["labelled_windows"] > 0 and device["estimated_accuracy"] is not None
    first.checkpoint(final=True)
    first.store.close()
    second = _life(tmp_path, tiny_model)
    try:
        assert second.monitor.summary() == summary and second.monitor.device_summary("dev") == device
        time.sleep(0.01)
        second.config.idle_timeout = 0.0
        second._evict_idle()  # a restored device that does not come back is forgotten, monitor too
        assert second.monitor.device_summary("dev") is None
    finally:
        second.store.close()
    state = load_state(tmp_path)
    save_state(tmp_path, state["model_version"], state["devices"], state["sequences"], state["evicted"],
               watermarks=state["watermarks"], journal=state["journal"], monitor={"version": 1, "all": []})
    with caplog.at_level(logging.WARNING, logger="stream.consumer"):
        third = _life(tmp_path, tiny_model)
    try:
        assert "not restoring the drift monitor" in caplog.text
        assert "dev" in third.pipeline.classifier.bank and third.monitor.summary()["labelled_windows"] == 0
    finally:
        third.store.close()
