"""Checkpoints: one file with the weights and everything needed to use them.

The file is a ``torch.save`` of plain containers and tensors, loaded with ``weights_only=True``:
loading never executes code from the file.
"""

from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import fields
from importlib import resources
from pathlib import Path

import torch

from models.rnn import HARNet, ModelConfig
from stream.recording import sync_directory  # noqa: F401 (stream.persist and the consumer import it from here)

__all__ = ["CheckpointError", "save_checkpoint", "write_atomic", "load_checkpoint", "checkpoint_bytes",
           "default_model_path", "stored_config", "FORMAT", "VERSION"]

FORMAT = "harstream.checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a usable harstream checkpoint."""


def _model_version(model: HARNet) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().numpy().tobytes())
    return digest.hexdigest()[:10]


def save_checkpoint(path: str | Path, model: HARNet, metadata: dict | None = None) -> str:
    """Write ``model`` to ``path`` (``write_atomic``); returns its version (a hash of the weights)."""
    data, version = checkpoint_bytes(model, metadata)
    write_atomic(Path(path), data)
    return version


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all, even across a power cut: a temporary file, synced, renamed over
    ``path``, then the directory synced (so the rename itself is on disk). A write that fails leaves no
    temporary file behind: on a full disk a half-written one held the space that was left."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        tmp.replace(path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)




def checkpoint_bytes(model: HARNet, metadata: dict | None = None) -> tuple[bytes, str]:
    """The checkpoint file's bytes and the model's version (a hash of the weights)."""
    version = _model_version(model)
    blob = {
        "format": FORMAT,
        "format_version": VERSION,
        "model_version": version,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        # optional (absent in older files): window features of the training data, for choosing how a
        # device is worn (models.orientation)
        **({"orientation": {k: torch.tensor(v) for k, v in model.orientation.to_dict().items()}}
           if getattr(model, "orientation", None) is not None else {}),
        "metadata": {"saved_at": time.time(), **(metadata or {})},
    }
    buffer = io.BytesIO()
    torch.save(blob, buffer)
    return buffer.getvalue(), version


def load_checkpoint(path: str | Path | bytes) -> tuple[HARNet, dict]:
    """Load a checkpoint (a file, or its bytes); returns the model in eval mode and
    ``{"version", "metadata", "path"}``."""
    source = io.BytesIO(path) if isinstance(path, bytes) else Path(path)
    path = "<checkpoint bytes>" if isinstance(path, bytes) else source
    try:
        blob = torch.load(source, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint") from None
    except Exception as exc:  # pickle errors, refused globals, truncated files
        # its first sentence only: torch's advice that follows (weights_only=False) would run code from the file
        first = str(exc).strip().split(". ")[0].splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"{path}: not a harstream checkpoint ({type(exc).__name__}: {first})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a harstream checkpoint (no '{FORMAT}' marker)")
    if blob.get("format_version") != VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {blob.get('format_version')!r}, this harstream reads "
            f"version {VERSION}; retrain with `harstream train` or use a matching harstream release"
        )
    try:
        config = stored_config(blob["config"])
        model = HARNet(config)
        model.load_state_dict(blob["state_dict"])
        if blob.get("orientation") is not None:
            from models.orientation import Reference
            if not config.gyro:
                raise ValueError("an orientation reference needs a model that reads the gyroscope")
            model.orientation = Reference.from_dict({k: v.numpy() for k, v in blob["orientation"].items()})
    except (TypeError, KeyError, RuntimeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path}: checkpoint does not match the model ({exc})") from None
    # as written (a hash, a dict); weights_only reads a tensor there too: as the version, every prediction's
    # publication failed (it is no JSON)
    version, metadata = blob.get("model_version", "unknown"), blob.get("metadata", {})
    if not isinstance(version, str) or not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: checkpoint with a version that is no string or metadata that is no dict")
    model.eval()
    return model, {"version": version, "metadata": metadata, "path": str(path)}


def stored_config(config: dict) -> ModelConfig:
    """A checkpoint's ``config`` as a ``ModelConfig``: a field added to ModelConfig since the file was
    written takes its default, except ``front``: files from before it existed are all of the linear front
    end (the default is now conv). Raises TypeError or ValueError for a config that is none: a field of
    another type than ``ModelConfig``'s (``torch.load(weights_only=True)`` reads a tensor there too: a float
    one as the window made the model, then every window it served, fail)."""
    if not isinstance(config, dict):
        raise TypeError(f"config: a dict expected, not {type(config).__name__}")
    kinds = {f.name: f.type for f in fields(ModelConfig)}
    plain = {"int": lambda v: type(v) is int, "float": lambda v: type(v) in (int, float),
             "str": lambda v: type(v) is str,
             "tuple[str, ...]": lambda v: isinstance(v, (list, tuple)) and all(type(c) is str for c in v)}
    for key, value in config.items():  # an unknown field: ModelConfig's TypeError
        if not plain.get(kinds.get(key), lambda v: not isinstance(v, torch.Tensor))(value):
            raise TypeError(f"config field {key!r}: {kinds.get(key)} expected, not {type(value).__name__}")
    return ModelConfig(**{"front": "linear", **config})


def default_model_path() -> Path:
    """The small model that ships with the package."""
    return Path(str(resources.files("models") / "default.pt"))
