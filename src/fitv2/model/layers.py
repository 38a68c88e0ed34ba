"""Building blocks of the FiT / FiTv2 backbone.

Parameter names follow the released checkpoints (``x_embedder.proj``, ``t_embedder.mlp``,
``y_embedder.embedding_table``, ``attn.qkv``, ``mlp.fc1_g`` ...), so those load strictly.
Conditioning tensors are per image: ``(B, n, ·)`` with n = 1 for an ordinary batch (it
broadcasts over tokens) or n images per row for packed sequences, where ``modulate_tokens``
and ``gate_tokens`` apply each image's values to its own tokens.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rope import apply_rope


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    return x * (1 + scale) + shift


def _rows(segment: Tensor, n: int) -> Tensor:
    """Flat index (B·N,) of each token's image in a (B·n, ·) table; padding points at its row's first image."""
    B = segment.shape[0]
    # Whole rows by index_select: far cheaper than an element-wise gather, forward and backward.
    return ((segment - 1).clamp(min=0) + n * torch.arange(B, device=segment.device)[:, None]).reshape(-1)


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


def modulate_tokens(x: Tensor, shift: Tensor, scale: Tensor, segment: Tensor | None) -> Tensor:
    """x · (1 + scale) + shift with per-image (B, n, D) parameters spread over the tokens of each image."""
    if segment is None:
        return modulate(x, shift, scale)
    rows = _rows(segment, shift.shape[1])
    return _SegmentAffine.apply(x, scale.reshape(-1, scale.shape[-1]), shift.reshape(-1, shift.shape[-1]), rows, True)


def gate_tokens(h: Tensor, gate: Tensor, segment: Tensor | None) -> Tensor:
    """gate · h with a per-image (B, n, D) gate spread over the tokens of each image."""
    if segment is None:
        return gate * h
    return _SegmentAffine.apply(h, gate.reshape(-1, gate.shape[-1]), None, _rows(segment, gate.shape[1]), False)


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


ATTENTION_BACKENDS = ("auto", "sdpa", "sdpa-varlen", "flex", "flash-varlen")


def _flash_varlen():
    try:
        from flash_attn import flash_attn_varlen_func
    except ImportError:
        return None
    return flash_attn_varlen_func


_compiled_flex = None
# (device, grad) -> whether compiled FlexAttention runs there; probed once per process.
_flex_support: dict[tuple[str, bool], bool] = {}


def _flex_attention():
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


def document_block_mask(segment: Tensor):
    """FlexAttention block mask letting a token see only the tokens of its own segment."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_segment(b, h, q, k):
        return segment[b, q] == segment[b, k]

    B, N = segment.shape
    return create_block_mask(same_segment, B, None, N, N, device=segment.device)


@torch.compiler.disable
def flex_supported(device: torch.device | str, grad: bool = False) -> bool:
    """Whether compiled FlexAttention runs correctly on ``device`` (forward, and backward if ``grad``).

    Decided once per (device, grad) by comparing the compiled kernel with masked SDPA on small padded
    batches: Inductor's CPU template fails to build for dynamic shapes in some torch versions (2.13),
    and CPU FlexAttention has no backward. Warns once where it does not work, as attention then falls
    back to SDPA."""
    device = torch.device(device)
    key = (str(device), bool(grad))
    if key in _flex_support:
        return _flex_support[key]
    try:
        ok, why = _probe_flex(device, grad), "its output differs from SDPA"
    except Exception as err:  # failing to import, compile or run all mean: not here
        lines = str(err).strip().splitlines()
        ok, why = False, f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__
    if not ok:
        warnings.warn(f"compiled FlexAttention does not work on {device} with torch {torch.__version__} ({why}); "
                      "attention uses SDPA there instead", RuntimeWarning, stacklevel=3)
    _flex_support[key] = ok
    return ok


