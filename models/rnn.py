"""The recurrent classifier: a patch front end, a stack of LSTM (or GRU, or plain RNN) layers, a head.

The network is stateful: ``forward(x, state)`` takes the samples of one or more windows and the
recurrent state left by the previous window, and returns per-window logits and the new state. The
front end embeds non-overlapping patches of ``patch`` samples (a strided convolution, DeepConvLSTM
style, with kernel = stride), so that cutting a stream into windows whose length is a multiple of
``patch`` gives exactly the same result as running the whole stream at once: carried state replaces
overlapping windows.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

__all__ = ["ModelConfig", "HARNet", "State", "CELLS"]

CELLS = ("lstm", "gru", "rnn")

# (h, c) for an LSTM, (h,) for GRU and RNN; each (layers, batch, hidden)
State = tuple[torch.Tensor, ...]


@dataclass
class ModelConfig:
    classes: tuple[str, ...] = ()  # class names, index = logit position
    cell: str = "lstm"  # lstm | gru | rnn (the plain RNN is there to show vanishing gradients)
    hidden: int = 64  # recurrent units per layer
    layers: int = 2  # stacked recurrent layers
    input_channels: int = 3  # ax, ay, az in m/s² (specific force)
    rate: float = 25.0  # Hz; every source is resampled onto this clock
    window: int = 50  # samples per window; one prediction per window
    hop: int = 50  # samples between predictions; equals window: carried state replaces overlap
    patch: int = 5  # samples per recurrent step (front-end stride); divides window
    dropout: float = 0.1  # between layers and before the head, training only

    def __post_init__(self) -> None:
        self.classes = tuple(self.classes)
        if self.cell not in CELLS:
            raise ValueError(f"Invalid 'cell' {self.cell!r}. Valid values are: {', '.join(CELLS)}")
        if self.window % self.patch:
            raise ValueError(f"'window' ({self.window}) must be a multiple of 'patch' ({self.patch})")
        if self.hop != self.window:
            raise ValueError("'hop' must equal 'window': the recurrent state carries the overlap")
        if self.rate <= 0:
            raise ValueError("'rate' must be positive")

    @property
    def window_seconds(self) -> float:
        return self.window / self.rate

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


def features(x: torch.Tensor) -> torch.Tensor:
    """Raw specific force (B, T, 3) → features (B, T, 4): the three axes and the magnitude."""
    return torch.cat([x, x.norm(dim=-1, keepdim=True)], dim=-1)


N_FEATURES = 4


class HARNet(nn.Module):
    """Stateful recurrent exercise classifier."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.classes:
            raise ValueError("ModelConfig.classes is empty")
        self.config = config
        # input normalisation, fitted on training data and saved in the checkpoint
        self.register_buffer("feature_mean", torch.zeros(N_FEATURES))
        self.register_buffer("feature_std", torch.ones(N_FEATURES))
        self.front = nn.Sequential(nn.Linear(N_FEATURES * config.patch, config.hidden), nn.ReLU())
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[config.cell]
        self.rnn = rnn_cls(
            config.hidden,
            config.hidden,
            num_layers=config.layers,
            batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, len(config.classes))

    def initial_state(self, batch: int) -> State:
        cfg = self.config
        zeros = torch.zeros(cfg.layers, batch, cfg.hidden)
        return (zeros, zeros.clone()) if cfg.cell == "lstm" else (zeros,)

    def step_logits(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits at every recurrent step: x (B, T, 3) with T a multiple of ``patch`` → (B, T/patch, K)."""
        B, T, C = x.shape  # batch, samples, channels
        p = self.config.patch
        f = (features(x) - self.feature_mean) / self.feature_std  # (B, T, F)
        f = f.reshape(B, T // p, p * N_FEATURES)  # (B, S, p*F): one patch per recurrent step
        z = self.front(f)  # (B, S, H)
        if state is None:
            state = self.initial_state(B)
        rnn_state = state if self.config.cell == "lstm" else state[0]
        y, new = self.rnn(z, rnn_state)  # (B, S, H)
        new_state = tuple(new) if self.config.cell == "lstm" else (new,)
        return self.head(self.drop(y)), new_state  # (B, S, K)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """One window per row: x (B, window, 3) → logits (B, K) (mean over the window's steps), state."""
        logits, state = self.step_logits(x, state)
        return logits.mean(dim=1), state

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-3))

    @staticmethod
    def feature_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and std of raw samples x (..., 3)."""
        f = features(x.reshape(-1, x.shape[-1]))
        return f.mean(dim=0), f.std(dim=0)

