"""A river whose detectors keep their state under other private names than 0.26's (pyproject.toml admits older
rivers, the only ones on Python 3.10): the error detectors then start afresh after a restart, and the rest of the
monitor is kept. Before, the snapshot raised AttributeError and every checkpoint went without the monitor."""

from __future__ import annotations

from stream.monitor import Monitor
from tests.test_s13_hddm import _errors, _label, _round_trip


def test_detectors_of_unknown_internals_start_afresh_and_the_rest_is_kept():
    mon = Monitor(clock=lambda: 0.0)
    _label(mon, _errors(0)[:200])
    del mon._devices["d0"].error._z  # as a river keeping HDDM_A's overall mean under another name would
    snapshot = _round_trip(mon.snapshot())  # before: AttributeError
    restored = Monitor(clock=lambda: 0.0)
    restored.restore(snapshot)
    assert restored.device_summary("d0") == mon.device_summary("d0")  # metrics, counts: kept
    fresh = restored._devices["d0"].error
    assert fresh._z.n == 0 and not fresh.drift_detected  # a fresh HDDM_A
    assert restored._all.error._sliding_window == mon._all.error._sliding_window  # known ones: kept exactly
