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

__all__ = ["ModelConfig", "HARNet", "State", "CELLS", "CHANNELS"]

CELLS = ("lstm", "gru", "rnn")
FRONTS = ("linear", "conv")

# (h, c) for an LSTM, (h,) for GRU and RNN, each (layers, batch, hidden); then, with the conv front end,
# the carried input samples (1, batch, context * features). Batch is always dimension 1.
State = tuple[torch.Tensor, ...]


@dataclass
class ModelConfig:
    classes: tuple[str, ...] = ()  # class names, index = logit position
    cell: str = "lstm"  # lstm | gru | rnn (the plain RNN is there to show vanishing gradients)
    hidden: int = 64  # recurrent units per layer
    layers: int = 2  # stacked recurrent layers
    input_channels: int = 3  # ax, ay, az in m/s² (specific force); 6: then gx, gy, gz in rad/s
    rate: float = 25.0  # Hz; every source is resampled onto this clock
    window: int = 50  # samples per window; one prediction per window
    hop: int = 50  # samples between predictions; equals window: carried state replaces overlap
    patch: int = 5  # samples per recurrent step (front-end stride); divides window
    dropout: float = 0.3  # between layers and before the head, training only
    front: str = "conv"  # conv: causal convolutions over samples, then a layer per patch | linear: the layer
    conv_channels: int = 32  # conv front end: filters per layer
    conv_kernel: int = 5  # conv front end: samples per filter
    conv_layers: int = 2  # conv front end: stacked layers; their left context is carried in the state

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
        if self.input_channels not in CHANNELS:
            raise ValueError(f"'input_channels' must be 3 (accelerometer) or 6 (and gyroscope), not "
                             f"{self.input_channels}")
        if self.front not in FRONTS:
            raise ValueError(f"Invalid 'front' {self.front!r}. Valid values are: {', '.join(FRONTS)}")
        if self.front == "conv" and (self.conv_kernel < 1 or self.conv_layers < 1):
            raise ValueError("'conv_kernel' and 'conv_layers' must be at least 1")

    @property
    def context(self) -> int:
        """Past samples the conv front end needs before each new one (0 for the linear front end)."""
        return self.conv_layers * (self.conv_kernel - 1) if self.front == "conv" else 0

    @property
    def gyro(self) -> bool:
        """Whether the model reads the gyroscope (channels 3-5) after the accelerometer (0-2)."""
        return self.input_channels == 6

    @property
    def features(self) -> int:
        """Features per sample: each three-axis sensor's axes and magnitude."""
        return self.input_channels // 3 * 4

    @property
    def window_seconds(self) -> float:
        return self.window / self.rate

    def to_dict(self) -> dict:
        d = asdict(self)
        d["classes"] = list(self.classes)
        return d


CHANNELS = (3, 6)  # accelerometer; accelerometer then gyroscope


def features(x: torch.Tensor) -> torch.Tensor:
    """Raw samples (B, T, 3) → features (B, T, 4): the three axes and the magnitude; with the
    gyroscope, (B, T, 6) → (B, T, 8): the same for each sensor (magnitudes do not depend on how the
    sensor is turned, the axes do)."""
    if x.shape[-1] == 3:
        return torch.cat([x, x.norm(dim=-1, keepdim=True)], dim=-1)
    acc, gyro = x[..., :3], x[..., 3:]
    return torch.cat([acc, acc.norm(dim=-1, keepdim=True), gyro, gyro.norm(dim=-1, keepdim=True)], dim=-1)


class HARNet(nn.Module):
    """Stateful recurrent exercise classifier.

    The state is the recurrent cell's ((h, c) for an LSTM, (h,) otherwise, each (layers, B, hidden)),
    followed, with the conv front end, by the last ``context`` normalised input samples
    (1, B, context * features): the convolutions see across window boundaries exactly as they would
    over the whole stream.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not config.classes:
            raise ValueError("ModelConfig.classes is empty")
        self.config = config
        # how the training data's sensors were worn (models.orientation.Reference), saved in the
        # checkpoint; None: devices are served as they come
        self.orientation = None
        # input normalisation, fitted on training data and saved in the checkpoint
        n_features = config.features
        self.register_buffer("feature_mean", torch.zeros(n_features))
        self.register_buffer("feature_std", torch.ones(n_features))
        if config.front == "conv":
            convs: list[nn.Module] = []
            channels = n_features
            for _ in range(config.conv_layers):  # no padding: the carried context supplies the past
                convs += [nn.Conv1d(channels, config.conv_channels, config.conv_kernel), nn.ReLU()]
                channels = config.conv_channels
            self.conv = nn.Sequential(*convs)
        else:
            self.conv = None
            channels = n_features
        self.front = nn.Sequential(nn.Linear(channels * config.patch, config.hidden), nn.ReLU())
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
        state = (zeros, zeros.clone()) if cfg.cell == "lstm" else (zeros,)
        if cfg.context:  # zeros: the training mean of every feature
            state += (torch.zeros(1, batch, cfg.context * cfg.features),)
        return state

    def state_shapes(self) -> list[tuple[int, int]]:
        """One device's state as it is kept (checkpoints, the shared store): (layers or 1, width) per tensor."""
        return [(t.shape[0], t.shape[2]) for t in self.initial_state(1)]

    def step_logits(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """Logits at every recurrent step: x (B, T, C) with T a multiple of ``patch`` → (B, T/patch, K);
        C is ``input_channels``."""
        B, T, C = x.shape  # batch, samples, channels
        cfg = self.config
        if C != cfg.input_channels:
            raise ValueError(f"the model reads {cfg.input_channels} channels per sample, got {C}")
        p = cfg.patch
        if state is None:
            state = self.initial_state(B)
        f = (features(x) - self.feature_mean) / self.feature_std  # (B, T, F)
        if self.conv is not None:
            past = state[-1].reshape(B, cfg.context, cfg.features)  # (B, context, F)
            f = torch.cat([past, f], dim=1)  # (B, context + T, F)
            carried = (f[:, f.shape[1] - cfg.context :].reshape(1, B, -1),)
            f = self.conv(f.transpose(1, 2)).transpose(1, 2)  # (B, T, conv_channels): one per new sample
        else:
            carried = ()
        f = f.reshape(B, T // p, -1)  # (B, S, p*channels): one patch per recurrent step
        z = self.front(f)  # (B, S, H)
        rnn_state = state[:2] if cfg.cell == "lstm" else state[0]
        y, new = self.rnn(z, rnn_state)  # (B, S, H)
        new_state = (tuple(new) if cfg.cell == "lstm" else (new,)) + carried
        return self.head(self.drop(y)), new_state  # (B, S, K)

    def window_logits(self, steps: torch.Tensor) -> torch.Tensor:
        """Per-step logits (..., L * window/patch, K) → per-window logits (..., L, K): the mean over each
        window's steps. (Reading the last step's alone, the state having seen the whole window, was
        tried: docs/results.md, "Tried, not adopted: a window's last step".)"""
        per_window = self.config.window // self.config.patch
        return steps.reshape(*steps.shape[:-2], -1, per_window, steps.shape[-1]).mean(dim=-2)

    def forward(self, x: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """One window per row: x (B, window, C) → logits (B, K) (mean over the window's steps), state."""
        logits, state = self.step_logits(x, state)
        return logits.mean(dim=1), state

    def set_normalisation(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-3))

    @staticmethod
    def feature_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-feature mean and std of raw samples x (..., C)."""
        f = features(x.reshape(-1, x.shape[-1]))
        return f.mean(dim=0), f.std(dim=0)
