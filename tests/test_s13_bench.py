"""Benchmark scripts and their pages (session 13): docs/throughput.md states the run's parameters from its JSON
(the share of labelled devices was fixed text), benchmarks/shared_state.py --live does not count more windows
per second than were sent, and benchmarks/sim_to_real.py imports again a cached recording file that another
importer made."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def script(name: str):
    """benchmarks/<name>.py as a module of its own (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"s13_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


# -- throughput.py: the page from its JSON ------------------------------------------------------------
def fake_run(devices: int, interval: float = 0.5, learn: bool = False) -> dict:
    """One `harstream bench --json` result, with every field the page reads (figures made up)."""
    baseline = {"predictions_per_s": 2700.0, "context_s": 10.0, "batch": 1000, "window_s": 2.0,
                "samples_per_s_per_core": 270000.0, "stateless_batched_predictions_per_s": 9300.0,
                "stateful_single_predictions_per_s": 3500.0, "stateful_batched_predictions_per_s": 66800.0,
                "stateful_batched_samples_per_s_per_core": 6680000.0, "model_only_ratio": 24.7,
                "state_ratio": 7.2, "batching_ratio": 19.1}
    return {"devices": devices, "duration_s": 3.0, "broker": "a broker", "interval_s": interval,
            "offered_samples_per_s": devices * 50.0, "sustained_samples_per_s": devices * 49.5, "real_time": True,
            "latency_ms": {"p50": 10.0, "p99": 30.0, "p99_median_second": 20.0, "max": 40.0},
            "consumer_cpu_cores": 0.2, "service_thread_cores": 0.15, "network_thread_cores": 0.05,
            "cpu_us_per_message": 100.0, "samples_per_s_per_core": 250000.0, "memory_bytes_per_device": 20000,
            "broker_cpu_cores": 0.02, "publisher": {"max_behind_s": 0.01}, "dropped": 0, "learn": learn,
            "load_average": {"before": [0.5, 0.5, 0.5], "after": [0.6, 0.6, 0.6], "cpus": 64},
            "baseline": baseline}


def fake_data(**overrides) -> dict:
    profile = {"devices": 300, "seconds": 5.0, "messages_per_cycle": 120, "handle_us_per_message": 20.0,
               "classify_us_per_message": 10.0, "service_us_per_message": 30.0, "memory_devices": 300,
               "memory_bytes_per_device": 4000, "memory_by_file_per_device": {"stream/buffers.py": 1000},
               "resident_bytes_per_device": 7000}
    data = {"command": "python benchmarks/throughput.py --devices 100 200 --duration 3 --learn-at 200 "
                       "--labelled 0.2 --profile-devices 300",
            "labelled": 0.2, "runs": [fake_run(100), fake_run(200)], "learn_off": fake_run(200),
            "learn_on": fake_run(200, learn=True), "long_messages": fake_run(200, interval=1.0),
            "service_profile": profile, "cpu_count": 64}
    data.update(overrides)
    return data


def render(tmp_path: Path, data: dict) -> str:
    out = tmp_path / "throughput.md"
    out.with_suffix(".json").write_text(json.dumps(data))
    assert script("throughput").main(["--from-json", "--out", str(out)]) == 0
    return out.read_text()


def test_throughput_page_names_the_labelled_share_the_run_had(tmp_path):
    """It said '5% of them publishing labels' whatever --labelled was: the JSON did not keep the share."""
    page = render(tmp_path, fake_data())
    assert "## Online fine-tuning at 200 devices (20% of them (40) publishing labels, both ways" in page
    assert "5%" not in page


def test_throughput_page_states_the_machine_and_profile_the_json_recorded(tmp_path):
    """Rewritten from the JSON (--from-json) on another machine, it named this machine's cores; the profile's
    seconds were fixed text (20 s)."""
    page = render(tmp_path, fake_data())
    assert "Machine: 64 cores" in page
    assert "(tracemalloc, 300 devices after 5 s)" in page
    assert "`python -m stream.bench resident 300 5 0.5 120`" in page


@pytest.mark.parametrize(("flag", "said"), [("--labelled 0.1", "10% of them (20)"), ("", "5% of them (10)")])
def test_an_older_json_has_the_share_from_its_recorded_command(tmp_path, flag, said):
    """A JSON written before the share was kept (docs/throughput.json) takes it from its command line, or
    --labelled's default (0.05 since the option exists) where the command did not give it."""
    data = fake_data(command=f"python benchmarks/throughput.py --devices 100 200 --learn-at 200 {flag}".strip())
    del data["labelled"]
    assert f"({said} publishing labels, both ways" in render(tmp_path, data)


def test_the_committed_throughput_page_is_its_json_rendered(tmp_path):
    """docs/throughput.md as --from-json writes it from docs/throughput.json (the page's figures unchanged)."""
    page = (ROOT / "docs" / "throughput.md").read_text()
    out = tmp_path / "throughput.md"
    out.write_text(page)
    out.with_suffix(".json").write_text((ROOT / "docs" / "throughput.json").read_text())
    assert script("throughput").main(["--from-json", "--out", str(out)]) == 0
    assert out.read_text() == page
    assert "(5% of them (250) publishing labels, both ways" in page


# -- shared_state.py --live: windows per second ------------------------------------------------------
def test_window_rate_reads_every_replica_at_the_same_span():
    """Two replicas whose metrics come at other moments, each classifying 10 windows/s: 20 windows/s over
    the span, whatever their metrics' phase."""
    s = script("shared_state")
    a = [(t, 10 * t) for t in (0.0, 1.0, 2.0, 3.0, 4.0)]
    b = [(t, 10 * t) for t in (0.4, 1.4, 2.4, 3.4, 4.4)]
    assert s.window_rate({"a": a, "b": b}, (1.2, 3.7)) == pytest.approx(20.0)
    # a backlog let through before the span is not in it
    c = [(0.0, 0), (1.0, 0), (1.1, 50), (2.1, 60), (3.1, 70)]
    assert s.window_rate({"c": c}, (1.1, 3.1)) == pytest.approx(10.0)


def test_offered_windows_are_what_the_publisher_sent_over_the_span():
    s = script("shared_state")
    progress = [(100.0 + k * 0.5, 40 * 25 * (k + 1)) for k in range(20)]  # 40 devices, 25 samples a tick
    assert s.offered_window_rate(progress, (101.0, 105.0), 40) == pytest.approx(20.0)
    assert s.offered_window_rate([], (101.0, 105.0), 40) == 20.0  # nominal where it cannot tell


def test_bench_publisher_numbers_each_device_from_its_first_message(broker_url):
    """Devices join over the publisher's first 4 s; their first message had seq = the tick they joined at, so
    to a replica of a shared subscription they were devices whose earlier messages may be on another replica,
    held for the reorder wait (5 s), then let through at once (shared_state.py --live's '6.4 of 5 windows/s')."""
    from stream.mqtt import connect

    prefix = f"s13pub{uuid.uuid4().hex[:6]}"
    seqs: dict[str, list[int]] = {}
    lock = threading.Lock()

    def on_message(client, userdata, message):
        with lock:
            seqs.setdefault(message.topic.split("/")[1], []).append(json.loads(message.payload)["seq"])
    watcher = connect(broker_url, f"s13-watch-{uuid.uuid4().hex[:6]}", subscriptions=[(f"{prefix}/+/imu", 0)],
                      on_message=on_message)
    try:
        done = subprocess.run([sys.executable, "-m", "stream.bench", "publish", str(broker_url), prefix, "10",
                               "4.0", "0.5"], cwd=ROOT, capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr.decode()[-500:]
        sent = json.loads(done.stdout.decode().strip().splitlines()[-1])["messages"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with lock:
                if sum(len(v) for v in seqs.values()) >= sent:
                    break
            time.sleep(0.05)
    finally:
        watcher.disconnect()
        watcher.loop_stop()
    assert len(seqs) == 10
    for device, got in seqs.items():
        assert sorted(got) == list(range(len(got))), (device, got)
    assert len({len(v) for v in seqs.values()}) > 1  # they did join at different ticks


# -- sim_to_real.py: the cache of imported recordings ------------------------------------------------
def test_a_cached_import_made_by_another_importer_is_imported_again(tmp_path, monkeypatch):
    """The cache (/tmp/harstream-real) kept <importer>.csv whatever importer had made it: a fixed importer's
    output was never used until someone deleted the file by hand."""
    import models.importers
    from stream.recording import Recording, write_recording

    s2r = script("sim_to_real")
    (tmp_path / "src" / "exermote").mkdir(parents=True)
    cache = tmp_path / "cache"
    cache.mkdir()

    def recording(label: str) -> Recording:
        return Recording(device=np.array(["p1"] * 3), t=np.arange(3) / 50.0,
                         acc=np.tile(np.float32([0, 0, 9.81]), (3, 1)), label=np.array([label] * 3))
    write_recording(cache / "exermote.csv", recording("made_by_an_older_importer"))
    imports = []

    def import_dataset(name, src, out, progress=False):
        imports.append((name, Path(src)))
        write_recording(out, recording("squat"))
    monkeypatch.setattr(models.importers, "import_dataset", import_dataset)

    rec = s2r.real_recording("exermote", cache, tmp_path / "src")
    assert rec.classes == ["squat"] and imports == [("exermote", tmp_path / "src" / "exermote")]
    assert s2r.real_recording("exermote", cache, tmp_path / "src").classes == ["squat"]
    assert len(imports) == 1  # made by this importer: reused

    # the importer's code changes: imported again, once
    code = tmp_path / "importers.py"
    code.write_text("# an importer\n")
    monkeypatch.setattr(s2r, "IMPORTER_CODE", [code])
    s2r.real_recording("exermote", cache, tmp_path / "src")
    s2r.real_recording("exermote", cache, tmp_path / "src")
    assert len(imports) == 2
    code.write_text("# an importer, fixed\n")
    s2r.real_recording("exermote", cache, tmp_path / "src")
    assert len(imports) == 3

    # another --source: imported again
    (tmp_path / "other" / "exermote").mkdir(parents=True)
    s2r.real_recording("exermote", cache, tmp_path / "other")
    assert imports[-1] == ("exermote", tmp_path / "other" / "exermote") and len(imports) == 4
