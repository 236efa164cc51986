"""The error detectors across a restart (Monitor.snapshot / Monitor.restore). Until snapshot version 1 each
device's HDDM_A and the overall FHDDM were fresh ones fed their last 64 inputs (TAIL): HDDM_A's means then
covered 64 windows, not all of them since it last fired, so a restored one fired up to 30 windows (a
minute) earlier or later than the last life's would have; FHDDM's largest rate of correct windows covered
only the last 40 windows, and an overall fall of accuracy was missed. They are now kept as the numbers
they hold (plain data, read with weights_only), and decide exactly as the last life's would."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from river import drift

from stream.monitor import SNAPSHOT_VERSION, TAIL, Monitor


def _round_trip(snapshot: dict):
    """As the checkpoint holds it: torch.save, then torch.load(weights_only=True), which runs no code."""
    buffer = io.BytesIO()
    torch.save(snapshot, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _errors(seed: int, n: int = 420, onset: int = 300) -> list[bool]:
    """A device's labelled windows, wrong or not: 5 % wrong, 40 % from window ``onset`` on."""
    rng = np.random.default_rng(seed)
    return [bool(rng.random() < (0.05 if k < onset else 0.4)) for k in range(n)]


def _label(mon: Monitor, wrongs: list[bool], start: int = 0, devices: int = 1) -> list[tuple]:
    """Each window labelled (one class, the model wrong or not; devices taking turns); after each, what the
    device's HDDM_A and the overall FHDDM decided, and the events."""
    out = []
    for k, wrong in enumerate(wrongs, start):
        device = f"d{k % devices}"
        events = mon.labelled(device, 2.0 * k, "row", "squat" if wrong else "row")
        mine, overall = mon._devices[device].error, mon._all.error
        out.append((mine.drift_detected, mine.warning_detected, overall.drift_detected,
                    [e.to_dict() for e in events]))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_restored_hddm_a_fires_at_the_same_windows_as_the_last_lifes(seed):
    """Restarted after any of many windows (in the quiet stretch, just before the error rate rises,
    while it rises, on the window it fires, just after), the restored monitor's HDDM_A decides (drift and
    warning) as the one never restarted at every window after, and reports the same events. Replayed 64
    inputs, it fired at window 325 instead of 334 (seed 1, restarted at 150), 389 instead of 359 (seed 2,
    restarted at 299)."""
    wrongs = _errors(seed)
    kept = Monitor(clock=lambda: 0.0)
    expected = _label(kept, wrongs)
    fired = [k for k, decided in enumerate(expected) if decided[0]]
    assert fired == [334 if seed < 2 else 359]
    restarts = [150, 250, 299, *range(fired[0] - 3, fired[0] + 3)]
    mon = Monitor(clock=lambda: 0.0)
    done = 0
    for at in restarts:
        _label(mon, wrongs[done:at], done)
        done = at
        restored = Monitor(clock=lambda: 0.0)
        restored.restore(_round_trip(mon.snapshot()))
        assert _label(restored, wrongs[at:], at) == expected[at:], at
        assert restored.summary() == kept.summary() and restored.device_summary("d0") == kept.device_summary("d0")


def test_a_restored_fhddm_sees_the_overall_fall_the_last_life_would():
    """The overall FHDDM fires when the rate of correct windows in its last 25 falls well below the
    largest it has seen since it last fired: 100 % at first, then 75 % for 100 windows, then 40 %. Replayed
    64 inputs it knew only the 75 %, and missed the fall (restarted at 160, 170 or 180); kept exactly, it
    fires at window 181 as the monitor never restarted does."""
    rng = np.random.default_rng(4)
    wrongs = [False] * 60 + [bool(rng.random() < 0.25) for _ in range(100)] + \
        [bool(rng.random() < 0.6) for _ in range(100)]
    kept = Monitor(clock=lambda: 0.0)
    expected = _label(kept, wrongs, devices=7)
    assert [k for k, decided in enumerate(expected) if decided[2]] == [181]
    for at in (160, 170, 180, 181, 182):
        mon = Monitor(clock=lambda: 0.0)
        _label(mon, wrongs[:at], devices=7)
        restored = Monitor(clock=lambda: 0.0)
        restored.restore(_round_trip(mon.snapshot()))
        assert _label(restored, wrongs[at:], at, devices=7) == expected[at:], at


def _as_version_1(snapshot: dict, tails: dict[str, list[bool]]) -> dict:
    """``snapshot`` as version 1 wrote it: no error detector's state, its last inputs (``tails``: device ->
    inputs) after the other series of each part that has one, in the one series tensor."""
    values = snapshot["series"].tolist()
    series: list[float] = []

    def part(device: str, p: dict) -> dict:
        p = {**p, "lengths": dict(p["lengths"]), "at": len(series)}
        n = sum(p["lengths"].values())
        series.extend(values[snapshot_part_at[device]: snapshot_part_at[device] + n])
        if p["scored"] is not None:
            p["scored"] = {k: v for k, v in p["scored"].items() if k != "error"}
            p["lengths"]["error"] = len(tails[device])
            series.extend(float(x) for x in tails[device])
        return p

    snapshot_part_at = {"_all": snapshot["all"]["at"], **{d: p["at"] for d, p in snapshot["devices"].items()}}
    out = {**snapshot, "version": 1, "all": part("_all", snapshot["all"]),
           "devices": {d: part(d, p) for d, p in snapshot["devices"].items()}}
    out["series"] = torch.tensor(series, dtype=torch.float32)
    return out


