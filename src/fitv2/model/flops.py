"""Compute cost of the backbone, counted the way the FiTv2 paper's Table I counts it.

Table I's GFLOPs are the multiply-accumulates of the linear layers of one forward pass
at 256 tokens, without the attention products QKᵀ and AV (the DiT/fvcore convention).
Token-wise layers run once per token; the conditioning layers (timestep MLP, adaLN
modulation) once per image.
"""

from __future__ import annotations

from torch import nn

from ..config import ModelConfig
from .fit import build_model


def _per_image(name: str) -> bool:
    return "adaLN_modulation" in name or name.startswith("t_embedder")


def linear_macs(model: nn.Module, tokens: int = 256) -> int:
    """Multiply-accumulates of every nn.Linear for one image of ``tokens`` tokens."""
    total = 0
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            total += module.in_features * module.out_features * (1 if _per_image(name) else tokens)
    return total


def attention_macs(config: ModelConfig, tokens: int = 256) -> int:
    """Multiply-accumulates of QKᵀ and AV (not in Table I; part of the real cost)."""
    return 2 * tokens * tokens * config.hidden_size * config.depth


def model_summary(config: ModelConfig, tokens: int = 256) -> dict[str, float]:
    """Parameters and Table-I GFLOPs, computed on the meta device (no weights allocated)."""
    model = build_model(config, device="meta")
    return {
        "params": sum(p.numel() for p in model.parameters()),
        "gflops": linear_macs(model, tokens) / 1e9,
        "attn_gflops": attention_macs(config, tokens) / 1e9,
    }
