"""Multistep solvers of the flow ODE: DPM-Solver++(2M) and UniPC (bh2, order 2), as diffusers runs them.

Both solve dx/dt = v(t, x) from t = 0 (noise) to t = 1 (data) with one velocity evaluation per step, reusing
the evaluations of earlier steps. They share the interface of :func:`.solvers.euler`:
``fn(f, x, ts, on_step=None) -> x at ts[-1]``, where ``ts`` holds the S + 1 increasing time points, of shape
(S + 1,) or (S + 1, *shape) with ``ts[i]`` broadcasting against x ((B, 1, 1): one grid per image of a
padded batch; (B, N, 1): one per token of packed rows). ``f`` is called with ``ts[i]`` as given. The
arithmetic runs in float32 (float64 if x is float64), whatever the dtype of x and of the velocity.

**The path as a diffusion.** x_t = t·x1 + (1 − t)·x0 is a diffusion with α_t = t, σ_t = 1 − t and
log-SNR λ_t = log(α_t/σ_t) = logit(t); the data prediction of a velocity v = x1 − x0 at (t, x) is
x̂1 = x + (1 − t)·v. DPM-Solver++ (Lu et al. 2022, "DPM-Solver++: Fast Solver for Guided Sampling of
Diffusion Probabilistic Models", Eq. 9-10) integrates the ODE exactly in its linear part and
approximates x̂1 as a polynomial in λ. From time s to t, with h = λ_t − λ_s:

    first order (DDIM):  x_t = (σ_t/σ_s)·x_s + α_t·(1 − e^(−h))·x̂1(s)

For this path α_t·(1 − e^(−h)) = (t − s)/(1 − s) =: c and σ_t/σ_s = (1 − t)/(1 − s). fitv2 evaluates these
closed forms, which are finite at s = 0 (λ = −∞) and at t = 1 (λ = +∞), instead of exponentials of λ; the
first-order step is then exactly Euler's step x_s + (t − s)·v. diffusers (``DPMSolverMultistepScheduler`` and
``UniPCMultistepScheduler`` with ``use_flow_sigmas=True, prediction_type="flow_prediction"``) computes the
same quantities from σ = 1 − t through logarithms; the results agree to float32 rounding
(``tests/test_multistep.py`` measures it).

**DPM-Solver++(2M)** (Lu et al. 2022, Algorithm 2; diffusers' default ``solver_type="midpoint"``): step
i (from t_i to t_(i+1), h_i = λ_(i+1) − λ_i) adds to the first-order step the slope of x̂1 in λ from the
previous evaluation:

    x_(i+1) = first order + ½·c·(h_i / h_(i−1))·(x̂1_i − x̂1_(i−1))

**UniPC** (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of Diffusion
Models", data prediction, B(h) = e^(−h) − 1 ("bh2"), order 2; diffusers' defaults). Its predictor UniP-2
takes ρ = ½ and is the DPM-Solver++(2M) step above. Its corrector UniC runs after the model has been
evaluated at the predicted x_i: it redoes the step from x_(i−1) with the new x̂1_i as one more point
(no extra evaluation: x̂1_i, computed at the predicted x_i, is also what the next predictor uses):

    after a first-order predictor:  x_i = first order + ½·c·(x̂1_i − x̂1_(i−1))      (trapezoid in x̂1)
    after a second-order one:       x_i = first order + c·(ρ1·u·(x̂1_(i−2) − x̂1_(i−1)) + ρ2·(x̂1_i − x̂1_(i−1)))

with h = λ_i − λ_(i−1), u = 1/r = h/(λ_(i−2) − λ_(i−1)), and (ρ1, ρ2) solving [[1, 1], [r, 1]]·ρ = (b1, b2),
b1 = φ1/B(h), b2 = 2·φ2/B(h), φ1 = (e^(−h) − 1)/(−h) − 1, φ2 = φ1/(−h) − ½ (Zhao et al. Alg. 1 and
diffusers' ``multistep_uni_c_bh_update``), solved in closed form in u: ρ1 = (b1 − b2)·u/(u − 1),
ρ2 = (b2·u − b1)/(u − 1).

**Orders per step** (as diffusers): step i uses order min(2, i + 1, S − i). The first step is first order
(no history); the last is first order too (``lower_order_final``; diffusers always does so when the final σ
is 0), and to t = 1 it is the denoising step x = x̂1. UniPC corrects every point it evaluates, the last
step's result is not corrected (that would need one more evaluation).

**Convergence** on a grid uniform in t (measured in ``tests/test_multistep.py``): UniPC is second order
(the first-order last step bounds it); DPM-Solver++(2M)'s error behaves as C·log(S)/S² (observed orders
1.80-1.84 from 128 to 1024 steps on a Gaussian flow), because its λ-steps near t = 0 do not shrink with S
(h_i ≈ log((i + 1)/i)) and the local errors there add up like a harmonic series; UniPC's corrector raises
their local order and removes the log.

**The t = 0 endpoint** (λ = −∞). The slope of x̂1 in λ from an evaluation at λ = −∞ is zero: h/h_(i−1) = 0
and u = 0 there, so the second step of DPM-Solver++(2M) is effectively first order. diffusers' DPM-Solver++
arithmetic reaches the same limit when given σ = 1 (its 1/r0 = 0), and fitv2 does the same.

diffusers' UniPC cannot take λ = −∞ (its corrector's linear solve with r = −∞ is NaN), so its
``set_timesteps`` moves a first σ within 1e-6 of 1 down by 1e-6: its grid starts at t = 1e-6, λ = −13.8.
Where it starts moves by a negligible 1e-6, but the second step's slope u·(x̂1_0 − x̂1_1) and the corrector
weights after it become finite instead of their λ = −∞ limits (u = 0, ρ2 = b1); the difference is
O(1/log(1/ε)) in that ε, not small: 1e-2 relative at 3 steps, 2e-5 at 25 on the tests' Gaussian flow.
fitv2's UniPC does the same (:data:`UNIPC_START`): in λ only, a first time point below 1e-6 counts as
t_0 + 1e-6, while ``f`` is still called at ``ts[0]`` and x̂1 and c use it. This is the behaviour of record,
and it measured as accurate or a little more so: over ten fields (four Gaussian flows, six small random
FiTv2s) at 5, 10, 25 and 50 steps its error was 0.92-1.006 times that of the λ = −∞ limit, lower in 36 of
the 40 cases (the finite λ_0 keeps a damped estimate of the slope of x̂1 instead of none). The same start
would give DPM-Solver++(2M) 0.93-1.10 times its error (lower in 33 of 40), but diffusers does not take it
there, so neither does fitv2.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

StepCallback = Callable[[], None] | None

MULTISTEP_SOLVERS = ("dpm++2m", "unipc")

# diffusers' UniPCMultistepScheduler.set_timesteps: a first σ within 1e-6 of 1 is lowered by 1e-6.
UNIPC_START = 1e-6


def _check_grid(ts: Tensor) -> None:
    if ts.dim() < 1 or ts.shape[0] < 2:
        raise ValueError(f"a time grid needs at least 2 points along its first dimension, got shape {tuple(ts.shape)}")
    if not bool(((ts[1:] > ts[:-1]).all() & (ts[0] >= 0).all() & (ts[-1] <= 1).all()).item()):
        raise ValueError("a time grid must increase strictly, within [0, 1]")


def _logit(t: Tensor) -> Tensor:
    """λ = log(α/σ) = log t − log(1 − t): −∞ at t = 0, +∞ at t = 1."""
    return torch.log(t) - torch.log(1 - t)


def _integrate(f, x: Tensor, ts: Tensor, on_step: StepCallback, corrector: bool, start: float = 0.0) -> Tensor:
    dtype = torch.promote_types(x.dtype, torch.float32)
    x = x.to(dtype)
    tc = ts.to(device=x.device, dtype=dtype)
    _check_grid(tc)
    lam = _logit(tc)
    if start > 0:  # only λ of the first point moves (UNIPC_START)
        lam[0] = _logit(torch.where(tc[0] < start, tc[0] + start, tc[0]))
    steps = tc.shape[0] - 1
    hist: list[Tensor] = []  # x̂1 at the last two evaluated points, oldest first
    x_last = x  # where the last step started (after its correction)
    last_order = 0
    for i in range(steps):
        s, t = tc[i], tc[i + 1]
        m = x + (1 - s) * f(ts[i], x).to(dtype)  # x̂1 at the predicted x_i
        if corrector and i > 0:
            x = _unic(x_last, hist, m, tc, lam, i, last_order)
        order = min(2, i + 1, steps - i)
        x_last, last_order = x, order
        c = (t - s) / (1 - s)
        x_next = (1 - t) / (1 - s) * x + c * m
        if order == 2:
            u = (lam[i + 1] - lam[i]) / (lam[i - 1] - lam[i])  # h_i / −h_(i−1); −0 when t_(i−1) = 0
            x_next = x_next + 0.5 * c * u * (hist[-1] - m)
        x = x_next
        hist = [*hist[-1:], m]
        if on_step:
            on_step()
    return x


def _unic(x_last: Tensor, hist: list[Tensor], m: Tensor, tc: Tensor, lam: Tensor, i: int, order: int) -> Tensor:
    """UniC-``order``: the step from t_(i−1) (state x_last) to t_i redone with x̂1_i = m."""
    s, t = tc[i - 1], tc[i]
    m0 = hist[-1]
    c = (t - s) / (1 - s)
    x = (1 - t) / (1 - s) * x_last + c * m0
    if order == 1:
        return x + 0.5 * c * (m - m0)
    # Order 2 follows a second-order predictor, so 0 < t_(i−1) and t_i < 1: h is finite.
    h = lam[i] - lam[i - 1]
    B = torch.expm1(-h)
    phi1 = B / -h - 1
    phi2 = phi1 / -h - 0.5
    b1, b2 = phi1 / B, 2 * phi2 / B
    u = h / (lam[i - 2] - lam[i - 1])
    rho1 = (b1 - b2) * u / (u - 1)
    rho2 = (b2 * u - b1) / (u - 1)
    return x + c * (rho1 * u * (hist[0] - m0) + rho2 * (m - m0))


def dpmpp_2m(f, x: Tensor, ts: Tensor, on_step: StepCallback = None) -> Tensor:
    """DPM-Solver++(2M) over the time points ``ts`` (module docstring): one evaluation and one ``on_step()``
    per step."""
    return _integrate(f, x, ts, on_step, corrector=False)


def unipc(f, x: Tensor, ts: Tensor, on_step: StepCallback = None) -> Tensor:
    """UniPC (bh2, order 2, data prediction) over the time points ``ts`` (module docstring): one evaluation
    and one ``on_step()`` per step."""
    return _integrate(f, x, ts, on_step, corrector=True, start=UNIPC_START)


MULTISTEP = {"dpm++2m": dpmpp_2m, "unipc": unipc}
