"""Checkpoint I/O: released reference state dicts, this project's checkpoint folders, atomic writes.

A model folder holds ``model.safetensors`` (and ``ema.safetensors`` when trained with EMA)
plus ``config.json``, the resolved :class:`ModelConfig`, so loading needs nothing else.
A released FiTv2 checkpoint (a bare state dict in ``.safetensors``, or ``.bin``/``.pt``
read with ``torch.load(weights_only=True)``) loads with a preset name. Every load checks
keys and shapes strictly and names all problems in one error.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import ModelConfig, model_config
from .model.fit import FiT

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_WRAPPER_KEYS = ("ema", "model", "state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_tensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_json(data: Any, path: str | Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True)
            f.write("\n")

    atomic_write(path, write)


def read_state_dict(path: str | Path, entry: str | None = None) -> dict[str, Tensor]:
    """Tensors of a weights file. Pickles are read with weights_only=True (no code runs).

    A file that wraps the weights (``{"ema": ..., "model": ...}``) gives ``entry`` if named,
    else the first of ema / model / state_dict / module present. 'module.' and '_orig_mod.'
    prefixes (DDP, torch.compile) are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    if path.suffix == ".safetensors":
        state = load_file(str(path))
    elif path.suffix in PICKLE_SUFFIXES:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # an unsafe or broken pickle
            raise CheckpointError(f"cannot read {path} with weights_only=True: {err}") from err
    else:
        raise CheckpointError(f"unknown checkpoint format {path.suffix!r} (use .safetensors, .bin or .pt)")
    if not all(isinstance(v, Tensor) for v in state.values()):
        names = [entry] if entry else [k for k in _WRAPPER_KEYS if k in state]
        if not names or names[0] not in state:
            raise CheckpointError(f"{path} holds no state dict (keys: {', '.join(map(str, state))[:200]})")
        state = state[names[0]]
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    return state


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(model: nn.Module, state: dict[str, Tensor], source: str = "checkpoint",
                 ignore: Callable[[str], bool] | None = None) -> None:
    """Strictly load ``state`` into ``model`` (cast to the parameters' dtype).

    ``ignore(key)`` marks keys left out of the check on both sides (e.g. BatchNorm counters).
    """
    expected = model.state_dict()
    if ignore is not None:
        expected = {k: v for k, v in expected.items() if not ignore(k)}
        state = {k: v for k, v in state.items() if not ignore(k)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(
        f"{k} {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong:
        lines = [f"{source} does not fit the model:"]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if wrong:
            lines.append(f"  wrong shapes ({len(wrong)}): {_listing(wrong, 6)}")
        lines.append("  (is the preset or config right for these weights?)")
        raise CheckpointError("\n".join(lines))
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=ignore is None)


def save_model_dir(directory: str | Path, config: ModelConfig, weights: dict[str, Tensor],
                   ema_weights: dict[str, Tensor] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write weights (and EMA weights) as safetensors plus the config as JSON."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(weights, directory / "model.safetensors")
    if ema_weights is not None:
        save_tensors(ema_weights, directory / "ema.safetensors")
    save_json({"model": config.to_dict(), **(extra or {})}, directory / "config.json")
    return directory


def read_model_config(directory: str | Path) -> ModelConfig:
    data = json.loads((Path(directory) / "config.json").read_text())
    return ModelConfig.from_dict(data["model"])


def weights_file(directory: str | Path, weights: str = "ema") -> Path:
    """The weights file of a checkpoint folder: ``<weights>.safetensors``, else ``model.safetensors``."""
    file = Path(directory) / f"{weights}.safetensors"
    return file if file.is_file() else Path(directory) / "model.safetensors"


def load_model(path: str | Path, preset: str | None = None, weights: str = "ema",
               device: str | torch.device = "cpu", **overrides: Any) -> FiT:
    """A model from a checkpoint folder of this project (its config.json decides the
    architecture), or a reference weights file plus a preset name.

    weights: 'ema' (default, falls back to 'model' when there is no EMA) or 'model'.
    overrides: ModelConfig fields to change (e.g. num_classes for a released checkpoint).
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise CheckpointError(f"{path} is not a fitv2 checkpoint folder (no config.json)")
        config = read_model_config(path)
        config = config.replace(**overrides) if overrides else config
        file = weights_file(path, weights)
    else:
        if preset is None:
            raise CheckpointError(f"{path} is a bare weights file: name its preset (e.g. FiTv2-XL/2)")
        try:
            config = model_config(preset, **overrides)
        except KeyError as err:
            raise CheckpointError(str(err.args[0])) from err
        file = path
    model = FiT(config)
    load_weights(model, read_state_dict(file), source=str(file))
    return model.to(device).eval()
