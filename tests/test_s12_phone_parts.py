"""A phone-format message that comes in parts, some without the gyroscope (a Sensor Logger gyroscope
starting late or pausing: stream.adapters): a model reading the gyroscope takes every part that has it.

Before, the first part refused (``no_gyro``) ended the message: a gyroscope starting 0.2 s late lost the
0.3 s it covered too."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from models.rnn import HARNet, ModelConfig
from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from tests.test_s12_adapters import ACC, GYRO, message


@pytest.fixture
def gyro_model():
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=("a", "b"), input_channels=6, hidden=16, layers=1, rate=25.0,
                              window=25, hop=25, patch=5)).eval()


@pytest.mark.parametrize(("gyro", "taken", "refused"), [
    (GYRO[30:], 29, 1),  # starts late: 0.21 s to 0.49 s has it
    (np.concatenate([GYRO[:5], GYRO[45:]]), 15 + 14, 1),  # pauses: 0 to 0.14 s and 0.36 to 0.49 s have it
    (GYRO[:10], 20, 1),  # stops early (this order worked before)
])
def test_a_gyro_model_takes_every_part_of_a_message_that_has_the_gyroscope(gyro_model, gyro, taken, refused):
    config = ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=False, adapters=("sl/+ = sensor_logger",))
    consumer = Consumer(config, StatefulClassifier(gyro_model, "m"))
    consumer.handle("sl/phone", message(ACC, gyro), 0.0)
    assert consumer.stats.samples == taken
    assert consumer.stats.rejected["no_gyro"] == refused
