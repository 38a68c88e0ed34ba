"""Sampling: ODE/SDE solvers, classifier-free guidance, and the ``sample_tokens`` API.

Integration runs from t = 0 (Gaussian noise) to t = 1 (data) in float32. Solvers:
``euler`` and ``heun`` (fixed steps on a uniform grid), any torchdiffeq method such as
``dopri5`` (adaptive; the paper's choice), and ``sde`` (Euler–Maruyama with the
reference's diffusion forms and last step). FiT v1 models, trained as discrete DDPM models,
take ``ddpm`` (ancestral steps on a respaced schedule, :mod:`fitv2.diffusion`).

Random draws (the initial noise, SDE and DDPM step noise) come from one generator for the
batch, or from one generator per sample (a sequence), so that a sample's draws do not depend
on which other samples share its batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from .diffusion import Diffusion, Generators, ddpm_sample, gaussian
from .errors import ConfigError
from .model.rope import RopeScaling
from .text import TextFeatures
from .tokens import TokenBatch, TokenLayout, first_fit_rows, image_layout, pack_sequences, pad_sequences

GUIDED_CHANNELS = ("all", "reference")
GUIDANCE_SCHEDULES = ("constant", "power-cos")
FIXED_SOLVERS = ("euler", "heun")
SDE_DIFFUSIONS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = ("Mean", "Euler", "Tweedie", "None")


@dataclass(frozen=True)
class Guidance:
    """Classifier-free guidance v = v_u + w·(v_c − v_u).

    channels: 'all' (standard) or 'reference' — only latent channels 0–2 are guided and the
    rest keep the conditional prediction, as the released FiT/FiTv2/DiT samplers do.
    schedule: 'constant' or the reference's 'power-cos', w(t) = 1 + (w − 1)·(1 − cos(π(1 − t)^p))/2
    (with flow time this is full guidance at noise, none at data).
    interval: guidance only for t in [lo, hi]; elsewhere the conditional velocity alone.
    """

    scale: float = 1.0
    channels: str = "all"
    schedule: str = "constant"
    power: float = 1.0
    interval: tuple[float, float] = (0.0, 1.0)

    def __post_init__(self) -> None:
        if self.channels not in GUIDED_CHANNELS:
            raise ConfigError(f"guidance channels must be one of {GUIDED_CHANNELS}, got {self.channels!r}")
        if self.schedule not in GUIDANCE_SCHEDULES:
            raise ConfigError(f"guidance schedule must be one of {GUIDANCE_SCHEDULES}, got {self.schedule!r}")
        lo, hi = self.interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"guidance interval must satisfy 0 <= lo <= hi <= 1, got {self.interval}")

    @property
    def doubles_batch(self) -> bool:
        """Whether model calls run the conditional and unconditional halves as one doubled batch."""
        return self.scale != 1.0

    def active(self, t: float) -> bool:
        lo, hi = self.interval
        return self.scale != 1.0 and lo <= t <= hi

    def scale_at(self, t: Tensor) -> Tensor | float:
        """Guidance weight per sample (B, 1, 1), or a float when constant."""
        if self.schedule == "constant":
            return self.scale
        step = (1 - torch.cos(((1 - torch.clamp_max(t, 1.0)) ** self.power) * math.pi)) / 2
        return ((self.scale - 1) * step + 1).view(-1, 1, 1)

    def guided_features(self, patch_size: int) -> int | None:
        """How many leading features of a token are guided (None = all)."""
        return None if self.channels == "all" else 3 * patch_size * patch_size


def apply_guidance(cond: Tensor, uncond: Tensor, scale: Tensor | float, guided_features: int | None) -> Tensor:
    """uncond + scale·(cond − uncond) on the first ``guided_features`` features (all if None);
    the remaining features keep ``cond``."""
    guided = uncond + scale * (cond - uncond)
    if guided_features is None:
        return guided
    return torch.cat([guided[..., :guided_features], cond[..., guided_features:]], dim=-1)


class VelocityField:
    """v(t, x) of a model for fixed labels, positions and guidance; counts evaluations."""

    def __init__(
        self,
        model,
        y: Tensor | TextFeatures,
        layout: TokenLayout,
        guidance: Guidance = Guidance(),
        rope: RopeScaling | None = None,
        null_label: int | None = None,
    ):
        self.model = model
        self.y = y
        self.layout = layout
        self.doubled = layout.repeat(2) if guidance.doubles_batch else None  # conditional, then unconditional
        self.guidance = guidance
        self.rope = rope
        self.null_label = model.config.num_classes if null_label is None else null_label
        self.out_channels = model.config.in_channels * model.config.patch_size**2
        self.evaluations = 0

    def output(self, x: Tensor, t_model: Tensor, t_flow: Tensor) -> Tensor:
        """All output features of the guided model at model time t_model (B,); guidance is decided and
        scheduled on flow time t_flow (B,). Only the prediction features (not a learned-sigma half) are
        guided."""
        self.evaluations += 1
        if not self.guidance.active(float(t_flow[0])):
            return self.model(x, t_model, self.y, self.layout, rope=self.rope)
        out = self.model(
            torch.cat([x, x]), torch.cat([t_model, t_model]), self.doubled_y(), self.doubled, rope=self.rope
        )
        cond, uncond = out.chunk(2)
        guided = self.guidance.guided_features(self.model.config.patch_size) or self.out_channels
        return apply_guidance(cond, uncond, self.guidance.scale_at(t_flow), guided)

    def doubled_y(self) -> Tensor | TextFeatures:
        """The condition, then the null condition: the null class, or the empty caption."""
        if isinstance(self.y, TextFeatures):
            features, mask = self.model.caption_embedder.null(tuple(self.y.mask.shape[:-1]))
            return TextFeatures(torch.cat([self.y.features, features]), torch.cat([self.y.mask, mask]))
        return torch.cat([self.y, torch.full_like(self.y, self.null_label)])

    def __call__(self, t: Tensor, x: Tensor) -> Tensor:
        tb = torch.as_tensor(t, dtype=torch.float32).to(x.device).expand(x.shape[0])  # (B,)
        return self.output(x, tb, tb)[..., : self.out_channels]

    def denoiser(self, x: Tensor, timestep: Tensor, t_flow: float) -> tuple[Tensor, Tensor | None]:
        """(ε, learned-range value or None) of a DDPM model at integer timesteps (B,), for ``ddpm_sample``."""
        out = self.output(x, timestep, torch.full_like(timestep, t_flow))
        eps = out[..., : self.out_channels]
        return eps, out[..., self.out_channels :] if self.model.config.learn_sigma else None


# ----------------------------------------------------------------------------- solvers


@dataclass(frozen=True)
class SolverConfig:
    """How to integrate. ``steps`` = solver steps on a uniform grid (Euler: one model call
    each, Heun: two; SDE: steps − 1 Euler–Maruyama steps plus the last step; DDPM: respaced
    timesteps, 250 for FiT v1's published numbers); adaptive torchdiffeq methods ignore it and
    use atol/rtol. ``sample_eps``: where the SDE grid starts for the SBDM diffusion form, whose
    w(t) = (1 − t)/t is infinite at t = 0 (the reference starts there too when sample_eps > 0)."""

    solver: str = "euler"
    steps: int = 50
    atol: float = 1e-6
    rtol: float = 1e-3
    diffusion_form: str = "sigma"
    diffusion_norm: float = 1.0
    last_step: str = "Mean"
    last_step_size: float = 0.04
    sample_eps: float = 1e-3

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ConfigError(f"steps must be >= 1, got {self.steps}")
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
        return self.steps if self.solver in (*FIXED_SOLVERS, "sde", "ddpm") else None


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
    f, x: Tensor, cfg: SolverConfig, generator: Generators = None, on_step: StepCallback = None, draw: NoiseDraw = None
) -> Tensor:
    """Integrate dx/dt = f(t, x) from t = 0 to 1 (or run the SDE) with the configured solver;
    ``on_step()`` after each step (see :attr:`SolverConfig.progress_steps`); ``draw``: the SDE's step noise."""
    if cfg.solver == "sde":
        return euler_maruyama(f, x, cfg, generator, on_step, draw)
    ts = torch.linspace(0.0, 1.0, cfg.steps + 1)
    if cfg.solver == "euler":
        return euler(f, x, ts, on_step)
    if cfg.solver == "heun":
        return heun(f, x, ts, on_step)
    return odeint_torchdiffeq(f, x, ts.to(x.device), cfg.solver, cfg.atol, cfg.rtol, on_step)


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
            "solver 'ddpm' is for FiT v1 (DDPM) models; this rectified-flow model takes euler, heun, dopri5 or sde"
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
) -> Tensor:
    """Integrate a prepared batch (its initial noise in ``tokens.x``) to the final tokens (B, N, p²·C)."""
    field_ = VelocityField(model, labels, tokens.layout, guidance, rope)
    if not model.config.continuous_time:
        diffusion = Diffusion.respaced(solver.steps)
        return ddpm_sample(field_.denoiser, tokens.x.float(), diffusion, generator, on_step=on_step, draw=draw)
    return integrate(field_, tokens.x.float(), solver, generator, on_step, draw)


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
) -> Tensor:
    """Generate token sequences (B, h·w, p²·C) for images of h × w tokens, one per label (or, for a
    text-to-image model, one per caption of ``labels``: :class:`TextFeatures` (B, M, dim)).

    generator: one for the whole batch, or a sequence of one per sample (sample i's initial noise and
    step noise then come from generator i alone). noise: the initial noise (B, h·w, p²·C) instead.
    progress: a progress bar over solver steps; on_step: called after each step instead (see
    :attr:`SolverConfig.progress_steps`)."""
    check_request(model, labels, solver)
    if not isinstance(generator, torch.Generator | None) and len(generator) != len(labels):
        raise ValueError(f"{len(generator)} generators for {len(labels)} samples")
    device = next(model.parameters()).device
    labels = labels.to(device)
    tokens = noise_tokens(len(labels), h, w, model.config.token_dim, generator, noise, model.config.text_len)
    bar, on_step = _progress_bar(progress, on_step, solver, f"{h}x{w} tokens")
    try:
        out = _run(model, tokens.to(device), labels, solver, guidance, rope, generator, on_step)
        return out[:, : h * w]  # the image tokens
    finally:
        if bar is not None:
            bar.close()


