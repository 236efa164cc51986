"""The gyroscope as a model input (issue 4): buffers, training, evaluation, serving, checkpoints."""

from __future__ import annotations

import numpy as np

from stream.buffers import DeviceBuffer


def test_buffer_resamples_every_channel_alike():
    """Six channels (acc, then gyro) are cut into the same windows as the accelerometer alone, and
    each channel is interpolated as it would be alone."""
    rng = np.random.default_rng(1)
    t = np.cumsum(rng.uniform(0.015, 0.025, 400))  # irregular, about 50 Hz
    values = rng.normal(0, 1, (400, 6))
    three, six = DeviceBuffer("d", 25.0, 20), DeviceBuffer("d", 25.0, 20, channels=6)
    gyro_only = DeviceBuffer("d", 25.0, 20)
    w3, w6, wg = [], [], []
    for a in range(0, 400, 17):  # odd-sized batches, so windows complete mid-batch
        w3 += three.push(t[a:a + 17], values[a:a + 17, :3], 0.0)
        w6 += six.push(t[a:a + 17], values[a:a + 17], 0.0)
        wg += gyro_only.push(t[a:a + 17], values[a:a + 17, 3:], 0.0)
    assert len(w6) == len(w3) > 5
    for a, b, g in zip(w3, w6, wg, strict=True):
        assert b.samples.shape == (20, 6) and a.t_end == b.t_end
        np.testing.assert_array_equal(b.samples[:, :3], a.samples)
        np.testing.assert_array_equal(b.samples[:, 3:], g.samples)
