"""`harstream demo` end to end on the embedded broker (nothing else listening on its port)."""

import re
import subprocess
import sys

import pytest

from tests.conftest import _free_port

pytestmark = [pytest.mark.slow, pytest.mark.broker]


def test_demo_on_embedded_broker_recognises_the_simulated_exercises():
    port = _free_port()
    out = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--no-dashboard", "--devices", "5", "--duration", "30",
         "--broker", f"mqtt://127.0.0.1:{port}"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "starting the embedded broker" in out.stdout
    last_table = out.stdout.split("device     predicted")[-1]
    devices = set(re.findall(r"^(sim-00\d)\s", last_table, flags=re.M))
    assert devices == {f"sim-00{i}" for i in range(5)}, out.stdout[-1500:]
    share = float(re.search(r"matched the simulator's truth: ([\d.]+)%", out.stdout).group(1))
    count = int(re.search(r"predictions: (\d+)", out.stdout).group(1))
    assert count >= 5 * 10  # 2 s windows for 30 s, less the start-up
    assert share > 70.0, out.stdout[-1500:]