# ----------------------------------------------------------------------------- mixed sizes


@dataclass(frozen=True)
class MixedBatch:
    """Images of different token grids in one batch, padded (one image per row, as long as the longest)
    or packed (several per row, first fit, rows of ``pack`` tokens or, for ``pack=True``, as long as the
    longest image), and where each image lies.

    Each image i takes ``h_i·w_i`` tokens and, for a text-to-image model, its M text slots after them.
    """

    layout: TokenLayout
    grids: tuple[tuple[int, int], ...]
    where: tuple[tuple[int, int, int], ...]  # image i -> (row, slot in the row, first token)

    @classmethod
    def build(cls, grids: list[tuple[int, int]], text_len: int = 0, pack: bool | int = False) -> MixedBatch:
        M = text_len
        lengths = [h * w + M for h, w in grids]
        items = [(torch.zeros(h * w, 1), h, w) for h, w in grids]
        if pack:
            row_length = max(lengths) if pack is True else int(pack)
            if row_length < max(lengths):
                raise ValueError(f"packed rows of {row_length} tokens cannot hold an image of {max(lengths)}")
            rows = first_fit_rows(lengths, row_length)
            layout = pack_sequences(
                items, rows, length=max(sum(lengths[i] for i in r) for r in rows), text_len=M
            ).layout
        else:
            rows = [[i] for i in range(len(grids))]
            layout = pad_sequences(items, text_len=M).layout
        where: list[tuple[int, int, int]] = [(0, 0, 0)] * len(grids)
        for r, row in enumerate(rows):
            start = 0
            for slot, i in enumerate(row):
                where[i] = (r, slot, start)
                start += lengths[i]
        return cls(layout, tuple(grids), tuple(where))

    def scatter(self, values: list[Tensor]) -> Tensor:
        """Per-image values (n_i, D), n_i ≤ h_i·w_i + M, into the rows (B, N, D); zeros elsewhere."""
        out = values[0].new_zeros(self.layout.batch_size, self.layout.length, values[0].shape[-1])
        for (r, _, start), v in zip(self.where, values):
            out[r, start : start + len(v)] = v
        return out

    def gather(self, x: Tensor) -> list[Tensor]:
        """Each image's tokens (h_i·w_i, D) from rows (B, N, D)."""
        return [x[r, start : start + h * w] for (r, _, start), (h, w) in zip(self.where, self.grids)]

    def per_slot(self, values: Tensor | TextFeatures) -> Tensor | TextFeatures:
        """Per-image conditions (images, ...) as the rows take them: (B, ...) padded, (B, n, ...) packed.
        A packed row's empty slots repeat its first image's condition (they hold no token)."""
        if not self.layout.packed:  # row i holds image i
            return values
        B, n = self.layout.batch_size, self.layout.images_per_row
        index = torch.zeros(B, n, dtype=torch.long)
        for i, (r, slot, _) in enumerate(self.where):
            index[r, slot] = i
        empty = ~self.layout.real_images()
        index[empty] = index[:, :1].expand(B, n)[empty]
        return values[index]


