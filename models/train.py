"""Offline training with truncated backpropagation through time.

Training sees what serving sees: long crops of each device's stream on the model's clock, cut into
windows, the recurrent state carried from window to window and detached every ``tbptt`` windows
(one optimiser step each time). Validation holds out whole people and runs each held-out stream
through the network with carried state, exactly as ``evaluate`` does.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.data import IGNORE, LabelledStream, labelled_streams, window_labels
from models.metrics import scores
from models.rnn import HARNet, ModelConfig
from stream.recording import Recording

__all__ = ["TrainConfig", "train", "split_subjects", "stream_predictions"]

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    epochs: int = 40  # upper bound; early stopping usually ends sooner
    patience: int = 6  # epochs without a better validation macro F1 before stopping
    batch: int = 32  # crops per batch
    crop_windows: int = 16  # windows per crop (state carried across all of them)
    tbptt: int = 4  # windows per truncated-BPTT segment (k1 = k2): detach and step after each
    lr: float = 2e-3
    weight_decay: float = 1e-4
    clip: float = 1.0  # gradient norm clipping
    val_fraction: float = 0.2  # share of people held out for validation
    augment: bool = True  # rotation, scaling and time warping of each crop
    max_rotation_deg: float = 30.0  # strap and placement differences
    seed: int = 0
    max_minutes: float | None = None  # stop after this long, keeping the best model so far


def split_subjects(subjects: list[str], fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """People for training and for validation (at least one each when there are two or more)."""
    people = sorted(set(subjects))
    if len(people) < 2:
        return set(people), set()
    rng = np.random.default_rng(seed)
    rng.shuffle(people)
    n_val = min(len(people) - 1, max(1, round(fraction * len(people))))
    return set(people[n_val:]), set(people[:n_val])


def _rotation(rng: np.random.Generator, max_deg: float) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = np.deg2rad(rng.uniform(-max_deg, max_deg))
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * (k @ k)


class CropSampler:
    """Random crops of the training streams, optionally augmented."""

    def __init__(self, streams: list[LabelledStream], length: int, cfg: TrainConfig) -> None:
        self.length = length
        self.cfg = cfg
        self.rng = np.random.default_rng(cfg.seed)
        self.streams = [s for s in streams if len(s.x) >= int(length * 1.2) + 1]
        if not self.streams:
            raise ValueError(f"no training stream is long enough for a crop of {length} samples")
        sizes = np.array([len(s.x) for s in self.streams], dtype=np.float64)
        self.p = sizes / sizes.sum()

    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        xs, ys = [], []
        for _ in range(size):
            s = self.streams[self.rng.choice(len(self.streams), p=self.p)]
            warp = self.rng.uniform(0.85, 1.15) if self.cfg.augment else 1.0
            n_src = int(round(self.length * warp))
            start = self.rng.integers(0, len(s.x) - n_src)
            src = np.arange(self.length) * (n_src / self.length) + start
            x = np.stack([np.interp(src, np.arange(start, start + n_src + 1),
                                    s.x[start:start + n_src + 1, i]) for i in range(3)], axis=1)
            y = s.y[np.minimum(np.round(src).astype(int), len(s.y) - 1)]
            if self.cfg.augment:
                x = x @ _rotation(self.rng, self.cfg.max_rotation_deg).T * self.rng.uniform(0.9, 1.1)
            xs.append(x)
            ys.append(y)
        return np.stack(xs).astype(np.float32), np.stack(ys)


def stream_predictions(model: HARNet, streams: list[LabelledStream]) -> tuple[list[int], list[int]]:
    """(true, predicted) class index of every labelled window, each stream run with carried state."""
    W = model.config.window
    y_true, y_pred = [], []
    model.eval()
    with torch.no_grad():
        for s in streams:
            n = len(s.x) // W
            if n == 0:
                continue
            x = torch.from_numpy(s.x[: n * W][None])
            logits, _ = model.step_logits(x)  # (1, n*W/patch, K)
            per_window = logits.reshape(n, W // model.config.patch, -1).mean(dim=1).argmax(dim=1).numpy()
            labels = window_labels(s.y[: n * W], W)
            keep = labels != IGNORE
            y_true += labels[keep].tolist()
            y_pred += per_window[keep].tolist()
    return y_true, y_pred


def train(rec: Recording, model_config: ModelConfig | None = None, cfg: TrainConfig | None = None,
          classes: list[str] | None = None, progress: bool = True) -> tuple[HARNet, dict]:
    """Train a classifier on a recording; returns the best model (by validation macro F1) and a report."""
    cfg = cfg or TrainConfig()
    torch.manual_seed(cfg.seed)
    classes = classes or rec.classes
    if len(classes) < 2:
        raise ValueError(f"need at least two labelled classes to train, found {classes}")
    mc = copy.deepcopy(model_config) if model_config else ModelConfig(classes=tuple(classes))
    mc.classes = tuple(classes)
    streams = labelled_streams(rec, classes, mc.rate)
    train_people, val_people = split_subjects([s.subject for s in streams], cfg.val_fraction, cfg.seed)
    train_streams = [s for s in streams if s.subject in train_people]
    val_streams = [s for s in streams if s.subject in val_people]
    if not val_streams:  # one person: hold out the last fifth of every stream instead
        log.warning("only one person in the data: validating on the last 20%% of each stream")
        train_streams, val_streams = [], []
        for s in streams:
            cut = int(len(s.x) * 0.8)
            train_streams.append(LabelledStream(s.device, s.subject, s.x[:cut], s.y[:cut]))
            val_streams.append(LabelledStream(s.device, s.subject, s.x[cut:], s.y[cut:]))

    model = HARNet(mc)
    x_all = torch.from_numpy(np.concatenate([s.x for s in train_streams]))
    model.set_normalisation(*HARNet.feature_stats(x_all))
    y_all = np.concatenate([s.y for s in train_streams])
    counts = np.bincount(y_all[y_all != IGNORE], minlength=len(classes)).astype(np.float64)
    weights = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(counts, 1)), 0.0)
    weights = weights / weights[counts > 0].mean()
    loss_fn = nn.CrossEntropyLoss(weight=torch.tensor(weights, dtype=torch.float32), ignore_index=IGNORE)
    optimiser = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)

    W = mc.window
    sampler = CropSampler(train_streams, cfg.crop_windows * W, cfg)
    train_windows = len(y_all) // W
    batches_per_epoch = max(4, math.ceil(train_windows / (cfg.batch * cfg.crop_windows)))
    best = {"macro_f1": -1.0}
    best_state = copy.deepcopy(model.state_dict())
    grad_norms: list[float] = []
    clipped = 0
    history = []
    stale = 0
    started = time.monotonic()
    bar = tqdm(range(cfg.epochs), desc="training", unit="epoch", disable=not progress)
    for epoch in bar:
        model.train()
        losses = []
        for _ in range(batches_per_epoch):
            x, y = sampler.batch(cfg.batch)
            x = torch.from_numpy(x).reshape(cfg.batch, cfg.crop_windows, W, 3)
            y = torch.from_numpy(window_labels(y, W))  # (B, crop_windows)
            state = None
            for seg in range(0, cfg.crop_windows, cfg.tbptt):
                if state is not None:
                    state = tuple(s.detach() for s in state)  # truncate BPTT here
                seg_logits = []
                for j in range(seg, min(seg + cfg.tbptt, cfg.crop_windows)):
                    logits, state = model(x[:, j], state)
                    seg_logits.append(logits)
                logits = torch.stack(seg_logits, dim=1)  # (B, k, K)
                target = y[:, seg : seg + len(seg_logits)]
                if (target == IGNORE).all():
                    continue
                loss = loss_fn(logits.reshape(-1, len(classes)), target.reshape(-1))
                optimiser.zero_grad(set_to_none=True)
                loss.backward()
                norm = float(nn.utils.clip_grad_norm_(model.parameters(), cfg.clip))
                grad_norms.append(norm)
                clipped += norm > cfg.clip
                if not math.isfinite(norm):
                    continue  # never step on a non-finite gradient
                optimiser.step()
                losses.append(float(loss.detach()))
        y_true, y_pred = stream_predictions(model, val_streams)
        val = scores([classes[i] for i in y_true], [classes[i] for i in y_pred], classes)
        epoch_report = {
            "epoch": epoch + 1,
            "loss": round(float(np.mean(losses)), 4) if losses else None,
            "grad_norm_median": round(float(np.median(grad_norms[-batches_per_epoch:])), 3),
            "val_accuracy": val["accuracy"],
            "val_macro_f1": val["macro_f1"],
        }
        history.append(epoch_report)
        log.debug("epoch %s", epoch_report)
        bar.set_postfix(loss=epoch_report["loss"], val_acc=val["accuracy"], val_f1=val["macro_f1"],
                        grad=epoch_report["grad_norm_median"])
        if (val["macro_f1"] or 0.0) > best["macro_f1"]:
            best = {"macro_f1": val["macro_f1"], "accuracy": val["accuracy"], "epoch": epoch + 1,
                    "recall": val["recall"]}
            best_state = copy.deepcopy(model.state_dict())
            stale = 0
        else:
            stale += 1
        if stale >= cfg.patience:
            break
        if cfg.max_minutes is not None and time.monotonic() - started > cfg.max_minutes * 60:
            log.info("time budget of %.1f min reached", cfg.max_minutes)
            break
    bar.close()
    model.load_state_dict(best_state)
    model.eval()
    report = {
        "classes": list(classes),
        "train_people": sorted(train_people),
        "val_people": sorted(val_people),
        "train_windows": int(train_windows),
        "best": best,
        "epochs_run": len(history),
        "history": history,
        "grad_norm": {"median": round(float(np.median(grad_norms)), 3) if grad_norms else None,
                      "max": round(float(np.max(grad_norms)), 3) if grad_norms else None,
                      "clipped_share": round(clipped / max(1, len(grad_norms)), 3)},
        "seconds": round(time.monotonic() - started, 1),
    }
    return model, report
