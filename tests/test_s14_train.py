"""Faults a newcomer found: `train --max-minutes 1` took 171 s (the budget restarted in the refit and was
checked only at an epoch's end); its last line gave the validated run's accuracy as the saved model's;
`evaluate` cut class names to 6 characters and wrote lines of 150; the barbell import never said that a
whole person (E) went as repeats; the consumer's progress line said "p99 None ms".

Time is a fake clock here that one optimiser step moves on by a second: no timed assertion."""

from __future__ import annotations

import dataclasses
import logging
import time
import types

import numpy as np
import pytest
import torch

import models.train as train_module
from models.checkpoint import save_checkpoint
from models.rnn import HARNet, ModelConfig
from models.train import TrainConfig, train
from stream.recording import Recording, write_recording
from tests.test_train import FAST_MODEL, FAST_TRAIN, synthetic_recording


@pytest.fixture
def clock(monkeypatch):
    """models.train's clock, moved on by every optimiser step's segment (``step_s``: a second; the refit's
    ``refit_step_s``) and by five seconds a validation pass; ``steps`` counts the steps. Validation scores
    come from ``predict`` (the real ones unless a test says otherwise)."""
    ns = types.SimpleNamespace(now=1000.0, steps=0, step_s=1.0, refit_step_s=1.0,
                               predict=train_module.stream_predictions)
    monkeypatch.setattr(train_module, "time", types.SimpleNamespace(monotonic=lambda: ns.now))
    sampler_next, fit = train_module.StreamSampler.next, train_module._fit

    def next_segment(self):
        ns.now += ns.step_s
        ns.steps += 1
        return sampler_next(self)

    def validate(model, streams):
        ns.now += 5.0
        return ns.predict(model, streams)

    def timed_fit(train_streams, val_streams, *args):
        if not val_streams:
            ns.step_s = ns.refit_step_s
        return fit(train_streams, val_streams, *args)

    monkeypatch.setattr(train_module.StreamSampler, "next", next_segment)
    monkeypatch.setattr(train_module, "stream_predictions", validate)
    monkeypatch.setattr(train_module, "_fit", timed_fit)
    return ns


def never_better(model, streams):
    """Validation scores that never improve on the first epoch's: the best model is epoch 1's."""
    return [0, 1], [0, 0]


def _train(epoch_steps: int, max_minutes: float | None, **cfg):
    rec = synthetic_recording(people=3, minutes=0.5)
    cfg = TrainConfig(**{**FAST_TRAIN, "epochs": 20, "min_epochs": 20, "batch": 8, "steps_per_epoch": epoch_steps,
                         "max_minutes": max_minutes, **cfg})
    return train(rec, ModelConfig(classes=("_",), **FAST_MODEL), cfg, progress=False)


def test_max_minutes_bounds_the_validated_run_and_the_refit_together(clock, caplog):
    """1 minute for both runs. The validated run stops at half of it: 8-step epochs and validations take
    13 s each, so at step 4 of epoch 3 (20 steps, 35 s with its validation); the refit has the 25 s left,
    14 steps at the validated run's 1.75 s a step, not 20. Before: 5 epochs, 40 steps (all the minute, checked
    at an epoch's end), then the refit 5 epochs more, its budget started afresh: 80 steps, 105 s."""
    clock.predict = never_better
    with caplog.at_level(logging.INFO, logger="models.train"):
        _, report = _train(8, 1.0)
    assert clock.now - 1000 <= 60, clock.now - 1000
    assert report["steps"] == 20 and report["out_of_time"] and report["epochs_run"] == 3
    assert report["best"]["step"] == 8
    refit = report["refit"]
    assert refit["steps"] == 14 and refit["steps_planned"] == 20 and refit["out_of_time"] and refit["used"]
    assert (refit["epochs_done"], refit["epochs_planned"]) == (1.8, 2.5)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "for the whole training" in said and "the refit on everyone has the rest" in said
    assert "at most 14 optimiser steps: 25 s of the time budget left, and the validated run, cut by it, made 20" \
        in said


def test_one_long_epoch_is_cut_at_the_deadline(clock):
    """Without a refit the run has the whole budget, checked at every optimiser step: a 100-step epoch
    stops at 30 steps for half a minute (before: at its end, 100)."""
    _, report = _train(100, 0.5, refit=False)
    assert clock.steps == report["steps"] == 30 and report["epochs_run"] == 1 and report["out_of_time"]
    assert report["best"]["epoch"] == 1  # the part-epoch was validated, as an epoch's end is
    assert "refit" not in report


