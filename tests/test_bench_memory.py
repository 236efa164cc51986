"""The consumer's resident memory per device (stream.bench's ``resident`` measurement, no MQTT)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_resident_memory_per_device_is_measured_and_small():
    """500 devices for 10 s through a fresh consumer: a few kB each (8.0 kB measured at 5,000); the
    issue's bound is 20 kB, and a leak of one window per message would be far above it."""
    out = subprocess.run([sys.executable, "-m", "stream.bench", "resident", "500", "10", "0.5", "20"],
                         capture_output=True, text=True, check=True, timeout=300, cwd=ROOT)
    per_device = int(out.stdout.split()[-1])
    assert 0 < per_device < 20_000, per_device
