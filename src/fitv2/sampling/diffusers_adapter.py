"""Run diffusers' flow-matching schedulers on fitv2's velocity field and time grid, to compare solvers.

diffusers is an optional extra: it is imported only when a function here is called. The schedulers are
elementwise, so token tensors (B, N, D) run as they are.

Conventions. diffusers' flow schedulers integrate the noise level σ = 1 − t from 1 (noise) down to 0
(data), on x_σ = (1 − σ)·x_data + σ·noise, and a ``"flow_prediction"`` model returns dx/dσ = noise − data,
the negative of fitv2's v = x1 − x0 = data − noise (``DPMSolverMultistepScheduler.convert_model_output``:
x̂0 = x − σ·model_output, i.e. x̂1 = x + (1 − t)·v). The adapter therefore calls ``f(1 − σ_i, x)`` and hands
the scheduler −v.

Grids. Each scheduler is given the σ = 1 − t of fitv2's grid ``ts`` (S + 1 points from 0 to 1):

* ``FlowMatchEulerDiscreteScheduler(shift=1)``: ``set_timesteps(sigmas=1 − ts[:-1])``; it appends σ = 0.
* ``DPMSolverMultistepScheduler``: ``set_timesteps`` takes no σ list and, with ``use_flow_sigmas``, builds
  σ from 1 − 1/num_train_timesteps (never 1); the adapter writes 1 − ts into its ``sigmas`` after
  ``set_timesteps``. Its arithmetic handles σ = 1 (λ = −∞) and σ = 0 (λ = +∞) exactly.
* ``UniPCMultistepScheduler``: ``set_timesteps(sigmas=1 − ts[:-1])``; it moves a first σ of 1 to
  1 − 1e-6 (its corrector's linear solve is NaN at λ = −∞; fitv2's UniPC does the same in λ, see
  :mod:`.multistep`) and appends σ = 0.

The grid each scheduler ran on is returned with the result.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor

DIFFUSERS_SOLVERS = ("euler", "dpm++2m", "unipc")


def make_scheduler(solver: str, shift: float = 1.0):
    """The diffusers scheduler matching a fitv2 solver name: ``euler`` → ``FlowMatchEulerDiscreteScheduler``,
    ``dpm++2m`` → ``DPMSolverMultistepScheduler`` (DPM-Solver++, order 2, midpoint), ``unipc`` →
    ``UniPCMultistepScheduler`` (bh2, order 2, data prediction), all with flow sigmas, flow predictions,
    a first-order final step to σ = 0, and ``shift`` as their ``shift`` / ``flow_shift``."""
    try:
        from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler
    except ImportError as err:
        raise RuntimeError("comparing with diffusers needs it installed: pip install diffusers") from err
    if solver == "euler":
        return FlowMatchEulerDiscreteScheduler(shift=shift)
    common = dict(
        use_flow_sigmas=True,
        prediction_type="flow_prediction",
        flow_shift=shift,
        solver_order=2,
        lower_order_final=True,
        final_sigmas_type="zero",
    )
    if solver == "dpm++2m":
        return DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_type="midpoint", **common)
    if solver == "unipc":
        return UniPCMultistepScheduler(predict_x0=True, solver_type="bh2", **common)
    raise ValueError(f"no diffusers scheduler for {solver!r}; one of {DIFFUSERS_SOLVERS}")


def diffusers_integrate(
    f: Callable[[Tensor, Tensor], Tensor], x: Tensor, ts: Tensor, solver: str
) -> tuple[Tensor, Tensor]:
    """Integrate dx/dt = f(t, x) over the 1-D grid ``ts`` (0 → 1) with diffusers' scheduler for ``solver``
    (unshifted: ``ts`` carries any shift). Returns (x at the grid's end, the grid diffusers ran on as flow
    times 1 − σ, float32): ``ts`` itself up to float32 rounding of σ, except UniPC's first point (1e-6 where
    ``ts[0]`` is 0)."""
    if ts.dim() != 1:
        raise ValueError("diffusers' schedulers take one time grid (ts of shape (S + 1,))")
    scheduler = make_scheduler(solver)
    sigmas = 1 - ts.double().cpu()
    steps = len(ts) - 1
    if solver == "dpm++2m":
        with warnings.catch_warnings():  # numpy 2's copy-keyword notice about diffusers' own np.array(tensor)
            warnings.simplefilter("ignore", DeprecationWarning)
            scheduler.set_timesteps(num_inference_steps=steps)
        scheduler.sigmas = sigmas.float()
        scheduler.timesteps = (scheduler.sigmas[:-1] * scheduler.config.num_train_timesteps).to(torch.int64)
    else:
        # The schedulers append σ = 0 themselves.
        if float(sigmas[-1]) != 0:
            raise ValueError("diffusers' flow schedulers end at t = 1 (σ = 0)")
        scheduler.set_timesteps(sigmas=sigmas[:-1].numpy())
    scheduler.set_begin_index(0)
    used = (1 - scheduler.sigmas.double()).float()
    x = x.float()
    for i, timestep in enumerate(scheduler.timesteps):
        t = used[i].to(x.device)
        x = scheduler.step(-f(t, x), timestep, x).prev_sample
    return x, used
