"""Offline training with truncated backpropagation through time.

Training sees what serving sees. ``batch`` training streams (each device's gap-free run, on the
model's clock) are played side by side from their first window, ``tbptt`` windows per optimiser
step, the recurrent state carried through the whole stream and detached between steps; a row that
finishes its stream starts another with a fresh state. Each stream is augmented as a whole, as a
different person would have worn the sensor: one orientation (a rotation, sometimes a half turn),
one gain, one tempo.

Validation holds out whole people (whole sessions when there is one person) and runs each held-out
stream through the network with carried state, exactly as ``evaluate`` does; early stopping watches
its macro F1. The schedule counts optimiser steps, not passes over the data: real data sets are
small (a pass is a few dozen steps), so an epoch is ``steps_per_epoch`` steps, or one pass when that
is longer, and the same defaults fit twenty minutes of data and six hours. Finally the model is
trained again on everyone, validation people included, for as many epochs as the validated run took.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.data import IGNORE, LabelledStream, labelled_streams, window_labels
from models.metrics import scores
from models.rnn import HARNet, ModelConfig
from stream.recording import Recording

__all__ = ["TrainConfig", "train", "split_subjects", "split_streams", "augment", "StreamSampler",
           "stream_predictions"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 40  # at most this many epochs; early stopping usually ends sooner
    steps_per_epoch: int = 100  # optimiser steps between validations (one pass over the data if longer)
    min_epochs: int = 20  # never stop before this many epochs
    patience: int = 10  # epochs without a better validation macro F1 before stopping
    batch: int = 32  # streams played side by side
    tbptt: int = 8  # windows per truncated-BPTT segment (k1 = k2): one optimiser step, then detach. 8 (16 s at
    # 2 s a window) rather than 4: exermote 95.70 -> 96.48% (seed 1: 95.85 -> 96.71%); barbell within its seed
    # spread (88.65 -> 89.42%, seed 1: 84.28 -> 82.94%); twice the training time. Most of the gain is the windows
    # per step (4 x 64 streams: 96.32%), less the reach back; 16: no better (docs/results.md)
    lr: float = 2e-3  # peak learning rate: linear warm-up, then cosine decay to lr/20 over the run
    warmup_steps: int = 100
    weight_decay: float = 0.05  # AdamW's decoupled weight decay
    clip: float = 1.0  # gradient norm clipping
    ema: float = 0.995  # validate and keep an exponential moving average of the weights (0: off)
    val_fraction: float = 0.2  # share of people held out for validation
    refit: bool = True  # then train on everyone, validation people too, and return that model
    augment: bool = True  # one random orientation, gain and tempo per stream
    max_rotation_deg: float = 30.0  # strap and placement differences: rotate by up to this. Barbell over four
    # seeds: 88.99% at 30, 88.68% at 45; 15 cost fold A 17-19 points (docs/results.md)
    p_flip: float = 0.0  # chance of a half turn about x, y or z first (worn upside down, face in); off:
    # within one data set how the sensor is worn tells exercises apart (barbell LOPO: 80% off, 73% at 0.25)
    p_any_orientation: float = 0.0  # chance of a uniformly random orientation instead: for sensors that
    # people put on every which way (a phone in a pocket or an armband). Off by default: it lifted exermote's
    # person 1 (phone turned a quarter turn) from 76% to 91% but cost barbell 5-13 points (docs/results.md)
    max_scale: float = 0.1  # gain differences: scale by 1 ± this
    max_warp: float = 0.15  # tempo differences: play the stream 1 ± this faster
    p_mid_start: float = 0.25  # chance of starting a stream at a random point, as a device joining late
    orientation: bool = True  # a gyro model keeps its training data's window features, to turn a device
    # worn upside down or turned back at serving time (models.orientation; exermote's person 1: 77 -> 93%)
    seed: int = 0
    max_minutes: float | None = 20.0  # the whole of train() (validated run and refit) ends after about this
    # long: the validated run stops at REFIT_SHARE of it, keeping its best model so far; the refit has the rest

    def __post_init__(self) -> None:
        if min(self.epochs, self.steps_per_epoch, self.batch, self.tbptt) < 1:
            raise ValueError("'epochs', 'steps_per_epoch', 'batch' and 'tbptt' must be at least 1")
        if not (0 <= self.p_flip <= 1 and 0 <= self.p_any_orientation <= 1 and 0 <= self.p_mid_start <= 1):
            raise ValueError("'p_flip', 'p_any_orientation' and 'p_mid_start' must be in [0, 1]")
        if not 0 <= self.max_rotation_deg <= 180:
            raise ValueError("'max_rotation_deg' must be in [0, 180]")
        if not 0 <= self.val_fraction < 1:
            raise ValueError("'val_fraction' must be in [0, 1)")


def split_subjects(subjects: list[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """People for training and for validation (at least one each when there are two or more)."""
    people = sorted(set(subjects))
    if len(people) < 2 or fraction <= 0:
        return set(people), set()
    rng = np.random.default_rng(seed)
    rng.shuffle(people)
    n_val = min(len(people) - 1, max(1, round(fraction * len(people))))
    return set(people[n_val:]), set(people[:n_val])


def split_streams(streams: list[LabelledStream], fraction: float, seed: int
                  ) -> tuple[list[LabelledStream], list[LabelledStream], str]:
    """Training and validation streams: whole people held out; with one person, whole devices
    (sessions, sets); with one device, the last ``fraction`` of every stream. Returns (train, val, how)."""
    for key, how in ((lambda s: s.subject, "people"), (lambda s: s.device, "devices")):
        train_keys, val_keys = split_subjects([key(s) for s in streams], fraction, seed)
        if val_keys:
            names = ", ".join(sorted(val_keys)[:6]) + (" ..." if len(val_keys) > 6 else "")
            return ([s for s in streams if key(s) in train_keys], [s for s in streams if key(s) in val_keys],
                    f"{how} {names}")
    if fraction <= 0:
        return list(streams), [], "none"
    log.warning("one device of one person: validating on the last %d%% of each stream", round(100 * fraction))
    train, val = [], []
    for s in streams:
        cut = int(len(s.x) * (1 - fraction))
        train.append(LabelledStream(s.device, s.subject, s.x[:cut], s.y[:cut]))
        val.append(LabelledStream(s.device, s.subject, s.x[cut:], s.y[cut:]))
    return train, val, "time"


# half turns about x, y and z: the sign changes of two axes that wearing a device the other way round
# (upside down, screen in) makes; they keep which axis gravity lies along, unlike a free rotation
FLIPS = np.array([[1, -1, -1], [-1, 1, -1], [-1, -1, 1]], dtype=np.float64)


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    """A rotation about a uniformly random axis by an angle uniform in ±max_deg (Rodrigues)."""
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


def _any_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation drawn uniformly from all orientations (a random unit quaternion)."""
    w, x, y, z = (q := rng.normal(size=4)) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def augment(x: np.ndarray, y: np.ndarray, rng: np.random.Generator, cfg: TrainConfig
            ) -> tuple[np.ndarray, np.ndarray]:
    """One stream (x (N, 3) m/s², or (N, 6) with the gyroscope in rad/s after it; y (N,)) as another
    person might have recorded it: played 1 ± max_warp faster (labels follow; turning rates scale with
    the tempo), turned, rotated and scaled, both sensors by the same turn (they sit on one board);
    unchanged unless ``cfg.augment``. Returns x (n, C) float32 and y (n,); n differs from N by the
    tempo change."""
    if not cfg.augment or len(x) < 2:
        return x.astype(np.float32), y
    warp = rng.uniform(1 - cfg.max_warp, 1 + cfg.max_warp)
    src = np.arange(0, len(x) - 1, warp)  # fractional source positions
    i0 = np.floor(src).astype(int)
    frac = (src - i0)[:, None]
    out = x[i0] * (1 - frac) + x[i0 + 1] * frac
    labels = y[np.round(src).astype(int)]
    sensors = x.shape[1] // 3
    if sensors > 1:
        out[:, 3:] *= warp  # played faster, it turns faster
    if rng.random() < cfg.p_flip:
        out = out * np.tile(FLIPS[rng.integers(len(FLIPS))], sensors)
    turn = (_any_rotation(rng) if rng.random() < cfg.p_any_orientation else _rotation(rng, cfg.max_rotation_deg))
    n = len(out)
    out = (out.reshape(n, sensors, 3) @ turn.T).reshape(n, -1)
    out = out * rng.uniform(1 - cfg.max_scale, 1 + cfg.max_scale)
    return out.astype(np.float32), labels


