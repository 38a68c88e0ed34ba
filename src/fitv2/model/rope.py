"""2D rotary position embedding and every resolution-extrapolation method, as pure functions.

Layout (matches the released checkpoints): each head's ``head_dim`` channels are
``[height part | width part]``, ``a = head_dim / 2`` channels each; inside a part every
frequency appears twice in a row ``(f0, f0, f1, f1, ...)`` and the rotation acts on
adjacent pairs, ``(x0, x1) -> (x0 cos - x1 sin, x1 cos + x0 sin)``.

Frequencies depend only on (method, axis dim, θ, L_train, target length). Lengths are
token counts along one axis; the scale of an axis is ``s = max(1, length / L_train)``.
Every function takes lengths as tensors, so one call computes the frequencies of a whole
batch of differently sized images ("per-sample", the reference's online RoPE) or of one
target size shared by a batch (the reference's cached RoPE): both give the same numbers.
The arithmetic follows the reference expression by expression, in float32, so results
agree with it to the last bit or two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from ..config import ModelConfig
from ..errors import ConfigError, UnknownNameError
from ..names import ATTN_SCALES, FREQUENCY_RULES, ROPE_ALIASES, ROPE_METHODS
from ..tokens import TokenLayout


@dataclass(frozen=True)
class RopeScaling:
    """How RoPE frequencies are chosen for sizes beyond the training length."""

    method: str = "none"
    """'none' (plain frequencies), 'pi' (position interpolation), 'ntk', 'ntk-by-parts' or 'yarn'."""
    decouple: bool = False
    """Scale each axis by its own length (VisionNTK / VisionYaRN) instead of the longer side."""
    attn_scale: str = "none"
    """Logit scale: 'side' / 'area' (the reference's ntk-aware-pro1 / pro2, with its ×2),
    'paper' (FiTv2 Eq. 15, max(1, log_{L²}(h·w))) or 'none'."""
    per_sample: bool = False
    """Frequencies from each image's own (h, w) (the reference's online RoPE) rather than one
    target size per batch."""
    target: tuple[int, int] | None = None
    """Batch mode: the (h, w) in tokens to scale for; None = the largest h and w in the batch."""
    train_len: int | None = None
    """L_train in tokens; None = the model's ``rope_train_len``."""
    beyond: int | None = None
    """Scale only images of more tokens than this (their own h·w); the others get the plain tables. None:
    every image (``auto`` sets it to the training tokens: no extrapolation within the training budget)."""

    def __post_init__(self) -> None:
        if self.method not in FREQUENCY_RULES:
            raise ConfigError(f"unknown RoPE method {self.method!r}; choose one of {FREQUENCY_RULES}")
        if self.attn_scale not in ATTN_SCALES:
            raise ConfigError(f"unknown attention scale {self.attn_scale!r}; choose one of {ATTN_SCALES}")

    def with_(self, **changes) -> RopeScaling:
        return replace(self, **changes)


# Every name users type (CLI, configs, the page) -> its scaling: the project's names and the
# reference's aliases, both from fitv2.names.
NAMED_SCALINGS: dict[str, RopeScaling] = {
    name: RopeScaling(method, decouple=decouple, attn_scale=scale)
    for name, (method, decouple, scale) in ROPE_METHODS.items()
}
NAMED_SCALINGS.update({alias: NAMED_SCALINGS[name] for alias, name in ROPE_ALIASES.items()})


def rope_scaling(name: str, attn_scale: str | None = None, decouple: bool | None = None) -> RopeScaling:
    """Look up a scaling by name, optionally overriding its attention scale or decoupling. ``auto`` depends
    on the model: :func:`auto_rope`."""
    key = name.lower()
    if key == "auto":
        raise UnknownNameError("RoPE 'auto' depends on the model: auto_rope(config, training_rope) resolves it")
    if key not in NAMED_SCALINGS:
        raise UnknownNameError(f"unknown RoPE extrapolation {name!r}; choose one of: {', '.join(NAMED_SCALINGS)}")
    scaling = NAMED_SCALINGS[key]
    if attn_scale is not None:
        scaling = scaling.with_(attn_scale=attn_scale)
    if decouple is not None:
        scaling = scaling.with_(decouple=decouple)
    return scaling


def auto_rope(config: ModelConfig, training_rope: str = "none") -> RopeScaling:
    """RoPE ``auto``: for FiTv2 weights trained with plain RoPE, no extrapolation for an image within the
    training tokens (L_train²) and, beyond them, the paper's best, VisionNTK with the attention scale
    (FiTv2 Tables III and V: ``vision-ntk+attn-scale``), chosen per image; for weights trained with an
    extrapolation (high-resolution post-training: VisionNTK) or FiT v1 weights, their own method."""
    if training_rope.lower() != "none" or not config.continuous_time:
        return rope_scaling(training_rope)
    best = NAMED_SCALINGS["vision-ntk+attn-scale"]
    return best.with_(per_sample=True, beyond=config.rope_train_len**2)


