"""Multistep solvers (DPM-Solver++(2M), UniPC) and the SD3 time shift: agreement with diffusers' schedulers,
convergence orders on a flow with a closed form and on a small FiTv2's velocity field, per-image grids."""

import math

import pytest
import torch
from conftest import randomize

from fitv2.config import model_config
from fitv2.errors import ConfigError
from fitv2.model import FiT
from fitv2.names import SOLVERS
from fitv2.sampling import SolverConfig, VelocityField, integrate, sample_tokens
from fitv2.sampling.multistep import MULTISTEP_SOLVERS, dpmpp_2m, unipc
from fitv2.sampling.sample import noise_tokens
from fitv2.sampling.schedule import auto_shift, shift_times, time_grid
from fitv2.sampling.solvers import euler, heun, odeint_torchdiffeq

SOLVER_FNS = {"euler": euler, "heun": heun, "dpm++2m": dpmpp_2m, "unipc": unipc}


class GaussianFlow:
    """The exact velocity of x_t = t·x1 + (1 − t)·x0 for data x1 ~ N(μ, diag s²) and noise x0 ~ N(0, I):
    v(t, x) = μ + (t·s² − (1 − t)) / V_t · (x − t·μ), V_t = t²·s² + (1 − t)². Its flow is affine,
    x(t) = t·μ + sqrt(V_t)·x(0), so x(1) = μ + s·x(0) exactly. t may be a tensor broadcasting against x."""

    def __init__(self, dim: int = 8, lo: float = 0.3, hi: float = 1.5, dtype=torch.float64):
        g = torch.Generator().manual_seed(1)
        self.mu = torch.randn(dim, generator=g).to(dtype)
        self.s = (lo + (hi - lo) * torch.rand(dim, generator=g)).to(dtype)

    def __call__(self, t, x):
        t = torch.as_tensor(t, dtype=x.dtype)
        mu, s2 = self.mu.to(x.dtype), self.s.to(x.dtype) ** 2
        return mu + (t * s2 - (1 - t)) / (t * t * s2 + (1 - t) ** 2) * (x - t * mu)

    def exact(self, x0):
        return self.mu.to(x0.dtype) + self.s.to(x0.dtype) * x0


def tiny_fit():
    """FiTv2-Micro/4 with random weights, its velocity field for two 4 × 4-token images, and their noise."""
    model = randomize(FiT(model_config("FiTv2-Micro/4"))).eval()
    tokens = noise_tokens(2, 4, 4, model.config.token_dim, torch.Generator().manual_seed(0))
    return VelocityField(model, torch.tensor([1, 7]), tokens.layout), tokens.x


def rel_err(x, ref):
    return float((x.double() - ref.double()).norm() / ref.double().norm())


def orders(errors):
    """log2 of the error ratio at each doubling of the steps."""
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


# --- agreement with diffusers -----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [1, 2, 5, 10, 25])
@pytest.mark.parametrize("solver", ["euler", "dpm++2m", "unipc"])
@pytest.mark.parametrize("field", ["gaussian", "fit"])
def test_solvers_equal_diffusers_schedulers_on_the_same_grid(solver, steps, field):
    pytest.importorskip("diffusers")
    from fitv2.sampling.diffusers_adapter import diffusers_integrate

    if field == "gaussian":
        f, x0 = GaussianFlow(dtype=torch.float32), torch.randn(3, 16, 8)
    else:
        f, x0 = tiny_fit()
    ts = torch.linspace(0, 1, steps + 1)
    with torch.no_grad():
        theirs, used = diffusers_integrate(f, x0, ts, solver)
        ours = SOLVER_FNS[solver](f, x0, ts)
        on_theirs = SOLVER_FNS[solver](f, x0, used)
    scale = float(theirs.abs().max())
    assert float((ours - theirs).abs().max()) <= 1e-5 * scale
    assert float((on_theirs - theirs).abs().max()) <= 1e-6 * scale
    # diffusers ran on fitv2's grid, except UniPC's first point (module docstring of multistep.py).
    if solver == "unipc":
        assert float(used[0]) == pytest.approx(1e-6, rel=0.05)
        torch.testing.assert_close(used[1:], ts[1:], atol=1e-7, rtol=0)
    else:
        torch.testing.assert_close(used, ts, atol=1e-7, rtol=0)


