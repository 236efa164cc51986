"""A recording replayed through a running consumer gives the predictions `harstream evaluate` gives."""

import pytest

from models.checkpoint import default_model_path, load_checkpoint
from simulators.workout import simulate_recording
from tests.helpers import replay_through_consumer_matches_evaluate

pytestmark = pytest.mark.broker


def test_replay_through_consumer_equals_evaluate(broker_url):
    model, info = load_checkpoint(default_model_path())
    replay_through_consumer_matches_evaluate(simulate_recording(2, 40.0, seed=7), model, info["version"],
                                             broker_url)
