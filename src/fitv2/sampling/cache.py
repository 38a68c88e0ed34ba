"""Feature caching: skip most of the network at solver steps where its input has barely changed.

First-Block-Cache (the training-free cache of ParaAttention, as diffusers' ``apply_first_block_cache``):
at every step the first block runs; when the change of its residual (its output minus its input) since
the previous step is small, relative to that residual, the remaining blocks are not run and the residual
they added at that step is added again. The residual's change is measured per image (in a padded or
packed batch, over each image's own tokens), and the blocks are skipped only when every image of the
call is below the threshold, so no image takes another's shortcut. Each plan (the rows, and the doubled
rows of guidance) has its own cache. A threshold of 0 never skips: the computation is exactly the
uncached one.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError
from ..model.layers import LayoutPlan
from ..names import CACHE_METHODS
from .defaults import CACHE_THRESHOLD


@dataclass(frozen=True)
class CacheConfig:
    """``method``: 'none' or 'first-block'; ``threshold``: the largest relative change of the first block's
    residual (mean |r_t − r_prev| / mean |r_prev| per image) at which the other blocks are skipped."""

    method: str = "none"
    threshold: float = CACHE_THRESHOLD

    def __post_init__(self) -> None:
        if self.method not in CACHE_METHODS:
            raise ConfigError(f"cache must be one of {', '.join(CACHE_METHODS)}; got {self.method!r}")
        if not self.threshold >= 0:
            raise ConfigError(f"the cache threshold must be >= 0; got {self.threshold}")

    @property
    def enabled(self) -> bool:
        return self.method != "none"


@dataclass
class CacheStats:
    """Block evaluations of a sampling run, counted per image: run, and skipped by the cache."""

    evaluated: int = 0
    skipped: int = 0

    @property
    def fraction_skipped(self) -> float:
        total = self.evaluated + self.skipped
        return self.skipped / total if total else 0.0

    def describe(self) -> str:
        total = self.evaluated + self.skipped
        return f"skipped {self.skipped:,} of {total:,} block evaluations ({self.fraction_skipped:.0%})"


@dataclass
class FirstBlockCache:
    """The cache of one plan's rows across a solver's steps; the model calls it in place of its blocks."""

    threshold: float
    stats: CacheStats = field(default_factory=CacheStats)
    first: Tensor | None = None  # the first block's residual at the last full step
    rest: Tensor | None = None  # what the other blocks added then
    images: int | None = None  # in the plan's rows (one plan per cache: counted once)

    def __call__(self, x: Tensor, first_block, other_blocks, plan: LayoutPlan, depth: int) -> Tensor:
        h = first_block(x)
        residual = h - x
        if self.images is None:
            self.images = _count_images(plan)
        images = self.images
        if self.first is not None and self.rest is not None and self._unchanged(residual, plan):
            self.stats.evaluated += images
            self.stats.skipped += images * (depth - 1)
            return h + self.rest
        out = other_blocks(h)
        self.first, self.rest = residual, out - h
        self.stats.evaluated += images * depth
        return out

    def _unchanged(self, residual: Tensor, plan: LayoutPlan) -> bool:
        assert self.first is not None
        change = (residual - self.first).abs().float().mean(-1)  # (B, N)
        size = self.first.abs().float().mean(-1)
        mask = plan.mask.float()
        segment = plan.layout.segment
        if segment is None:  # one image per row
            ratio = (change * mask).sum(1) / (size * mask).sum(1).clamp_min(1e-12)
        else:
            n = int(segment.max()) + 1
            seg = segment.long()
            num = torch.zeros(seg.shape[0], n, device=seg.device).scatter_add_(1, seg, change * mask)[:, 1:]
            den = torch.zeros(seg.shape[0], n, device=seg.device).scatter_add_(1, seg, size * mask)[:, 1:]
            real = den > 0
            ratio = (num[real] / den[real]) if bool(real.any()) else num.new_zeros(1)
        return bool((ratio < self.threshold).all())


def _count_images(plan: LayoutPlan) -> int:
    segment = plan.layout.segment
    if segment is None:
        return plan.layout.batch_size
    return int(sum(len(torch.unique(row[row > 0])) for row in segment.cpu()))


__all__ = ["CacheConfig", "CacheStats", "FirstBlockCache"]
