"""Solvers, guidance and the sampling API."""

import math

import pytest
import torch
from conftest import randomize, tiny_config

from fitv2.model import FiT, rope_scaling
from fitv2.sampling import Guidance, SolverConfig, VelocityField, apply_guidance, integrate, sample_tokens
from fitv2.sampling.sample import noise_tokens


def decay(t, x):  # dx/dt = -x, x(1) = x(0)/e
    return -x


@pytest.mark.parametrize("solver,steps,tol", [("euler", 200, 3e-3), ("heun", 20, 1e-3), ("dopri5", 1, 1e-5)])
def test_solvers_converge_on_a_known_ode(solver, steps, tol):
    x0 = torch.randn(3, 4)
    out = integrate(decay, x0, SolverConfig(solver=solver, steps=steps, rtol=1e-7, atol=1e-9))
    torch.testing.assert_close(out, x0 / math.e, atol=tol, rtol=0)


def test_heun_is_second_order_euler_first_order():
    x0 = torch.ones(1)
    err = {}
    for solver in ("euler", "heun"):
        e = [abs(float(integrate(decay, x0, SolverConfig(solver=solver, steps=n))) - 1 / math.e) for n in (10, 20)]
        err[solver] = e[0] / e[1]
    assert err["euler"] == pytest.approx(2, rel=0.1)
    assert err["heun"] == pytest.approx(4, rel=0.1)


def test_sde_without_noise_is_euler_with_the_reference_last_step():
    x0 = torch.randn(2, 3)
    sde = SolverConfig(solver="sde", steps=11, diffusion_form="constant", diffusion_norm=0.0, last_step="Mean")
    out = integrate(decay, x0, sde)
    ts = torch.cat([torch.linspace(0, 0.96, 11), torch.tensor([1.0])])
    x = x0
    for a, b in zip(ts[:-1], ts[1:]):
        x = x + (b - a) * decay(a, x)
    torch.testing.assert_close(out, x)


@pytest.mark.parametrize("form", ["sigma", "linear", "decreasing", "increasing-decreasing", "constant"])
def test_sde_forms_run(form):
    cfg = tiny_config()
    model = randomize(FiT(cfg)).eval()
    g = torch.Generator().manual_seed(0)
    out = sample_tokens(
        model, 3, 4, torch.tensor([1, 2]), solver=SolverConfig("sde", steps=6, diffusion_form=form), generator=g
    )
    assert out.shape == (2, 12, 16) and torch.isfinite(out).all()


def test_guidance_combination():
    cond, uncond = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    torch.testing.assert_close(apply_guidance(cond, uncond, 1.0, None), cond)
    full = apply_guidance(cond, uncond, 4.0, None)
    torch.testing.assert_close(full, uncond + 4 * (cond - uncond))
    ref = apply_guidance(cond, uncond, 4.0, 12)
    torch.testing.assert_close(ref[..., :12], full[..., :12])
    torch.testing.assert_close(ref[..., 12:], cond[..., 12:])


def test_power_cos_schedule_and_interval():
    g = Guidance(scale=4.0, schedule="power-cos", power=1.0)
    s = g.scale_at(torch.tensor([0.0, 0.5, 1.0])).flatten()
    torch.testing.assert_close(s, torch.tensor([4.0, 2.5, 1.0]))
    gi = Guidance(scale=3.0, interval=(0.2, 0.6))
    assert [gi.active(t) for t in (0.1, 0.2, 0.5, 0.7)] == [False, True, True, False]
    with pytest.raises(ValueError):
        Guidance(interval=(0.7, 0.2))


def test_velocity_field_uses_null_label_and_skips_uncond_outside_interval():
    cfg = tiny_config()
    model = randomize(FiT(cfg)).eval()
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[2].tolist()))
    tokens = noise_tokens(2, 3, 3, cfg.token_dim)
    y = torch.tensor([1, 2])
    field = VelocityField(model, y, tokens.layout, Guidance(scale=2.0, interval=(0.5, 1.0)))
    field(torch.tensor(0.2), tokens.x)
    field(torch.tensor(0.7), tokens.x)
    assert calls == [[1, 2], [1, 2, 10, 10]]
    # the guided velocity equals the formula on separate forwards
    v = field(torch.tensor(0.7), tokens.x)
    tb = torch.full((2,), 0.7)
    c = model(tokens.x, tb, y, tokens.layout)
    u = model(tokens.x, tb, torch.full((2,), 10), tokens.layout)
    torch.testing.assert_close(v, u + 2.0 * (c - u), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("h,w", [(4, 4), (2, 8), (8, 2), (3, 9)])
def test_sample_any_aspect_ratio(h, w):
    cfg = tiny_config()
    model = randomize(FiT(cfg)).eval()
    out = sample_tokens(
        model,
        h,
        w,
        torch.tensor([0, 3]),
        solver=SolverConfig("euler", steps=3),
        guidance=Guidance(scale=1.5),
        rope=rope_scaling("vision-ntk+attn-scale"),
    )
    assert out.shape == (2, h * w, cfg.token_dim) and torch.isfinite(out).all()


def test_sampling_is_reproducible_with_a_generator():
    model = randomize(FiT(tiny_config())).eval()
    runs = [
        sample_tokens(
            model,
            3,
            5,
            torch.tensor([1]),
            solver=SolverConfig("heun", steps=3),
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)


def test_a_batch_plans_its_layout_once_for_all_solver_steps(monkeypatch):
    from conftest import randomize, tiny_config

    from fitv2.model.fit import FiT
    from fitv2.sampling import Guidance, SolverConfig, sample_tokens

    model = randomize(FiT(tiny_config())).eval()
    calls = []
    plan = FiT.plan
    monkeypatch.setattr(FiT, "plan", lambda self, *a, **k: calls.append(1) or plan(self, *a, **k))
    sample_tokens(
        model, 4, 6, torch.tensor([1, 2]), solver=SolverConfig("euler", steps=6), guidance=Guidance(scale=2.0)
    )
    assert len(calls) == 1  # RoPE tables and attention built once, not six times
    sample_tokens(model, 4, 4, torch.tensor([1, 2]), solver=SolverConfig("euler", steps=2))
    assert len(calls) == 2  # a new batch: a new plan
