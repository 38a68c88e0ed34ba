"""Data: sources (image folders, JSONL lists, released latents), ``prepare`` into sharded token
datasets, their compact index, the dataset reader and the batch loader, autoencoders.

    from fitv2.data import TokenDataset, TokenLoader, prepare

The names are imported when first used, so that ``import fitv2.data.sources`` needs no torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TokenDataset": "dataset",
    "TokenLoader": "dataset",
    "Batch": "dataset",
    "DatasetIndex": "index",
    "prepare": "prepare",
    "PrepareReport": "prepare",
}


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)


__all__ = sorted(_EXPORTS)
