"""Building blocks of the FiT / FiTv2 backbone.

Parameter names follow the released checkpoints (``x_embedder.proj``, ``t_embedder.mlp``,
``y_embedder.embedding_table``, ``attn.qkv``, ``mlp.fc1_g`` ...), so those load strictly.
Conditioning tensors are per image: ``(B, n, ·)`` with n = 1 for an ordinary batch (it
broadcasts over tokens) or n images per row for packed sequences, where ``modulate_tokens``
and ``gate_tokens`` apply each image's values to its own tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..tokens import TokenLayout
from .attention import AttentionBackend, Runs, contiguous_runs
from .rope import apply_rope


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


class _SegmentAffine(torch.autograd.Function):
    """out = x · (1 + scale)[rows] + shift[rows], or x · gate[rows] (shift None, plus_one False).

    The per-token copies of the per-image parameters are made again in the backward pass
    instead of being kept: a packed row keeps only x and the (B·n, D) parameters, not the
    (B, N, D) copies that autograd would save for the broadcast-free multiply."""

    @staticmethod
    def forward(ctx, x: Tensor, scale: Tensor, shift: Tensor | None, rows: Tensor, plus_one: bool) -> Tensor:
        factor = scale.index_select(0, rows).view_as(x)
        if plus_one:
            factor = factor + 1
        out = x * factor
        if shift is not None:
            out = out + shift.index_select(0, rows).view_as(x)
        ctx.save_for_backward(x, scale, rows)
        ctx.plus_one, ctx.has_shift = plus_one, shift is not None
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, scale, rows = ctx.saved_tensors
        grad_x = grad_scale = grad_shift = None
        if ctx.needs_input_grad[0]:
            factor = scale.index_select(0, rows).view_as(x)
            grad_x = grad * (factor + 1 if ctx.plus_one else factor)
        flat = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:
            grad_scale = torch.zeros_like(scale).index_add_(0, rows, (grad * x).reshape_as(flat).to(scale.dtype))
        if ctx.has_shift and ctx.needs_input_grad[2]:
            grad_shift = torch.zeros_like(scale).index_add_(0, rows, flat.to(scale.dtype))
        return grad_x, grad_scale, grad_shift, None, None


def _by_runs(x: Tensor, runs: Runs, image_op) -> Tensor:
    """``image_op(tokens, row, slot)`` on each image's run of tokens (views of x), padding kept as it is."""
    rows = []
    for b, (lengths, ids) in enumerate(runs):
        parts = [image_op(part, b, i - 1) if i else part for part, i in zip(x[b].split(lengths), ids)]
        rows.append(torch.cat(parts) if len(parts) > 1 else parts[0])
    return torch.stack(rows)


def modulate_tokens(x: Tensor, shift: Tensor, scale: Tensor, plan: LayoutPlan) -> Tensor:
    """x · (1 + scale) + shift with per-image (B, n, D) parameters spread over the tokens of each image:
    broadcast when every row holds one image; on the CPU, image by image on views of its tokens (no
    per-token copies of the parameters); else by index (:class:`_SegmentAffine`)."""
    if plan.rows is None:
        return modulate(x, shift, scale)
    if plan.runs is not None and x.device.type == "cpu":
        factor = 1 + scale
        return _by_runs(x, plan.runs, lambda t, b, s: torch.addcmul(shift[b, s], t, factor[b, s]))
    D = scale.shape[-1]
    return _SegmentAffine.apply(x, scale.reshape(-1, D), shift.reshape(-1, D), plan.rows, True)


def gate_tokens(h: Tensor, gate: Tensor, plan: LayoutPlan) -> Tensor:
    """gate · h with a per-image (B, n, D) gate spread over the tokens of each image."""
    if plan.rows is None:
        return gate * h
    if plan.runs is not None and h.device.type == "cpu":
        return _by_runs(h, plan.runs, lambda t, b, s: t * gate[b, s])
    return _SegmentAffine.apply(h, gate.reshape(-1, gate.shape[-1]), None, plan.rows, False)


@dataclass
class LayoutPlan:
    """A batch's token layout prepared once per forward pass for every block: its RoPE tables, its
    attention kernel, the tokens in context, and the row of each token's image in the flattened
    per-image tables."""

    layout: TokenLayout
    cos: Tensor  # (B, N|1, head_dim) float32
    sin: Tensor
    attention: AttentionBackend
    rows: Tensor | None  # (B·N,) index into (B·n, ·) per-image tables; None = one image per row
    mask: Tensor  # (B, N) float: tokens in context (image tokens and the text slots holding a token)
    runs: Runs | None = None  # packed rows whose images are contiguous runs (see contiguous_runs)

    @classmethod
    def build(
        cls,
        layout: TokenLayout,
        cos: Tensor,
        sin: Tensor,
        attention: AttentionBackend,
        text_valid: Tensor | None = None,
        runs: Runs | None = None,
    ) -> LayoutPlan:
        """``runs``: :func:`contiguous_runs` of ``layout.segment``, where the caller has them."""
        mask = layout.mask if layout.text is None else layout.in_context(text_valid).to(layout.mask.dtype)
        if runs is None and layout.segment is not None:
            runs = contiguous_runs(layout.segment)
        return cls(layout, cos, sin, attention, layout.flat_image_index(), mask, runs)


