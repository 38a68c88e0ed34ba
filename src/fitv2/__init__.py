"""fitv2: FiTv2, the flexible vision transformer for diffusion."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["FiTv2Pipeline", "__version__"]


def __getattr__(name: str) -> Any:
    # Imported on first use: `fitv2 --help` must not pay for torch.
    if name == "FiTv2Pipeline":
        from .pipeline import FiTv2Pipeline

        return FiTv2Pipeline
    raise AttributeError(f"module 'fitv2' has no attribute {name!r}")
