"""Personal adaptation: a small per-device adapter on the shared network.

Each device that sends labels gets an affine map of its input (``x M^T + b``: 9 + 3 numbers, enough
to undo a strap turned round the wrist, a sensor on the other wrist or a different gain) and a bias on
its class scores (K numbers: what this person does most). The shared network is untouched: an
adapter only changes its own device's predictions, so one person's odd habits never leak into the
others, and a device without labels is served exactly as before.

Adapters learn from the same labelled sequences as the shared learner (:class:`models.finetune.
Sequence`: consecutive windows with the state the device had before them), with truncated BPTT
through the frozen network and gradients for the adapter alone. Each update is tested first
(prequential): a device's adapter is used for serving only while it does better than no adapter
on that device's most recent labelled windows it had not yet trained on; a tie serves the plain
network (serving ties cost the devices worn as in training: docs/personal.md).

Memory: nothing for a device without labels; for one with, measured with the shipped model
(2026-12-07): about 77 kB in the learner process (the adapter, its optimiser's moments and the last
sequences it replays) and 7 kB in the serving process. ``max_devices`` (10,000 by default: about 0.8 GB
in the learner) bounds it; the least recently updated adapter is dropped beyond.
"""

from __future__ import annotations

import itertools
import math
import threading
from collections import deque
from dataclasses import dataclass

import torch
from torch import nn

from models.rnn import HARNet

__all__ = ["AdapterConfig", "DeviceAdapters"]


def _cube_rotations() -> torch.Tensor:
    """The 24 rotations that map the axes onto the axes (signed permutation matrices, det +1)."""
    out = []
    for perm in itertools.permutations(range(3)):
        for signs in itertools.product((1.0, -1.0), repeat=3):
            m = torch.zeros(3, 3)
            for row, (col, sign) in enumerate(zip(perm, signs, strict=True)):
                m[row, col] = sign
            if torch.det(m) > 0:
                out.append(m)
    return torch.stack(out)


CUBE = _cube_rotations()  # (24, 3, 3); the first is the identity


