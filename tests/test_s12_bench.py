"""The benchmarks as a newcomer runs them (README.md, docs/*.md): `harstream bench` and benchmarks/*.py say
in one line what is missing and where (a model, a broker, Redis, a data set folder, a fold folder) instead
of a traceback or a wait of half a minute, write nothing when they have nothing to write, and explain
every option in --help.

No benchmark is run in full here; the data sets are stood in for by empty folders in tmp_path.
"""

from __future__ import annotations

import argparse
import importlib.util
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p.stem for p in BENCHMARKS.glob("*.py"))


def script(name: str):
    """benchmarks/<name>.py as a module of its own (they are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"s12_bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def failing(message: str) -> list[str]:
    """A child process that fails at once, saying ``message`` on stderr as harstream's commands do."""
    return [sys.executable, "-c", f"import sys; sys.exit({message!r})"]


# -- harstream bench ----------------------------------------------------------------------------------
def test_bench_names_a_wrong_model_at_once(broker_url, tmp_path):
    """The consumer that could not load --model only never published metrics: the bench said 'did not start
    publishing metrics within 30 s', 30 s later, and never what was wrong."""
    from stream.bench import run_bench

    with pytest.raises(ValueError, match="none.pt: no such checkpoint"):
        run_bench(str(broker_url), 1, 1.0, model_path=str(tmp_path / "none.pt"), quiet=True)


def test_bench_over_tls_with_nothing_answering_says_the_embedded_broker_is_plain():
    """As the demo (e60d1dd): it started the embedded broker, which listens on plain TCP, asked it over TLS
    for 20 s and said 'embedded broker did not answer'."""
    from stream.bench import run_bench

    with pytest.raises(ConnectionError, match="embedded broker speaks plain MQTT only"):
        run_bench(f"mqtts://127.0.0.1:{free_port()}", 1, 1.0, quiet=True)


def test_bench_says_why_its_consumer_exited(broker_url, monkeypatch):
    """The consumer's stderr went to /dev/null: whatever stopped it, the bench waited 30 s and said only
    that it published no metrics."""
    import stream.bench as bench

    monkeypatch.setattr(bench, "_consumer_cmd", lambda *a: failing("harstream consume: error: refused"))
    with pytest.raises(RuntimeError, match="consumer exited with status 1: harstream consume: error: refused"):
        bench.run_bench(str(broker_url), 1, 1.0, quiet=True)


def test_bench_reports_nothing_when_its_publisher_failed(broker_url, monkeypatch):
    """A publisher that died was not noticed: the bench measured a consumer that was sent nothing and
    reported its zeros as figures."""
    import stream.bench as bench

    monkeypatch.setattr(bench, "_publisher_cmd", lambda *a: failing("cannot connect to MQTT broker"))
    with pytest.raises(RuntimeError, match="publisher exited with status 1: cannot connect to MQTT broker"):
        bench.run_bench(str(broker_url), 1, 1.0, warmup=0.5, quiet=True)


def test_bench_takes_a_share_of_labelled_devices(broker_url):
    """run_bench(labelled=0.5), a share as `harstream bench --labelled` takes it (tests/test_bench_memory.py
    passes one): the publisher got "0.5" for a device count, died on int() before publishing anything, and
    the bench reported the idle consumer."""
    from stream.bench import run_bench

    result = run_bench(str(broker_url), devices=2, duration=1.0, warmup=1.0, labelled=0.5, quiet=True)
    assert result["publisher"]["messages"] > 0, result["publisher"]


# -- the scripts that run harstream bench -------------------------------------------------------------
@pytest.mark.parametrize("name, argv", [
    ("throughput", ["--devices", "1", "--duration", "1"]),
    ("learning_latency", ["--devices", "1", "--duration", "1", "--rounds", "1"]),
])
def test_a_failed_bench_is_one_line_with_its_reason(name, argv, tmp_path, monkeypatch, capsys):
    """`harstream bench` said what was wrong on its stderr, which the script captured and dropped: it died
    with CalledProcessError's traceback. And its output folder is made before the runs (a new --out folder
    was written to only after minutes of runs, and did not exist)."""
    monkeypatch.setenv("HARSTREAM_MQTT_READ", "bogus")  # every harstream bench refuses it at once
    out = tmp_path / "new" / f"{name}.md"
    with pytest.raises(SystemExit) as exc:
        script(name).main([*argv, "--out", str(out)])
    assert "harstream bench --devices 1" in str(exc.value)
    assert "Invalid HARSTREAM_MQTT_READ='bogus'" in str(exc.value)
    assert out.parent.is_dir() and not out.exists()


@pytest.mark.parametrize("name, argv", [
    ("learning_latency", ["--devices", "1", "--duration", "1", "--rounds", "1"]),
    ("orientation", ["--datasets", "barbell"]),
])
def test_an_unknown_against_revision_is_one_line(name, argv, tmp_path):
    """`--against REV` with a revision git does not know: CalledProcessError's traceback, git's reason
    captured and dropped."""
    with pytest.raises(SystemExit, match="--against nosuchrev: fatal: .*nosuchrev"):
        script(name).main([*argv, "--against", "nosuchrev", "--out" if name != "orientation" else "--docs",
                           str(tmp_path / "out")])


