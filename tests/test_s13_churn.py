"""Session 13 (churn): the simulator at QoS 1 loses nothing across a consumer's restart, names its devices
after --device-prefix; the learner holds back ties (challenger only as good as serving) for a while."""

import threading
import time
import uuid

import numpy as np
import orjson
import pytest
import torch

from models.finetune import LearnerConfig, OnlineLearner, Sequence
from models.rnn import HARNet, ModelConfig
from simulators.publisher import Simulator, SimulatorConfig
from stream.cli import main
from stream.consumer import ConsumerConfig
from stream.mqtt import connect
from tests.helpers import wait
from tests.test_acks import start_consumer as _start


@pytest.mark.broker
def test_a_qos1_simulator_loses_nothing_while_a_persistent_consumer_restarts(broker_url, needs_full_broker,
                                                                              tiny_model, tmp_path):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    config = dict(broker=broker_url, prefix=prefix, state_dir=tmp_path, learn=False, metrics_interval=0.5)
    consumer, thread = _start(ConsumerConfig(**config), tiny_model)
    sim = Simulator(SimulatorConfig(broker=broker_url, devices=2, rate=25.0, interval=0.2, duration=8.0, speed=4.0,
                                    prefix=prefix, qos=1))
    runner = threading.Thread(target=sim.run)
    runner.start()
    try:
        assert wait(lambda: consumer.stats.messages >= 4, 20)
        consumer.stop()
        thread.join(20)
        down_at = sim.published_messages
        # the consumer is down while the simulator publishes 10 more messages (0.5 s of its time each device)
        assert wait(lambda: sim.published_messages >= down_at + 10, 20)
        consumer, thread = _start(ConsumerConfig(**config), tiny_model)
        runner.join(30)
        assert not runner.is_alive() and sim.published_messages == 2 * 40 and sim.unsent_messages == 0
        last = {d.device: 39 for d in sim.devices}
        assert wait(lambda: consumer.sequence.snapshot() == last, 20), consumer.sequence.snapshot()
        assert consumer.sequence.lost_samples == 0
        assert consumer.stats.rejected == {}
    finally:
        sim.stop()
        runner.join(30)
        consumer.stop()
        thread.join(20)


@pytest.mark.broker
def test_simulate_names_its_devices_after_device_prefix(broker_url):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    seen: dict[str, int] = {}
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        with lock:
            body = orjson.loads(msg.payload)
            seen.setdefault(msg.topic, body["seq"])

    sub = connect(broker_url, "test-sub", subscriptions=[(f"{prefix}/+/imu", 1)], on_message=on_message)
    try:
        time.sleep(0.2)  # the subscription settles (SUBACK); not an assertion
        assert main(["simulate", "--broker", str(broker_url), "--prefix", prefix, "--devices", "2", "--duration",
                     "0.4", "--speed", "0", "--device-prefix", "gym-b", "--qos", "1"]) == 0
        assert wait(lambda: len(seen) == 2, 10)
        assert sorted(seen) == [f"{prefix}/gym-b-000/imu", f"{prefix}/gym-b-001/imu"]
    finally:
        sub.disconnect()
        sub.loop_stop()
    with pytest.raises(ValueError):
        SimulatorConfig(broker=broker_url, device_prefix="a/b")


def _model():
    torch.manual_seed(0)
    return HARNet(ModelConfig(classes=("down", "up"), hidden=16, layers=1, window=10, hop=10, patch=5,
                              front="linear"))


def _sequence(rng, L=8):
    """Steady labels: the gravity sign tells the class; 15% of the labels are wrong, so the learner cannot do
    better than it does early, and its challenger mostly ties with serving."""
    y = rng.integers(0, 2, L)
    x = rng.normal(0, 1, (L, 10, 3)).astype(np.float32)
    x[:, :, 2] += np.where(y == 1, 9.81, -9.81)[:, None]
    y = np.where(rng.random(L) < 0.15, 1 - y, y)
    return Sequence("d", torch.from_numpy(x), torch.from_numpy(y), (torch.zeros(1, 16), torch.zeros(1, 16)))


def test_a_tie_waits_min_updates_between_ties_and_a_strict_improvement_does_not():
    rng = np.random.default_rng(0)
    learner = OnlineLearner(_model(), LearnerConfig(adapt="shared"))
    promotions = []  # (updates since the last promotion, tie)
    original = learner.promote

    def promote(metrics=None):
        promotions.append((learner._since_promotion, metrics["challenger_accuracy"] == metrics["serving_accuracy"]))
        return original(metrics)

    learner.promote = promote
    for _ in range(120):
        learner.learn(_sequence(rng))
    ties = [since for since, tie in promotions if tie]
    # old rule: a tie below 100% promoted as soon as 24 untrained windows were scored (6 updates of 4 windows)
    assert ties and min(ties) >= 20 == getattr(learner.config, "min_updates_between_ties", None), ties
    # a strict improvement still promotes as soon as the comparison and min_updates_between_promotions allow
    learner._scores.clear()
    learner._since_promotion = learner.config.min_updates_between_promotions
    learner._scores.extend([(0, 1)] + [(1, 1)] * (learner.config.promotion_windows - 1))
    before = len(promotions)
    learner._maybe_promote()
    assert len(promotions) == before + 1 and not promotions[-1][1]
    learner._scores.extend([(1, 1)] * learner.config.promotion_windows)  # a tie, 0 updates since: held back
    learner._since_promotion = learner.config.min_updates_between_promotions
    learner._maybe_promote()
    assert len(promotions) == before + 1
