"""Late samples and duplicates in a shared group are counted once, where they were dropped: before, each load
of a device's record from the state store added the counts it carries again (an ops probe, two replicas taking
one device's messages in turn: 100 samples dropped as late, 750 and 800 in their metrics)."""

from __future__ import annotations

import time

import numpy as np

from stream.decode import SampleBatch
from stream.shared_state import MemoryStore
from tests.test_scaleout import cycle, replica, stream_of


def test_a_device_handed_between_replicas_has_its_late_samples_counted_once(tiny_model):
    store = MemoryStore()
    a, b = replica(store, tiny_model), replica(store, tiny_model)
    batches = stream_of("dev", 40, seed=5)
    late = 0
    for k in range(6, 40, 5):  # message k carries samples from before the last ones used: dropped as late
        old = batches[k - 3]
        batches[k] = SampleBatch("dev", old.t + 0.001, old.acc, seq=k)
        late += len(old.t)
    published: list = []
    for k, x in enumerate(batches):
        r = (a, b)[k % 2]  # round-robin: every message goes to the other replica, which loads the record
        r.hold(x, time.monotonic())
        cycle(r, published)
    counted = a.pipeline.late_samples + b.pipeline.late_samples
    assert counted == late, f"{late} samples dropped as late, the two replicas count {counted}"
    ends = [p.t_end for p in published]
    assert len(ends) >= 6 and np.all(np.diff(ends) > 0)  # the device's windows, once each, in order
