"""Shared fixtures: a real MQTT broker (Mosquitto when it answers on 127.0.0.1:1883, else the embedded
amqtt broker on a free port), and a small untrained model."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from stream.mqtt import BrokerURL, broker_answers

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATASETS = Path(os.environ.get("HARSTREAM_DATASETS", SHARED / "datasets"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


EMBEDDED_LIMITS = ("the embedded broker (amqtt 0.12) neither keeps QoS 1 messages for a disconnected "
                   "persistent session nor routes every wildcard subscription reliably; this needs Mosquitto")


def _test_broker() -> BrokerURL:
    return BrokerURL.parse(os.environ.get("HARSTREAM_TEST_BROKER", "mqtt://127.0.0.1:1883"))


@pytest.fixture(scope="session")
def needs_full_broker(broker_url) -> None:
    """Skip (with the reason) where the broker in use is the embedded one and the test needs more."""
    if not broker_answers(_test_broker()):
        pytest.skip(EMBEDDED_LIMITS)


@pytest.fixture(scope="session")
def broker_url() -> BrokerURL:
    """A broker that answers: Mosquitto on this machine, or the embedded one started here."""
    local = _test_broker()
    if broker_answers(local):
        yield local
        return
    from stream.broker import EmbeddedBroker
    url = BrokerURL.parse(f"mqtt://127.0.0.1:{_free_port()}")
    with EmbeddedBroker(url):
        yield url


@pytest.fixture(scope="session")
def embedded_broker() -> BrokerURL:
    """The embedded amqtt broker itself, on a free port (tests of `harstream broker`)."""
    from stream.broker import EmbeddedBroker
    url = BrokerURL.parse(f"mqtt://127.0.0.1:{_free_port()}")
    with EmbeddedBroker(url):
        yield url


@pytest.fixture
def tiny_model():
    import torch

    from models.rnn import HARNet, ModelConfig
    torch.manual_seed(0)
    model = HARNet(ModelConfig(classes=("rest", "squat", "walking"), hidden=16, layers=2, window=20, hop=20,
                               patch=5, rate=25.0))
    return model.eval()


def datasets_dir(name: str) -> Path:
    path = DATASETS / name
    if not path.is_dir():
        pytest.skip(f"real data set {name!r} not found at {path} (../shared/datasets is absent)")
    return path
