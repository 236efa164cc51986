"""With reorder 0 the batches kept for one interpolation are bounded (MAX_KEPT samples), and the bound
changes no window."""

import numpy as np
import pytest

import stream.buffers as buffers
from stream.buffers import DeviceBuffer, resample


def kept_samples(buf: DeviceBuffer) -> int:
    return sum(len(t) for t, _, _ in buf._kept)


@pytest.mark.parametrize("size", [25, 1])
def test_a_device_whose_clock_crawls_keeps_a_bounded_number_of_samples(size):
    """Timestamps 1 µs apart (a clock in the wrong unit) never reach the pending window's end: before,
    every message was kept (20,000 messages of 25 samples: 499,975 samples, 16.7 MB)."""
    buf = DeviceBuffer("d", rate=25.0, window=50)
    acc = np.tile(np.float32([0, 0, 9.81]), (size, 1))
    most = 0
    for k in range(20_000 if size > 1 else 30_000):
        t = 1000.0 + (k * size + np.arange(size)) * 1e-6
        assert buf.push(t, acc.copy(), float(k)) == []
        assert buf.last_t == t[-1]
        if k % 50 == 0:  # counting every time would take longer than the pushes
            most = max(most, kept_samples(buf))
    most = max(most, kept_samples(buf))
    assert 0 < most <= 10_000 and len(buf._kept) <= 10_000  # MAX_KEPT, as many as the reorder hold
    assert buf.held == 0 and buf.gaps == buf.late_samples == buf.duplicates == 0


def run(t, acc, bounds, monkeypatch, max_kept):
    monkeypatch.setattr(buffers, "MAX_KEPT", max_kept)
    buf = DeviceBuffer("d", 25.0, 50)
    got, most = [], 0
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        got += buf.push(t[a:b], acc[a:b].astype(np.float32), float(i))
        most = max(most, kept_samples(buf))
        assert buf._kept_n == kept_samples(buf)
        assert buf.last_t == t[b - 1]
    got += buf.flush()
    return got, most, (buf.gaps, buf.late_samples, buf.duplicates, buf._k, buf._fill)


@pytest.mark.parametrize("kind", ["normal", "tiny", "slow"])
def test_the_bound_changes_no_window(kind, monkeypatch):
    """The same windows, values, ends and arrivals with a bound met many times as without one, for 0.5 s
    messages, messages of 1 to 3 samples (with jitter, a repeated timestamp and a silence) and a clock
    100 times too slow (every window spans 20,000 samples)."""
    rng = np.random.default_rng(5)
    if kind == "slow":
        t = 1000.0 + np.arange(60_000) * 1e-4
        acc = np.stack([np.sin(300 * t), np.cos(200 * t), 9.81 + 0.1 * np.sin(500 * t)], axis=1)
    else:
        t = 1000.0 + np.arange(3000) / 50.0 + rng.uniform(0, 0.015, 3000)
        t.sort()
        t[1500:] += 2.5  # a silence longer than max_gap: the grid restarts
        t[900] = t[899]  # a repeated timestamp: that batch takes the general path
        acc = np.stack([np.sin(t), np.cos(2 * t), 9.81 + 0.1 * np.sin(3 * t)], axis=1)
    step = {"normal": (25, 26), "tiny": (1, 4), "slow": (25, 26)}[kind]
    bounds = np.cumsum(rng.integers(*step, size=len(t)))
    bounds = [0] + [int(b) for b in bounds if b < len(t)] + [len(t)]
    bound = 7 if kind != "slow" else buffers.MAX_KEPT
    bounded, most, state = run(t, acc, bounds, monkeypatch, bound)
    unbounded, most_unbounded, state_unbounded = run(t, acc, bounds, monkeypatch, 10**12)
    assert most <= bound < most_unbounded  # the bound was met, again and again
    assert state == state_unbounded
    assert len(bounded) == len(unbounded) > 2
    for w, ref in zip(bounded, unbounded, strict=True):
        assert (w.device, w.t_end, w.arrival) == (ref.device, ref.t_end, ref.arrival)
        np.testing.assert_array_equal(w.samples, ref.samples)
    runs = resample(t, acc, 25.0)
    expected = [(g[k + 49], v[k:k + 50]) for g, v in runs for k in range(0, len(g) - 49, 50)]
    assert len(expected) == len(bounded)
    for w, (t_end, values) in zip(bounded, expected, strict=True):
        assert w.t_end == t_end
        np.testing.assert_allclose(w.samples, values, atol=1e-5)
