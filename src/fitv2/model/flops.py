"""Compute cost of the backbone, counted the way the FiTv2 paper's Table I counts it, and the
memory of its activations.

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


def inference_activation_bytes(
    config: ModelConfig, batch: int, tokens: int, masked: bool = False, value_bytes: int = 4
) -> int:
    """Peak memory of the activations of one forward pass without gradients, for ``batch`` rows of
    ``tokens`` tokens (the weights not included).

    Counted in (batch, tokens, hidden) tensors: the residual stream plus the larger of the attention
    half of a block (modulated input, qkv, normalised and rotated q and k, RoPE temporaries, output)
    and the FFN half (modulated input and the FFN's hidden tensors), plus the RoPE tables and the
    token inputs and outputs. Attention itself runs in flash/memory-efficient kernels (no N × N
    scores) unless ``masked``: padded rows with the SDPA backend keep a boolean (B, 1, N, N) mask for
    the whole pass and SDPA makes a float copy of it in each call.
    """
    B, N, D = batch, tokens, config.hidden_size
    row = B * N
    attention = 10 * row * D
    ffn_tensors = 2 if config.mlp == "gelu" else 3  # GELU: fc1 and its activation; SwiGLU: two halves, product
    ffn = row * D + ffn_tensors * row * config.mlp_hidden
    rope = 2 * row * config.head_dim
    io = row * (config.token_dim + 2 * config.token_dim * config.out_channels // config.in_channels)
    total = (row * D + max(attention, ffn) + rope + io) * value_bytes
    if masked:
        total += B * N * N * (1 + value_bytes)
    return total
