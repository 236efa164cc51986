"""benchmarks/adaptation.py with --onset at or under the detectors' 20 s warm-up counted false alarms over a
negative number of hours ("-0.0 per device-hour"); it is refused before anything runs."""

from __future__ import annotations

import pytest

from tests.test_s12_bench import script


@pytest.mark.parametrize("onset", ["10", "20"])
def test_an_onset_within_the_warm_up_is_refused_at_once(onset, capsys):
    with pytest.raises(SystemExit) as stop:
        script("adaptation").main(["--onset", onset])
    assert stop.value.code == 2
    assert "--onset must be above 20 s" in capsys.readouterr().err


def test_a_small_throughput_profile_measures_memory_at_its_own_size(monkeypatch, tmp_path):
    """benchmarks/throughput.py profiled memory at 1000 devices whatever --profile-devices said: its smallest
    run still took minutes. The runs themselves are not this test's concern (stood in for)."""
    import stream.bench

    module = script("throughput")
    asked = []

    class Profiled(Exception):
        pass

    def profile(devices, seconds, memory_devices):
        asked.append((devices, memory_devices))
        raise Profiled

    keys = ("devices", "sustained_samples_per_s", "real_time", "latency_ms", "consumer_cpu_cores",
            "cpu_us_per_message", "memory_bytes_per_device", "load_average")
    monkeypatch.setattr(module, "bench", lambda devices, duration, extra: dict.fromkeys(keys, devices))
    monkeypatch.setattr(stream.bench, "service_profile", profile)
    for given, memory in (("50", 50), ("3000", 1000)):
        with pytest.raises(Profiled):
            module.main(["--devices", "10", "--learn-at", "10", "--profile-devices", given,
                         "--out", str(tmp_path / "throughput.md")])
        assert asked[-1] == (int(given), memory)
