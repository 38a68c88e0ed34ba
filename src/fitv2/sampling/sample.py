"""``sample_tokens``: the token sequences of one size, from noise to data, in one call.

The batch's initial noise (and SDE or DDPM step noise) comes from one generator or one per sample; the
velocity field (guidance, RoPE) is integrated by the configured solver (:mod:`.solvers`), or a FiT v1
model runs its DDPM chain (:mod:`.ddpm`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..model.rope import RopeScaling
from ..seeds import Generators, gaussian
from ..text import TextFeatures
from ..tokens import TokenBatch, TokenLayout, image_layout
from .cache import CacheConfig, CacheStats
from .ddpm import Diffusion, ddpm_sample
from .field import VelocityField
from .guidance import Guidance
from .schedule import auto_shift, time_grid
from .solvers import NoiseDraw, SolverConfig, StepCallback, integrate


def noise_tokens(
    batch_size: int,
    h: int,
    w: int,
    token_dim: int,
    generator: Generators = None,
    noise: Tensor | None = None,
    text_len: int = 0,
) -> TokenBatch:
    """Sampling inputs on the CPU: B images of h × w tokens (no padding), Gaussian unless ``noise`` is given;
    with ``text_len`` M, each image's M text slots after its tokens (zeros: the model puts the caption there)."""
    x = noise if noise is not None else gaussian((batch_size, h * w, token_dim), generator)
    if text_len:
        x = torch.cat([x, x.new_zeros(batch_size, text_len, token_dim)], dim=1)
    return TokenBatch(x, image_layout(batch_size, h, w, text_len))


def time_points(solver: SolverConfig, layout: TokenLayout, train_tokens: int) -> Tensor | None:
    """The solver's time points when the shift is ``auto`` and some image exceeds the ``train_tokens`` the
    model was trained at: one grid for a batch of one size (steps + 1,), one per row of a padded batch
    (steps + 1, B, 1, 1), one per token of packed rows (steps + 1, B, N, 1). None: the solver's own grid
    (the shift is a number, or 1 for every image, or the solver has grids of its own)."""
    if solver.time_shift != "auto" or solver.progress_steps is None or solver.solver in ("sde", "ddpm"):
        return None
    shift = auto_shift(layout.size.prod(-1), train_tokens)  # (B, n): image tokens, empty slots 1
    assert isinstance(shift, Tensor)
    real = shift[layout.real_images()]
    if bool((real == 1).all()):
        return None
    if bool((real == real[0]).all()):
        return time_grid(solver.steps, float(real[0]))
    if not layout.packed:
        return time_grid(solver.steps, shift[:, 0].view(-1, 1, 1))
    return time_grid(solver.steps, layout.spread(shift)[..., None])


def check_request(model, labels: Tensor | TextFeatures, solver: SolverConfig) -> None:
    """A ConfigError when the solver or the kind of condition does not fit the model."""
    discrete = not model.config.continuous_time
    if discrete and solver.solver != "ddpm":
        raise ConfigError(
            "this is a FiT v1 (DDPM, ε-prediction) model: sample it with solver 'ddpm' "
            "(250 steps for the published numbers)"
        )
    if not discrete and solver.solver == "ddpm":
        raise ConfigError(
            "solver 'ddpm' is for FiT v1 (DDPM) models; this rectified-flow model takes euler, heun, dpm++2m, "
            "unipc, dopri5 (or another torchdiffeq method) or sde"
        )
    text_len = model.config.text_len
    if isinstance(labels, TextFeatures) != (text_len > 0):
        need = "caption features (TextFeatures)" if text_len else "class labels"
        raise ConfigError(f"this model is conditioned on {need}")
    if isinstance(labels, TextFeatures) and labels.mask.shape[-1] != text_len:
        raise ValueError(f"captions of {labels.mask.shape[-1]} tokens for a model with {text_len} text slots")


def _run(
    model,
    tokens: TokenBatch,
    labels: Tensor | TextFeatures,
    solver: SolverConfig,
    guidance: Guidance,
    rope: RopeScaling | None,
    generator: Generators,
    on_step: StepCallback,
    draw: NoiseDraw = None,
    cache: CacheConfig = CacheConfig(),
    stats: CacheStats | None = None,
) -> Tensor:
    """Integrate a prepared batch (its initial noise in ``tokens.x``) to the final tokens (B, N, p²·C)."""
    field_ = VelocityField(model, labels, tokens.layout, guidance, rope, cache=cache, stats=stats)
    if not model.config.continuous_time:
        diffusion = Diffusion.respaced(solver.steps)
        return ddpm_sample(field_.denoiser, tokens.x.float(), diffusion, generator, on_step=on_step, draw=draw)
    ts = time_points(solver, tokens.layout, model.config.rope_train_len**2)
    return integrate(field_, tokens.x.float(), solver, generator, on_step, draw, ts=ts)


def _progress_bar(progress: bool, on_step: StepCallback, solver: SolverConfig, desc: str):
    """A progress bar over solver steps when asked for and no ``on_step`` is given: (bar or None, callback)."""
    if not progress or on_step is not None:
        return None, on_step
    from tqdm import tqdm

    bar = tqdm(total=solver.progress_steps, desc=desc, unit="step", leave=False)
    return bar, bar.update


@torch.no_grad()
def sample_tokens(
    model,
    h: int,
    w: int,
    labels: Tensor | TextFeatures,
    *,
    solver: SolverConfig = SolverConfig(),
    guidance: Guidance = Guidance(),
    rope: RopeScaling | None = None,
    generator: Generators = None,
    noise: Tensor | None = None,
    progress: bool = False,
    on_step: StepCallback = None,
    cache: CacheConfig = CacheConfig(),
    stats: CacheStats | None = None,
) -> Tensor:
    """Generate token sequences (B, h·w, p²·C) for images of h × w tokens, one per label (or, for a
    text-to-image model, one per caption of ``labels``: :class:`TextFeatures` (B, M, dim)).

    generator: one for the whole batch, or a sequence of one per sample (sample i's initial noise and
    step noise then come from generator i alone). noise: the initial noise (B, h·w, p²·C) instead.
    progress: a progress bar over solver steps; on_step: called after each step instead (see
    :attr:`SolverConfig.progress_steps`). cache: a feature cache (:mod:`.cache`); ``stats`` counts the block
    evaluations it ran and skipped."""
    check_request(model, labels, solver)
    if not isinstance(generator, torch.Generator | None) and len(generator) != len(labels):
        raise ValueError(f"{len(generator)} generators for {len(labels)} samples")
    device = next(model.parameters()).device
    labels = labels.to(device)
    tokens = noise_tokens(len(labels), h, w, model.config.token_dim, generator, noise, model.config.text_len)
    bar, on_step = _progress_bar(progress, on_step, solver, f"{h}x{w} tokens")
    try:
        out = _run(model, tokens.to(device), labels, solver, guidance, rope, generator, on_step, None, cache, stats)
        return out[:, : h * w]  # the image tokens
    finally:
        if bar is not None:
            bar.close()