class Conditioning(NamedTuple):
    """What modulates the blocks: per-image c (B, n, D), and the global adaLN term (B, n, 6D) that
    FiTv2 adds to every block's own modulation (0.0 for FiT v1)."""

    c: Tensor
    shared: Tensor | float = 0.0


class RMSNorm(nn.Module):
    """RMS normalisation over the last dim, computed in float32, optional weight."""

    def __init__(self, dim: int, eps: float = 1e-6, weight: bool = False):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if weight else None

    def forward(self, x: Tensor) -> Tensor:
        out = (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return out * self.weight if self.weight is not None else out


def make_norm(kind: str | None, dim: int, weight: bool = False) -> nn.Module:
    """LayerNorm (no bias; weight only if asked), RMSNorm, or identity; eps 1e-6 as the reference."""
    if kind is None:
        return nn.Identity()
    if kind == "layernorm":
        if weight:
            return nn.LayerNorm(dim, eps=1e-6, bias=False)
        return nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)
    if kind == "rmsnorm":
        return RMSNorm(dim, weight=weight)
    raise ValueError(f"unknown norm {kind!r}")


class PatchEmbedder(nn.Module):
    """Linear embedding of already-flattened patch tokens (B, N, p²C) -> (B, N, D)."""

    def __init__(self, token_dim: int, hidden_size: int):
        super().__init__()
        self.proj = nn.Linear(token_dim, hidden_size, bias=True)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class TimestepEmbedder(nn.Module):
    """Sinusoidal features (cos first, 256 dims, max period 10⁴) followed by a 2-layer MLP."""

    def __init__(self, hidden_size: int, frequency_size: int = 256):
        super().__init__()
        self.frequency_size = frequency_size
        self.mlp = nn.Sequential(
            nn.Linear(frequency_size, hidden_size, bias=True),
            nn.SiLU(),
            nn.Linear(hidden_size, hidden_size, bias=True),
        )

    @staticmethod
    def sinusoid(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
        half = dim // 2
        freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half).to(t.device)
        args = t[..., None] * freqs
        return torch.cat([torch.cos(args), torch.sin(args)], dim=-1).to(t.dtype)

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.sinusoid(t, self.frequency_size))