def test_unipc_takes_diffusers_start_not_the_limit_at_t0(monkeypatch):
    # diffusers' UniPC starts λ at logit(1e-6) = −13.8 instead of −∞, and so does fitv2's (UNIPC_START).
    # The λ = −∞ limit (UNIPC_START = 0) differs by a term ~1/log(1/ε) and measured a little less accurate.
    pytest.importorskip("diffusers")
    from fitv2.sampling import multistep
    from fitv2.sampling.diffusers_adapter import diffusers_integrate

    f, x0 = GaussianFlow(dtype=torch.float64), torch.randn(3, 16, 8, dtype=torch.float64)
    ts = torch.linspace(0, 1, 11, dtype=torch.float64)
    theirs, _ = diffusers_integrate(f, x0.float(), ts.float(), "unipc")
    ours = unipc(f, x0, ts)
    assert rel_err(ours, theirs) < 5e-6  # measured 8.7e-7 (diffusers runs in float32)
    monkeypatch.setattr(multistep, "UNIPC_START", 0.0)
    limit = unipc(f, x0, ts)
    assert 1e-5 < rel_err(limit, theirs) < 1e-3  # measured 1.4e-4; the discretisation error is 1e-2
    # Moving the start ε → 0 converges to the limit like 1/log(1/ε): squaring ε halves the difference.
    diffs = []
    for eps in (1e-6, 1e-12, 1e-24, 1e-48):
        start = ts.clone()
        start[0] = eps
        diffs.append(rel_err(unipc(f, x0, start), limit))
    assert diffs[0] == pytest.approx(rel_err(ours, limit), rel=0.02)  # t_0 itself moves by 1e-6 only
    for a, b in zip(diffs, diffs[1:]):
        assert 0.4 < b / a < 0.6
    # On a small FiTv2's field the start of record is the more accurate (measured 0.97-0.99 times the error).
    field, x0 = tiny_fit()
    with torch.no_grad():
        ref = odeint_torchdiffeq(field, x0, torch.tensor([0.0, 1.0]), "dopri5", 1e-7, 1e-7)
        for steps in (5, 10, 25):
            grid = torch.linspace(0, 1, steps + 1)
            monkeypatch.setattr(multistep, "UNIPC_START", 1e-6)
            of_record = rel_err(unipc(field, x0, grid), ref)
            monkeypatch.setattr(multistep, "UNIPC_START", 0.0)
            assert of_record < rel_err(unipc(field, x0, grid), ref)