class StreamSampler:
    """``rows`` training streams played side by side from their start, ``segment`` windows per call.

    A row that finishes its stream starts another, chosen in proportion to length and augmented as a
    whole; ``reset`` marks those rows, whose state must start again from zero. The rest of a
    finished stream's last segment is padding labelled IGNORE.
    """

    def __init__(self, streams: list[LabelledStream], window: int, segment: int, rows: int, cfg: TrainConfig
                 ) -> None:
        self.window = window
        self.segment = segment
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.streams = [s for s in streams if len(s.x) >= 2 * window and (s.y != IGNORE).any()]
        if not self.streams:
            raise ValueError(f"no labelled training stream is as long as two windows ({2 * window} samples)")
        sizes = np.array([len(s.x) for s in self.streams], dtype=np.float64)
        self.p = sizes / sizes.sum()  # every sample equally likely
        self._rows: list[list] = [[None, None, 0, 0] for _ in range(rows)]  # [x, y, next sample, end]

    def _start(self) -> list:
        while True:
            s = self.streams[self.rng.choice(len(self.streams), p=self.p)]
            x, y = augment(s.x, s.y, self.rng, self.cfg)
            start, end = 0, len(x) // self.window * self.window
            if self.rng.random() < self.cfg.p_mid_start and end > 2 * self.window:
                start = int(self.rng.integers(0, end - self.window))  # as if the device joined late
                end = start + (end - start) // self.window * self.window
            if end > start:
                return [x, y, start, end]

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """x (rows, segment*window, C) float32, labels (rows, segment*window), reset (rows,) bool."""
        length = self.segment * self.window
        xs = np.zeros((len(self._rows), length, self.streams[0].x.shape[1]), dtype=np.float32)
        ys = np.full((len(self._rows), length), IGNORE, dtype=np.int64)
        reset = np.zeros(len(self._rows), dtype=bool)
        for r, row in enumerate(self._rows):
            if row[0] is None or row[2] >= row[3]:
                row[:] = self._start()
                reset[r] = True
            x, y, pos, end = row
            n = min(length, end - pos)
            xs[r, :n] = x[pos : pos + n]
            ys[r, :n] = y[pos : pos + n]
            row[2] = pos + n
        return xs, ys, reset


