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
# First-Block-Cache (off unless asked for): the relative change of the first block's residual below which
# the other blocks are skipped.
CACHE_THRESHOLD = 0.08


@dataclass(frozen=True)
class SamplingDefaults:
    """What a sampler uses for each setting the caller leaves unset."""

    solver: str
    steps: int
    rope: str  # 'auto': none within the training tokens, beyond them the best method (fitv2.model.rope.auto_rope)
    time_shift: str  # 'auto': each image's SD3 shift from its tokens, 1 within the training tokens
    guidance_scale: float
    height: int  # pixels: the training budget side
    width: int


def sampling_defaults(config: ModelConfig, unit: int = 1) -> SamplingDefaults:
    """The defaults of a model with ``config``; ``unit``: pixels per token side (patch size × the
    autoencoder's down-sampling). RoPE and time shift are ``auto``: what they pick depends on each image's
    size, and within the training tokens both leave sampling as trained (no extrapolation, no shift)."""
    ddpm = not config.continuous_time  # FiT v1 weights
    side = config.rope_train_len * unit
    return SamplingDefaults(
        solver="ddpm" if ddpm else FLOW_SOLVER,
        steps=DDPM_STEPS if ddpm else FLOW_STEPS,
        rope="auto",
        time_shift="auto",
        guidance_scale=GUIDANCE_SCALE,
        height=side,
        width=side,
    )


__all__ = ["CACHE_THRESHOLD", "GUIDANCE_SCALE", "SamplingDefaults", "sampling_defaults"]