def _probe_flex(device: torch.device, grad: bool) -> bool:
    generator = torch.Generator().manual_seed(0)
    # Batch, heads and length all different and no length a multiple of the kernel's block: shapes that
    # share a size, or fit the block, take paths of the dynamic-shape kernel that a real batch may not.
    for B, H, N in ((3, 2, 40), (2, 3, 56)):
        segment = torch.ones(B, N, dtype=torch.long)
        segment[1, N // 2 :] = 0
        segment = segment.to(device)
        q, k, v = (torch.randn(B, H, N, 16, generator=generator).to(device).requires_grad_(grad) for _ in range(3))
        with torch.set_grad_enabled(grad):
            out = _flex_attention()(q, k, v, block_mask=document_block_mask(segment))
            if grad:
                out.sum().backward()
        mask = segment[:, None, :, None] == segment[:, None, None, :]
        ref = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), attn_mask=mask)
        if not torch.allclose(out.detach(), ref, atol=1e-4, rtol=1e-4):
            return False
    return True


def _has_flex() -> bool:
    try:  # the submodule is an attribute of torch.nn.attention only once something imported it
        import torch.nn.attention.flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _sdpa_backend(segment: Tensor) -> str:
    """SDPA over whole rows, or per image when the block mask would do over 1.5x the per-image work."""
    counts = torch.stack([torch.bincount(row, minlength=int(segment.max()) + 1)[1:] for row in segment])
    per_image = float(counts.double().pow(2).sum())
    whole_rows = float(segment.shape[0] * segment.shape[1] ** 2)
    return "sdpa-varlen" if whole_rows > 1.5 * per_image else "sdpa"


def _auto_backend(segment: Tensor | None) -> str:
    if segment is None:
        return "sdpa"
    if segment.is_cuda and _has_flex():
        return "flex"
    return _sdpa_backend(segment)


