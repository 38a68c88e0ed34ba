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
import pickle
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeGuard

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .config import ModelConfig, Runtime, model_config
from .errors import MissingFileError, UserError
from .model.fit import FiT

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")
_WRAPPER_KEYS = ("ema", "model", "state_dict", "module")
_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model; the message says why."""


def current_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def fsync_path(path: str | Path) -> None:
    """Flush a file's or a folder's contents to the disk (a folder: its entries, e.g. after a rename)."""
    if Path(path).is_dir() and os.name == "nt":
        return  # Windows cannot open a folder for fsync, and its renames need none
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so readers never see half a file.

    The file is on the disk before the rename and the rename after it (else a crash can leave a
    complete name over empty data), and gets the permissions of a plain ``open`` (mkstemp: 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())
        fsync_path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_path(path.parent)


def save_tensors(tensors: dict[str, Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def save_torch(obj: Any, path: str | Path) -> None:
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


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
    state: Any  # what the file holds, a state dict once checked
    if path.suffix == ".safetensors":
        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors' own error type is not part of its API
            raise CheckpointError(
                f"{path} is not a readable safetensors file (truncated or not safetensors: {_first_line(err)})"
            ) from None
    elif path.suffix in PICKLE_SUFFIXES:
        state = load_pickle(path)
    else:
        raise CheckpointError(f"unknown checkpoint format {path.suffix!r} (use .safetensors, .bin or .pt)")
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds a {type(state).__name__}, not a state dict")
    if not _is_state_dict(state):
        names = [entry] if entry else [k for k in _WRAPPER_KEYS if k in state]
        if not names or names[0] not in state:
            raise CheckpointError(f"{path} holds no state dict (keys: {', '.join(map(str, state))[:200]})")
        state = state[names[0]]
        if not isinstance(state, dict) or not _is_state_dict(state):
            raise CheckpointError(f"{path}: its entry {names[0]!r} is not a state dict of named tensors")
    for prefix in _PREFIXES:
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _is_state_dict(state: dict) -> TypeGuard[dict[str, Tensor]]:
    """Whether ``state`` maps names to tensors."""
    return all(isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items())


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def load_pickle(path: str | Path) -> Any:
    """A PyTorch pickle read with ``weights_only=True``: tensors and plain containers, never code."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        # torch's own message suggests weights_only=False, i.e. running whatever the file holds
        text = str(err)
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        detail = re.search(r"WeightsUnpickler error:\s*([^\n.]+)", text)
        what = f" (it references {found.group(1)})" if found else f" ({detail.group(1).strip()})" if detail else ""
        raise CheckpointError(
            f"{path} contains code or Python objects beyond tensors{what}; it will not be "
            "unpickled, for safety. Convert it to .safetensors in an environment you trust"
        ) from None
    except Exception as err:  # a truncated or foreign file
        raise CheckpointError(f"cannot read {path}: not an intact PyTorch file ({_first_line(err)})") from None


def _listing(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f" ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def load_weights(
    model: nn.Module, state: dict[str, Tensor], source: str = "checkpoint", ignore: Callable[[str], bool] | None = None
) -> None:
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


def save_model_dir(
    directory: str | Path,
    config: ModelConfig,
    weights: dict[str, Tensor],
    ema_weights: dict[str, Tensor] | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write weights (and EMA weights) as safetensors plus the config as JSON."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_tensors(weights, directory / "model.safetensors")
    if ema_weights is not None:
        save_tensors(ema_weights, directory / "ema.safetensors")
    save_json({"model": config.to_dict(), **(extra or {})}, directory / "config.json")
    return directory


def read_config_json(directory: str | Path) -> dict[str, Any]:
    """A checkpoint folder's config.json, or a CheckpointError that says what is wrong with it."""
    file = Path(directory) / "config.json"
    if not file.is_file():
        raise CheckpointError(f"{directory} is not a fitv2 checkpoint folder (no config.json)")
    try:
        data = json.loads(file.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({_first_line(err)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{file} holds no model config")
    return data


def read_model_config(directory: str | Path) -> ModelConfig:
    file = Path(directory) / "config.json"
    try:
        return ModelConfig.from_dict(read_config_json(directory)["model"])
    except CheckpointError:
        raise
    except (UserError, TypeError) as err:
        raise CheckpointError(f"{file}: {err}") from None


def weights_file(directory: str | Path, weights: str = "ema") -> Path:
    """The weights file of a checkpoint folder: ``<weights>.safetensors``, else ``model.safetensors``."""
    file = Path(directory) / f"{weights}.safetensors"
    return file if file.is_file() else Path(directory) / "model.safetensors"


def load_model(
    path: str | Path,
    preset: str | None = None,
    weights: str = "ema",
    device: str | torch.device = "cpu",
    runtime: Runtime = Runtime(),
    **overrides: Any,
) -> FiT:
    """A model from a checkpoint folder of this project (its config.json decides the
    architecture), or a reference weights file plus a preset name.

    weights: 'ema' (default, falls back to 'model' when there is no EMA) or 'model'.
    runtime: how the model runs by default (attention kernel, unpadding); not part of the weights.
    overrides: ModelConfig fields to change (e.g. num_classes for a released checkpoint).
    """
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"checkpoint not found: {path}")
    if path.is_dir():
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
    model = FiT(config, runtime)
    load_weights(model, read_state_dict(file), source=str(file))
    return model.to(device).eval()
