"""The consumer's own checkpoint: per-device recurrent state, sequence numbers and evicted devices.

Written atomically (temporary file, then rename) every ``checkpoint_interval`` seconds and on
SIGTERM; read on start, so that after a restart (even ``kill -9``) each device resumes from the
state it had at the last checkpoint. The fine-tuned serving model is saved beside it as a normal
model checkpoint (``serving.pt``). Sample buffers are not saved: a restarted consumer begins a new
window at each device's next sample.
"""

from __future__ import annotations

import io
import time
from pathlib import Path

import torch

__all__ = ["save_state", "load_state", "STATE_FILE", "SERVING_MODEL"]

STATE_FILE = "consumer-state.pt"
SERVING_MODEL = "serving.pt"
FORMAT = "harstream.consumer-state"
VERSION = 1


def save_state(directory: Path, model_version: str, devices: dict[str, tuple[torch.Tensor, ...]],
               sequences: dict[str, int], evicted: dict[str, tuple[torch.Tensor, ...]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    blob = {
        "format": FORMAT,
        "format_version": VERSION,
        "saved_at": time.time(),
        "model_version": model_version,
        "devices": {d: list(s) for d, s in devices.items()},
        "evicted": {d: list(s) for d, s in evicted.items()},
        "sequences": dict(sequences),
    }
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    path = directory / STATE_FILE
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)
    return path


def load_state(directory: Path) -> dict | None:
    """The saved state, or None when there is none; never executes code from the file."""
    path = directory / STATE_FILE
    if not path.exists():
        return None
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT or blob.get("format_version") != VERSION:
        raise ValueError(f"{path}: not a harstream consumer state of version {VERSION}")
    blob["devices"] = {d: tuple(s) for d, s in blob["devices"].items()}
    blob["evicted"] = {d: tuple(s) for d, s in blob["evicted"].items()}
    return blob