def auto_rope_name(config: ModelConfig, training_rope: str, tokens: int) -> str:
    """The method :func:`auto_rope` applies to an image of ``tokens`` tokens (for display)."""
    if training_rope.lower() != "none" or not config.continuous_time:
        return training_rope
    return "none" if tokens <= config.rope_train_len**2 else "vision-ntk+attn-scale"


# ----------------------------------------------------------------------------- frequencies


def _exponents(axis_dim: int) -> Tensor:
    return torch.arange(0, axis_dim, 2).float() / axis_dim  # (a/2,)


def base_frequencies(axis_dim: int, theta: float) -> Tensor:
    """f_k = θ^(−2k/a), k = 0 .. a/2 − 1."""
    return 1.0 / (theta ** _exponents(axis_dim))


def axis_scale(length: Tensor, train_len: int) -> Tensor:
    """s = max(1, length / L_train), elementwise."""
    return torch.clamp_min(torch.as_tensor(length) / train_len, 1.0)


def pi_frequencies(axis_dim: int, theta: float, scale: Tensor) -> Tensor:
    """Position interpolation: every frequency divided by s. (M,) scales -> (M, a/2)."""
    return 1.0 / torch.einsum("m,f->mf", scale, theta ** _exponents(axis_dim))


def ntk_frequencies(axis_dim: int, theta: float, scale: Tensor) -> Tensor:
    """NTK-aware: base θ' = θ · s^(a/(a−2)), with a the per-axis dimension."""
    new_base = theta * scale ** (axis_dim / (axis_dim - 2))
    return 1.0 / torch.pow(new_base.view(-1, 1), _exponents(axis_dim))


