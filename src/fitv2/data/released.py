"""The released FiTv2 ImageNet latents, converted into a token dataset as they are (no re-encoding).

Each released file (listed by :class:`~fitv2.data.sources.ReleasedListing`) holds one sequence:
``feature`` (2, h, w, p²·C) the image and its mirror image, already scaled by the VAE's 0.18215;
``grid`` (2, h·w) each token's column and row; ``size`` (h, w); ``label``. Its tokens are stored
row by row, as the reference loader flattens them, in the dataset's dtype (the first file's, so
fp16, bf16 or fp32 files keep their exact values). The patch size follows from p²·C with C = 4
(SD-VAE), the budget from the folder names (``from_16_to_256``: 256 tokens, a 16 × 16 grid, 256
pixels at ×8 and p = 2); every file is checked against both. A file that cannot be read, or whose
keys, shapes, grid, size or label disagree, is skipped and counted like a bad image: a bad resize
file drops its image, a bad crop file only the crop (the image keeps its resize variant).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open

from ..errors import ConfigError, UserError
from ..tokens import make_grid
from .autoencoder import SD_VAE_FT_EMA
from .shards import Shard
from .sources import ReleasedItem, ReleasedListing

CHANNELS = 4  # SD-VAE latent channels
UNREADABLE, INCONSISTENT = "unreadable latent file", "inconsistent latent file"
NO_RESIZE = "crop file without a usable resize file"
_TORCH_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}
DTYPE_NAMES = {torch.float16: "float16", torch.bfloat16: "bfloat16", torch.float32: "float32"}


class BadFile(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def released_spec(
    path: str | None = None,
    scaling_factor: float | None = None,
    shift_factor: float | None = None,
    downsample: int | None = None,
) -> dict[str, Any]:
    """The autoencoder spec a converted dataset records: SD-VAE ft-EMA unless overridden; ``path``: a
    local copy of that VAE, for sampling (else ``fitv2 sample --autoencoder DIR`` names it then)."""
    spec = dict(SD_VAE_FT_EMA)
    for key, value in (("scaling_factor", scaling_factor), ("shift_factor", shift_factor), ("downsample", downsample)):
        if value is not None:
            spec[key] = value
    if path is not None:
        spec["path"] = str(path)
    return spec


def probe(root: Path, listing: ReleasedListing) -> tuple[int, str]:
    """(p²·C, dtype name) of the first readable file in listing order: every rank derives the same."""
    for i in range(len(listing)):
        item = listing[i]
        for rel in (item.resize, item.crop):
            if rel is None:
                continue
            try:
                with safe_open(str(root / rel), framework="pt") as f:
                    sl = f.get_slice("feature")
                    shape, dtype = sl.get_shape(), sl.get_dtype()
            except (SafetensorError, OSError, KeyError):
                continue
            if len(shape) == 4 and dtype in _TORCH_DTYPES:
                return int(shape[-1]), DTYPE_NAMES[_TORCH_DTYPES[dtype]]
    raise UserError(f"no readable released latent file in {root}: every 'feature' is missing or unreadable")


def derive_patch_size(token_dim: int) -> int:
    p = math.isqrt(token_dim // CHANNELS)
    if token_dim % CHANNELS or p * p * CHANNELS != token_dim:
        raise UserError(f"released latents of {token_dim} values a token are not p²·{CHANNELS} for any patch size p")
    return p


def derive_budget(budget_tokens: int, patch_size: int, downsample: int) -> int:
    side = math.isqrt(budget_tokens)
    if side * side != budget_tokens:
        raise UserError(f"a released token budget of {budget_tokens} is not a square grid")
    return side * patch_size * downsample


def check_given(name: str, given: int | None, derived: int, why: str) -> int:
    if given is not None and given != derived:
        raise ConfigError(f"--{name} {given} disagrees with the released latents' {derived} ({why}); leave it out")
    return derived


def _integer(t: torch.Tensor, what: str) -> torch.Tensor:
    """``t`` as int64, if every value is a whole number (the layout stores some ints as floats)."""
    if t.dtype.is_floating_point:
        if not bool(torch.isfinite(t).all()) or not torch.equal(t, t.round()):
            raise BadFile(INCONSISTENT, f"{what} {t.flatten()[:4].tolist()} is not integral")
    return t.to(torch.int64)


@functools.lru_cache(maxsize=256)
def _grid(h: int, w: int) -> torch.Tensor:
    return make_grid(h, w)


def read_sequence(path: Path, token_dim: int, budget_tokens: int, crop: bool) -> tuple[np.ndarray, str, int, int, int]:
    """One released file -> (tokens (h·w, 2, D) as a numpy array (bf16 as int16 bits), dtype, h, w, label)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            missing = sorted({"feature", "grid", "size", "label"} - keys)
            if missing:
                raise BadFile(INCONSISTENT, f"no {', '.join(missing)}")
            feature, grid, size, label = (f.get_tensor(k) for k in ("feature", "grid", "size", "label"))
    except (SafetensorError, OSError) as err:
        raise BadFile(UNREADABLE, str(err).splitlines()[0] if str(err) else type(err).__name__) from None
    if feature.dim() != 4 or feature.shape[0] != 2 or feature.shape[-1] != token_dim:
        raise BadFile(INCONSISTENT, f"feature {tuple(feature.shape)}, not (2, h, w, {token_dim})")
    if feature.dtype not in DTYPE_NAMES:
        raise BadFile(INCONSISTENT, f"feature of {feature.dtype}")
    h, w = int(feature.shape[1]), int(feature.shape[2])
    if _integer(size, "size").flatten().tolist() != [h, w]:
        raise BadFile(INCONSISTENT, f"size {size.tolist()} but a {h}x{w} feature")
    if tuple(grid.shape) != (2, h * w) or not torch.equal(_integer(grid, "grid"), _grid(h, w)):
        raise BadFile(INCONSISTENT, f"grid {tuple(grid.shape)} is not the {h}x{w} token grid")
    labels = _integer(label, "label").flatten().tolist()
    if len(labels) != 1 or labels[0] < 0:
        raise BadFile(INCONSISTENT, f"label {label.tolist()} is not one class number")
    side = math.isqrt(budget_tokens)
    if crop and (h, w) != (side, side):
        raise BadFile(INCONSISTENT, f"a {h}x{w} crop, not the budget's {side}x{side}")
    if h * w > budget_tokens or h * w == 0:
        raise BadFile(INCONSISTENT, f"{h}x{w} = {h * w} tokens, over the budget of {budget_tokens}")
    if not bool(torch.isfinite(feature).all()):
        raise BadFile(INCONSISTENT, "non-finite values")
    tokens = feature.reshape(2, h * w, token_dim).transpose(0, 1).contiguous()  # (N, 2, D), row-major tokens
    raw = tokens.view(torch.int16) if tokens.dtype == torch.bfloat16 else tokens  # numpy has no bfloat16
    return raw.numpy(), DTYPE_NAMES[tokens.dtype], h, w, labels[0]


