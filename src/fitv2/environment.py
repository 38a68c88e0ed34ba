"""Checks against this machine and the file system: devices, attention kernels, paths.

Run before any data is read or any model built, so a mistake costs nothing; each raises a
:class:`~fitv2.errors.UserError` that names the option. No torch import until a device is named."""

from __future__ import annotations

from pathlib import Path

from .errors import ConfigError, MissingFileError


def check_device(name: str) -> None:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', and only one this machine has."""
    base, _, index = name.partition(":")
    if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not index.isdigit())):
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps; got {name!r}")
    if base in ("cuda", "mps"):
        import torch

        if base == "cuda" and not torch.cuda.is_available():
            build = "has no CUDA support" if torch.version.cuda is None else "sees no GPU"
            raise ConfigError(f"--device {name}: this torch ({torch.__version__}) {build}; use --device cpu")
        if base == "cuda" and index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        if base == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("--device mps: MPS is not available on this machine; use --device cpu")


def check_output_dir(path: str, what: str = "--out") -> None:
    """An output folder must not be an existing file (or sit below one)."""
    p = Path(path)
    for parent in (p, *p.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{what} {path}: {parent} is a file, not a folder")


def check_attention(name: str, device: str) -> None:
    """An attention kernel this machine can run on ``device``."""
    if name == "auto":
        return
    import torch

    from .model.attention import attention_unavailable

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    why = attention_unavailable(name, device)
    if why is not None:
        raise ConfigError(f"--attention {name} {why}")


def check_exists(path: str, what: str) -> None:
    if not Path(path).exists():
        raise MissingFileError(f"{what} not found: {path}")
