"""The velocity field a solver integrates: a model with its condition, layout, guidance and RoPE."""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.fit import Plan
from ..model.rope import RopeScaling
from ..text import TextFeatures
from ..tokens import TokenLayout
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

    def plan(self, doubled: bool) -> Plan:
        """The model's plan for the batch's rows, or for the doubled rows guidance runs (once each)."""
        if doubled not in self.plans:
            y = self.both if doubled else self.y
            layout = self.layout.repeat(2) if doubled else self.layout
            text_mask = y.mask if isinstance(y, TextFeatures) else None
            self.plans[doubled] = self.model.plan(layout, self.rope, text_mask=text_mask)
        return self.plans[doubled]

    def output(self, x: Tensor, t_model: Tensor, t_flow: Tensor) -> Tensor:
        """All output features of the guided model at model time t_model (B,); guidance is decided and
        scheduled on flow time t_flow (B,). Only the prediction features (not a learned-sigma half) are
        guided."""
        self.evaluations += 1
        if self.both is None or not self.guidance.active(float(t_flow[0])):
            return self.model(x, t_model, self.y, self.plan(False))
        out = self.model(torch.cat([x, x]), torch.cat([t_model, t_model]), self.both, self.plan(True))
        cond, uncond = out.chunk(2)
        guided = self.guidance.guided_features(self.model.config.patch_size) or self.out_channels
        return apply_guidance(cond, uncond, self.guidance.scale_at(t_flow), guided)

    def doubled_y(self) -> Tensor | TextFeatures:
        """The condition, then the null condition: the null class, or the empty caption."""
        if isinstance(self.y, TextFeatures):
            features, mask = self.model.caption_embedder.null(tuple(self.y.mask.shape[:-1]))
            return TextFeatures(torch.cat([self.y.features, features]), torch.cat([self.y.mask, mask]))
        return torch.cat([self.y, torch.full_like(self.y, self.null_label)])

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        tb = torch.as_tensor(t, dtype=torch.float32).to(x.device).expand(x.shape[0])  # (B,)
        return self.output(x, tb, tb)[..., : self.out_channels]

    def denoiser(self, x: Tensor, timestep: Tensor, t_flow: float) -> tuple[Tensor, Tensor | None]:
        """(ε, learned-range value or None) of a DDPM model at integer timesteps (B,), for ``ddpm_sample``."""
        out = self.output(x, timestep, torch.full_like(timestep, t_flow))
        eps = out[..., : self.out_channels]
        return eps, out[..., self.out_channels :] if self.model.config.learn_sigma else None