def _correction_range(rot_lo: float, rot_hi: float, axis_dim: int, theta: float, train_len: int) -> tuple[int, int]:
    """Pair indices whose wavelength is train_len / rot, floored/ceiled and clamped (as the reference)."""

    def pair_index(rotations: float) -> float:
        return axis_dim * math.log(train_len / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    lo = math.floor(pair_index(rot_lo))
    hi = math.ceil(pair_index(rot_hi))
    return max(lo, 0), min(hi, axis_dim - 1)


def _ramp(lo: float, hi: float, n: int) -> Tensor:
    if lo == hi:
        hi += 0.001  # avoid a zero-width ramp
    return torch.clamp((torch.arange(n, dtype=torch.float32) - lo) / (hi - lo), 0, 1)


def ntk_by_parts_frequencies(axis_dim: int, theta: float, scale: Tensor, train_len: int) -> Tensor:
    """Blend PI and NTK by wavelength, then keep the highest frequencies unchanged."""
    base = base_frequencies(axis_dim, theta)
    linear = pi_frequencies(axis_dim, theta, scale)
    ntk = ntk_frequencies(axis_dim, theta, scale)
    n = axis_dim // 2
    keep_ntk = 1 - _ramp(*_correction_range(1.25, 0.75, axis_dim, theta, train_len), n)
    freqs = linear * (1 - keep_ntk) + ntk * keep_ntk
    keep_base = 1 - _ramp(*_correction_range(16, 2, axis_dim, theta, train_len), n)
    return freqs * (1 - keep_base) + base * keep_base


def yarn_frequencies(axis_dim: int, theta: float, scale: Tensor, train_len: int) -> Tensor:
    """YaRN: base frequencies for fast-rotating pairs, interpolated (÷ s) for the rest."""
    extrapolated = base_frequencies(axis_dim, theta)
    interpolated = pi_frequencies(axis_dim, theta, scale)
    keep_base = 1 - _ramp(*_correction_range(32, 1, axis_dim, theta, train_len), axis_dim // 2)
    return interpolated * (1 - keep_base) + extrapolated * keep_base


def axis_frequencies(method: str, axis_dim: int, theta: float, length: Tensor, train_len: int) -> Tensor:
    """Frequencies of one axis for each length: (M,) lengths -> (M, a/2)."""
    length = torch.as_tensor(length).reshape(-1)
    if method == "none":
        return base_frequencies(axis_dim, theta).expand(length.numel(), -1)
    scale = axis_scale(length, train_len)
    if method == "pi":
        return pi_frequencies(axis_dim, theta, scale)
    if method == "ntk":
        return ntk_frequencies(axis_dim, theta, scale)
    if method == "ntk-by-parts":
        return ntk_by_parts_frequencies(axis_dim, theta, scale, train_len)
    if method == "yarn":
        return yarn_frequencies(axis_dim, theta, scale, train_len)
    raise ValueError(f"unknown RoPE method {method!r}")


# ----------------------------------------------------------------------------- magnitude factors


def yarn_mscale(max_side: Tensor, train_len: int) -> Tensor:
    """YaRN magnitude factor on cos and sin: 0.1·ln(s) + 1 with s from the longer side (even decoupled)."""
    scale = axis_scale(max_side, train_len)
    return torch.where(scale <= 1.0, torch.tensor(1.0), 0.1 * torch.log(scale) + 1.0)


def _reference_proportion(test: Tensor, train: float) -> Tensor:
    # The reference doubles the test length first, so the factor exceeds 1 even at L_train.
    test = torch.as_tensor(test) * 2
    ratio = test / train
    log_train = torch.log(torch.tensor(float(train)))
    return torch.where(ratio <= 1.0, torch.tensor(1.0), torch.sqrt(torch.log(test.float()) / log_train))


def attention_scale_factor(kind: str, h: Tensor, w: Tensor, train_len: int) -> Tensor:
    """Factor applied to cos and sin (so the logits scale by its square) for each (h, w)."""
    h, w = torch.as_tensor(h), torch.as_tensor(w)
    if kind == "none":
        return torch.ones(h.shape)
    if kind == "side":
        return _reference_proportion(torch.maximum(h, w), train_len)
    if kind == "area":
        return _reference_proportion(h * w, train_len**2)
    if kind == "paper":
        log_train = torch.log(torch.tensor(float(train_len**2)))
        logit_scale = torch.clamp_min(torch.log((h * w).float()) / log_train, 1.0)
        return torch.sqrt(logit_scale)
    raise ValueError(f"unknown attention scale {kind!r}")


# ----------------------------------------------------------------------------- tables


def target_lengths(size: Tensor, scaling: RopeScaling) -> tuple[Tensor, Tensor]:
    """(h, w) lengths to scale for, per image: (B, n) each.

    ``size`` is (B, n, 2) = (h, w) per packed image. In batch mode every image gets the
    target size (explicit, or the largest h and w present), as the reference's cached RoPE.
    """
    h, w = size[..., 0], size[..., 1]
    if scaling.per_sample:
        return h, w
    if scaling.target is not None:
        th, tw = scaling.target
    else:
        th, tw = int(h.max()), int(w.max())
    return torch.full_like(h, th), torch.full_like(w, tw)


def image_frequencies(
    size: Tensor, head_dim: int, theta: float, scaling: RopeScaling, train_len: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-image height and width frequencies (B, n, a/2) and cos/sin magnitude factor (B, n)."""
    axis_dim = head_dim // 2
    h, w = target_lengths(size.cpu(), scaling)
    if scaling.decouple:
        len_h, len_w = h, w
    else:
        len_h = len_w = torch.maximum(h, w)
    freqs_h = axis_frequencies(scaling.method, axis_dim, theta, len_h, train_len).reshape(*h.shape, -1)
    freqs_w = axis_frequencies(scaling.method, axis_dim, theta, len_w, train_len).reshape(*h.shape, -1)
    factor = torch.ones(h.shape)
    if scaling.method == "yarn":
        factor = factor * yarn_mscale(torch.maximum(h, w), train_len)
    if scaling.attn_scale != "none":
        factor = factor * attention_scale_factor(scaling.attn_scale, h, w, train_len)
    if scaling.beyond is not None:  # images within it keep the plain tables
        size = size.cpu()
        plain = (size[..., 0] * size[..., 1] <= scaling.beyond)[..., None]
        base = base_frequencies(axis_dim, theta)
        freqs_h, freqs_w = torch.where(plain, base, freqs_h), torch.where(plain, base, freqs_w)
        factor = torch.where(plain[..., 0], 1.0, factor)
    return freqs_h, freqs_w, factor


def rope_tables(
    layout: TokenLayout,
    head_dim: int,
    theta: float = 10000.0,
    scaling: RopeScaling = RopeScaling(),
    train_len: int = 16,
) -> tuple[Tensor, Tensor]:
    """cos and sin tables (B, N, head_dim), float32, for the tokens of ``layout``: each token at its grid
    position, with the frequencies of its own image's size (per-image scaling) or of the batch's."""
    train_len = scaling.train_len or train_len
    freqs_h, freqs_w, factor = image_frequencies(layout.size, head_dim, theta, scaling, train_len)
    grid, device = layout.grid, layout.device
    freqs_h = layout.spread(freqs_h.to(device))  # (B, N|1, a/2)
    freqs_w = layout.spread(freqs_w.to(device))
    angles_h = (grid[:, 1, :, None] * freqs_h).repeat_interleave(2, dim=-1)  # (B, N, a)
    angles_w = (grid[:, 0, :, None] * freqs_w).repeat_interleave(2, dim=-1)
    angles = torch.cat([angles_h, angles_w], dim=-1)  # (B, N, head_dim)
    cos, sin = angles.cos(), angles.sin()
    if scaling.method == "yarn" or scaling.attn_scale != "none":
        factor = layout.spread(factor.to(device))[..., None]  # (B, N|1, 1)
        cos, sin = cos * factor, sin * factor
    return cos, sin


def rotate_half(x: Tensor) -> Tensor:
    """Adjacent pairs (a, b) -> (−b, a)."""
    pairs = x.unflatten(-1, (-1, 2))
    return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, heads, N, head_dim) by tables (B, N, head_dim)."""
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin
