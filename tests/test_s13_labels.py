"""Windows waiting for their labels at a stop are kept in the checkpoint (``history``) and resolved by the next
life: before, a restart lost them unscored and untaught, even when their label came (a label published while
the consumer was down is delivered after the restart, with the persistent session)."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid

import numpy as np
import pytest
import torch

from models.state import StatefulClassifier
from stream.consumer import Consumer, ConsumerConfig
from stream.labels import LabelBook, LabelledWindow, WindowHistory
from stream.mqtt import connect
from stream.persist import load_state, save_state
from tests.helpers import imu, wait
from tests.test_consumer_monitor import _label
from tests.test_consumer_restart import _life, _send
from tests.test_s12_restart_labels import _send_new_clock
from tests.test_second_look_labels import scored_windows


def _consumer(config: dict, model) -> tuple[Consumer, list]:
    """A consumer whose learner is a list of the sequences it would be sent (no learner process)."""
    consumer = Consumer(ConsumerConfig(**config), StatefulClassifier(model, "tiny"))
    submitted = []
    consumer.learner.submit = submitted.append
    consumer.learner.start = lambda: consumer.learner
    return consumer, submitted


@pytest.mark.broker
def test_windows_waiting_at_a_stop_are_scored_and_learnt_with_a_label_that_comes_after_the_restart(
        broker_url, needs_full_broker, tiny_model, tmp_path):
    prefix = f"hartest{uuid.uuid4().hex[:8]}"
    config = dict(broker=broker_url, prefix=prefix, state_dir=tmp_path, metrics_interval=0.5, learn=True,
                  ack_stall=600.0, label_lateness=4.0)
    pub = connect(broker_url, f"test-pub-{prefix}")
    first, _ = _consumer(config, tiny_model)
    thread = threading.Thread(target=first.run)
    thread.start()
    try:
        assert wait(lambda: first._client is not None and first._client.is_connected())
        pub.publish(f"{prefix}/dev/label", json.dumps({"label": "rest", "t": 0.0}), qos=1).wait_for_publish(5)
        for seq in range(7):  # 100 to 107 s: windows of 0.8 s ending 100.76 ... 106.36
            pub.publish(f"{prefix}/dev/imu", imu(seq, 100.0 + seq, n=25, rate=25.0), qos=1)
        assert wait(lambda: first.stats.windows >= 8), first.stats.windows
    finally:
        first.stop()
        thread.join(20)
    waiting = first.history.waiting("dev")  # the last 4 s: 103.16 ... 106.36
    assert [w.t_end for w in waiting] == pytest.approx([103.16, 103.96, 104.76, 105.56, 106.36])
    # while the consumer is down: the device was squatting from 102.4 s, which is said late
    pub.publish(f"{prefix}/dev/label", json.dumps({"label": "squat", "t": 102.4}), qos=1).wait_for_publish(5)
    second, submitted = _consumer(config, tiny_model)
    scored = scored_windows(second)
    thread = threading.Thread(target=second.run)
    thread.start()
    try:
        assert wait(lambda: second._client is not None and second._client.is_connected())
        for seq in range(7, 13):  # the device goes on: the windows kept are past their lateness
            pub.publish(f"{prefix}/dev/imu", imu(seq, 100.0 + seq, n=25, rate=25.0), qos=1)
        assert wait(lambda: len(scored) >= 5 and submitted), (scored, second.stats.windows)
    finally:
        second.stop()
        thread.join(20)
        pub.disconnect()
        pub.loop_stop()
    # scored in the new life, with the label that came after the restart (before: never scored)
    assert [t for t, _ in scored[:5]] == pytest.approx([w.t_end for w in waiting])
    assert {label for _, label in scored} == {"squat"}
    # and learnt: the first sequence sent is of the windows kept, from the LSTM state before the first
    first_sequence = submitted[0]
    assert first_sequence.targets.tolist() == [1, 1, 1, 1]  # squat, the tiny model's class 1
    for got, w in zip(first_sequence.windows, waiting, strict=False):
        np.testing.assert_array_equal(got.numpy(), w.samples)
    for got, kept in zip(first_sequence.state, waiting[0].state, strict=True):
        torch.testing.assert_close(got, kept)


def _waiting_life(tmp_path, model, **config):
    """A life whose device "dev" (labelled rest from 0) has its last 4 s of windows waiting, checkpointed."""
    first = _life(tmp_path, model, **config)
    _label(first, "dev", "rest")
    for seq in range(12):
        _send(first, "dev", seq)
    waiting = [w.t_end for w in first.history.waiting("dev")]
    assert len(waiting) == 5
    first.checkpoint(final=True)
    first.store.close()
    return waiting


def test_the_kept_windows_are_resolved_with_the_labels_put_back_when_the_device_is_evicted(tiny_model, tmp_path):
    waiting = _waiting_life(tmp_path, tiny_model)
    second = _life(tmp_path, tiny_model, idle_timeout=0.0)
    try:
        scored = scored_windows(second)
        time.sleep(0.01)
        second._evict_idle()  # it does not come back: its windows are final, labelled as they stand
        assert scored == [(pytest.approx(t), "rest") for t in waiting]
        assert "dev" not in second.history
        second.checkpoint(final=True)
        assert load_state(tmp_path)["history"]["devices"] == {}
    finally:
        second.store.close()


def test_a_device_restarted_on_a_new_clock_meanwhile_has_its_kept_windows_resolved_on_its_last_labels(
        tiny_model, tmp_path):
    waiting = _waiting_life(tmp_path, tiny_model)
    second = _life(tmp_path, tiny_model)
    try:
        scored = scored_windows(second)
        _label(second, "dev", "curl", 0.0)  # the new session's label, from its clock's 0
        for seq in range(12):
            _send_new_clock(second, "dev", seq)
        old = [(t, label) for t, label in scored if t > 100.0]
        assert old == [(pytest.approx(t), "rest") for t in waiting]  # not curl: that is the new session's
        assert {label for t, label in scored if t < 100.0} == {"curl"}
    finally:
        second.store.close()


def test_a_state_file_without_the_windows_or_with_them_malformed_still_restores_the_devices(tiny_model, tmp_path,
                                                                                           caplog):
    _waiting_life(tmp_path, tiny_model)
    state = load_state(tmp_path)
    history = state["history"]
    assert history["devices"] == {"dev": 5}

    def resave(history):
        save_state(tmp_path, state["model_version"], state["devices"], state["sequences"], state["evicted"],
                   watermarks=state["watermarks"], journal=state["journal"], monitor=state["monitor"],
                   history=history)

    bad_order = dict(history, t_end=history["t_end"].flip(0))
    for kept, why in ((None, None),  # an older harstream's file: no windows kept, nothing said
                      ({"version": 99, "devices": {}}, "of version 99"),
                      (dict(history, samples="garbage"), "samples: a dense float tensor"),
                      (dict(history, state=[s[:, :1] for s in history["state"]]), "state of shapes"),
                      (bad_order, "in order expected")):
        resave(kept)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="stream.consumer"):
            second = _life(tmp_path, tiny_model)
        try:
            assert "dev" in second.pipeline.classifier.bank  # the devices' state is restored all the same
            assert second.history.waiting("dev") == []
            warnings = [r.getMessage() for r in caplog.records if "waiting for labels" in r.getMessage()]
            assert (warnings == []) if why is None else (len(warnings) == 1 and why in warnings[0]), warnings
            _send(second, "dev", 12)  # and it goes on
            assert second.stats.windows
        finally:
            second.store.close()


def test_windows_kept_for_another_model_are_dropped(tiny_model, tmp_path):
    from models.rnn import HARNet, ModelConfig

    _waiting_life(tmp_path, tiny_model)
    other = HARNet(ModelConfig(classes=("rest", "squat", "walking"), hidden=16, layers=2, window=25, hop=25,
                               patch=5, rate=25.0))
    second = _life(tmp_path, other)  # its state shapes fit, its windows' samples do not
    try:
        assert second.history.waiting("dev") == []
    finally:
        second.store.close()


def test_snapshot_and_restore_keep_each_window_and_refuse_a_device_only():
    history = WindowHistory(span=0.76, lateness=4.0)
    rng = np.random.default_rng(0)
    for device in ("a", "b"):
        history.track(device)
        for k in range(4):
            samples = rng.normal(size=(20, 3)).astype(np.float32)
            history.add(LabelledWindow(device, 10.0 + 0.8 * k, samples, (torch.randn(2, 16), torch.randn(2, 16)),
                                       ("rest", "squat")[k % 2], 0.5 + k / 10))
    history.resolve(LabelBook())
    snapshot = history.snapshot()
    assert snapshot["devices"] == {"a": 4, "b": 4} and snapshot["classes"] == ["rest", "squat"]
    snapshot["samples"][5, 0, 0] = float("nan")  # b's second window
    again = WindowHistory(span=0.76, lateness=4.0)
    refused = again.restore(snapshot, devices={"a", "b", "c"}, window=(20, 3), states=[(2, 16), (2, 16)])
    assert list(refused) == ["b"] and "b" not in again
    for got, kept in zip(again.waiting("a"), history.waiting("a"), strict=True):
        assert (got.t_end, got.predicted, got.confidence) == (kept.t_end, kept.predicted, kept.confidence)
        np.testing.assert_array_equal(got.samples, kept.samples)
        for x, y in zip(got.state, kept.state, strict=True):
            torch.testing.assert_close(x, y)
    # a device's clock that goes back after the restore ends its restored session, as it would have
    again.add(LabelledWindow("a", 1.0, np.zeros((20, 3), np.float32), (torch.zeros(2, 16),) * 2, "rest", 1.0))
    labels = LabelBook()
    labels.add("a", "squat", 0.0)
    assert len([w for w in again.resolve(labels) if w.t_end > 5]) == 4
