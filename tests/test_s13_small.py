"""Small things a newcomer met (the s13 walkthrough): the embedded broker refuses an mqtts:// address it would
not serve, the demo says why its children log a SIGTERM, listings count in the singular."""

from __future__ import annotations

import subprocess
import sys

from stream.demo import _name, _print_table
from stream.versions import ConsumerModels, format_listing


def test_the_embedded_broker_refuses_a_tls_address_it_would_not_serve():
    run = subprocess.run([sys.executable, "-m", "stream.cli", "broker", "--broker", "mqtts://127.0.0.1:18997"],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 2  # before: it listened on plain TCP, and mqtts clients never reached it
    assert "plain MQTT only" in run.stderr


def test_the_demo_names_its_children_and_prints_no_empty_table(capsys):
    class Child:
        def __init__(self, args):
            self.args = args
    assert _name(Child([sys.executable, "-m", "stream.cli", "consume", "--broker", "x"])) == "consumer"
    assert _name(Child([sys.executable, "-m", "streamlit", "run", "app.py"])) == "dashboard"
    _print_table({"rows": {}, "matched_share": None}, {})
    out = capsys.readouterr().out
    assert "waiting for the consumer's first predictions" in out and "device" not in out


def test_one_version_is_said_in_the_singular():
    one = ConsumerModels("c1", status="online", serving="base", versions=[{"version": "base"}], kept=1)
    assert "1 version kept" in format_listing({"c1": one})  # before: "1 versions kept"
    two = ConsumerModels("c1", status="online", serving="base", versions=[{"version": "base"}], kept=2)
    assert "2 versions kept" in format_listing({"c1": two})
