"""A newcomer's pass over README.md, docs/phone.md and `harstream COMMAND --help` (session 13).

- Every option of every command says what it does, and every command has a description: before,
  `simulate --placement` and `consume --optimiser` had no help at all, and `broker`, `replay` and
  `train` no description.
- `simulate --help` names every drift scenario: before it listed three and "...", so units_g,
  new_person, unseen_exercise, loss_burst and clock_skew could only be found in an error message.
- docs/phone.md, "3c. Without a phone": the messages it publishes by hand (Sensor Logger JSON,
  SensorSpot events on a dedicated topic, CSV lines) each give 3 predictions through a consumer with
  the guide's adapters. The guide had no way to try the chain without a phone, and never showed the
  `csv` adapter its ACL grants.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import orjson

from stream.cli import build_parser
from tests.helpers import wait

ROOT = Path(__file__).resolve().parents[1]
PHONE = ROOT / "docs" / "phone.md"


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_command_and_option_explains_itself():
    missing = []
    for name, parser in _commands().items():
        if not parser.description:
            missing.append(f"{name}: no description")
        missing += [f"{name} {'/'.join(a.option_strings) or a.dest}: no help"
                    for a in parser._actions if not a.help]
    assert missing == []


def test_simulate_help_names_every_drift_scenario():
    from simulators.workout import SCENARIOS
    text = " ".join(_commands()["simulate"].format_help().split())
    assert [s for s in SCENARIOS if s not in text] == []


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def _hand_published() -> list[tuple[str, str]]:
    """(python code, topic) of each `python3 -c '...' | mosquitto_pub ... -t TOPIC -l` of section 3c."""
    block = re.search(r"```sh\n(.*?)```", _section(PHONE.read_text(), "3c."), re.S).group(1)
    found = re.findall(r"python3 -c '(.*?)' \|\s*mosquitto_pub [^\n]*?-t (\S+) -l", block, re.S)
    assert len(found) == 3, block
    return found


def test_the_phone_guides_hand_published_messages_give_predictions(broker_url):
    from models.checkpoint import default_model_path, load_checkpoint
    from models.state import StatefulClassifier
    from stream.consumer import Consumer, ConsumerConfig
    from stream.mqtt import connect

    text = PHONE.read_text()
    adapters = tuple(dict.fromkeys(re.findall(r"--adapter '([a-z-]+/[^']+)'", text)))  # step 2's, and 3c's csv
    assert "csv/+ = csv" in adapters and "sensorlogger/+ = sensor_logger" in adapters
    device = f"nc{uuid.uuid4().hex[:8]}"  # the guide's alice-phone, unique on a shared broker
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    model, info = load_checkpoint(default_model_path())
    got: list[dict] = []
    watch = connect(broker_url, f"test-watch-{prefix}", subscriptions=[(f"{prefix}/{device}/prediction", 1)],
                    on_message=lambda c, u, m: got.append(orjson.loads(m.payload)))
    consumer = Consumer(ConsumerConfig(broker=broker_url, prefix=prefix, learn=False, adapters=adapters,
                                       reorder=0.2), StatefulClassifier(model, info["version"]))
    thread = threading.Thread(target=consumer.run)
    thread.start()
    publisher = connect(broker_url, f"test-pub-{prefix}")
    try:
        assert wait(lambda: consumer._client is not None and consumer._client.is_connected())
        time.sleep(0.3)
        for k, (code, topic) in enumerate(_hand_published(), start=1):
            lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                   timeout=30).stdout.splitlines()
            assert len(lines) in (12, 300), topic  # 6 s at 50 Hz: 12 messages of 0.5 s, or one sample each
            for line in lines:
                sent = publisher.publish(topic.replace("alice-phone", device), line, qos=1)
            sent.wait_for_publish(10)
            # 6 s of samples: 3 windows of 2 s each, with nothing refused
            assert wait(lambda k=k: len(got) >= 3 * k, timeout=20), (topic, len(got), consumer.stats.rejected)
    finally:
        consumer.stop()
        thread.join(20)
        for client in (watch, publisher):
            client.disconnect()
            client.loop_stop()
    assert len(got) == 9
    assert sum(consumer.stats.rejected.values()) == 0

