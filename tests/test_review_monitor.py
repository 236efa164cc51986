"""Review of the drift monitor and the live metrics: each test failed on the code before its fix."""

from stream.monitor import Monitor


def _kappa(truth: list[str], predicted: list[str]) -> float | None:
    """Cohen's kappa by hand; None where chance agreement is 1 (undefined)."""
    n = len(truth)
    observed = sum(t == p for t, p in zip(truth, predicted, strict=True)) / n
    chance = sum(truth.count(c) / n * predicted.count(c) / n for c in set(truth) | set(predicted))
    return None if chance == 1 else (observed - chance) / (1 - chance)


def test_kappa_of_one_class_always_right_is_undefined_not_chance():
    """A device doing one exercise the model always names right: kappa is 0/0, not 0.0 (which reads as
    'no better than chance' on the dashboard); None, as the scripted dashboard gives. Other cases as by hand."""
    mon = Monitor()
    for k in range(10):
        mon.labelled("d", float(k), "squat", "squat")
    assert mon.device_summary("d")["accuracy"] == 1.0
    assert mon.device_summary("d")["kappa"] is None
    assert mon.summary()["kappa"] is None
    cases = [(["squat"] * 4, ["squat", "squat", "lunge", "squat"]),  # one true class, a wrong guess: 0
             (["squat", "lunge", "squat", "row"], ["squat", "lunge", "lunge", "row"]),
             (["zumba", "squat"], ["squat", "squat"])]  # a label outside the model's classes
    for truth, predicted in cases:
        mon = Monitor()
        for k, (t, p) in enumerate(zip(truth, predicted, strict=True)):
            mon.labelled("d", float(k), t, p)
        assert mon.device_summary("d")["kappa"] == round(_kappa(truth, predicted), 4)


def test_a_device_with_more_windows_in_one_cycle_than_the_history_holds_has_every_one_scored():
    """WindowHistory kept at most 64 windows per device and its deque dropped the oldest unscored: a device
    that completed more in one cycle (a replay at full speed, a consumer behind) had the rest never scored nor
    learnt from (200 one-second messages in one cycle: 250 windows, 64 scored)."""
    import time

    from tests.helpers import imu
    from tests.test_consumer_monitor import _consumer, _label

    c = _consumer()
    _label(c, "dev", "squat")
    for seq in range(200):
        c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic())
    c._classify()
    windows = len(c._client.windows)
    assert windows == 250
    c.config.idle_timeout = 0.0
    c._evict_idle()  # the device leaves: its last windows are final
    assert c.monitor.summary()["labelled_windows"] == windows
