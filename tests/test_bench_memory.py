"""The consumer's resident memory per device (stream.bench's ``resident`` measurement, no MQTT)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_resident_memory_per_device_is_measured_and_small():
    """500 devices for 10 s through a fresh consumer: a few kB each (8.0 kB measured at 5,000); the
    issue's bound is 20 kB, and a leak of one window per message would be far above it."""
    out = subprocess.run([sys.executable, "-m", "stream.bench", "resident", "500", "10", "0.5", "20"],
                         capture_output=True, text=True, check=True, timeout=300, cwd=ROOT)
    per_device = int(out.stdout.split()[-1])
    assert 0 < per_device < 20_000, per_device


def test_sustained_rate_counts_samples_over_the_publishing_span():
    """The bench's rates come from the consumer's cumulative counters between the first and the last
    metrics inside the publishing span: irregular metric intervals (1.5 s then 0.5 s, as when the
    service thread is busy) must not bias them, and metrics after the publisher stopped must not count."""
    from stream.bench import _message_rates

    metrics, t, samples, messages = [], 100.0, 0, 0
    for dt in [1.5, 0.5] * 6:
        t += dt
        samples += int(250_000 * dt)
        messages += int(10_000 * dt)
        metrics.append({"t": t, "samples": samples, "messages": messages, "dropped": 0, "queue": 0})
    metrics.append({"t": t + 1.0, "samples": samples, "messages": messages, "dropped": 0, "queue": 0})  # idle tail
    rates = _message_rates(metrics, 100.0, t)
    assert rates["samples"] == 250_000 and rates["handled"] == 10_000 == rates["received"]


def test_offered_is_what_the_publisher_sent_over_the_span_the_consumer_was_measured():
    """Real time is the consumer handling what it was offered: the publisher's streams hold 49-50 samples/s
    per device, and a publisher behind its schedule offers less; the nominal devices x 50 Hz called a
    consumer that kept up 'NOT real time'."""
    from stream.bench import _sent_rate

    progress = [(1000.0 + 0.5 * k, 990 * k) for k in range(41)]  # 1980 samples/s sent
    assert abs(_sent_rate(progress, (1004.0, 1016.0)) - 1980.0) < 1e-6
    assert _sent_rate(progress, None) is None and _sent_rate(progress[:1], (1004.0, 1016.0)) is None
    assert _sent_rate(progress, (990.0, 1016.0)) is None  # the span began before the publisher did


def test_the_consumers_cpu_counts_its_learner_process():
    """With --learn the consumer fine-tunes in a child process: its CPU is the consumer's too."""
    import time

    from stream.bench import _tree_cpu_seconds

    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                               "'import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1.5: pass'])"])
    try:
        time.sleep(1.2)
        own, children = _tree_cpu_seconds(parent.pid)
        assert children > 0.3 and own < 0.5, (own, children)
    finally:
        parent.wait(30)


def test_real_time_needs_the_publisher_to_have_kept_up_too():
    """Offered is what the publisher sent: a publisher that fell to half its schedule (it shares the
    cores) must not make a consumer that handled that half 'real time'."""
    from stream.bench import _real_time

    assert _real_time(1985.0, 1988.0, 2000.0, 0)
    assert not _real_time(25_000.0, 25_000.0, 50_000.0, 0)
    assert not _real_time(1800.0, 1988.0, 2000.0, 0) and not _real_time(1985.0, 1988.0, 2000.0, 3)


def test_the_learner_block_is_the_running_consumers_not_the_stopped_ones(broker_url):
    """The report's learner counters come from the consumer's metrics while it ran: the ones it publishes on
    SIGTERM, once its learner process has stopped, said ``alive: False`` after every healthy run."""
    from stream.bench import run_bench

    result = run_bench(str(broker_url), devices=4, duration=3.0, warmup=3.0, learn=True, labelled=0.5, quiet=True)
    assert result["learner"] is not None and result["learner"]["alive"] is True, result["learner"]
