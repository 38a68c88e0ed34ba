"""Starting a run from pretrained weights, and FiTv2's partial fine-tuning for high resolution.

High-resolution post-training (paper §IV-D) freezes most of the network and trains the
patch embedder, every bias, the adaLN(-LoRA and global) modulation and the final layer —
14.15 % of FiTv2-XL/2 — with VisionNTK RoPE computed per image (``rope='vision-ntk'``).
The reference code's key rule ['x_embedder', 'bias', 'LN', 'final_layer'] selects exactly
this set ('LN' matches the adaLN modulation layers; the norms have no parameters).

Its released code also *re-initialises* that subset instead of fine-tuning it (the same
keys are dropped from the pretrained state dict); ``reinit_unfrozen=True`` reproduces that,
the default keeps the pretrained values, as the paper describes.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..checkpoint import load_weights, read_model_config, read_state_dict, weights_file
from ..config import ModelConfig
from ..errors import ConfigError, MissingFileError

PARTIAL_KEYS = ("x_embedder", "bias", "adaLN_modulation", "final_layer")
FINETUNE_MODES = ("full", "partial")


def unfrozen(name: str, mode: str) -> bool:
    return mode == "full" or any(key in name for key in PARTIAL_KEYS)


def apply_finetune(model: nn.Module, mode: str) -> int:
    """Freeze what ``mode`` does not train; returns the number of trainable parameters."""
    if mode not in FINETUNE_MODES:
        raise ConfigError(f"finetune must be one of {', '.join(FINETUNE_MODES)}; got {mode!r}")
    for name, p in model.named_parameters():
        p.requires_grad_(unfrozen(name, mode))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def source_config(init_from: str) -> ModelConfig | None:
    """The architecture of a checkpoint folder, checked like any model config (None for a bare weights file)."""
    path = Path(init_from)
    if not path.exists():
        raise MissingFileError(f"--init-from weights not found: {init_from}")
    return read_model_config(path) if path.is_dir() else None


def load_pretrained(
    model: nn.Module, init_from: str, weights: str = "ema", reinit_unfrozen: bool = False, mode: str = "partial"
) -> None:
    """Load a checkpoint folder's (EMA) weights or a released weights file into ``model``, strictly."""
    if mode not in FINETUNE_MODES:
        raise ConfigError(f"finetune must be one of {', '.join(FINETUNE_MODES)}; got {mode!r}")
    if reinit_unfrozen and mode != "partial":
        raise ConfigError(
            f"reinit_unfrozen re-initialises the subset that partial fine-tuning trains; with "
            f"mode={mode!r} that would be the whole model: use mode='partial'"
        )
    path = weights_file(init_from, weights) if Path(init_from).is_dir() else Path(init_from)
    if not path.exists():
        raise MissingFileError(f"pretrained weights not found: {path}")
    state = read_state_dict(path)
    if reinit_unfrozen:  # keep the fresh initialisation of the subset that will be trained
        fresh = model.state_dict()
        state = {k: (fresh[k] if unfrozen(k, mode) and k in fresh else v) for k, v in state.items()}
    load_weights(model, state, source=str(path))


@torch.no_grad()
def trainable_fraction(model: nn.Module) -> float:
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad) / total
