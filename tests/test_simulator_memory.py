"""A simulator that runs as a service for days: what it keeps per device stays bounded."""

from __future__ import annotations

import numpy as np

from simulators.workout import LABEL_HORIZON, DeviceStream


def test_a_device_keeps_labels_for_the_horizon_only_and_they_stay_right():
    """Every label run was kept (about 280 kB per device and day); now the runs that ended more than
    LABEL_HORIZON before the motion still needed are pruned, and the labels read stay the true ones."""
    stream = DeviceStream("d", seed=3, scenario="new_person")
    chunks = [stream.read(30.0) for _ in range(int(3 * LABEL_HORIZON / 30))]  # three horizons
    labels = np.concatenate([c.label for c in chunks])
    t = np.concatenate([c.t for c in chunks])
    runs = 1 + int(np.count_nonzero(labels[1:] != labels[:-1]))
    kept = len(stream._timeline.label_starts)
    assert runs > 150 and kept < runs / 2  # a third of the time is within the horizon
    # the truth of a time within the horizon is still the label its samples carried
    recent = t > t[-1] - 0.9 * LABEL_HORIZON
    np.testing.assert_array_equal(stream.truth_label(t[recent][::25]), labels[recent][::25])