def stream_predictions(model: HARNet, streams: list[LabelledStream], batch: int = 64
                       ) -> tuple[list[int], list[int]]:
    """(true, predicted) class index of every labelled window, each stream run with carried state from
    its start, as ``evaluate`` runs it, except at a device's gaps (over ``max_gap``): a stream is a gap-free
    run and starts from zero state, where ``Pipeline`` (evaluate, the consumer) carries the state across
    (measured on barbell-D: 1 window of 99 differs). Streams are padded at the end and run together."""
    W = model.config.window
    y_true, y_pred = [], []
    todo = sorted((s for s in streams if len(s.x) >= W), key=lambda s: len(s.x))
    model.eval()
    with torch.no_grad():
        for a in range(0, len(todo), batch):
            group = todo[a : a + batch]
            n = [len(s.x) // W for s in group]
            x = np.zeros((len(group), max(n) * W, model.config.input_channels), dtype=np.float32)
            for i, s in enumerate(group):
                x[i, : n[i] * W] = s.x[: n[i] * W]
            logits, _ = model.step_logits(torch.from_numpy(x))  # (B, L*W/patch, K)
            per_window = model.window_logits(logits).argmax(-1)  # (B, L)
            for i, s in enumerate(group):
                labels = window_labels(s.y[: n[i] * W], W)
                keep = labels != IGNORE
                y_true += labels[keep].tolist()
                y_pred += per_window[i, : n[i]].numpy()[keep].tolist()
    return y_true, y_pred


def _class_weights(y: np.ndarray, k: int) -> torch.Tensor:
    """Loss weights ∝ 1/sqrt(frequency): rare classes count more without drowning the common ones."""
    counts = np.bincount(y[y != IGNORE], minlength=k).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    return torch.tensor(weights / weights[counts > 0].mean(), dtype=torch.float32)


# share of --max-minutes the validated run may take when a refit on everyone follows: the refit runs as many
# epochs, each about as long, so a run the budget cuts leaves the refit about as much time as it took
REFIT_SHARE = 0.5


def _fit(train_streams: list[LabelledStream], val_streams: list[LabelledStream], mc: ModelConfig,
         cfg: TrainConfig, epochs: int, early_stopping: bool, desc: str, progress: bool,
         deadline: float | None = None, max_steps: int | None = None) -> tuple[HARNet, dict]:
    """One run of at most ``epochs`` epochs, and ``max_steps`` optimiser steps (the learning-rate schedule
    spans them all; the last epoch is then a part). With validation streams, returns the weights with the
    best validation macro F1; without, the last ones.

    ``deadline`` (``time.monotonic()``): the run stops at the first optimiser step that would begin after
    it (one step at least), mid-epoch if need be: checked only at an epoch's end, one long epoch (a pass over
    a large data set, on a loaded machine) overran a 1-minute budget by 25 s. The part-epoch is then
    validated as an epoch's end is (its weights are the last ones, without validation streams);
    ``out_of_time`` in the report says so."""
    classes = list(mc.classes)
    W = mc.window
    torch.manual_seed(cfg.seed)
    model = HARNet(mc)
    x_all = torch.from_numpy(np.concatenate([s.x for s in train_streams]))
    model.set_normalisation(*HARNet.feature_stats(x_all))
    y_all = np.concatenate([s.y for s in train_streams])
    loss_fn = nn.CrossEntropyLoss(weight=_class_weights(y_all, len(classes)), ignore_index=IGNORE)
    optimiser = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sampler = StreamSampler(train_streams, W, cfg.tbptt, cfg.batch, cfg)
    train_windows = int((window_labels(y_all, W) != IGNORE).sum())
    steps_per_epoch = max(cfg.steps_per_epoch, math.ceil(train_windows / (cfg.batch * cfg.tbptt)))
    total_steps = epochs * steps_per_epoch if max_steps is None else min(epochs * steps_per_epoch, max_steps)
    epochs = math.ceil(total_steps / steps_per_epoch)

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.lr * (step + 1) / cfg.warmup_steps
        done = min(1.0, (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps))
        return cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * done)))

    averaged = copy.deepcopy(model) if cfg.ema > 0 else model  # the weights validated and kept
    best: dict = {"macro_f1": -1.0}
    best_state = copy.deepcopy(averaged.state_dict())
    grad_norms: list[float] = []
    clipped = skipped = step = stale = 0
    history = []
    state = None  # the rows' recurrent state, carried from step to step
    started = time.monotonic()
    out_of_time = False
    bar = tqdm(total=total_steps, desc=desc, unit="step", disable=not progress, smoothing=0.1)
    for epoch in range(epochs):
        model.train()
        losses: list[float] = []
        epoch_norms: list[float] = []
        for _ in range(min(steps_per_epoch, total_steps - step)):
            if step and deadline is not None and time.monotonic() >= deadline:
                out_of_time = True
                break
            x, y, reset = sampler.next()
            if state is not None:  # truncate BPTT here; rows that started a new stream start from zero
                keep = torch.from_numpy(~reset).to(torch.float32).view(1, -1, 1)
                state = tuple(s.detach() * keep for s in state)
            x = torch.from_numpy(x)  # (B, tbptt*W, C)
            target = torch.from_numpy(window_labels(y, W))  # (B, tbptt)
            steps, state = model.step_logits(x, state)  # (B, tbptt*W/patch, K)
            logits = model.window_logits(steps)  # (B, tbptt, K)
            step += 1
            bar.update(1)
            if (target == IGNORE).all():
                continue
            for group in optimiser.param_groups:
                group["lr"] = lr_at(step)
            loss = loss_fn(logits.reshape(-1, len(classes)), target.reshape(-1))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.clip))
            if not math.isfinite(norm):
                skipped += 1
                continue  # never step on a non-finite gradient
            grad_norms.append(norm)
            epoch_norms.append(norm)
            clipped += norm > cfg.clip
            optimiser.step()
            if averaged is not model:
                decay = min(cfg.ema, (1 + step) / (10 + step))  # short memory while the weights move fast
                with torch.no_grad():
                    for a, p in zip(averaged.parameters(), model.parameters(), strict=True):
                        a.lerp_(p, 1 - decay)
            losses.append(float(loss.detach()))
        epoch_report = {
            "epoch": epoch + 1,
            "step": step,
            "lr": round(lr_at(step), 6),
            "loss": round(float(np.mean(losses)), 4) if losses else None,
            "grad_norm_median": round(float(np.median(epoch_norms)), 3) if epoch_norms else None,
            "grad_norm_max": round(float(np.max(epoch_norms)), 3) if epoch_norms else None,
        }
        if val_streams:
            y_true, y_pred = stream_predictions(averaged, val_streams)
            val = scores([classes[i] for i in y_true], [classes[i] for i in y_pred], classes)
            epoch_report.update(val_accuracy=val["accuracy"], val_macro_f1=val["macro_f1"])
        history.append(epoch_report)
        log.debug("%s: %s", desc, epoch_report)
        bar.set_postfix({k: v for k, v in epoch_report.items() if k not in ("step", "lr", "grad_norm_max")})
        if not val_streams:
            best = {"epoch": epoch + 1, "step": step}
            best_state = copy.deepcopy(averaged.state_dict())
        elif (val["macro_f1"] or 0.0) > best["macro_f1"]:
            best = {"macro_f1": val["macro_f1"], "accuracy": val["accuracy"], "epoch": epoch + 1,
                    "step": step, "recall": val["recall"]}
            best_state = copy.deepcopy(averaged.state_dict())
            stale = 0
        else:
            stale += 1
        if early_stopping and stale >= cfg.patience and epoch + 1 >= cfg.min_epochs:
            log.info("no better validation score for %d epochs: stopping after epoch %d", stale, epoch + 1)
            break
        if out_of_time or (deadline is not None and time.monotonic() >= deadline):
            out_of_time = True
            log.info("%s: time budget reached in epoch %d of %d, at step %d of %d", desc, epoch + 1, epochs,
                     step, total_steps)
            break
    bar.close()
    averaged.load_state_dict(best_state)
    averaged.eval()
    report = {
        "train_windows": train_windows,
        "steps_per_epoch": steps_per_epoch,
        "best": best,
        "epochs_run": len(history),  # the last one cut short when out_of_time
        "steps": step,
        "out_of_time": out_of_time,
        "history": history,
        "grad_norm": {"median": round(float(np.median(grad_norms)), 3) if grad_norms else None,
                      "max": round(float(np.max(grad_norms)), 3) if grad_norms else None,
                      "clipped_share": round(clipped / max(1, len(grad_norms)), 3),
                      "skipped_non_finite": skipped},
        "seconds": round(time.monotonic() - started, 1),
    }
    return averaged, report