def test_no_refit_when_the_time_left_holds_fewer_steps_than_the_validated_model_took(clock, caplog):
    """Cut at step 30 of its first 40-step epoch, the validated run's best model took 30 steps; the 25 s
    left hold 21 at its pace: a refit that short is worse (barbell: 36% on person D, where the validated
    model had 71%), so there is none, and the time is not spent."""
    with caplog.at_level(logging.WARNING, logger="models.train"):
        model, report = _train(40, 1.0)
    assert clock.steps == report["steps"] == 30 and clock.now - 1000 == 35
    assert report["refit"] == {"used": False, "steps": 0, "steps_fit": 21, "steps_planned": 30, "out_of_time": True}
    assert "fit 21 optimiser steps on everyone, fewer than the 30 of the validated run's best model: no refit" \
        in caplog.text


def test_a_refit_cut_below_the_validated_models_steps_is_not_used(clock, caplog, monkeypatch):
    """The refit planned 14 steps as above, but ran at 4 s a step: the deadline stopped it at 7, fewer than
    the 8 of the validated model, which is returned."""
    clock.predict, clock.refit_step_s = never_better, 4.0
    seen = []
    timed_fit = train_module._fit

    def fit(*args):
        seen.append(timed_fit(*args))
        return seen[-1]

    monkeypatch.setattr(train_module, "_fit", fit)
    with caplog.at_level(logging.WARNING, logger="models.train"):
        model, report = _train(8, 1.0)
    assert report["refit"]["steps"] == 7 and not report["refit"]["used"]
    assert model is seen[0][0] and model is not seen[1][0]
    assert "cut the refit on everyone at 7 optimiser steps, fewer than the 8" in caplog.text


def test_no_budget_no_cut(clock):
    _, report = _train(10, None, epochs=2, min_epochs=2)
    assert report["steps"] == 20 and report["refit"]["steps"] == 20 and not report["refit"]["out_of_time"]
    assert report["refit"]["steps_planned"] == 20 and report["refit"]["used"]


def _train_cli(tmp_path, capsys, monkeypatch, *extra: str) -> str:
    """`harstream train` as a user runs it, with epochs of 8 steps of 8 streams (the CLI has no setting)."""
    from stream.cli import main
    real_train = train_module.train
    monkeypatch.setattr(train_module, "train", lambda rec, mc, cfg, progress: real_train(
        rec, mc, dataclasses.replace(cfg, steps_per_epoch=8, batch=8, warmup_steps=5), progress=progress))
    write_recording(tmp_path / "train.csv", synthetic_recording(people=3, minutes=0.5))
    assert main(["train", "--data", str(tmp_path / "train.csv"), "--out", str(tmp_path / "m.pt"), "--hidden", "8",
                 "--layers", "1", "--window", "25", "--quiet", "--no-gyro", *extra]) == 0
    return capsys.readouterr().out.strip().splitlines()[-1]


def test_train_says_the_validation_figure_is_not_the_saved_models(tmp_path, capsys, monkeypatch, clock):
    """The last line gave "validation accuracy ... on held-out people X" of a model refitted after on
    everyone, X too: it says now whose the figure is, and for how long the saved model was refitted."""
    line = _train_cli(tmp_path, capsys, monkeypatch, "--epochs", "2")
    assert "of the validated run" in line and "on held-out people person" in line, line
    assert "refitted on everyone, those held out too, for 2 epochs" in line and "shorter" not in line, line


def test_train_says_when_the_budget_cut_the_refit(tmp_path, capsys, monkeypatch, clock):
    """--max-minutes 1 as in the first test: the refit made 14 steps (1.8 epochs) of the validated run's 20."""
    clock.predict = never_better
    line = _train_cli(tmp_path, capsys, monkeypatch, "--max-minutes", "1")
    assert "validation accuracy 0.5, macro F1 0.3333, of the validated run (best epoch 1 of 3)" in line, line
    assert "refitted on everyone, those held out too, for 1.8 epochs (not validated): a shorter refit than the " \
           "validated run's 2.5, cut by the time budget of 1 min" in line, line


def test_train_says_when_the_saved_model_is_the_validated_one(tmp_path, capsys, monkeypatch, clock):
    """--max-minutes 0.4 (24 s): an 8-step epoch and its validation take 13 s, past the validated run's 12;
    the 11 s left hold 6 steps at its pace, fewer than its best model's 8: no refit."""
    line = _train_cli(tmp_path, capsys, monkeypatch, "--max-minutes", "0.4")
    assert clock.steps == 8
    assert "of the validated run (best epoch 1 of 1)" in line, line
    assert "the model saved is that run's: the time budget of 0.4 min left the refit on everyone 6 optimiser " \
           "steps, fewer than the 8 to that run's best epoch" in line, line


def test_max_minutes_help_says_what_it_bounds(capsys):
    from stream.cli import main
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "bound the whole training, the validated run and the refit on everyone together" in text