def test_read_comparison_of_an_idle_network_thread_is_a_table():
    """`throughput.py --compare-read plain fast` with few devices: paho's thread measured 0.0 µs per message
    in the first mode, and the ratio to it was a ZeroDivisionError, after the comparison was saved to the
    JSON, where it broke every later --compare-read and --from-json too."""
    def run(mode: str, network_us: float) -> dict:
        return {"devices": 2, "round": 1, "mqtt_read_asked": mode, "duration_s": 2.0, "sustained_samples_per_s": 98.0,
                "offered_samples_per_s": 98.0, "real_time": True, "latency_ms": {"p50": 23.0, "p99": 23.5, "max": 24.0},
                "consumer_cpu_cores": 0.01, "service_thread_cores": 0.01, "network_thread_cores": 0.0,
                "network_us_per_message": network_us, "service_us_per_message": 2000.0, "cpu_us_per_message": 2500.0,
                "dropped": 0, "load_average": {"before": [1.0], "after": [1.0]}}
    lines = script("throughput").read_table({"command": "python benchmarks/throughput.py --compare-read plain fast",
                                            "runs": [run("plain", 0.0), run("fast", 547.3)]})
    assert "| 2 | fast | 547.3 | – | 0.010 | 1.00 | 98 | 1.00 | 24 |" in lines


def test_adaptation_names_a_wrong_model_and_leaves_the_page(tmp_path):
    """Its consumers could not load --model: it waited 180 s for them, printed 'consumers not online', ran
    the whole publication and wrote a page of empty figures over --out."""
    out = tmp_path / "adaptation.md"
    with pytest.raises(SystemExit, match="none.pt: no such checkpoint"):
        script("adaptation").main(["--model", str(tmp_path / "none.pt"), "--out", str(out)])
    assert not out.exists()


def test_adaptation_says_why_a_consumer_exited(broker_url, tmp_path, monkeypatch):
    """A consumer that stopped at start was waited for 180 s (its stderr dropped), then the run went on."""
    adaptation = script("adaptation")
    real = subprocess.Popen

    def consumers_refused(cmd, **kwargs):  # every process it starts is a consumer
        return real(failing("harstream consume: error: refused"), **kwargs)
    monkeypatch.setattr(adaptation.subprocess, "Popen", consumers_refused)
    out = tmp_path / "adaptation.md"
    with pytest.raises(SystemExit, match="consumer exited with status 1: harstream consume: error: refused"):
        adaptation.main(["--broker", str(broker_url), "--devices", "1", "--quiet-devices", "1", "--scenarios",
                         "fatigue", "--adapt", "device", "--out", str(out)])
    assert not out.exists()


def test_faults_page_names_the_json_it_was_written_with(tmp_path):
    """The page said its raw figures were in docs/faults.json whatever --out was: a run written to /tmp
    pointed at the repository's figures of another run."""
    import shutil

    raw = tmp_path / "faults.json"
    shutil.copy(BENCHMARKS.parent / "docs" / "faults.json", raw)
    assert script("faults").main(["--render", "--out", str(raw), "--md", str(tmp_path / "faults.md")]) == 0
    assert f"the raw figures are in `{raw}`" in (tmp_path / "faults.md").read_text()


# -- Redis and the broker of shared_state -------------------------------------------------------------
def test_shared_state_names_the_redis_that_does_not_answer():
    """It measured the local mode and then died in redis-py's traceback."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    with pytest.raises(SystemExit, match=f"Redis does not answer at {url}"):
        script("shared_state").main(["--devices", "2", "--ticks", "5", "--redis", url])


def test_shared_state_live_names_the_broker_that_does_not_answer():
    url = f"mqtt://127.0.0.1:{free_port()}"
    with pytest.raises(SystemExit, match=f"no MQTT broker answers at {url}"):
        script("shared_state").main(["--live", "--devices", "2", "--duration", "1", "--broker", url])


def test_shared_state_live_keeps_watching_when_a_replica_clears_its_metrics(broker_url, monkeypatch):
    """A consumer without --id (the replicas) clears its retained metrics with an empty message as it stops
    (29a75a1): the watcher's paho thread died on decoding it, a traceback in every --live run."""
    import threading

    died = []
    monkeypatch.setattr(threading, "excepthook", lambda args: died.append(args.exc_value))
    result = script("shared_state").run_live(str(broker_url), None, devices=2, replicas=1, duration=1.0,
                                             warmup=1.0)
    assert not died, died
    assert result["replicas"] == 1 and result["lost_samples"] == 0


# -- the real data sets -------------------------------------------------------------------------------
def test_seeds_names_the_missing_data_set_folder(tmp_path, capfd):
    """It took its data sets from ../shared/datasets only (no --source) and died in CalledProcessError's
    traceback when one of them was missing there (benchmarks/real_data.py skips it, saying so)."""
    assert script("seeds").main(["--source", str(tmp_path), "--datasets", "muvr", "--seeds", "0",
                                 "--work", str(tmp_path / "work"), "--recordings", str(tmp_path / "rec")]) == 1
    err = capfd.readouterr().err  # harstream import's line, then the script's
    assert f"{tmp_path / 'muvr-gym'}: no such directory" in err
    assert "muvr: no recording file and harstream import failed" in err and "Traceback" not in err


