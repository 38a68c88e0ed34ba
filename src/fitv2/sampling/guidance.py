"""Classifier-free guidance: v = v_u + w·(v_c − v_u), on all channels or the reference's three."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..names import GUIDANCE_SCHEDULES, GUIDED_CHANNELS


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance v = v_u + w·(v_c − v_u).

    channels: 'all' (standard) or 'reference' — only latent channels 0–2 are guided and the
    rest keep the conditional prediction, as the released FiT/FiTv2/DiT samplers do.
    schedule: 'constant' or the reference's 'power-cos', w(t) = 1 + (w − 1)·(1 − cos(π(1 − t)^p))/2
    (with flow time this is full guidance at noise, none at data).
    interval: guidance only for t in [lo, hi]; elsewhere the conditional velocity alone.
    """

    scale: float = 1.0
    channels: str = "all"
    schedule: str = "constant"
    power: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.channels not in GUIDED_CHANNELS:
            raise ConfigError(f"guidance channels must be one of {GUIDED_CHANNELS}, got {self.channels!r}")
        if self.schedule not in GUIDANCE_SCHEDULES:
            raise ConfigError(f"guidance schedule must be one of {GUIDANCE_SCHEDULES}, got {self.schedule!r}")
        lo, hi = self.interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got {self.interval}")

    @property
    def doubles_batch(self) -> bool:
        """Whether model calls run the conditional and unconditional halves as one doubled batch."""
        return self.scale != 1.0

    def active(self, t: float) -> bool:
        lo, hi = self.interval
        return self.scale != 1.0 and lo <= t <= hi

    def scale_at(self, t: Tensor) -> Tensor | float:
        """Guidance weight per sample (B, 1, 1), or a float when constant."""
        if self.schedule == "constant":
            return self.scale
        step = (1 - torch.cos(((1 - torch.clamp_max(t, 1.0)) ** self.power) * math.pi)) / 2
        return ((self.scale - 1) * step + 1).view(-1, 1, 1)

    def weights(self, t: Tensor) -> Tensor | float:
        """The guidance weight of each image at its flow time ``t`` (any shape: (B,), or (B, n) for packed
        rows), 1 where ``t`` is outside the interval; a float when constant and in it everywhere."""
        lo, hi = self.interval
        inside = (t >= lo) & (t <= hi)
        if self.schedule == "constant":
            return self.scale if bool(inside.all()) else torch.where(inside, self.scale, 1.0)
        step = (1 - torch.cos(((1 - torch.clamp_max(t, 1.0)) ** self.power) * math.pi)) / 2
        return torch.where(inside, (self.scale - 1) * step + 1, 1.0)

    def guided_features(self, patch_size: int) -> int | None:
        """How many leading features of a token are guided (None = all)."""
        return None if self.channels == "all" else 3 * patch_size * patch_size


def apply_guidance(cond: Tensor, uncond: Tensor, scale: Tensor | float, guided_features: int | None) -> Tensor:
    """uncond + scale·(cond − uncond) on the first ``guided_features`` features (all if None);
    the remaining features keep ``cond``."""
    guided = uncond + scale * (cond - uncond)
    if guided_features is None:
        return guided
    return torch.cat([guided[..., :guided_features], cond[..., guided_features:]], dim=-1)
