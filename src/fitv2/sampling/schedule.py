"""Time grids for the ODE solvers, and the resolution-aware time shift of SD3.

fitv2's flow time runs from t = 0 (noise) to t = 1 (data); diffusers' flow schedulers use the noise level
σ = 1 − t, running from σ = 1 to σ = 0.

**The shift.** Esser et al. 2024 ("Scaling Rectified Flow Transformers", SD3, §5.3.2) argue that an image of
m pixels is noisier-looking at the same σ than one of n pixels (more pixels average the same noise away), and
map a base-resolution noise level σ to the one at the new resolution that keeps the uncertainty the same:
σ' = s·σ / (1 + (s − 1)·σ) with s = sqrt(m/n) (their "α"). diffusers implements the same map as
``FlowMatchEulerDiscreteScheduler(shift=s)`` and ``flow_shift`` of its multistep schedulers. In fitv2's time,
t' = 1 − σ' = t / (t + s·(1 − t)): for s > 1 the uniform grid moves toward t = 0, spending more steps at
high noise, where a larger image's coarse layout is decided. s = 1 is the identity.

This is not FiTv2's ``time_shifting`` knob (SPEC §4.3), which warps only the value fed to the timestep
embedder, in the other direction (t' = s·t / (1 + (s − 1)·t)), and leaves the solver grid alone.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

Shift = float | Tensor


def shift_times(ts: Tensor, s: Shift) -> Tensor:
    """The SD3 shift of flow times ``ts`` (0 = noise, 1 = data): t' = t / (t + s·(1 − t)), i.e.
    σ' = s·σ / (1 + (s − 1)·σ) for σ = 1 − t (Esser et al. 2024, §5.3.2; diffusers' ``shift`` / ``flow_shift``).

    ``s`` > 0: a number, or a tensor broadcastable like one time point ``ts[i]`` against the state (e.g.
    (B, 1, 1), one shift per image of a padded batch). A 1-D ``ts`` (S + 1,) with a tensor ``s`` of shape
    ``shape`` gives a grid of shape (S + 1, *shape). t = 0 and t = 1 stay exactly 0 and 1, and where s = 1 the
    times are returned bit for bit (the formula would round t + (1 − t) for some t)."""
    if not isinstance(s, Tensor):
        if not s > 0 or not math.isfinite(s):
            raise ValueError(f"the time shift must be a positive number, got {s}")
        if s == 1:
            return ts
        return ts / (ts + s * (1 - ts))
    s = s.to(ts.device)
    if not bool((s > 0).all()) or not bool(torch.isfinite(s).all()):
        raise ValueError("the time shift must be positive and finite")
    if ts.dim() == 1 and s.dim() > 0:
        ts = ts.reshape(-1, *([1] * s.dim()))
    s = s.to(ts.dtype)
    return torch.where(s == 1, ts, ts / (ts + s * (1 - ts)))


def time_grid(steps: int, shift: Shift | None = None) -> Tensor:
    """The solvers' time points: ``torch.linspace(0, 1, steps + 1)`` (float32), shifted by ``shift``
    (:func:`shift_times`; None or 1: unshifted, bit for bit). A tensor ``shift`` of shape ``shape`` gives
    (steps + 1, *shape), one grid per image (or per token)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ts = torch.linspace(0.0, 1.0, steps + 1)
    return ts if shift is None else shift_times(ts, shift)


def auto_shift(tokens: int | Tensor, train_tokens: int) -> Shift:
    """The shift for an image of ``tokens`` tokens from a model trained at ``train_tokens``:
    s = max(1, sqrt(tokens / train_tokens)).

    This is SD3's rule s = sqrt(m/n) (Esser et al. 2024, §5.3.2: m pixels vs n at the base resolution; tokens
    are proportional to pixels at a fixed patch and autoencoder), clamped at 1 so that sampling at or below the
    training size is unchanged: FiTv2 was trained and evaluated without a shift, and a smaller image is
    not less noisy at a given σ in a way the model would need corrected. diffusers' dynamic shifting (Flux)
    instead interpolates μ = log s linearly in the sequence length, from 0.5 at 256 tokens to 1.15 at 4096;
    it is fitted to its own models and gives s = e^0.5 ≈ 1.65 already at its base length, so it would move
    in-distribution sampling of a model trained without a shift. SD3's released models sample 1024² with
    s = 3.0, below the sqrt(m/n) = 4 of their 256² base: the rule is a principled default, not a tuned
    optimum.

    ``tokens``: an int (returns a float) or a tensor of token counts (returns a float32 tensor of the same
    shape, e.g. (B, 1, 1) for :func:`shift_times`)."""
    if train_tokens < 1:
        raise ValueError(f"train_tokens must be >= 1, got {train_tokens}")
    if isinstance(tokens, Tensor):
        return torch.sqrt(tokens.to(torch.float32) / train_tokens).clamp(min=1.0)
    if tokens < 1:
        raise ValueError(f"tokens must be >= 1, got {tokens}")
    return max(1.0, math.sqrt(tokens / train_tokens))
