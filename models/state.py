"""Per-device recurrent state and ONE batched forward pass for every device whose window is ready."""

from __future__ import annotations

import numpy as np
import torch

from models.rnn import HARNet

# Windows per forward pass: a larger batch is split. Measured (default.pt, one thread, 2,500 devices):
# 42.0 µs per window in one pass of 2,500, 33–34 µs in passes of 512 or 1,024 (cache), 37 at 256; and
# one pass of 5,000 windows raised the process's peak memory by 108 MB (22 kB per window of
# activations, kept by the allocator), passes of 256 by nothing measurable.
MAX_BATCH = 512

__all__ = ["StateBank", "StatefulClassifier"]


class StateBank:
    """The recurrent state of every device, in preallocated tensors indexed by slot.

    A device gets a slot the first time it is seen; ``evict`` frees it. Gathering and scattering
    are single ``index_select`` / ``index_copy_`` calls, whatever the number of devices.
    """

    def __init__(self, model: HARNet, capacity: int = 64) -> None:
        self.model = model
        self._slots: dict[str, int] = {}
        self._free: list[int] = []
        self._tensors = list(model.initial_state(capacity))  # each (layers, capacity, hidden)

    def __len__(self) -> int:
        return len(self._slots)

    def __contains__(self, device: str) -> bool:
        return device in self._slots

    @property
    def capacity(self) -> int:
        return self._tensors[0].shape[1]

    def slots(self, devices: list[str]) -> torch.Tensor:
        """Slot indices of ``devices``, assigning fresh (zero) state to new ones."""
        out = []
        for device in devices:
            slot = self._slots.get(device)
            if slot is None:
                slot = self._assign()
                self._slots[device] = slot
            out.append(slot)
        return torch.tensor(out, dtype=torch.long)

    def _assign(self) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._slots)
            if slot >= self.capacity:
                grow = self.model.initial_state(self.capacity)
                self._tensors = [torch.cat([t, g], dim=1) for t, g in zip(self._tensors, grow, strict=True)]
        for t in self._tensors:
            t[:, slot].zero_()
        return slot

    def gather(self, slots: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(t.index_select(1, slots) for t in self._tensors)

    def scatter(self, slots: torch.Tensor, state: tuple[torch.Tensor, ...]) -> None:
        for t, s in zip(self._tensors, state, strict=True):
            t.index_copy_(1, slots, s)

    def get(self, device: str) -> tuple[torch.Tensor, ...]:
        """A copy of one device's state, each (layers, 1, hidden)."""
        slot = torch.tensor([self._slots[device]])
        return tuple(t.clone() for t in self.gather(slot))

    @torch.inference_mode()
    def set(self, device: str, state: tuple[torch.Tensor, ...]) -> None:
        # the bank's tensors become inference tensors when it grows inside a forward pass
        self.scatter(self.slots([device]), state)

    def evict(self, device: str) -> None:
        slot = self._slots.pop(device, None)
        if slot is not None:
            self._free.append(slot)

    def devices(self) -> list[str]:
        return list(self._slots)


class StatefulClassifier:
    """The one code path that classifies: the consumer, ``evaluate`` and the benchmarks use it."""

    def __init__(self, model: HARNet, version: str = "unknown") -> None:
        self.model = model.eval()
        self.version = version
        self.bank = StateBank(model)
        self.classes = list(model.config.classes)
        self.adapters = None  # models.personal.DeviceAdapters: per-device adapters, when personal
        self.orienter = None  # models.orientation.Orienter: turns devices worn turned (Pipeline applies it)
        if getattr(model, "orientation", None) is not None and model.config.gyro:
            from models.orientation import Orienter
            self.orienter = Orienter(model.orientation)

    def set_model(self, model: HARNet, version: str) -> None:
        """Swap in new weights of the same architecture; per-device state is kept."""
        if model.config.to_dict() != self.model.config.to_dict():
            raise ValueError("new model has a different architecture; state cannot be carried over")
        self.model = model.eval()
        self.bank.model = self.model
        self.version = version

    @torch.inference_mode()
    def classify(self, devices: list[str], windows: np.ndarray) -> np.ndarray:
        """One window per device, ``windows`` (B, window, C) (C: input channels) → probabilities (B, K).

        Each device's state is advanced by its window. A device must appear once per call.
        """
        return self.classify_with_state(devices, windows)[0]

    @torch.inference_mode()
    def classify_with_state(self, devices: list[str], windows: np.ndarray
                            ) -> tuple[np.ndarray, tuple[torch.Tensor, ...]]:
        """As ``classify``, also returning the state before the windows, each (layers, B, hidden)."""
        slots = self.bank.slots(devices)
        state = self.bank.gather(slots)
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        if len(devices) <= MAX_BATCH:
            return self._forward(devices, slots, x, state), state
        probs = [self._forward(devices[a:a + MAX_BATCH], slots[a:a + MAX_BATCH], x[a:a + MAX_BATCH],
                               tuple(s[:, a:a + MAX_BATCH] for s in state))
                 for a in range(0, len(devices), MAX_BATCH)]
        return np.concatenate(probs), state

    def _forward(self, devices: list[str], slots: torch.Tensor, x: torch.Tensor,
                 state: tuple[torch.Tensor, ...]) -> np.ndarray:
        bias = None
        if self.adapters is not None:
            x, bias = self.adapters.apply(devices, x)
        logits, new_state = self.model(x, state)
        if bias is not None:
            logits = logits + bias
        self.bank.scatter(slots, new_state)
        return torch.softmax(logits, dim=-1).numpy()