class AttentionPlan:
    """Which kernel attention uses in one forward pass, and its mask, built once for all blocks.

    A token sees only the tokens of its own segment (``segment``: (B, N), 0 = padding,
    k = k-th image of a packed row; None = nothing padded or packed). Padding attends to
    padding, so no softmax row is empty, and a valid token's output never depends on
    padding or on other images of its row.

    Backends: ``sdpa`` — scaled_dot_product_attention, no mask when nothing is padded, else a
    boolean block mask over the whole row; ``sdpa-varlen`` — SDPA per image on the valid tokens
    only, images of equal length batched together (no work on padding or across images);
    ``flex`` — compiled FlexAttention with a document mask, where :func:`flex_supported` finds that it
    works (else the SDPA choice below, with one warning); ``flash-varlen`` — flash-attention's
    variable-length kernel (GPU, fp16/bf16, where flash_attn is installed). ``auto`` picks
    flex on CUDA; on the CPU, sdpa-varlen when the block mask would do over 1.5× the work of
    per-image attention (long packed rows, heavy padding), else sdpa.
    """

    def __init__(self, segment: Tensor | None, backend: str = "auto", varlen_fn=None):
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {ATTENTION_BACKENDS}")
        if backend == "auto":
            backend = _auto_backend(segment)
        if backend == "flex" and segment is not None and not flex_supported(segment.device, torch.is_grad_enabled()):
            backend = _sdpa_backend(segment)
        self.segment = segment
        self.backend = backend if segment is not None else "sdpa"
        self.mask = self.block_mask = self.varlen = None
        if self.backend == "sdpa" and segment is not None:
            self.mask = segment[:, None, :, None] == segment[:, None, None, :]  # (B, 1, N, N)
        elif self.backend == "flex":
            self.block_mask = document_block_mask(segment)
        elif self.backend == "flash-varlen":
            self.varlen = varlen_fn or _flash_varlen()
            if self.varlen is None:
                raise ValueError("attention backend 'flash-varlen' needs the flash_attn package")
            self._index_varlen(segment)
        elif self.backend == "sdpa-varlen":
            self._index_varlen(segment)
            self.varlen = self._sdpa_per_image
            lengths = self.cu_seqlens.diff()
            starts = self.cu_seqlens[:-1].long()
            # Token indices (within the valid tokens) of the images of each length: (k, L) each.
            self.groups = [starts[lengths == n][:, None] + torch.arange(int(n), device=segment.device)
                           for n in torch.unique(lengths).tolist()]

    def _index_varlen(self, segment: Tensor) -> None:
        # Valid tokens in row-major order form contiguous runs, one per image.
        flat = segment.reshape(-1)
        row = torch.arange(segment.shape[0], device=segment.device).repeat_interleave(segment.shape[1])
        self.valid = (flat > 0).nonzero().squeeze(1)
        key = row[self.valid] * (int(flat.max()) + 1) + flat[self.valid]
        _, counts = torch.unique_consecutive(key, return_counts=True)
        self.cu_seqlens = F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)
        self.max_seqlen = int(counts.max())

    def _sdpa_per_image(self, q: Tensor, k: Tensor, v: Tensor, *_) -> Tensor:
        """flash_attn_varlen_func's contract ((valid, H, D) in and out) computed with SDPA."""
        out = torch.empty_like(q)
        for idx in self.groups:
            qi, ki, vi = (x[idx].transpose(1, 2) for x in (q, k, v))  # (k, H, L, D)
            out[idx] = F.scaled_dot_product_attention(qi, ki, vi).transpose(1, 2)
        return out

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """q, k, v: (B, heads, N, head_dim) -> (B, heads, N, head_dim)."""
        if self.backend == "sdpa":
            return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)
        if self.backend == "flex":
            return _flex_attention()(q, k, v, block_mask=self.block_mask)
        B, H, N, D = q.shape

        def tokens(x: Tensor) -> Tensor:  # (B, H, N, D) -> (valid, H, D)
            return x.transpose(1, 2).reshape(B * N, H, D)[self.valid]

        out = self.varlen(tokens(q), tokens(k), tokens(v), self.cu_seqlens, self.cu_seqlens,
                          self.max_seqlen, self.max_seqlen)
        full = q.new_zeros(B * N, H, D)
        full[self.valid] = out.to(q.dtype)
        return full.reshape(B, N, H, D).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention: QK-Norm, then 2D RoPE on q and k, then masked SDPA."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, qk_norm: str | None = None,
                 qk_norm_weight: bool = False, rope_on_v: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = make_norm(qk_norm, self.head_dim, qk_norm_weight)
        self.k_norm = make_norm(qk_norm, self.head_dim, qk_norm_weight)
        self.proj = nn.Linear(dim, dim)
        self.rope_on_v = rope_on_v

    def forward(self, x: Tensor, mask: Tensor, plan: AttentionPlan, cos: Tensor, sin: Tensor) -> Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (B, heads, N, head_dim)
        q, k = self.q_norm(q), self.k_norm(k)
        q, k = apply_rope(q, cos, sin).to(v.dtype), apply_rope(k, cos, sin).to(v.dtype)
        if self.rope_on_v:
            v = apply_rope(v, cos, sin).to(q.dtype)
        x = plan(q, k, v)
        x = x.transpose(1, 2).reshape(B, N, D) * mask[..., None].to(x.dtype)
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

    def forward(self, x: Tensor, c: Tensor, mask: Tensor, segment: Tensor | None, plan: AttentionPlan,
                cos: Tensor, sin: Tensor, global_mod: Tensor | float = 0.0) -> Tensor:
        """segment: image id per token of packed rows (None: one image per row);
        plan: the attention kernel and mask of this forward pass."""
        mod = self.adaLN_modulation(c) + global_mod  # (B, n, 6D): per image
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        h = self.attn(modulate_tokens(self.norm1(x), shift_msa, scale_msa, segment), mask, plan, cos, sin)
        x = x + gate_tokens(h, gate_msa, segment)
        return x + gate_tokens(self.mlp(modulate_tokens(self.norm2(x), shift_mlp, scale_mlp, segment)), gate_mlp,
                               segment)


class FinalLayer(nn.Module):
    """LayerNorm, modulation by the conditioning (no LoRA, no global term), linear to patch values."""

    def __init__(self, hidden_size: int, patch_size: int, out_channels: int, adaln_bias: bool = True):
        super().__init__()
        self.norm_final = make_norm("layernorm", hidden_size)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=adaln_bias))

    def forward(self, x: Tensor, c: Tensor, segment: Tensor | None) -> Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)
        return self.linear(modulate_tokens(self.norm_final(x), shift, scale, segment))
