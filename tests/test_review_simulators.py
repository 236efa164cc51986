"""Defects found by a review of the simulators (motion, workout, publisher, replay, training)."""

from __future__ import annotations

from simulators.workout import DeviceStream

# -- 1. a generated block whose every sample is lost silenced the stream for good ----------------------------

def test_a_block_with_every_sample_lost_does_not_silence_the_stream():
    # loss bursts (0.3-2.5 s) longer than a block of 1 s: whole blocks are lost
    d = DeviceStream("x", seed=1, scenario="loss_burst", scenario_start=5.0, block=1.0)
    counts = [len(d.read(1.0)) for _ in range(60)]
    assert sum(counts[10:]) > 40 * 50 * 0.5, counts  # bursts take a share, not everything after one
    assert len(d._blocks) <= 2  # noqa: SLF001 (nothing piles up unread)


def test_a_one_sample_block_before_a_sensor_scenario_dropped_does_not_silence_the_stream():
    # the block before a sensor scenario's onset is cut at the onset: here one sample (k = 3000), which
    # this person's sensor drops (drop rate about 2 %); the publisher's devices start scenarios at such times
    d = DeviceStream("x", seed=48, scenario="strap_rotated", scenario_start=60.02)
    assert len(d.read(60.0)) > 2900
    assert len(d.read(30.0)) > 30 * 50 * 0.9