def test_a_version_1_snapshot_is_restored_as_before():
    """The snapshot of the harstream before (version 1) is still read, as it was: everything else exact,
    the error detectors fresh ones fed their last inputs; the next snapshot is of this version. Another
    version is refused, the monitor as it was."""
    mon = Monitor(clock=lambda: 0.0)
    _label(mon, _errors(1)[:200], devices=2)
    snapshot = mon.snapshot()
    tails = {"_all": [True] * TAIL, "d0": [False] * 60 + [True] * 4, "d1": [True, False]}
    old = _round_trip(_as_version_1(snapshot, tails))
    assert old["version"] == 1 and SNAPSHOT_VERSION == 2
    restored = Monitor(clock=lambda: 0.0)
    restored.restore(old)
    assert restored.summary() == mon.summary()
    for device in ("d0", "d1"):
        assert restored.device_summary(device) == mon.device_summary(device)
        fed = drift.binary.HDDMA(drift_confidence=1e-4)
        for x in tails[device]:
            fed.update(x)
        mine = restored._devices[device].error
        assert [(m.n, m.get()) for m in (mine._z, mine._x_min, mine._x_max)] == \
            [(m.n, m.get()) for m in (fed._z, fed._x_min, fed._x_max)]
    assert list(restored._all.error._sliding_window) == [True] * 24  # a fresh FHDDM fed 64 correct windows
    assert restored.snapshot()["version"] == SNAPSHOT_VERSION
    for version in (0, 3, True, 2.0):
        with pytest.raises(ValueError, match="monitor snapshot of version"):
            restored.restore({**snapshot, "version": version})
    assert restored.summary() == mon.summary()


def _states(mon: Monitor) -> tuple[list, list]:
    snapshot = mon.snapshot()
    return snapshot["devices"]["d0"]["scored"]["error"], snapshot["all"]["scored"]["error"]


def test_the_detectors_state_is_plain_numbers_and_a_malformed_one_is_a_value_error():
    """HDDM_A's state is 2 flags and 3 (windows, mean) pairs; FHDDM's a flag, its largest rate and its
    window's inputs: Python bools and floats. One malformed (a count not whole, a mean beyond 0–1, a cut
    point beyond the windows seen, a flag of another type, a window as long as FHDDM's, ...) is refused
    with a ValueError, the monitor as it was."""
    mon = Monitor(clock=lambda: 0.0)
    _label(mon, _errors(0)[:80])
    hddm, fhddm = _states(mon)
    assert [type(x) for x in hddm] == [bool, bool] + [float] * 6 and hddm[2] == 74.0  # watched from the 7th (KNOWN_*)
    assert [type(x) for x in fhddm] == [bool, float] + [bool] * 24
    snapshot = _round_trip(mon.snapshot())
    target = Monitor(clock=lambda: 0.0)
    _label(target, _errors(5)[:30])
    before = target.summary(), target.device_summary("d0")

    def with_states(h, f) -> dict:
        devices = {**snapshot["devices"]}
        devices["d0"] = {**devices["d0"], "scored": {**devices["d0"]["scored"], "error": h}}
        return {**snapshot, "devices": devices, "all": {**snapshot["all"], "scored": {
            **snapshot["all"]["scored"], "error": f}}}

    # (None is no malformed state: a detector a river of other internals kept none of, tests/test_s13_river_internals)
    bad_hddm = [hddm[:7], [*hddm, 1.0], [1, *hddm[1:]], [*hddm[:2], 80.5, *hddm[3:]],
                [*hddm[:3], 1.5, *hddm[4:]], [*hddm[:4], 81.0, *hddm[5:]], [*hddm[:4], 0.0, *hddm[5:]],
                [*hddm[:2], -1.0, *hddm[3:]], [*hddm[:2], float("nan"), *hddm[3:]], [*hddm[:2], 2.0 ** 60, *hddm[3:]],
                [*hddm[:2], 0.0, 0.0, 0.0, 0.0, 1.0, 0.0], tuple(hddm), {"n": 80.0}, [],
                [*hddm[:2], torch.tensor([80.0, 1.0]), *hddm[3:]], [torch.tensor(True), *hddm[1:]]]
    bad_fhddm = [[*fhddm, True], [*fhddm[:2], 1], [fhddm[0], 1.5, *fhddm[2:]], ["x", *fhddm[1:]], [True]]
    for h, f in [(h, fhddm) for h in bad_hddm] + [(hddm, f) for f in bad_fhddm]:
        with pytest.raises(ValueError, match="monitor snapshot malformed"):
            target.restore(with_states(h, f))
        assert (target.summary(), target.device_summary("d0")) == before
    target.restore(with_states([False, False, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], [False, 0.0]))  # fresh ones
    assert target.summary() == mon.summary()
    assert target._devices["d0"].error._z.n == 0 and len(target._all.error._sliding_window) == 0
