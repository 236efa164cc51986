"""benchmarks/seeds.py's scoring: each seed, the mean over seeds, and models averaged over seeds.

The figures of docs/results.md's "Four seeds" section come from these functions; the training they
score needs ../shared/datasets and is not run here.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "seeds.py"


@pytest.fixture(scope="module")
def seeds():
    spec = importlib.util.spec_from_file_location("bench_seeds", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def result(probs, truth, classes=("a", "b")):
    return {"probs": np.array(probs, dtype=np.float32), "truth": np.array(truth),
            "classes": np.array(classes)}


def test_accuracy_leaves_out_windows_without_a_label(seeds):
    r = result([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], ["a", "b", "b", ""])
    assert seeds.accuracy(r) == pytest.approx(2 / 3)


def test_averaged_models_can_beat_each_alone(seeds):
    truth = ["a", "b", "a"]
    # each model is wrong on one window, unsure; the other is sure of the right class there
    one = result([[0.45, 0.55], [0.1, 0.9], [0.9, 0.1]], truth)
    two = result([[0.9, 0.1], [0.55, 0.45], [0.9, 0.1]], truth)
    assert seeds.accuracy(one) == seeds.accuracy(two) == pytest.approx(2 / 3)
    assert seeds.ensembles({0: one, 1: two}, 2) == [pytest.approx(1.0)]


def test_summary_means_over_folds_then_seeds(seeds):
    folds = {  # A: seeds right on 1, 2, 1 of 2 windows; B: on 1, 0, 1 of 1
        "A": {0: result([[0.9, 0.1], [0.6, 0.4]], ["a", "b"]),
              1: result([[0.8, 0.2], [0.3, 0.7]], ["a", "b"]),
              2: result([[0.4, 0.6], [0.2, 0.8]], ["a", "b"])},
        "B": {0: result([[0.3, 0.7]], ["b"]), 1: result([[0.9, 0.1]], ["b"]),
              2: result([[0.35, 0.65]], ["b"])},
    }
    summary = seeds.summarise("toy", folds, [0, 1, 2])
    assert summary["folds"]["A"]["windows"] == 2
    assert summary["seed_means"] == {0: pytest.approx(0.75), 1: pytest.approx(0.5), 2: pytest.approx(0.75)}
    assert summary["mean_over_seeds"] == pytest.approx(2 / 3)
    pairs = summary["ensembles"][2]  # pairs (0, 1) and (1, 2) right on A only, (0, 2) on both folds
    assert (pairs["min"], pairs["mean"], pairs["max"]) == (pytest.approx(0.5), pytest.approx(2 / 3),
                                                         pytest.approx(1.0))
    assert summary["folds"]["A"]["all_averaged"] == pytest.approx(1.0)
    assert summary["folds"]["B"]["all_averaged"] == pytest.approx(0.0)
    table = seeds.markdown(summary, [0, 1, 2])
    assert "| A | 2 | 50.00 | 100.00 | 50.00 | 66.67 | 100.00 |" in table
    assert "3 models averaged" in table


def test_an_import_made_by_other_code_is_made_again(tmp_path, monkeypatch):
    """benchmarks/real_data.py reuses a data set's recording file only if this checkout's importer wrote
    it: an import from before a fix (muvr's set under two labels) was reused silently."""
    spec = importlib.util.spec_from_file_location("bench_real_data", SCRIPT.parent / "real_data.py")
    real_data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(real_data)
    runs = []

    def fake_import(cmd, **kwargs):
        runs.append(cmd)
        Path(cmd[-1]).write_text("device,t,ax,ay,az,label\n")
    monkeypatch.setattr(real_data.subprocess, "run", fake_import)
    stale = tmp_path / "muvr.csv"
    stale.write_text("old import\n")
    path = real_data.recording("muvr", tmp_path, tmp_path)
    assert len(runs) == 1 and path.read_text().startswith("device,")
    real_data.recording("muvr", tmp_path, tmp_path)  # made by this code: reused
    assert len(runs) == 1