def read_item(args: tuple[Path, ReleasedItem, int, int]) -> tuple[list, list[tuple[str, str]]]:
    """Worker: an image's sequences [(variant, tokens, dtype, h, w, label)] and its skipped files."""
    root, item, token_dim, budget_tokens = args
    sequences: list[tuple[int, np.ndarray, str, int, int, int]] = []
    skipped: list[tuple[str, str]] = []
    if item.resize is None:
        return [], [(NO_RESIZE, str(item.crop))]
    for variant, rel in enumerate((item.resize, item.crop)):
        if rel is None:
            continue
        try:
            tokens, dtype, h, w, label = read_sequence(root / rel, token_dim, budget_tokens, crop=variant == 1)
        except BadFile as bad:
            skipped.append((bad.reason, f"{rel} ({bad.detail})"))
            if variant == 0:
                return [], skipped + ([(NO_RESIZE, item.crop)] if item.crop else [])
            continue
        if variant == 1 and label != sequences[0][5]:
            skipped.append((INCONSISTENT, f"{rel} (label {label}, its resize file's {sequences[0][5]})"))
            continue
        sequences.append((variant, tokens, dtype, h, w, label))
    return sequences, skipped


def build_shard(first: int, results: Iterator[tuple[list, list[tuple[str, str]]]], listing: ReleasedListing) -> Shard:
    shard = Shard()
    for i, (sequences, skipped) in enumerate(results, start=first):
        for reason, where in skipped:
            shard.skip(reason, where)
        if not sequences:
            continue
        image = len(shard.images)
        shard.images.append({"source": str(listing[i].resize), "caption": ""})
        for variant, raw, dtype, h, w, label in sequences:
            tokens = torch.from_numpy(raw)
            shard.features.append(tokens.view(torch.bfloat16) if dtype == "bfloat16" else tokens)
            shard.sequences.append((image, variant, variant == 1, h, w, label))  # a released crop is eligible
    return shard
