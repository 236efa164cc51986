import numpy as np

from stream.buffers import DeviceBuffer, resample


def stream(n=500, rate=50.0, jitter=0.0, seed=0):
    rng = np.random.default_rng(seed)
    t = 1000.0 + np.arange(n) / rate + rng.uniform(0, jitter, n)
    t.sort()
    acc = np.stack([np.sin(t), np.cos(2 * t), 9.81 + 0.1 * np.sin(3 * t)], axis=1)
    return t, acc


def test_windows_resampled_onto_model_rate():
    t, acc = stream(n=500, rate=50.0)  # 10 s at 50 Hz
    buf = DeviceBuffer("d", rate=25.0, window=50)
    windows = buf.push(t, acc, arrival=1.0)
    assert len(windows) == 5  # 10 s / 2 s
    w = windows[0]
    assert w.samples.shape == (50, 3)
    # grid sample k sits at t[0] + k/25: exactly every other input sample
    np.testing.assert_allclose(w.samples[:, 0], acc[0:100:2, 0], atol=1e-5)
    assert w.t_end == np.float64(t[0] + 49 / 25)


def test_chunked_push_equals_one_push_and_offline_resample():
    t, acc = stream(n=1000, rate=50.0, jitter=0.01, seed=1)
    whole = DeviceBuffer("d", 25.0, 25).push(t, acc, 0.0)
    buf = DeviceBuffer("d", 25.0, 25)
    pieces = []
    for a in range(0, len(t), 7):
        pieces += buf.push(t[a:a + 7], acc[a:a + 7], 0.0)
    assert len(pieces) == len(whole) > 10
    for a, b in zip(whole, pieces):
        np.testing.assert_allclose(a.samples, b.samples, atol=1e-6)
    (grid, values), = resample(t, acc, 25.0)
    np.testing.assert_allclose(np.concatenate([w.samples for w in whole]), values[: 25 * len(whole)], atol=1e-5)


def test_late_and_duplicate_samples_are_counted_not_used():
    t, acc = stream(n=100)
    buf = DeviceBuffer("d", 25.0, 10)
    buf.push(t[:60], acc[:60], 0.0)
    buf.push(t[50:60], acc[50:60], 0.0)
    assert buf.late_samples == 10


def test_gap_restarts_the_window():
    t, acc = stream(n=200)
    t2 = np.concatenate([t[:70], t[70:] + 5.0])  # 5 s of silence after 1.4 s
    windows = DeviceBuffer("d", 25.0, 25).push(t2, acc, 0.0)
    buf = DeviceBuffer("d", 25.0, 25)
    windows = buf.push(t2, acc, 0.0)
    assert buf.gaps == 1
    # 1.4 s before the gap: one window; the partial one is dropped, then the rest
    assert all(w.t_end < t2[69] or w.t_end > t2[70] for w in windows)
    assert windows[1].t_end - 24 / 25 >= t2[70] - 1e-9


def test_irregular_rate_and_units_do_not_matter():
    rng = np.random.default_rng(3)
    t = np.cumsum(rng.uniform(0.005, 0.035, 400))  # irregular phone timestamps
    acc = np.tile([0.0, 0.0, 9.81], (400, 1))
    windows = DeviceBuffer("d", 25.0, 25).push(t, acc, 0.0)
    assert len(windows) == int((t[-1] - t[0]) * 25 + 1e-9) // 25 + (0 if ((t[-1] - t[0]) * 25 + 1) % 25 else 0)
    assert np.allclose(np.concatenate([w.samples for w in windows])[:, 2], 9.81)
