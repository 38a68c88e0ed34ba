"""The velocity field a solver integrates: a model with its condition, layout, guidance and RoPE."""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.fit import Plan
from ..model.rope import RopeScaling
from ..text import TextFeatures
from ..tokens import TokenLayout
from .cache import CacheConfig, CacheStats, FirstBlockCache
from .guidance import Guidance, apply_guidance


class VelocityField:
    """v(t, x) of a model for fixed labels, positions and guidance; counts evaluations.

    The model's plans for the batch's layout (and for the doubled batch guidance runs) are built here, once
    for all of a solver's steps."""

    def __init__(
        self,
        model,
        y: Tensor | TextFeatures,
        layout: TokenLayout,
        guidance: Guidance = Guidance(),
        rope: RopeScaling | None = None,
        null_label: int | None = None,
        cache: CacheConfig = CacheConfig(),
        stats: CacheStats | None = None,
    ):
        self.model = model
        self.y = y
        self.layout = layout
        self.guidance = guidance
        self.rope = rope
        self.null_label = model.config.num_classes if null_label is None else null_label
        self.out_channels = model.config.in_channels * model.config.patch_size**2
        self.evaluations = 0
        self.both = self.doubled_y() if guidance.doubles_batch else None  # the condition, then the null one
        self.plans: dict[bool, Plan] = {}  # built on first use (a guidance interval may never need one)
        self.cache = cache
        self.stats = stats if stats is not None else CacheStats()  # block evaluations, run and skipped
        self.caches: dict[bool, FirstBlockCache] = {}  # one per plan
        # Packed rows with one time grid per image get times per token: each image's is read at its first token.
        self.first_token = first_tokens(layout) if layout.packed else None

    def plan(self, doubled: bool) -> Plan:
        """The model's plan for the batch's rows, or for the doubled rows guidance runs (once each)."""
        if doubled not in self.plans:
            y = self.both if doubled else self.y
            layout = self.layout.repeat(2) if doubled else self.layout
            text_mask = y.mask if isinstance(y, TextFeatures) else None
            self.plans[doubled] = self.model.plan(layout, self.rope, text_mask=text_mask)
        return self.plans[doubled]

    def block_cache(self, doubled: bool) -> FirstBlockCache | None:
        """The feature cache of a plan's rows across the steps (None: caching is off)."""
        if not self.cache.enabled:
            return None
        if doubled not in self.caches:
            self.caches[doubled] = FirstBlockCache(self.cache.threshold, self.stats)
        return self.caches[doubled]

    def output(self, x: Tensor, t_model: Tensor, t_flow: Tensor) -> Tensor:
        """All output features of the guided model at model time t_model, (B,) or (B, n) per image of packed
        rows; guidance is decided and scheduled per image on flow time t_flow (same shape). Only the
        prediction features (not a learned-sigma half) are guided."""
        self.evaluations += 1
        weight = self.guidance.weights(t_flow) if self.both is not None else 1.0
        if isinstance(weight, Tensor) and not bool((weight != 1).any()):
            weight = 1.0
        if isinstance(weight, float) and weight == 1.0:  # no image is guided now: the conditional rows alone
            return self.model(x, t_model, self.y, self.plan(False), cache=self.block_cache(False))
        both, times = torch.cat([x, x]), torch.cat([t_model, t_model])
        out = self.model(both, times, self.both, self.plan(True), cache=self.block_cache(True))
        cond, uncond = out.chunk(2)
        guided = self.guidance.guided_features(self.model.config.patch_size) or self.out_channels
        return apply_guidance(cond, uncond, self.per_token(weight), guided)

    def per_token(self, values: Tensor | float) -> Tensor | float:
        """Per-image values, (B,) or (B, n), as they broadcast over the tokens (B, N|1, 1)."""
        if isinstance(values, float):
            return values
        if values.dim() == 1:
            return values.view(-1, 1, 1)
        return self.layout.spread(values)[..., None]

    def image_times(self, t: Tensor, x: Tensor) -> Tensor:
        """A solver's time point as the model takes it: (B,), or (B, n) per image of packed rows. ``t`` is a
        number, one per row (B, 1, 1), or one per token of packed rows (B, N, 1)."""
        t = torch.as_tensor(t, dtype=torch.float32).to(x.device)
        if t.dim() == 0:
            return t.expand(x.shape[0])
        if t.shape[1] == 1:
            return t.reshape(t.shape[0])
        if self.first_token is None:
            raise ValueError(f"times per token {tuple(t.shape)} need packed rows")
        return t[..., 0].gather(1, self.first_token.to(x.device))

    def doubled_y(self) -> Tensor | TextFeatures:
        """The condition, then the null condition: the null class, or the empty caption."""
        if isinstance(self.y, TextFeatures):
            features, mask = self.model.caption_embedder.null(tuple(self.y.mask.shape[:-1]))
            return TextFeatures(torch.cat([self.y.features, features]), torch.cat([self.y.mask, mask]))
        return torch.cat([self.y, torch.full_like(self.y, self.null_label)])

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        tb = self.image_times(t, x)  # (B,) or (B, n)
        return self.output(x, tb, tb)[..., : self.out_channels]

    def denoiser(self, x: Tensor, timestep: Tensor, t_flow: float) -> tuple[Tensor, Tensor | None]:
        """(ε, learned-range value or None) of a DDPM model at integer timesteps (B,), for ``ddpm_sample``."""
        out = self.output(x, timestep, torch.full_like(timestep, t_flow))
        eps = out[..., : self.out_channels]
        return eps, out[..., self.out_channels :] if self.model.config.learn_sigma else None


def first_tokens(layout: TokenLayout) -> Tensor:
    """(B, n): the index of each image's first token in its row (0 for an empty slot)."""
    assert layout.segment is not None
    B, n = layout.batch_size, layout.images_per_row
    first = torch.full((B, n + 1), layout.length, dtype=torch.long)
    positions = torch.arange(layout.length).expand(B, -1)
    first = first.scatter_reduce(1, layout.segment.cpu().long(), positions, reduce="amin")[:, 1:]
    return torch.where(first == layout.length, 0, first)