def affine(x: torch.Tensor, M: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """x (..., 3) m/s² → x M^T + b. With the gyroscope after it, x (..., 6): the gyroscope is turned
    by the same M (both sensors sit on one board, so a strap turned round the wrist turns both) but
    gets no offset. M may be batched (n, 3, 3) with x (n, T, C) and b (n, 1, 3)."""
    Mt = M.transpose(-1, -2)
    if x.shape[-1] == 3:
        return x @ Mt + b
    return torch.cat([x[..., :3] @ Mt + b, x[..., 3:] @ Mt], dim=-1)


@dataclass
class AdapterConfig:
    lr: float = 0.02  # Adam step size for the adapter's few numbers
    clip: float = 1.0  # gradient norm clipping
    steps: int = 2  # optimiser steps per labelled sequence
    memory: int = 8  # the device's most recent labelled sequences, trained on together
    search: bool = True  # also try the 24 axis-aligned turns, a gradient cannot cross a half turn
    class_bias: bool = False  # learn a per-device bias on the class scores too (it learns the current
    # set's exercise and then gets the next set wrong: off unless labels are spread over exercises)
    compare_windows: int = 16  # recent untrained windows over which adapted and plain are compared
    max_devices: int = 10_000  # adapters kept; the least recently updated is dropped beyond


class _Adapter:
    __slots__ = ("M", "b", "c", "_optimiser", "scores", "active", "updates", "memory", "lr")

    def __init__(self, k: int, cfg: AdapterConfig) -> None:
        self.M = torch.eye(3, requires_grad=True)
        self.b = torch.zeros(3, requires_grad=True)
        self.c = torch.zeros(k, requires_grad=True)
        self.lr = cfg.lr
        # made when it first learns: the serving process's copies never learn, and the first Adam of a
        # process costs 0.9 s of lazy imports (a stall on the serving thread)
        self._optimiser: torch.optim.Adam | None = None
        self.scores: deque[tuple[int, int]] = deque(maxlen=cfg.compare_windows)  # (plain ok, adapted ok)
        self.memory: deque[tuple[torch.Tensor, torch.Tensor, tuple]] = deque(maxlen=cfg.memory)
        self.active = False  # served only once it has shown it helps
        self.updates = 0

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., 3) in m/s² (or (..., 6) with the gyroscope) -> adapted x."""
        return affine(x, self.M, self.b)

    def jump(self, M: torch.Tensor) -> None:
        with torch.no_grad():
            self.M.copy_(M)
        self._optimiser = None  # its moments belonged to the map it jumped from

    @property
    def optimiser(self) -> torch.optim.Adam:
        if self._optimiser is None:
            self._optimiser = torch.optim.Adam([self.M, self.b, self.c], lr=self.lr)
        return self._optimiser


class DeviceAdapters:
    """Per-device adapters: ``apply`` on the serving path, ``learn`` in the learner (in the consumer, a
    process of its own: the serving process keeps a copy, ``load_state_dict`` after each update)."""

    def __init__(self, classes: int, config: AdapterConfig | None = None, names: tuple[str, ...] | None = None) -> None:
        self.config = config or AdapterConfig()
        self.k = classes
        # the model's class names, when known: saved with the adapters, and a file of other names is not
        # loaded (a model of as many classes but others: its class biases would name the wrong ones)
        self.names = None if names is None else tuple(names)
        if self.names is not None and len(self.names) != classes:
            raise ValueError(f"{len(self.names)} class names for {classes} classes")
        self._adapters: dict[str, _Adapter] = {}
        # what serving reads: device -> (M (3, 3), b (3), c (K)); entries are replaced, never mutated
        self._serving: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._lock = threading.Lock()
        self.updates = 0
        self.skipped = 0
        self.jumps = 0  # times a device's adapter jumped to another axis-aligned turn
        self.turned = 0  # times a device's adapter was re-expressed for its device turned anew (``turn``)
        # every change to the adapters (learnt, loaded, turned, dropped) counts one; ``save`` notes the count it
        # wrote, so that a checkpoint rewrites the file only when something changed since (``unsaved``)
        self._changes = 0
        self._saved_changes = 0

    def __len__(self) -> int:
        return len(self._serving)

    def devices(self) -> list[str]:
        return list(self._serving)

    @property
    def unsaved(self) -> bool:
        """Whether the adapters changed since ``save`` last wrote them, or since they were made or ``load`` read
        them into an empty set (a device's adapter learnt, loaded, turned or dropped). ``updates`` and ``turned``
        count for the whole life: a checkpoint that saved whenever they were not 0 rewrote every adapter every
        30 s once one had ever learnt (3.5 s on the serving thread and 11 MB at 10,000 adapters)."""
        return self._changes != self._saved_changes

    # -- serving ---------------------------------------------------------------------------------
    def apply(self, devices: list[str], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, window, C) -> (adapted x, logit bias (B, K), or None when no device in the batch has an
        adapter or adapters learn no class bias)."""
        serving = self._serving
        if not serving:
            return x, None
        rows = [(i, serving[d]) for i, d in enumerate(devices) if d in serving]
        if not rows:
            return x, None
        x = x.clone()
        idx = torch.tensor([i for i, _ in rows])
        M = torch.stack([m for _, (m, _, _) in rows])  # (n, 3, 3)
        b = torch.stack([v for _, (_, v, _) in rows])  # (n, 3)
        x[idx] = affine(x[idx], M, b[:, None, :])
        if not self.config.class_bias:  # the class scores are left alone: nothing to add
            return x, None
        bias = torch.zeros(len(devices), self.k)
        bias[idx] = torch.stack([c for _, (_, _, c) in rows])
        return x, bias

    def transform(self, device: str, windows: torch.Tensor) -> torch.Tensor:
        """A device's windows (..., C) as its serving adapter sees them (unchanged without one)."""
        entry = self._serving.get(device)
        return windows if entry is None else affine(windows, entry[0], entry[1])

    def turn(self, device: str, Q) -> None:
        """The device's windows come turned by ``Q`` (3, 3) more from now on (the orientation step chose a
        new turn: ``models.orientation.Orienter.on_turn``): its adapter is re-expressed for them (M becomes
        M Q^T, both sensors) and so are the windows it keeps to learn from, so that the network sees what
        it saw and the comparison that decides whether it is served still holds. An adapter fitted to the
        old turn and applied on top of the new one served the device turned twice."""
        adapter = self._adapters.get(device)
        if adapter is None:
            return
        Q = torch.as_tensor(Q, dtype=torch.float32)
        zero = torch.zeros(3)
        with torch.no_grad():
            adapter.M.copy_(adapter.M @ Q.T)
        adapter._optimiser = None  # its moments belonged to the map in the old coordinates
        self.turned += 1
        self._changes += 1
        adapter.memory = deque(((affine(w, Q, zero), y, s) for w, y, s in adapter.memory), maxlen=adapter.memory.maxlen)
        with self._lock:
            if device in self._serving:
                self._serving[device] = (adapter.M.detach().clone(), adapter.b.detach().clone(),
                                         adapter.c.detach().clone())

    def forget(self, device: str) -> None:
        with self._lock:
            dropped = self._adapters.pop(device, None)
            self._serving.pop(device, None)
        if dropped is not None:
            self._changes += 1

    # -- learning --------------------------------------------------------------------------------
    def learn(self, model: HARNet, device: str, windows: torch.Tensor, targets: torch.Tensor,
              state: tuple[torch.Tensor, ...]) -> dict | None:
        """Test, then train the device's adapter on one labelled sequence.

        windows (L, window, C) (m/s², then rad/s with the gyroscope), as the device sent them;
        targets (L,) class index or -1; state: the device's state before the first window, each
        (layers, hidden).
        Returns a report (loss, grad norm, clipped, skipped, active) or None without labels.
        """
        known = targets >= 0
        if not known.any():
            return None
        cfg = self.config
        adapter = self._adapters.get(device)
        if adapter is None:
            adapter = self._adapters[device] = _Adapter(self.k, cfg)
            self._changes += 1
            if len(self._adapters) > cfg.max_devices:
                self.forget(next(iter(self._adapters)))
        else:  # most recently updated last, for the bound above
            self._adapters[device] = self._adapters.pop(device)
        was_training = model.training
        model.eval()  # no dropout: the adapter fits the network that serves
        loss_fn = nn.CrossEntropyLoss(ignore_index=-1)

        def logits_of(x: torch.Tensor, h0: tuple, M: torch.Tensor | None, bias: bool) -> torch.Tensor:
            """x (B, L, window, C) -> per-window logits (B, L, K), through M (or none) and the bias."""
            B, L = x.shape[:2]
            xs = x.reshape(B, -1, x.shape[-1])
            if M is not None:
                xs = affine(xs, M, adapter.b)
            steps, _ = model.step_logits(xs, h0)
            out = model.window_logits(steps)  # (B, L, K)
            return out + adapter.c if bias else out

        # test: the plain network against the adapter as it is now, on windows neither trained on
        x1, h1 = windows.unsqueeze(0), tuple(s.unsqueeze(1) for s in state)
        with torch.no_grad():
            plain = logits_of(x1, h1, None, False)[0].argmax(-1)
            adapted = logits_of(x1, h1, adapter.M, True)[0].argmax(-1)
        for p, a, y in zip(plain[known], adapted[known], targets[known], strict=True):
            adapter.scores.append((int(p == y), int(a == y)))
        # then train on the device's recent sequences: the network is frozen, the adapter learns
        adapter.memory.append((windows, targets, state))
        same = [m for m in adapter.memory if m[0].shape == windows.shape]
        x = torch.stack([m[0] for m in same])  # (B, L, window, C)
        y = torch.stack([m[1] for m in same])  # (B, L)
        h0 = tuple(torch.stack([m[2][i] for m in same], dim=1) for i in range(len(state)))
        if cfg.search:  # try every axis-aligned turn of the current map: a gradient cannot get there
            with torch.no_grad():
                candidates = torch.cat([adapter.M.detach()[None], CUBE @ adapter.M.detach()])  # (25, 3, 3)
                n = len(candidates)
                big = x.repeat(n, 1, 1, 1)
                Ms = candidates.repeat_interleave(len(same), dim=0)  # (n*B, 3, 3), candidate-major like big
                logits = logits_of(big, tuple(h.repeat(1, n, 1) for h in h0), Ms, True)
                losses = nn.functional.cross_entropy(logits.reshape(-1, self.k), y.repeat(n, 1).reshape(-1),
                                                     ignore_index=-1, reduction="none")
                losses = losses.reshape(n, -1).mean(dim=1)
            best = int(losses.argmin())
            if best != 0 and losses[best] < 0.8 * losses[0]:
                adapter.jump(candidates[best])
                self.jumps += 1
        params = [adapter.M, adapter.b] + ([adapter.c] if cfg.class_bias else [])
        loss_value, norm, skipped = float("nan"), float("nan"), False
        for _ in range(cfg.steps):
            loss = loss_fn(logits_of(x, h0, adapter.M, True).reshape(-1, self.k), y.reshape(-1))
            grads = torch.autograd.grad(loss, params)
            norm = float(torch.sqrt(sum((g * g).sum() for g in grads)))
            if not (math.isfinite(norm) and math.isfinite(float(loss.detach()))):
                skipped = True
                self.skipped += 1
                adapter.memory.pop()  # kept, it would spoil every later update of the device
                break
            scale = min(1.0, cfg.clip / (norm + 1e-12))
            for p, g in zip(params, grads, strict=True):
                p.grad = g * scale
            adapter.optimiser.step()
            adapter.optimiser.zero_grad(set_to_none=True)
            loss_value = float(loss.detach())
        model.train(was_training)
        adapter.updates += 1
        self.updates += 1
        self._changes += 1
        plain_ok = sum(p for p, _ in adapter.scores)
        adapted_ok = sum(a for _, a in adapter.scores)
        adapter.active = len(adapter.scores) >= cfg.compare_windows // 2 and adapted_ok > plain_ok
        with self._lock:  # one assignment: serving reads the dict without a lock
            if adapter.active:
                self._serving[device] = (adapter.M.detach().clone(), adapter.b.detach().clone(),
                                         adapter.c.detach().clone())
            else:
                self._serving.pop(device, None)
        return {"device": device, "loss": loss_value, "grad_norm": norm, "clipped": norm > cfg.clip,
                "skipped": skipped, "active": adapter.active, "plain_accuracy": plain_ok / len(adapter.scores),
                "adapted_accuracy": adapted_ok / len(adapter.scores)}

    # -- checkpoints -----------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {d: self._entry(a) for d, a in self._adapters.items()}

    def entry(self, device: str) -> dict | None:
        """One device's part of ``state_dict`` (None without an adapter)."""
        adapter = self._adapters.get(device)
        return None if adapter is None else self._entry(adapter)

    @staticmethod
    def _entry(a: _Adapter) -> dict:
        # scores: the comparison that decides ``active``, kept so that a restored adapter goes on being
        # judged on the device's recent windows (without them one sequence, too few, withdrew it)
        return {"M": a.M.detach().clone(), "b": a.b.detach().clone(), "c": a.c.detach().clone(),
                "active": a.active, "scores": torch.tensor(list(a.scores), dtype=torch.int8).reshape(-1, 2)}

    def load_state_dict(self, state: dict, checked: bool = False) -> None:
        """Set these devices' adapters (as ``state_dict`` gives them); each is served as its ``active``
        says, whatever was served for the device before (the serving process's copy of a learner's
        adapters follows them so). ``checked``: their classes and finiteness were checked for all at once."""
        with torch.no_grad():
            for device, s in state.items():
                if checked or s["c"].shape[0] == self.k and all(bool(torch.isfinite(s[k]).all()) for k in "Mbc"):
                    self._load_one(device, s)
                # else another model's classes, or a map of NaN that would serve the device NaN (the learner
                # never makes one)

    def _load_one(self, device: str, s: dict) -> None:
        adapter = _Adapter(self.k, self.config)
        adapter.M.copy_(s["M"])
        adapter.b.copy_(s["b"])
        adapter.c.copy_(s["c"])
        adapter.active = bool(s["active"])
        scores = s.get("scores")  # absent in files of older harstream
        if scores is not None:
            pairs = torch.as_tensor(scores).reshape(-1, 2).tolist()  # plain ints: no tensor per element
            adapter.scores.extend((int(p != 0), int(a != 0)) for p, a in pairs)
        self._adapters.pop(device, None)  # most recently updated last, as the learner orders them
        self._adapters[device] = adapter
        self._changes += 1
        with self._lock:
            if adapter.active:
                # the adapter's own float32 copies: a file's float64 stopped the batched pass of every device
                self._serving[device] = (adapter.M.detach().clone(), adapter.b.detach().clone(),
                                         adapter.c.detach().clone())
            else:
                self._serving.pop(device, None)
        # the learner keeps max_devices and drops the least recently updated beyond: the serving
        # process's copy (updated in the same order) and adapters read from a file drop the same
        while len(self._adapters) > self.config.max_devices:
            self.forget(next(iter(self._adapters)))

    def save(self, path) -> None:
        """Write every adapter to ``path`` atomically (a plain tensor file, loadable without code); from then on
        they are ``unsaved`` only once they change again (a failed write leaves them unsaved, to be tried again).
        The file keeps each part of the adapters stacked for all devices (version 2): torch.save pickles every
        tensor as an object of its own, and one dict of five tensors a device (version 1, still read) took
        3.5-5.3 s to save 10,000 adapters, on the serving thread at every checkpoint, and 10 s to load."""
        import io
        from pathlib import Path

        from models.checkpoint import write_atomic
        changes = self._changes  # a change made while this one writes is written by the next
        buffer = io.BytesIO()
        torch.save(self._stacked(), buffer)
        write_atomic(Path(path), buffer.getvalue())
        self._saved_changes = changes

    def _stacked(self) -> dict:
        """The adapters as version 2 of the file keeps them: ``devices`` (names, least recently updated first, as
        ``_adapters`` orders them), M (n, 3, 3), b (n, 3), c (n, K), active (n,) bool, and the comparisons that
        decide ``active``: every device's (plain ok, adapted ok) pairs one after the other in ``scores`` (S, 2)
        int8, ``scored`` (n,) saying how many are each device's."""
        adapters = list(self._adapters.items())
        with torch.no_grad():
            def stack(part: str, shape: tuple) -> torch.Tensor:  # no grad: no detach a tensor (30,000 calls)
                tensors = [getattr(a, part) for _, a in adapters]
                return torch.stack(tensors) if tensors else torch.zeros((0, *shape))
            blob = {"format": FILE_FORMAT, "version": FILE_VERSION, "classes": self.k,
                    "devices": [d for d, _ in adapters],
                    "M": stack("M", (3, 3)), "b": stack("b", (3,)), "c": stack("c", (self.k,)),
                    "active": torch.tensor([a.active for _, a in adapters], dtype=torch.bool),
                    "scores": torch.tensor([p for _, a in adapters for p in a.scores], dtype=torch.int8).reshape(-1, 2),
                    "scored": torch.tensor([len(a.scores) for _, a in adapters], dtype=torch.int64)}
        if self.names is not None:
            blob["names"] = list(self.names)
        return blob

    def load(self, path, keep=None) -> int:
        """Read adapters saved by ``save`` (either version of the file); returns how many (0 when the file is
        missing or another model's). A file that cannot be read as adapters (empty, truncated, foreign,
        malformed, of a version this harstream does not know) is warned about and none are loaded: the devices
        learn theirs again. Read into an empty set, they are not ``unsaved``: the file holds them. ``keep(path,
        why)``: given, it is called on such a file before the warning, and what it returns ends it (the consumer
        renames the file aside: its first save would overwrite it)."""
        import logging
        from pathlib import Path
        path = Path(path)
        if not path.exists():
            return 0
        empty = not self._adapters
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(blob, dict) or blob.get("format") != FILE_FORMAT:
                raise ValueError("not a harstream adapters file")
            version = blob.get("version", 1)  # files of older harstream have none
            if version not in (1, FILE_VERSION):
                raise ValueError(f"version {version} of the adapters file (this harstream reads 1 and {FILE_VERSION}: "
                                 f"written by a newer one?)")
            if blob.get("classes") != self.k:
                return 0
            names = blob.get("names")  # absent in files of older harstream: the count is all they say
            if names is not None and self.names is not None and tuple(names) != self.names:
                logging.getLogger(__name__).warning(
                    "not loading device adapters from %s: they are of a model of classes %s, this one's are %s",
                    path, names, list(self.names))
                return 0
            adapters = blob["adapters"] if version == 1 else _unstacked(blob, self.k)
            if not isinstance(adapters, dict) or not all(
                    isinstance(e, dict) and "active" in e and all(isinstance(e.get(k), torch.Tensor) for k in "Mbc")
                    and e["M"].shape == (3, 3) and e["b"].shape == (3,) and e["c"].dim() == 1
                    and (e.get("scores") is None or isinstance(e["scores"], torch.Tensor) and e["scores"].dim() == 2
                         and e["scores"].shape[1] == 2)
                    for e in adapters.values()):
                raise ValueError("malformed adapters")
            self.load_state_dict(adapters, checked=version != 1)
        except Exception as exc:  # EOFError, UnpicklingError, a zip error, fields missing or malformed
            why = f"{type(exc).__name__}: {exc}"
            kept = keep(path, f"{path}: {why}") if keep is not None else ""
            logging.getLogger(__name__).warning("not loading device adapters from %s (%s): starting without them%s",
                                                path, why, kept)
            return 0
        if empty:
            self._saved_changes = self._changes
        return len(adapters)


FILE_FORMAT = "harstream.adapters"
FILE_VERSION = 2  # 1 (no "version" in the file): a dict of tensors per device; 2: stacked (DeviceAdapters._stacked)


def _dense(value, what: str, floating: bool) -> torch.Tensor:
    """A tensor read from a file as a plain one (dense, on the CPU, no grad, negative bit resolved): float32 where
    ``floating`` (any float dtype taken), else int64 (bool or integer only); a ``TypeError`` naming ``what``
    otherwise (weights_only reads sparse and meta tensors too, whose ops raise)."""
    if not (isinstance(value, torch.Tensor) and value.layout == torch.strided and value.device.type == "cpu"
            and (value.dtype.is_floating_point if floating else not (value.dtype.is_floating_point
                                                                     or value.dtype.is_complex))):
        raise TypeError(f"{what}: a dense {'float' if floating else 'integer'} tensor on the CPU expected")
    return value.detach().resolve_neg().to(torch.float32 if floating else torch.int64)


def _unstacked(blob: dict, k: int) -> dict:
    """Version 2's stacked parts (``DeviceAdapters._stacked``) as ``state_dict`` gives them, a dict per device
    (views of the stacked tensors), but for those ``load_state_dict`` would pass over (checked here for all at
    once): all when their class biases are not ``k`` long, and each one with a number not finite. A
    ``ValueError`` or ``TypeError`` for one malformed."""
    devices = blob["devices"]
    if not (isinstance(devices, list) and all(isinstance(d, str) for d in devices)
            and len(set(devices)) == len(devices)):
        raise ValueError("devices: a list of distinct names expected")
    n = len(devices)
    M, b, c = (_dense(blob[part], part, floating=True) for part in "Mbc")
    active, scores, scored = (_dense(blob[part], part, floating=False) for part in ("active", "scores", "scored"))
    if (M.shape != (n, 3, 3) or b.shape != (n, 3) or c.dim() != 2 or c.shape[0] != n or active.shape != (n,)
            or scores.dim() != 2 or scores.shape[1] != 2 or scored.shape != (n,) or bool((scored < 0).any())
            # each count at most the pairs there are: int64 sums of bigger ones wrap around (three counts of
            # 2**63-1, 2**63-1 and 8 summed to 6, the pairs of a file of 6, and its devices took others' pairs)
            or bool((scored > scores.shape[0]).any()) or int(scored.sum()) != scores.shape[0]):
        raise ValueError(f"stacked adapters of {n} devices: parts of other shapes")
    if c.shape[1] != k:
        return {}  # another model's classes
    finite = (torch.isfinite(M).flatten(1).all(1) & torch.isfinite(b).all(1) & torch.isfinite(c).all(1)).tolist()
    ends = torch.cumsum(scored, 0).tolist()
    starts = [0, *ends[:-1]]
    flags = active.tolist()
    return {d: {"M": M[i], "b": b[i], "c": c[i], "active": flags[i] != 0, "scores": scores[starts[i]:ends[i]]}
            for i, d in enumerate(devices) if finite[i]}