def test_sim_to_real_names_the_missing_data_set_folder(tmp_path, capsys):
    """Its data sets came from ../shared/datasets only, and a missing one was models.importers' traceback."""
    out = tmp_path / "docs" / "sim_to_real.md"
    assert script("sim_to_real").main(["--source", str(tmp_path), "--datasets", "exermote",
                                       "--out", str(out)]) == 0
    assert f"no exermote data set at {tmp_path / 'exermote'}" in capsys.readouterr().err
    assert not out.exists()


def test_sim_to_real_can_be_run_short(tmp_path, monkeypatch):
    """Its smallest run (--people 2 --minutes 0.5) still trained for up to twice 20 minutes (TrainConfig's
    budget, at least 20 epochs): it did not end within 15 minutes here. --max-minutes bounds it."""
    import types

    import numpy as np

    s2r = script("sim_to_real")
    (tmp_path / "exermote").mkdir()
    budgets = []

    class Trained(Exception):
        pass

    def train(rec, cfg=None, progress=True):
        budgets.append(cfg.max_minutes)
        raise Trained
    monkeypatch.setattr(s2r, "real_recording", lambda *a: types.SimpleNamespace(label=np.array(["squat"])))
    monkeypatch.setattr(s2r, "simulated_training_data", lambda *a, **k: None)
    monkeypatch.setattr(s2r, "train", train)
    with pytest.raises(Trained):
        s2r.main(["--source", str(tmp_path), "--datasets", "exermote", "--max-minutes", "0.5",
                  "--cache", str(tmp_path / "cache"), "--out", str(tmp_path / "sim_to_real.md")])
    assert budgets == [0.5]


def test_sim_vs_real_without_a_data_set_in_its_folder_writes_nothing(tmp_path, capsys):
    """A --datasets folder holding none of the data sets: it wrote an empty table over --out's page and then
    died drawing the plot (IndexError)."""
    out = tmp_path / "docs"
    (tmp_path / "empty").mkdir()
    assert script("sim_vs_real").main(["--datasets", str(tmp_path / "empty"), "--out", str(out)]) == 0
    assert f"in {tmp_path / 'empty'}: nothing to compare" in capsys.readouterr().out
    assert not (out / "sim_vs_real.md").exists()


def test_drift_refuses_a_folds_folder_without_fold_models_at_once(tmp_path, capsys):
    """A --folds folder that is not real_data.py's --work (a typo, a run not finished) was left out of the
    page without a word, after the whole simulation."""
    (tmp_path / "folds" / "barbell" / "barbell-A").mkdir(parents=True)  # no model.pt
    with pytest.raises(SystemExit):
        script("drift").main(["--folds", str(tmp_path / "folds"), "--out", str(tmp_path / "drift.md")])
    assert "holds no <data set>/<fold>/model.pt" in capsys.readouterr().err
    assert not (tmp_path / "drift.md").exists()


def test_drift_says_which_real_recordings_it_left_out(tmp_path, capsys):
    """Without ../shared/datasets (or one of its folders) the real recordings' section or row was left out
    of the page without a word."""
    drift = script("drift")
    assert drift.real_alarms(tmp_path / "absent") == ({}, [])
    assert f"no real recordings at {tmp_path / 'absent'}" in capsys.readouterr().err
    assert drift.real_alarms(tmp_path) == ({}, [])
    assert f"no barbell data set at {tmp_path / 'barbell-metamotion'}" in capsys.readouterr().err


def test_orientations_reproduce_line_keeps_the_seed():
    """--seed picks the reference sample, so other figures: the page's command left it out."""
    kinds = ["incremental", "from scratch"]
    row = {"data": "barbell", "fold": "barbell-A", "devices": 1, "turned": 0,
           "seconds": dict.fromkeys(kinds, 0.01), "longest_fit": dict.fromkeys(kinds, 0.01),
           "same_outcome": dict.fromkeys(kinds, 1), "largest_gain_difference": dict.fromkeys(kinds, 0.0)}
    args = argparse.Namespace(datasets=["barbell"], against=None, seed=3)
    assert "orientation.py --datasets barbell --seed 3`" in script("orientation").markdown([row], kinds, args, 1.0)


# -- --help -------------------------------------------------------------------------------------------
class _Parsed(Exception):
    pass


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_explains_every_option(name, monkeypatch):
    """Options without a word of help (adaptation's --broker and --out, vanishing's every option, ...), and
    descriptions cut at the docstring's first line ('a bound on "detected within 10 s" for the simulator's')."""
    def capture(parser, *args, **kwargs):
        raise _Parsed(parser)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(_Parsed) as parsed:
        script(name).main([])
    parser = parsed.value.args[0]
    assert parser.description.rstrip().endswith((".", "?")), parser.description
    bare = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert not bare, f"{name}: no help for {bare}"
