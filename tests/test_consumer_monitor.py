"""What the consumer gives its drift monitor: every labelled window scored, the label names bounded."""

import json
import time

import torch

from models.rnn import HARNet, ModelConfig
from models.state import StatefulClassifier
from stream.consumer import MAX_OTHER_LABELS, Consumer, ConsumerConfig
from tests.helpers import imu
from tests.test_consumer_restart import _NoBroker


def _consumer(**config) -> Consumer:
    torch.manual_seed(0)
    model = HARNet(ModelConfig(classes=("rest", "squat", "walking"), hidden=16, layers=2, window=20, hop=20,
                               patch=5, rate=25.0)).eval()
    c = Consumer(ConsumerConfig(broker="mqtt://127.0.0.1:1", learn=False, **config),
                 StatefulClassifier(model, "tiny"))
    c._client = _NoBroker()
    return c


def _label(c: Consumer, device: str, label: str, t: float = 0.0) -> None:
    c.handle(f"har/{device}/label", json.dumps({"label": label, "t": t}).encode(), time.monotonic())


def test_an_evicted_devices_last_labelled_windows_are_scored():
    """The windows still waiting for late labels when a device goes idle are final then: scored by the
    monitor (prequential metrics, error detector) before it forgets the device, not only learnt from."""
    c = _consumer(idle_timeout=0.0)
    _label(c, "dev", "squat")
    for seq in range(10):  # 10 s at 25 Hz: 12 windows of 0.8 s, all within the label
        c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic())
        c._classify()
    windows = len(c._client.windows)
    assert c.monitor.summary()["labelled_windows"] < windows  # the last ones wait for late labels
    time.sleep(0.01)
    c._evict_idle()
    assert c.monitor.summary()["labelled_windows"] == windows


def test_label_names_outside_the_models_classes_are_bounded():
    """Each label name is a row and a column of confusion matrices that never shrink: names the model has
    no class for are taken up to MAX_OTHER_LABELS (scored as errors), then refused as bad_label; the
    model's own classes always pass."""
    c = _consumer()
    for k in range(MAX_OTHER_LABELS + 10):
        _label(c, f"d{k}", f"exercise-{k}")
    _label(c, "late", "squat")
    _label(c, "again", "exercise-3")
    assert c.stats.rejected["bad_label"] == 10
    assert "late" in c.labels and "again" in c.labels and f"d{MAX_OTHER_LABELS}" not in c.labels