def test_dpm_solver_from_t0_equals_diffusers_given_sigma_1():
    # DPM-Solver++'s arithmetic in diffusers handles σ = 1 (λ = −∞) by itself: 1/r0 = 0 there, as in fitv2.
    pytest.importorskip("diffusers")
    from fitv2.sampling.diffusers_adapter import diffusers_integrate

    f, x0 = GaussianFlow(dtype=torch.float32), torch.randn(3, 16, 8)
    ts = torch.linspace(0, 1, 8)
    theirs, used = diffusers_integrate(f, x0, ts, "dpm++2m")
    assert float(used[0]) == 0.0
    torch.testing.assert_close(dpmpp_2m(f, x0, ts), theirs, atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 about diffusers' own np.array(tensor)
@pytest.mark.parametrize("shift", [1.0, 1.7, 3.0])
def test_time_shift_is_diffusers_shift(shift):
    pytest.importorskip("diffusers")
    from diffusers import DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler

    steps = 12
    euler_s = FlowMatchEulerDiscreteScheduler(shift=shift)
    euler_s.set_timesteps(sigmas=(1 - torch.linspace(0, 1, steps + 1)[:-1]).numpy())
    torch.testing.assert_close(1 - euler_s.sigmas, time_grid(steps, shift), atol=1e-6, rtol=0)
    # DPM-Solver's own flow grid: the shift of a uniform grid that starts at 1/num_train_timesteps.
    dpm = DPMSolverMultistepScheduler(use_flow_sigmas=True, prediction_type="flow_prediction", flow_shift=shift)
    dpm.set_timesteps(steps)
    T = dpm.config.num_train_timesteps
    expected = shift_times(torch.linspace(1 / T, 1, steps + 1, dtype=torch.float64), shift)
    torch.testing.assert_close(1 - dpm.sigmas.double(), expected, atol=1e-6, rtol=0)


def test_fitv2_euler_equals_diffusers_flow_match_euler_with_a_shift():
    pytest.importorskip("diffusers")
    from diffusers import FlowMatchEulerDiscreteScheduler

    f, x0 = GaussianFlow(dtype=torch.float32), torch.randn(2, 16, 8)
    steps, shift = 10, 3.0
    scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
    scheduler.set_timesteps(sigmas=(1 - torch.linspace(0, 1, steps + 1)[:-1]).numpy())
    x = x0
    for sigma, timestep in zip(scheduler.sigmas, scheduler.timesteps):
        x = scheduler.step(-f(1 - sigma, x), timestep, x).prev_sample
    ours = integrate(f, x0, SolverConfig("euler", steps=steps, time_shift=shift))
    torch.testing.assert_close(ours, x, atol=1e-5, rtol=1e-5)


# --- convergence orders ------------------------------------------------------------------------------------


def gaussian_errors(solver, steps):
    f = GaussianFlow()
    x0 = torch.randn(4, 16, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact = f.exact(x0)
    return [rel_err(SOLVER_FNS[solver](f, x0, torch.linspace(0, 1, n + 1, dtype=torch.float64)), exact) for n in steps]


def test_orders_on_the_gaussian_flow():
    steps = [16, 32, 64, 128, 256]
    assert all(0.9 < p < 1.1 for p in orders(gaussian_errors("euler", steps)))
    assert all(1.9 < p < 2.1 for p in orders(gaussian_errors("heun", steps)))
    # UniPC: second order (the first-order last step, to t = 1, limits it; measured 2.04-2.17).
    assert all(1.8 < p < 2.3 for p in orders(gaussian_errors("unipc", steps[1:])))
    # DPM-Solver++(2M) on a grid uniform in t: error ≈ C·log(S)/S². Its λ-steps near t = 0 and t = 1 do
    # not shrink with S (h_i ≈ log((i + 1)/i)), and the local errors there sum to a harmonic series.
    # UniPC's corrector raises the local order and removes the log.
    dpm = gaussian_errors("dpm++2m", [128, 256, 512, 1024])
    assert all(1.6 < p < 2.0 for p in orders(dpm))
    scaled = [e * n * n / math.log(n) for e, n in zip(dpm, [128, 256, 512, 1024])]
    assert max(scaled) / min(scaled) < 1.05


def test_orders_on_a_small_fitv2_velocity_field():
    field, x0 = tiny_fit()

    def f(t, x):  # the model in float32, the solvers' state in float64 (no rounding floor at 1e-7)
        return field(t, x.float()).double()

    x0 = x0.double()
    with torch.no_grad():
        ref = odeint_torchdiffeq(f, x0, torch.tensor([0.0, 1.0], dtype=torch.float64), "dopri5", 1e-10, 1e-10)
        steps = [8, 16, 32, 64, 128]
        err = {
            name: [rel_err(fn(f, x0, torch.linspace(0, 1, n + 1, dtype=torch.float64)), ref) for n in steps]
            for name, fn in SOLVER_FNS.items()
        }
    assert err["euler"][0] > 1e-3  # the field is not trivial
    assert all(0.9 < p < 1.1 for p in orders(err["euler"]))
    assert all(1.9 < p < 2.1 for p in orders(err["heun"]))
    assert all(1.5 < p < 2.8 for p in orders(err["dpm++2m"]))  # measured 2.69, 2.41, 1.87, 1.66
    assert all(1.6 < p < 2.3 for p in orders(err["unipc"])[2:])  # measured 1.03, 1.29, 1.72, 1.87
    # For the same 8 model calls, 4 and 27 times more accurate than Euler (measured).
    assert err["dpm++2m"][0] < err["euler"][0] / 3 and err["unipc"][0] < err["euler"][0] / 10


# --- the time shift ----------------------------------------------------------------------------------------


def test_unshifted_grids_are_bit_for_bit_uniform():
    ts = torch.linspace(0, 1, 51)
    assert torch.equal(time_grid(50), ts) and torch.equal(time_grid(50, 1.0), ts)
    assert shift_times(ts, 1.0) is ts
    per_image = time_grid(50, torch.tensor([1.0, 1.0]).view(2, 1, 1))
    assert per_image.shape == (51, 2, 1, 1) and torch.equal(per_image[:, 1, 0, 0], ts)


@pytest.mark.parametrize("shift", [0.5, 1.5, 3.0, 10.0])
def test_shifted_grids_are_monotone_from_0_to_1_and_denser_near_noise_for_s_above_1(shift):
    ts = time_grid(20, shift)
    assert float(ts[0]) == 0.0 and float(ts[-1]) == 1.0
    assert bool((ts[1:] > ts[:-1]).all())
    uniform = time_grid(20)
    if shift > 1:
        assert bool((ts[1:-1] < uniform[1:-1]).all()) and float(ts[1]) < 1 / 20
    else:
        assert bool((ts[1:-1] > uniform[1:-1]).all())
    # σ' = s·σ / (1 + (s − 1)·σ) in diffusers' σ = 1 − t
    sigma = 1 - uniform.double()
    torch.testing.assert_close(1 - ts.double(), shift * sigma / (1 + (shift - 1) * sigma), atol=1e-6, rtol=0)


def test_auto_shift_is_one_up_to_the_training_tokens_and_sqrt_beyond():
    assert auto_shift(1, 256) == 1.0 and auto_shift(100, 256) == 1.0 and auto_shift(256, 256) == 1.0
    assert auto_shift(1024, 256) == 2.0 and auto_shift(4096, 256) == 4.0
    assert 1.0 < auto_shift(257, 256) < auto_shift(400, 256)
    per_image = auto_shift(torch.tensor([64, 256, 1024]).view(3, 1, 1), 256)
    assert per_image.shape == (3, 1, 1) and per_image.flatten().tolist() == [1.0, 1.0, 2.0]
    with pytest.raises(ValueError):
        auto_shift(0, 256)


@pytest.mark.parametrize("solver", list(SOLVER_FNS))
def test_per_image_grids_give_each_image_its_result_alone(solver):
    f = GaussianFlow(dtype=torch.float32)
    x0 = torch.randn(3, 16, 8)
    shifts = torch.tensor([1.0, 2.0, 3.5]).view(3, 1, 1)
    ts = time_grid(9, shifts)
    assert ts.shape == (10, 3, 1, 1)
    calls = []

    def counted(t, x):
        calls.append(t)
        return f(t, x)

    together = integrate(counted, x0, SolverConfig(solver, steps=9), ts=ts)
    assert calls[0].shape == (3, 1, 1)  # f receives ts[i] as given
    for i, s in enumerate(shifts.flatten().tolist()):
        alone = integrate(f, x0[i : i + 1], SolverConfig(solver, steps=9, time_shift=s))
        torch.testing.assert_close(together[i : i + 1], alone, atol=1e-6, rtol=1e-6)
    # One grid per token ((B, N, 1) points) equal along each image's tokens is the same as one per image.
    per_token = ts.expand(10, 3, 16, 1)
    torch.testing.assert_close(integrate(f, x0, SolverConfig(solver, steps=9), ts=per_token), together)


def test_a_shift_helps_a_flow_that_bends_near_the_noise():
    # Larger images keep their coarse structure undecided longer; a shift spends the steps there. A flow
    # that bends near t = 0 (data variance ≫ noise variance) is integrated more accurately with it.
    f = GaussianFlow(lo=4.0, hi=6.0)
    x0 = torch.randn(4, 16, 8, dtype=torch.float64)
    exact = f.exact(x0)
    for solver in ("euler", "dpm++2m", "unipc"):
        plain = rel_err(SOLVER_FNS[solver](f, x0, time_grid(10).double()), exact)
        shifted = rel_err(SOLVER_FNS[solver](f, x0, time_grid(10, 3.0).double()), exact)
        assert shifted < plain


# --- wiring --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", MULTISTEP_SOLVERS)
def test_one_model_call_and_one_progress_step_per_step(solver):
    field, x0 = tiny_fit()
    cfg = SolverConfig(solver, steps=7)
    ticks = []
    with torch.no_grad():
        out = integrate(field, x0, cfg, on_step=lambda: ticks.append(1))
    assert field.evaluations == 7 and len(ticks) == 7 and cfg.progress_steps == 7
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_arithmetic_is_float32_for_half_precision_states():
    f = GaussianFlow(dtype=torch.float32)
    x0 = torch.randn(2, 4, 8)
    for fn in (dpmpp_2m, unipc):
        out = fn(lambda t, x: f(t, x.float()).bfloat16(), x0.bfloat16(), time_grid(6))
        assert out.dtype == torch.float32


def test_sample_tokens_takes_the_multistep_solvers():
    model = randomize(FiT(model_config("FiTv2-Micro/4"))).eval()
    labels = torch.tensor([3, 4])
    for solver in MULTISTEP_SOLVERS:
        out = sample_tokens(
            model, 3, 5, labels, solver=SolverConfig(solver, steps=6), generator=torch.Generator().manual_seed(0)
        )
        assert out.shape == (2, 15, model.config.token_dim) and torch.isfinite(out).all()


def test_unshifted_integrate_is_unchanged():
    f = GaussianFlow(dtype=torch.float32)
    x0 = torch.randn(2, 4, 8)
    ts = torch.linspace(0, 1, 13)
    assert torch.equal(integrate(f, x0, SolverConfig("euler", steps=12)), euler(f, x0, ts))
    assert torch.equal(integrate(f, x0, SolverConfig("heun", steps=12, time_shift=1.0)), heun(f, x0, ts))
    shifted = integrate(f, x0, SolverConfig("heun", steps=12, time_shift=2.0))
    assert torch.equal(shifted, heun(f, x0, time_grid(12, 2.0)))


def test_misconfigured_shifts_and_grids_are_refused():
    with pytest.raises(ConfigError, match="positive"):
        SolverConfig("euler", time_shift=0.0)
    with pytest.raises(ConfigError, match="own"):
        SolverConfig("sde", steps=5, time_shift=2.0)
    f, x0 = GaussianFlow(dtype=torch.float32), torch.randn(2, 4, 8)
    with pytest.raises(ValueError, match="steps \\+ 1"):
        integrate(f, x0, SolverConfig("unipc", steps=5), ts=time_grid(4))
    with pytest.raises(ValueError, match="one time grid"):
        integrate(f, x0, SolverConfig("dopri5", steps=5), ts=time_grid(5, torch.ones(2, 1, 1)))
    with pytest.raises(ValueError, match="increase"):
        unipc(f, x0, torch.tensor([0.0, 0.5, 0.5, 1.0]))


def test_the_command_line_accepts_the_new_solver_names():
    assert set(MULTISTEP_SOLVERS) <= set(SOLVERS)
