"""The sampling settings a checkpoint gets when a caller names none, in one place.

The command line, the pipeline and the web page all call :func:`sampling_defaults`, so the same
checkpoint sampled with defaults gives the same images whichever way it is sampled.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig

# FiT v1 checkpoints are DDPM models: ancestral steps on a respaced schedule, 250 as published (SPEC §6.4).
DDPM_STEPS = 250
# Rectified-flow models: Euler on a uniform grid.
FLOW_SOLVER, FLOW_STEPS = "euler", 50
# The guidance of the papers' sample figures (FiTv2 Fig. 1 and 9; DiT's sampler default); the FID
# tables use 1.5 with the reference's 3-channel guidance, which evaluation runs name explicitly.
GUIDANCE_SCALE = 4.0


@dataclass(frozen=True)
class SamplingDefaults:
    """What a sampler uses for each setting the caller leaves unset."""

    solver: str
    steps: int
    rope: str  # the RoPE extrapolation the weights were trained with
    guidance_scale: float
    height: int  # pixels: the training budget side
    width: int


def sampling_defaults(config: ModelConfig, training_rope: str = "none", unit: int = 1) -> SamplingDefaults:
    """The defaults of a model with ``config``, trained with ``training_rope``; ``unit``: pixels per token
    side (patch size × the autoencoder's down-sampling)."""
    ddpm = not config.continuous_time  # FiT v1 weights
    side = config.rope_train_len * unit
    return SamplingDefaults(
        solver="ddpm" if ddpm else FLOW_SOLVER,
        steps=DDPM_STEPS if ddpm else FLOW_STEPS,
        rope=training_rope,
        guidance_scale=GUIDANCE_SCALE,
        height=side,
        width=side,
    )


__all__ = ["GUIDANCE_SCALE", "SamplingDefaults", "sampling_defaults"]
