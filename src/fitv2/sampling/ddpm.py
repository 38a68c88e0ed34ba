"""DDPM sampling for FiT v1 checkpoints (ε-prediction with a learned-range variance).

FiT v1, like DiT, was trained as a discrete diffusion model: linear β from 1e-4 to 0.02 over
T = 1000 steps, the network predicting ε and, in its second half of output features, a value
v ∈ [-1, 1] that interpolates the log variance between the posterior variance β̃_t and β_t
("learned range"). It is sampled with ancestral steps on a respaced subset of the timesteps
(250 for the published numbers), the network seeing the original integer timestep. FiTv2
models are rectified-flow models and use :mod:`fitv2.sampling` instead.

The schedule is computed in float64 and the steps in the samples' dtype, as in the improved-diffusion
code the reference uses.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..seeds import Generators, gaussian


def linear_betas(num_steps: int = 1000, start: float = 1e-4, end: float = 0.02) -> Tensor:
    """The DDPM linear schedule, scaled to ``num_steps`` as improved-diffusion scales it."""
    scale = 1000 / num_steps
    return torch.linspace(scale * start, scale * end, num_steps, dtype=torch.float64)


def respaced_timesteps(num_steps: int, count: int) -> list[int]:
    """``count`` timesteps spread evenly over [0, num_steps − 1] (improved-diffusion's
    ``space_timesteps(num_steps, str(count))``: one section, rounded fractional stride)."""
    if not 1 <= count <= num_steps:
        raise ConfigError(f"DDPM steps must be between 1 and {num_steps}, got {count}")
    if count == 1:
        return [0]
    stride, position, taken = (num_steps - 1) / (count - 1), 0.0, set()
    for _ in range(count):  # accumulated as improved-diffusion does, so the rounding matches
        taken.add(round(position))
        position += stride
    return sorted(taken)


@dataclass
class Diffusion:
    """A (respaced) DDPM schedule: ``timestep_map[i]`` is the original timestep of step i."""

    betas: Tensor  # (S,) float64
    timestep_map: Tensor  # (S,) long
    num_steps: int = 1000  # T of the original schedule

    @classmethod
    def respaced(cls, steps: int, num_steps: int = 1000) -> Diffusion:
        base = torch.cumprod(1 - linear_betas(num_steps), 0)
        keep = respaced_timesteps(num_steps, steps)
        previous = torch.cat([torch.ones(1, dtype=torch.float64), base[keep][:-1]])
        return cls(betas=1 - base[keep] / previous, timestep_map=torch.tensor(keep), num_steps=num_steps)

    @property
    def alphas_cumprod(self) -> Tensor:
        return torch.cumprod(1 - self.betas, 0)

    def posterior(self) -> dict[str, Tensor]:
        """Coefficients of q(x_{t−1} | x_t, x_0) and the log-variance bounds of the learned range."""
        acp = self.alphas_cumprod
        acp_prev = torch.cat([torch.ones(1, dtype=torch.float64), acp[:-1]])
        variance = self.betas * (1 - acp_prev) / (1 - acp)
        # The posterior variance is 0 at t = 0; improved-diffusion clips its log with the next value.
        log_min = torch.log(torch.cat([variance[1:2], variance[1:]])) if len(variance) > 1 else torch.log(self.betas)
        return dict(
            recip=torch.sqrt(1 / acp),
            recipm1=torch.sqrt(1 / acp - 1),
            coef_x0=self.betas * torch.sqrt(acp_prev) / (1 - acp),
            coef_xt=(1 - acp_prev) * torch.sqrt(1 - self.betas) / (1 - acp),
            log_min=log_min,
            log_max=torch.log(self.betas),
        )


def ddpm_step(
    x: Tensor, eps: Tensor, var: Tensor | None, i: int, coef: dict[str, Tensor], noise: Tensor | None
) -> Tensor:
    """One ancestral step from step i to i − 1 (to x_0 at i = 0, without noise).

    eps: predicted noise; var: the learned-range value in [-1, 1] (None: the posterior variance β̃)."""
    c = {k: float(v[i]) for k, v in coef.items()}
    x0 = c["recip"] * x - c["recipm1"] * eps.to(x.dtype)
    mean = c["coef_x0"] * x0 + c["coef_xt"] * x
    if i == 0:
        return mean
    if noise is None:
        raise ValueError(f"ddpm_step needs noise for step {i} > 0")
    std: float | Tensor
    if var is None:
        std = math.exp(0.5 * c["log_min"])
    else:
        frac = (var.to(x.dtype) + 1) / 2
        std = torch.exp(0.5 * (frac * c["log_max"] + (1 - frac) * c["log_min"]))
    return mean + std * noise


def ddpm_sample(
    denoiser,
    x: Tensor,
    diffusion: Diffusion,
    generator: Generators = None,
    progress: bool = False,
    on_step: Callable[[], None] | None = None,
    draw: Callable[[torch.Size], Tensor] | None = None,
) -> Tensor:
    """Run the reverse chain from x (pure noise) at the last step down to x_0.

    denoiser(x, timestep, flow_t) → (eps, var or None), where timestep is the original integer step
    (B,) and flow_t = 1 − timestep / T is the same point on FiTv2's 0 (noise) → 1 (data) time axis,
    for guidance schedules and intervals. generator: see :data:`Generators`; on_step: called after
    each step; draw: the step noise of x's shape instead of ``gaussian(shape, generator)`` (a mixed-size
    batch draws each image's noise from its own generator)."""
    from tqdm import tqdm

    draw = draw or (lambda shape: gaussian(shape, generator))
    coef = diffusion.posterior()
    steps = range(len(diffusion.betas) - 1, -1, -1)
    for i in tqdm(steps, desc="ddpm", unit="step", disable=not progress, leave=False):
        timestep = diffusion.timestep_map[i].to(x.device).float().expand(x.shape[0])
        eps, var = denoiser(x, timestep, 1 - float(diffusion.timestep_map[i]) / diffusion.num_steps)
        noise = draw(x.shape).to(x.device) if i > 0 else None
        x = ddpm_step(x, eps, var, i, coef, noise)
        if on_step:
            on_step()
    return x
