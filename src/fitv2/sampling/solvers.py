"""ODE and SDE solvers over t from 0 (noise) to 1 (data), and how to configure them."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError
from ..names import LAST_STEPS, SDE_DIFFUSIONS
from ..seeds import Generators, gaussian
from .multistep import MULTISTEP, MULTISTEP_SOLVERS
from .schedule import time_grid

FIXED_SOLVERS = ("euler", "heun")


@dataclass(frozen=True)
class SolverConfig:
    """How to integrate. ``steps`` = solver steps on a uniform grid (Euler, DPM-Solver++(2M) ``dpm++2m``
    and UniPC ``unipc``: one model call each, Heun: two; SDE: steps − 1 Euler–Maruyama steps plus the
    last step; DDPM: respaced timesteps, 250 for FiT v1's published numbers); adaptive torchdiffeq
    methods ignore it and use atol/rtol. ``sample_eps``: where the SDE grid starts for the SBDM
    diffusion form, whose w(t) = (1 − t)/t is infinite at t = 0 (the reference starts there too when
    sample_eps > 0).

    ``time_shift`` s: the ODE grid is SD3's shift of the uniform one, t' = t / (t + s·(1 − t))
    (:func:`.schedule.shift_times`; s > 1 spends more steps near the noise). 1 leaves it uniform, bit for
    bit. It moves the steps of the fixed-step solvers; an adaptive method only reports at those points,
    so it does not change its result. ``"auto"``: each image's own s from its tokens
    (:func:`.schedule.auto_shift`: 1 up to the training tokens), one grid per image, built by the sampler
    (:func:`.sample.time_points`) and passed to :func:`integrate` as ``ts``; the SDE and DDPM samplers,
    which have grids of their own, and adaptive methods take it as 1."""

    solver: str = "euler"
    steps: int = 50
    atol: float = 1e-6
    rtol: float = 1e-3
    diffusion_form: str = "sigma"
    diffusion_norm: float = 1.0
    last_step: str = "Mean"
    last_step_size: float = 0.04
    sample_eps: float = 1e-3
    time_shift: float | str = 1.0

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
        if self.time_shift != "auto" and (isinstance(self.time_shift, str) or not 0 < self.time_shift < math.inf):
            raise ConfigError(f"the time shift must be 'auto' or a positive number, got {self.time_shift!r}")
        if self.time_shift not in (1, "auto") and self.solver in ("sde", "ddpm"):
            raise ConfigError(f"a time shift moves the ODE solvers' grid; the {self.solver} sampler has its own")
        if self.solver == "sde":
            if self.diffusion_form not in SDE_DIFFUSIONS:
                raise ConfigError(f"diffusion form must be one of {SDE_DIFFUSIONS}, got {self.diffusion_form!r}")
            if self.last_step not in LAST_STEPS:
                raise ConfigError(f"last step must be one of {LAST_STEPS}, got {self.last_step!r}")
            if self.steps < 2:
                raise ConfigError(
                    "the SDE sampler needs steps >= 2 (steps − 1 Euler–Maruyama steps, then the "
                    f"last step); got {self.steps}"
                )
            if not 0.0 <= self.last_step_size < 1.0:
                raise ConfigError(f"SDE last step size must be in [0, 1), got {self.last_step_size}")
            if self.diffusion_form == "SBDM" and not 0.0 < self.sample_eps < 1.0 - self.last_step_size:
                raise ConfigError(
                    "the SBDM diffusion form needs 0 < sample_eps < 1 − last step size (its w(t) "
                    f"is infinite at t = 0); got {self.sample_eps}"
                )

    @property
    def progress_steps(self) -> int | None:
        """How many times a run calls ``on_step``: once per solver step; None for adaptive solvers,
        which call it once per model evaluation."""
        return self.steps if self.solver in (*FIXED_SOLVERS, *MULTISTEP_SOLVERS, "sde", "ddpm") else None


StepCallback = Callable[[], None] | None


def euler(f, x: Tensor, ts: Tensor, on_step: StepCallback = None) -> Tensor:
    for t0, t1 in zip(ts[:-1], ts[1:]):
        x = x + (t1 - t0) * f(t0, x)
        if on_step:
            on_step()
    return x


def heun(f, x: Tensor, ts: Tensor, on_step: StepCallback = None) -> Tensor:
    for t0, t1 in zip(ts[:-1], ts[1:]):
        dt = t1 - t0
        d0 = f(t0, x)
        x_pred = x + dt * d0
        x = x + dt * 0.5 * (d0 + f(t1, x_pred))
        if on_step:
            on_step()
    return x


def odeint_torchdiffeq(
    f, x: Tensor, ts: Tensor, method: str, atol: float, rtol: float, on_step: StepCallback = None
) -> Tensor:
    try:
        from torchdiffeq import odeint
    except ImportError as err:  # pragma: no cover - torchdiffeq is a dependency
        raise RuntimeError("adaptive solvers need torchdiffeq: pip install torchdiffeq") from err
    if on_step:
        inner = f

        def f(t, x):
            out = inner(t, x)
            on_step()
            return out

    return odeint(f, x, ts, method=method, atol=atol, rtol=rtol)[-1]


def sde_diffusion(form: str, t: Tensor, norm: float) -> Tensor:
    """w(t) of the reference's SDE for the linear path."""
    if form == "constant":
        return torch.full_like(t, norm)
    if form == "SBDM":
        return norm * (1 - t) / t
    if form in ("sigma", "linear"):
        return norm * (1 - t)
    if form == "decreasing":
        return 0.25 * (norm * torch.cos(math.pi * t) + 1) ** 2
    if form == "increasing-decreasing":
        return norm * torch.sin(math.pi * t) ** 2
    raise ValueError(f"unknown diffusion form {form!r}")


def score_from_velocity(v: Tensor, x: Tensor, t: Tensor) -> Tensor:
    """∇log p_t(x) = (t·v − x)/(1 − t) for x_t = t·x1 + (1 − t)·x0."""
    return (t * v - x) / (1 - t)


def sde_grid(cfg: SolverConfig) -> Tensor:
    """The Euler–Maruyama time points: ``steps`` from t0 to 1 − last step size. t0 = 0, except
    ``sample_eps`` for SBDM; the score's 1/(1 − t) is never evaluated at t = 1, since the last
    point precedes it by the last step (or, without one, only the steps before it are taken)."""
    t0 = cfg.sample_eps if cfg.diffusion_form == "SBDM" else 0.0
    last = 0.0 if cfg.last_step == "None" else cfg.last_step_size
    return torch.linspace(t0, 1.0 - last, cfg.steps)


NoiseDraw = Callable[[torch.Size], Tensor] | None  # step noise of a shape; None: gaussian(shape, generator)


def euler_maruyama(
    f, x: Tensor, cfg: SolverConfig, generator: Generators = None, on_step: StepCallback = None, draw: NoiseDraw = None
) -> Tensor:
    draw = draw or (lambda shape: gaussian(shape, generator))
    last = 0.0 if cfg.last_step == "None" else cfg.last_step_size
    ts = sde_grid(cfg)
    dt = ts[1] - ts[0]

    def drift(t: Tensor, x: Tensor) -> Tensor:
        v = f(t, x)
        tt = t.to(x.device)
        return v + sde_diffusion(cfg.diffusion_form, tt, cfg.diffusion_norm) * score_from_velocity(v, x, tt)

    for t in ts[:-1]:
        noise = draw(x.shape).to(x.device)
        w = sde_diffusion(cfg.diffusion_form, t, cfg.diffusion_norm).to(x.device)
        x = x + drift(t, x) * dt + torch.sqrt(2 * w) * noise * torch.sqrt(dt)
        if on_step:
            on_step()
    t1 = ts[-1]
    if last > 0:
        if cfg.last_step == "Mean":
            x = x + drift(t1, x) * last
        elif cfg.last_step == "Euler":
            x = x + f(t1, x) * last
        elif cfg.last_step == "Tweedie":
            tt = t1.to(x.device)
            x = x / tt + (1 - tt) ** 2 / tt * score_from_velocity(f(t1, x), x, tt)
    if on_step:
        on_step()
    return x


def integrate(
    f,
    x: Tensor,
    cfg: SolverConfig,
    generator: Generators = None,
    on_step: StepCallback = None,
    draw: NoiseDraw = None,
    ts: Tensor | None = None,
) -> Tensor:
    """Integrate dx/dt = f(t, x) from t = 0 to 1 (or run the SDE) with the configured solver;
    ``on_step()`` after each step (see :attr:`SolverConfig.progress_steps`); ``draw``: the SDE's step noise.

    ``ts``: the time points instead of ``time_grid(cfg.steps, cfg.time_shift)``, cfg.steps + 1 of them
    from 0 to 1, of shape (steps + 1,) or (steps + 1, *shape) with ``ts[i]`` broadcasting against x, e.g.
    (steps + 1, B, 1, 1) for one grid per image (:func:`.schedule.time_grid` with a tensor shift). ``f``
    then receives such a ``ts[i]``. Per-image grids suit the fixed-step solvers (euler, heun, dpm++2m,
    unipc); torchdiffeq takes one grid, the SDE its own."""
    if cfg.solver == "sde":
        if ts is not None:
            raise ValueError("the SDE sampler runs on its own grid (sde_grid); it takes no ts")
        return euler_maruyama(f, x, cfg, generator, on_step, draw)
    if ts is None:
        ts = time_grid(cfg.steps, cfg.time_shift if isinstance(cfg.time_shift, float | int) else None)
    elif ts.dim() < 1 or ts.shape[0] != cfg.steps + 1:
        raise ValueError(f"ts must hold steps + 1 = {cfg.steps + 1} time points, got shape {tuple(ts.shape)}")
    elif ts.dim() > 1:
        ts = ts.to(x.device)
    if cfg.solver == "euler":
        return euler(f, x, ts, on_step)
    if cfg.solver == "heun":
        return heun(f, x, ts, on_step)
    if cfg.solver in MULTISTEP:
        return MULTISTEP[cfg.solver](f, x, ts, on_step)
    if ts.dim() != 1:
        raise ValueError(f"torchdiffeq's {cfg.solver} takes one time grid, ts of shape (steps + 1,)")
    return odeint_torchdiffeq(f, x, ts.to(x.device), cfg.solver, cfg.atol, cfg.rtol, on_step)