class LabelEmbedder(nn.Module):
    """Class embedding table with one extra row, the null class (id = num_classes), for CFG."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)

    def forward(self, labels: Tensor, train: bool, drop: Tensor | None = None) -> Tensor:
        """``drop`` (bool, like labels) forces which labels become the null class; without it,
        training mode drops each label with ``dropout_prob`` from the global RNG (the reference)."""
        if drop is None and train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
        if drop is not None:
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)


class CaptionEmbedder(nn.Module):
    """Caption tokens -> d-dim text tokens (the MLP of FiTv2 §III-E), and their mean, which takes the
    place of the class embedding. The empty caption's features are a buffer, saved with the weights:
    training replaces a caption by it with ``dropout_prob`` and guidance samples against it."""

    null_features: Tensor  # (M, Dt) buffers
    null_mask: Tensor  # (M,) bool

    def __init__(self, text_dim: int, text_len: int, hidden_size: int, dropout_prob: float):
        super().__init__()
        self.dropout_prob = dropout_prob
        self.mlp = nn.Sequential(
            nn.Linear(text_dim, hidden_size), nn.GELU(approximate="tanh"), nn.Linear(hidden_size, hidden_size)
        )
        self.register_buffer("null_features", torch.zeros(text_len, text_dim))
        self.register_buffer("null_mask", torch.zeros(text_len, dtype=torch.bool))

    def set_null(self, features: Tensor, mask: Tensor) -> None:
        """Record the encoder's features of the empty caption (text_len, text_dim) and its mask."""
        self.null_features.copy_(features)
        self.null_mask.copy_(mask)

    def null(self, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """The empty caption for images of ``shape`` (B,) or (B, n): features (*shape, M, Dt), mask (*shape, M)."""
        M, Dt = self.null_features.shape
        return self.null_features.expand(*shape, M, Dt), self.null_mask.expand(*shape, M)

    def forward(
        self, features: Tensor, mask: Tensor, train: bool, drop: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """features (B, n, M, Dt) and mask (B, n, M) -> text tokens (B, n, M, D), their masked mean
        (B, n, D), and the mask after dropout. ``drop`` (B, n) bool forces which captions become the
        empty one; without it, training drops each with ``dropout_prob``."""
        if drop is None and train and self.dropout_prob > 0:
            drop = torch.rand(mask.shape[:2], device=mask.device) < self.dropout_prob
        if drop is not None:
            null_features, null_mask = self.null(tuple(mask.shape[:2]))
            features = torch.where(drop[..., None, None], null_features.to(features.dtype), features)
            mask = torch.where(drop[..., None], null_mask, mask)
        tokens = self.mlp(features)  # (B, n, M, D)
        weight = mask[..., None].to(tokens.dtype)
        pooled = (tokens * weight).sum(-2) / weight.sum(-2).clamp(min=1)  # (B, n, D)
        return tokens, pooled, mask


class Attention(nn.Module):
    """Multi-head self-attention: QK-Norm, then 2D RoPE on q and k, then masked SDPA."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        qk_norm: str | None = None,
        qk_norm_weight: bool = False,
        rope_on_v: bool = False,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = make_norm(qk_norm, self.head_dim, qk_norm_weight)
        self.k_norm = make_norm(qk_norm, self.head_dim, qk_norm_weight)
        self.proj = nn.Linear(dim, dim)
        self.rope_on_v = rope_on_v

    def forward(self, x: Tensor, plan: LayoutPlan) -> Tensor:
        B, N, D = x.shape
        cos, sin = plan.cos, plan.sin
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype)
        if self.rope_on_v:
            v = apply_rope(v, cos, sin).to(q.dtype)
        x = plan.attention(q, k, v)  # (B, heads, N, head_dim)
        x = x.transpose(1, 2).reshape(B, N, D) * plan.mask[..., None].to(x.dtype)  # (B, N, D)
        return self.proj(x)


class SwiGLU(nn.Module):
    """fc2(SiLU(fc1_g x) ⊙ fc1_x x)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.fc1_g = nn.Linear(dim, hidden, bias=bias)
        self.fc1_x = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.silu(self.fc1_g(x)) * self.fc1_x(x))


class GeluMlp(nn.Module):
    """fc2(GELU_tanh(fc1 x)), the DiT/SiT MLP."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class FiTBlock(nn.Module):
    """Pre-norm transformer block modulated by the conditioning (adaLN-Zero style gates).

    adaln='lora': per-block SiLU -> Linear(d, r) -> Linear(r, 6d), added to a global
    modulation shared by all blocks (FiTv2). adaln='full': per-block SiLU -> Linear(d, 6d)
    (FiT v1). Chunk order: shift/scale/gate for attention, then for the FFN.
    """

    def __init__(self, cfg) -> None:
        super().__init__()
        d = cfg.hidden_size
        self.norm1 = make_norm("layernorm", d)
        self.norm2 = make_norm("layernorm", d)
        self.attn = Attention(d, cfg.num_heads, cfg.qkv_bias, cfg.qk_norm, cfg.qk_norm_weight, cfg.rope_on_v)
        mlp_cls = GeluMlp if cfg.mlp == "gelu" else SwiGLU
        self.mlp = mlp_cls(d, cfg.mlp_hidden, bias=cfg.ffn_bias)
        if cfg.adaln == "lora":
            self.adaLN_modulation = nn.Sequential(
                nn.SiLU(),
                nn.Linear(d, cfg.lora_rank, bias=cfg.adaln_bias),
                nn.Linear(cfg.lora_rank, 6 * d, bias=cfg.adaln_bias),
            )
        else:
            self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d, bias=cfg.adaln_bias))

    def forward(self, x: Tensor, c: Conditioning, plan: LayoutPlan) -> Tensor:
        """x: (B, N, D) tokens; c: the conditioning; plan: the batch's layout, prepared for this forward pass."""
        mod = self.adaLN_modulation(c.c) + c.shared  # (B, n, 6D): per image
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        h = self.attn(modulate_tokens(self.norm1(x), shift_msa, scale_msa, plan), plan)
        x = x + gate_tokens(h, gate_msa, plan)
        return x + gate_tokens(self.mlp(modulate_tokens(self.norm2(x), shift_mlp, scale_mlp, plan)), gate_mlp, plan)


class FinalLayer(nn.Module):
    """LayerNorm, modulation by the conditioning (no LoRA, no global term), linear to patch values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, adaln_bias: bool = True):
        super().__init__()
        self.norm_final = make_norm("layernorm", hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=adaln_bias))

    def forward(self, x: Tensor, c: Conditioning, plan: LayoutPlan) -> Tensor:
        shift, scale = self.adaLN_modulation(c.c).chunk(2, dim=-1)
        return self.linear(modulate_tokens(self.norm_final(x), shift, scale, plan))