def train(rec: Recording, model_config: ModelConfig | None = None, cfg: TrainConfig | None = None,
          classes: list[str] | None = None, progress: bool = True) -> tuple[HARNet, dict]:
    """Train a classifier on a recording; returns the model and a report.

    First a run validated on held-out people and stopped early; its validation scores are the ones
    reported. Then, with ``cfg.refit``, a fresh model is trained on everyone for as many epochs as
    that run took, and returned: with a handful of people, the ones held out are too valuable to
    leave out.

    ``cfg.max_minutes`` bounds the whole call, both runs: it restarted in each, and was checked only at an
    epoch's end, so ``--max-minutes 1`` took 171 s on barbell. The validated run has up to REFIT_SHARE of
    it, and the refit the rest: as many optimiser steps as the validated run took (its epochs; its steps
    when the budget cut it mid-epoch), or as many as fit in the time left at that run's pace, fewer, and it
    stops at the deadline all the same. A refit of fewer steps than the validated run's best model took
    (planned so, or cut so) is not used: the validated model is returned (``report["refit"]["used"]``).
    ``report["refit"]`` says how many steps the refit planned and made, and whether the budget cut them.
    """
    cfg = cfg or TrainConfig()
    classes = classes or rec.classes
    if len(classes) < 2:
        raise ValueError(f"need at least two labelled classes to train, found {classes}")
    mc = copy.deepcopy(model_config) if model_config else ModelConfig(classes=tuple(classes))
    mc.classes = tuple(classes)
    started = time.monotonic()
    deadline = None if cfg.max_minutes is None else started + cfg.max_minutes * 60
    streams = labelled_streams(rec, classes, mc.rate, gyro=mc.gyro)
    train_streams, val_streams, held_out = split_streams(streams, cfg.val_fraction, cfg.seed)
    log.info("training on %d streams, validating on held-out %s", len(train_streams), held_out)
    refitting = cfg.refit and bool(val_streams)
    first_deadline = deadline
    if deadline is not None and refitting:
        first_deadline = started + REFIT_SHARE * cfg.max_minutes * 60
        log.info("time budget %.3g min for the whole training: the validated run stops after %.3g min, the refit "
                 "on everyone has the rest", cfg.max_minutes, REFIT_SHARE * cfg.max_minutes)
    model, fit = _fit(train_streams, val_streams, mc, cfg, cfg.epochs, True, "training", progress,
                      first_deadline)
    report = {
        "classes": list(classes),
        "train_people": sorted({s.subject for s in train_streams}),
        "val_people": sorted({s.subject for s in val_streams}),
        "held_out": held_out,
        "tbptt": cfg.tbptt,
        "train_config": asdict(cfg),  # every setting of the run, augmentation included
        **fit,
    }
    if refitting:
        epochs = fit["epochs_run"]  # its best epoch plus patience, or its share of the budget
        planned = fit["steps"] if fit["out_of_time"] else None  # None: its epochs, at the refit's epoch length
        steps = planned
        least = fit["best"].get("step", 1)  # a refit with fewer steps than the validated model's is worse
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None:  # no more steps than fit in the time left at the validated run's pace
            fit_in = int(left / (max(fit["seconds"], 0.1) / max(1, fit["steps"])))
            steps = fit_in if planned is None else min(planned, fit_in)
        if steps is not None and steps < least:
            log.warning("time budget of %.3g min: the %.0f s left fit %d optimiser steps on everyone, fewer than the "
                        "%d of the validated run's best model: no refit; the model saved is the validated run's",
                        cfg.max_minutes, max(0.0, left), steps, least)
            report["refit"] = {"used": False, "steps": 0, "steps_fit": steps, "steps_planned": planned,
                               "out_of_time": True}
        else:
            log.info("training again on everyone for %d epoch%s%s", epochs, "" if epochs == 1 else "s",
                     "" if left is None else f", at most {steps} optimiser steps: {left:.0f} s of the time budget "
                     "left" + ("" if planned is None else f", and the validated run, cut by it, made {planned}"))
            refitted, refit = _fit(streams, [], mc, cfg, epochs, False, "training on everyone", progress, deadline,
                                   steps)
            planned_steps = (planned if planned is not None else epochs * refit["steps_per_epoch"])
            report["refit"] = {**{k: refit[k] for k in ("train_windows", "steps_per_epoch", "epochs_run", "steps",
                                                        "grad_norm", "seconds")},
                               "steps_planned": planned_steps,  # as many as the validated run took
                               "epochs_done": round(refit["steps"] / refit["steps_per_epoch"], 1),
                               "epochs_planned": round(planned_steps / refit["steps_per_epoch"], 1),
                               "out_of_time": refit["steps"] < planned_steps,
                               "used": refit["steps"] >= least}
            if report["refit"]["used"]:
                model = refitted
            else:  # barbell, --max-minutes 1 on a loaded machine: 53 steps, 36% on person D (the validated: 71%)
                log.warning("the time budget cut the refit on everyone at %d optimiser steps, fewer than the %d of "
                            "the validated run's best model: the model saved is the validated run's",
                            refit["steps"], least)
    if cfg.orientation and mc.gyro:
        model.orientation = orientation_reference(streams, mc.window, cfg.seed)
        report["orientation_windows"] = len(model.orientation.g)
    report["seconds"] = round(time.monotonic() - started, 1)
    return model, report


def orientation_reference(streams: list[LabelledStream], window: int, seed: int = 0):
    """How the training data's sensors were worn: the features of (at most 600 of) its windows, as
    ``Pipeline`` cuts them (``models.orientation``). Streams of 6 channels."""
    from models.orientation import OrientationConfig, Reference
    windows = [s.x[:len(s.x) // window * window].reshape(-1, window, s.x.shape[1]) for s in streams]
    windows = [w for w in windows if len(w)]
    if not windows:
        raise ValueError("no whole window in the training data for an orientation reference")
    return Reference.from_windows(np.concatenate(windows), OrientationConfig(), seed)