def _evaluate_cli(tmp_path, capsys, classes: tuple[str, ...]) -> list[str]:
    """`harstream evaluate` of an untrained model on a recording with a set of each class."""
    from stream.cli import main
    torch.manual_seed(0)
    model = HARNet(ModelConfig(classes=classes, hidden=8, layers=1, window=25, hop=25, patch=5, rate=25.0)).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    n = 100  # 4 windows a class
    rng = np.random.default_rng(0)
    rec = Recording(device=np.full(n * len(classes), "dev"), t=np.arange(n * len(classes)) / 25.0,
                    acc=(rng.normal(0, 1, (n * len(classes), 3)) + [0, 0, 9.81]).astype(np.float32),
                    label=np.repeat(classes, n), subject=np.full(n * len(classes), "p"))
    write_recording(tmp_path / "r.csv", rec)
    assert main(["evaluate", "--model", str(tmp_path / "m.pt"), "--data", str(tmp_path / "r.csv")]) == 0
    out = capsys.readouterr().out.splitlines()
    return out[next(i for i, line in enumerate(out) if line.startswith("confusion")):]


def test_evaluate_confusion_matrix_names_the_classes_in_full(tmp_path, capsys):
    """Barbell's six classes fit with their names as the column heads ("bench_ deadli overhe" before)."""
    classes = ("bench_press", "deadlift", "overhead_press", "rest", "row", "squat")
    lines = _evaluate_cli(tmp_path, capsys, classes)
    assert lines[1].split() == list(classes), lines
    assert len(lines) == 2 + len(classes) and all(len(line) <= 120 for line in lines)


def test_evaluate_confusion_matrix_of_many_classes_fits_120_columns(tmp_path, capsys):
    """17 classes made lines of over 150 characters: the columns are numbered as the rows now."""
    classes = tuple(f"exercise_number_{i:02d}" for i in range(17))
    lines = _evaluate_cli(tmp_path, capsys, classes)
    assert all(len(line) <= 120 for line in lines), max(len(line) for line in lines)
    assert lines[1].split() == [str(i) for i in range(1, 18)], lines
    assert [line.split()[:2] for line in lines[2:]] == [[c, str(i + 1)] for i, c in enumerate(classes)]


def test_evaluate_json_keeps_its_confusion_matrix(tmp_path, capsys):
    import json

    from stream.cli import main
    classes = ("rest", "squat")
    _evaluate_cli(tmp_path, capsys, classes)
    assert main(["evaluate", "--model", str(tmp_path / "m.pt"), "--data", str(tmp_path / "r.csv"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labels"] == list(classes) and np.array(report["confusion"]).sum() == report["windows"]


def test_barbell_import_says_which_person_went_whole_as_repeats(tmp_path, caplog):
    """The published folder's E repeats A's and D's sets: all dropped, the summary had 4 people where the
    README has 5, and the warning's only example was an A file."""
    from models.importers import load_dataset
    from tests.test_importers import write_barbell, write_barbell_set
    src = write_barbell(tmp_path / "barbell")
    write_barbell_set(src / "raw", "E-dead-medium1-rpe6", "2019-01-11T17.24.24.832", 1547310264832, (0.0, -1.0, 0.0))
    with caplog.at_level(logging.WARNING, logger="models.importers"):
        rec = load_dataset("barbell", src)
    assert set(rec.subject) == {"barbell-A", "barbell-B"}
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "all 2 sets of person E repeat others' (1 A's, 1 B's): E is left out" in said, said
    assert "(2 people remain: A, B)" in said


def test_barbell_import_names_no_person_when_each_keeps_a_set(tmp_path, caplog):
    from models.importers import load_dataset
    from tests.test_importers import write_barbell_set
    raw = tmp_path / "barbell" / "raw"
    raw.mkdir(parents=True)
    write_barbell_set(raw, "A-bench-heavy", "2019-01-14T14.22.49.165", 1547472169165, (0.0, 0.0, 1.0))
    write_barbell_set(raw, "A-bench-heavy", "2019-01-14T14.22.49.165", 1547558569165, (0.0, 0.0, 1.0), fw="1.4.41")
    with caplog.at_level(logging.WARNING, logger="models.importers"):
        load_dataset("barbell", raw.parent)
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 1 sets" in said and "left out" not in said and "remain" not in said


def test_progress_line_says_why_there_is_no_latency(caplog):
    """A stretch whose last metrics interval classified nothing logged "(p99 None ms)"."""
    from tests.helpers import imu
    from tests.test_consumer_monitor import _consumer
    c = _consumer(progress_interval=0.01)
    with caplog.at_level(logging.INFO, logger="stream.consumer"):
        for seq in range(4):
            c.handle("har/dev/imu", imu(seq, seq * 1.0, n=25, rate=25.0), time.monotonic())
            c._classify()
        time.sleep(0.02)
        c._publish_metrics()  # windows in this interval: a latency
        time.sleep(0.02)
        c._publish_metrics()  # none in this one
    lines = [r.getMessage() for r in caplog.records if "windows in the last" in r.getMessage()]
    assert len(lines) == 2, lines
    assert "None" not in lines[1] and "no window in the last 5 s to take a latency of" in lines[1], lines[1]
    assert "ms over the last 5 s" in lines[0] and "None" not in lines[0], lines[0]
