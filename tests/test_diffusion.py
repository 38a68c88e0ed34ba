"""DDPM sampling for FiT v1 models: the respaced schedule and the reverse chain on data whose
optimal noise prediction is known in closed form."""

import pytest
import torch
from conftest import randomize, tiny_config

from fitv2.model import FiT
from fitv2.sampling import Guidance, SolverConfig, VelocityField, sample_tokens
from fitv2.sampling.ddpm import Diffusion, ddpm_sample, linear_betas, respaced_timesteps
from fitv2.sampling.sample import noise_tokens

V1 = dict(adaln="full", mlp="swiglu-large", qk_norm=None, learn_sigma=True, continuous_time=False)


def test_respacing_keeps_the_cumulative_alphas_of_the_kept_steps():
    keep = respaced_timesteps(1000, 250)
    assert len(keep) == 250 and keep[0] == 0 and keep[-1] == 999
    base = torch.cumprod(1 - linear_betas(1000), 0)
    spaced = Diffusion.respaced(250)
    assert torch.equal(spaced.timestep_map, torch.tensor(keep))
    torch.testing.assert_close(spaced.alphas_cumprod, base[keep], rtol=1e-12, atol=0)
    torch.testing.assert_close(Diffusion.respaced(1000).betas, linear_betas(1000), rtol=1e-9, atol=0)
    with pytest.raises(ValueError, match="between 1 and 1000"):
        respaced_timesteps(1000, 0)


@pytest.mark.parametrize("var", [None, -1.0, 1.0])
def test_reverse_chain_recovers_gaussian_data_from_the_optimal_denoiser(var):
    # Data x0 ~ N(mu, s^2): x_t ~ N(sqrt(a) mu, a s^2 + 1 - a) and E[eps | x_t] is linear in x_t.
    mu, s = 2.0, 0.5
    base = torch.cumprod(1 - linear_betas(1000), 0)

    def denoiser(x, timestep, t_flow):
        a = base[timestep.long()].view(-1, 1, 1).float()
        eps = (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s * s + 1 - a)
        return eps, None if var is None else torch.full_like(x, var)

    g = torch.Generator().manual_seed(0)
    x = ddpm_sample(denoiser, torch.randn(20000, 1, 1, generator=g), Diffusion.respaced(250), g)
    assert x.mean().item() == pytest.approx(mu, abs=0.02)
    assert x.std().item() == pytest.approx(s, rel=0.05)


def test_fit_v1_model_samples_with_ddpm_and_rejects_flow_solvers():
    model = randomize(FiT(tiny_config(**V1))).eval()
    y = torch.tensor([1, 2])
    out = sample_tokens(
        model,
        4,
        6,
        y,
        solver=SolverConfig("ddpm", steps=10),
        guidance=Guidance(scale=2.0),
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == (2, 24, 16) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="solver 'ddpm'"):
        sample_tokens(model, 4, 6, y, solver=SolverConfig("euler", steps=2))
    flow = FiT(tiny_config()).eval()
    with pytest.raises(ValueError, match="rectified-flow"):
        sample_tokens(flow, 4, 6, y, solver=SolverConfig("ddpm", steps=2))


@pytest.mark.parametrize("channels", ["all", "reference"])
def test_guidance_moves_the_noise_prediction_and_never_the_learned_variance(channels):
    model = randomize(FiT(tiny_config(**V1))).eval()
    y = torch.tensor([3])
    tokens = noise_tokens(1, 4, 4, model.config.token_dim, torch.Generator().manual_seed(0))
    t = torch.tensor([500.0])
    plain_eps, plain_var = VelocityField(model, y, tokens.layout).denoiser(tokens.x, t, 0.5)
    eps, var = VelocityField(model, y, tokens.layout, Guidance(scale=3.0, channels=channels)).denoiser(tokens.x, t, 0.5)
    torch.testing.assert_close(var, plain_var)  # the variance half keeps the conditional prediction
    guided = 16 if channels == "all" else 12  # p^2 * C features, or the reference's first 3 channels
    assert not torch.allclose(eps[..., :guided], plain_eps[..., :guided])
    torch.testing.assert_close(eps[..., guided:], plain_eps[..., guided:])


def test_released_fit_v1_weights_sample_with_ddpm_and_reference_guidance():
    from conftest import DATA

    from fitv2.checkpoint import load_model

    model = load_model(
        DATA / "official_parity" / "weights_fitv1.safetensors",
        preset="FiT-XL/2",
        hidden_size=64,
        depth=2,
        num_heads=2,
        num_classes=10,
        mlp_ratio=2.0,
    )
    assert model.config.learn_sigma and not model.config.continuous_time
    g = torch.Generator().manual_seed(0)
    tokens = sample_tokens(
        model,
        6,
        4,
        torch.tensor([1, 9]),
        solver=SolverConfig("ddpm", steps=25),
        guidance=Guidance(scale=1.5, channels="reference"),
        generator=g,
    )
    assert tokens.shape == (2, 24, 16) and torch.isfinite(tokens).all()