@torch.no_grad()
def sample_mixed(
    model,
    grids: list[tuple[int, int]],
    labels: Tensor | TextFeatures,
    generators: list[torch.Generator],
    *,
    solver: SolverConfig = SolverConfig(),
    guidance: Guidance = Guidance(),
    rope: RopeScaling | None = None,
    pack: bool | int = False,
    progress: bool = False,
    on_step: StepCallback = None,
) -> list[Tensor]:
    """Generate images of different sizes in one padded (``pack`` False) or packed batch (rows of ``pack``
    tokens; True: as long as the longest image; see :class:`MixedBatch`): image i has
    h_i × w_i tokens (``grids``), label (or caption) i and generator i; returns its tokens (h_i·w_i, p²·C).

    Image i's draws are those :func:`sample_tokens` makes for it alone with generator i (initial noise
    (h_i·w_i, p²·C), then SDE or DDPM step noise (h_i·w_i + M, p²·C) per step), and RoPE scales per
    image, so the result equals sampling each size alone up to float rounding (attention over a padded or
    packed row sums in another order)."""
    if not len(grids) == len(labels) == len(generators):
        raise ValueError(f"{len(grids)} sizes, {len(labels)} conditions and {len(generators)} generators")
    check_request(model, labels, solver)
    device = next(model.parameters()).device
    D, M = model.config.token_dim, model.config.text_len
    batch = MixedBatch.build(list(grids), M, pack)
    x = batch.scatter([gaussian((h * w, D), g) for (h, w), g in zip(grids, generators)])

    def draw(shape: torch.Size) -> Tensor:
        return batch.scatter([gaussian((h * w + M, D), g) for (h, w), g in zip(grids, generators)])

    sizes = sorted(set(grids), key=lambda g: g[0] * g[1])
    desc = ", ".join(f"{h}x{w}" for h, w in sizes[:3]) + (" ..." if len(sizes) > 3 else "") + " tokens"
    bar, on_step = _progress_bar(progress, on_step, solver, desc)
    tokens = TokenBatch(x, batch.layout).to(device)
    try:
        out = _run(model, tokens, batch.per_slot(labels).to(device), solver, guidance, rope, None, on_step, draw)
        return batch.gather(out)
    finally:
        if bar is not None:
            bar.close()
