"""``Sampler``: a checkpoint's model with its autoencoder, class names and text encoder, generating images.

Sizes are in pixels, ``HEIGHTxWIDTH``; they must be multiples of patch × autoencoder down-sampling (16
for SD-VAE latents with patch 2). Before a size is sampled, its peak memory is estimated and compared
with what the device has free (:mod:`.memory`).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from .. import seeds
from ..checkpoint import CheckpointError, load_model
from ..config import Runtime
from ..data.autoencoder import SD_VAE_FT_EMA, Autoencoder, LatentSpace, PixelSpace, load_autoencoder, to_uint8
from ..errors import ConfigError, UserError
from ..model.fit import FiT
from ..model.rope import NAMED_SCALINGS, RopeScaling, auto_rope, auto_rope_name, rope_scaling
from ..names import rope_method
from ..seeds import Generators
from ..text import TextFeatures, load_text_encoder, parse_text_encoder
from ..tokens import unpatchify
from .cache import CacheConfig, CacheStats
from .defaults import CACHE_THRESHOLD, SamplingDefaults, sampling_defaults
from .guidance import Guidance
from .memory import MemoryEstimate, available_memory, check_memory, estimate_memory
from .mixed import sample_mixed
from .sample import sample_tokens
from .schedule import auto_shift
from .solvers import SolverConfig


class SizeError(UserError):
    """A requested image size the model cannot produce."""


def check_size(height: int, width: int, unit: int) -> tuple[int, int]:
    """Token grid (h, w) for a pixel size, or a SizeError naming sizes that work."""
    if height > 0 and width > 0 and height % unit == 0 and width % unit == 0:
        return height // unit, width // unit

    def near(x: int) -> str:
        lo, hi = max(unit, x // unit * unit), max(unit, -(-x // unit) * unit)
        return str(lo) if lo == hi else f"{lo} or {hi}"

    raise SizeError(
        f"size {height}x{width} is not possible: height and width must be positive multiples of "
        f"{unit} px (patch × autoencoder down-sampling); try {near(height)} x {near(width)}"
    )


def sample_generators(seed: int, height: int, width: int, indices) -> list[torch.Generator]:
    """One generator per sample, seeded from (seed, height, width, index) alone."""
    return [seeds.generator(seed, height, width, int(i)) for i in indices]


@dataclass(frozen=True)
class SamplingSettings:
    """Everything a sampling call takes besides the images' sizes and conditions, resolved."""

    solver: SolverConfig
    guidance: Guidance
    rope: RopeScaling
    rope_name: str  # as asked ('auto', a method or an alias)
    cache: CacheConfig


@dataclass
class Sampler:
    """A model with its autoencoder and class names, ready to generate.

    training_rope: the RoPE extrapolation the weights were trained with (a name of
    :data:`fitv2.model.rope.NAMED_SCALINGS`; 'none' for released weights or when not recorded): what
    RoPE ``auto`` keeps for weights trained with one, e.g. 'vision-ntk' after high-resolution post-training.
    """

    model: FiT
    autoencoder: Autoencoder
    class_names: list[str]
    training_rope: str = "none"
    text_encoder: dict | None = None  # a text-to-image model's caption encoder (spec), from its dataset
    record: dict = field(default_factory=dict)  # the checkpoint's config.json: its training and dataset

    @property
    def text_conditional(self) -> bool:
        return self.model.config.text_conditional

    @property
    def unit(self) -> int:
        return self.model.config.patch_size * self.autoencoder.downsample

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def defaults(self) -> SamplingDefaults:
        """The solver, steps, RoPE, guidance and size this checkpoint is sampled with when none are named."""
        return sampling_defaults(self.model.config, self.unit)

    def settings(
        self,
        *,
        solver: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        rope: str | None = None,
        time_shift: float | str | None = None,
        cache: str = "none",
        cache_threshold: float = CACHE_THRESHOLD,
        attn_scale: str | None = None,
        guidance_options: dict[str, Any] | None = None,
        solver_options: dict[str, Any] | None = None,
    ) -> SamplingSettings:
        """The settings of a call, each unset one from :attr:`defaults`: the one place the command line, the
        pipeline and the page turn their options into a solver, guidance, RoPE and cache. ``time_shift``
        'none' is 1, and 'auto' is 1 for the SDE and DDPM samplers, which have grids of their own.
        ``guidance_options`` / ``solver_options``: more fields of :class:`Guidance` / :class:`SolverConfig`."""
        d = self.defaults
        name = solver or d.solver
        shift = d.time_shift if time_shift is None else time_shift
        if shift == "none" or (shift == "auto" and name in ("sde", "ddpm")):
            shift = 1.0
        rope_name = rope or d.rope
        return SamplingSettings(
            solver=SolverConfig(
                name, steps=d.steps if steps is None else steps, time_shift=shift, **(solver_options or {})
            ),
            guidance=Guidance(
                scale=d.guidance_scale if guidance_scale is None else guidance_scale, **(guidance_options or {})
            ),
            rope=self.rope(rope_name, attn_scale),
            rope_name=rope_name,
            cache=CacheConfig(cache, cache_threshold),
        )

    def rope(self, name: str, attn_scale: str | None = None) -> RopeScaling:
        """The RoPE scaling of an extrapolation name; ``auto`` as :func:`fitv2.model.rope.auto_rope` decides
        for this checkpoint."""
        scaling = auto_rope(self.model.config, self.training_rope) if name == "auto" else rope_scaling(name)
        return scaling.with_(attn_scale=attn_scale) if attn_scale is not None else scaling

    def auto_choices(self, height: int, width: int) -> dict[str, str]:
        """What ``auto`` picks for an image of height × width pixels: the RoPE method and the time shift."""
        h, w = check_size(height, width, self.unit)
        tokens = h * w
        shift = auto_shift(tokens, self.model.config.rope_train_len**2)
        return {"rope": auto_rope_name(self.model.config, self.training_rope, tokens), "time_shift": f"{shift:.3g}"}

    def check_decoder(self) -> None:
        """A UserError, before any sampling, when images are asked for and no decoder is at hand."""
        if isinstance(self.autoencoder, LatentSpace):
            self.autoencoder.decode(torch.empty(0))

    @classmethod
    def load(
        cls,
        checkpoint: str | Path,
        preset: str | None = None,
        weights: str = "ema",
        autoencoder: str | None = None,
        device: str = "cpu",
        runtime: Runtime = Runtime(),
        text_encoder: str | None = None,
        **overrides,
    ) -> Sampler:
        """``checkpoint``: a checkpoint folder, a run folder (its newest intact checkpoint), or released weights
        with ``preset``. ``runtime``: how the model runs (attention kernel); the weights and config come from
        the checkpoint.
        ``text_encoder``: 'minilm' / 'clip:PATH' in place of the one recorded (a CLIP folder that moved)."""
        from ..run_folder import newest_checkpoint

        path = Path(checkpoint)
        path = newest_checkpoint(path) or path  # a run folder: its newest intact checkpoint
        if path.is_dir() and (path / "config.json").is_file():
            saved = json.loads((path / "config.json").read_text())
            meta = saved.get("dataset", {})
        elif path.is_dir():
            raise CheckpointError(f"{path} is not a checkpoint folder (no config.json)")
        else:
            saved, meta = {}, {}
        rope = (saved.get("train") or {}).get("rope") or "none"
        if not isinstance(rope, str) or rope.lower() not in NAMED_SCALINGS:
            raise CheckpointError(
                f"{path / 'config.json'} records training RoPE {rope!r}, which is not one of: "
                f"{', '.join(NAMED_SCALINGS)}"
            )
        model = load_model(path, preset=preset, weights=weights, device=device, runtime=runtime, **overrides)
        if runtime.compile:  # each block once per token count it samples (the first batch of a size pays)
            for block in model.blocks:
                block.compile()
        recorded, channels = meta.get("autoencoder"), model.config.in_channels
        ae: Autoencoder
        if autoencoder is None and channels != PixelSpace.channels and not (recorded or {}).get("path"):
            # Latents with no VAE folder to decode them (released weights, or a dataset of released latents):
            # the latent space is the recorded one, else the released checkpoints' (SD-VAE ft-EMA).
            ae = LatentSpace(channels, recorded or SD_VAE_FT_EMA)
        else:
            ae = load_autoencoder(autoencoder, device=device, recorded=recorded)
        if ae.channels != channels:
            raise UserError(
                f"the model works on {channels}-channel inputs but the {ae.name} autoencoder has "
                f"{ae.channels}; pass --autoencoder (a VAE folder, or 'pixel')"
            )
        names = meta.get("class_names") or [str(i) for i in range(model.config.num_classes)]
        spec = parse_text_encoder(text_encoder) if text_encoder else meta.get("text_encoder")
        if model.config.text_conditional and spec is None:
            raise UserError(f"{path} is a text-to-image model that records no text encoder; pass --text-encoder")
        return cls(model, ae, names, rope_method(rope), spec if model.config.text_conditional else None, saved)

    def encode_prompts(self, prompts: list[str]) -> TextFeatures:
        """The model's caption features of ``prompts`` (B, M, dim), from its own text encoder; a prompt
        longer than the model's M text tokens is cut, with a warning."""
        cfg = self.model.config
        if not cfg.text_conditional or self.text_encoder is None:
            raise ConfigError("this model is class-conditional: sample it with class labels, not prompts")
        if not prompts:
            raise ConfigError("no prompts given")
        encoder = load_text_encoder(self.text_encoder, self.device)
        if encoder.dim != cfg.text_dim:
            raise UserError(
                f"the {encoder.name} text encoder gives {encoder.dim} features per token;"
                f" the model takes {cfg.text_dim}"
            )
        long = [(p, n) for p, n in zip(prompts, encoder.token_counts(prompts)) if n > cfg.text_len]
        if long and not encoder.full_context:
            listed = "; ".join(f"{p[:40]!r} ({n})" for p, n in long[:3])
            warnings.warn(
                f"{len(long)} prompt(s) exceed the model's {cfg.text_len} text tokens and are cut: {listed}",
                stacklevel=2,
            )
        return encoder.encode(list(prompts), cfg.text_len)

    def labels(
        self, per_class: int | None = None, num: int | None = None, labels: list[int] | None = None, seed: int = 0
    ) -> torch.Tensor:
        k = self.model.config.num_classes
        if labels:
            bad = [y for y in labels if not 0 <= y < k]
            if bad:
                raise ConfigError(f"class label(s) {bad} out of range 0..{k - 1}")
            return torch.tensor(labels)
        if per_class:
            return torch.arange(k).repeat_interleave(per_class)
        return torch.randint(0, k, (num or 8,), generator=torch.Generator().manual_seed(seed))

    def estimate_memory(
        self,
        height: int,
        width: int,
        batch_size: int,
        solver: SolverConfig = SolverConfig(),
        guidance: Guidance = Guidance(),
        num_images: int | None = None,
        masked: bool = False,
    ) -> MemoryEstimate:
        """See :func:`estimate_memory`."""
        check_size(height, width, self.unit)
        return estimate_memory(
            self.model, self.autoencoder, height, width, batch_size, solver, guidance, num_images, masked
        )

    def check_memory(
        self,
        sizes: list[tuple[int, int]],
        batch_size: int,
        guidance: Guidance = Guidance(),
        solver: SolverConfig = SolverConfig(),
        *,
        num_images: int | None = None,
        force: bool = False,
    ) -> list[MemoryEstimate]:
        """Check every size (pixels) before any sampling: a SizeError for a size the model cannot
        make, a UserError naming the estimate and the free memory for one that would not fit
        (unless ``force``). ``batch_size``: images per model call (at most the number of images)."""
        estimates = []
        free = None if force else available_memory(self.device)
        for height, width in sizes:
            estimate = self.estimate_memory(height, width, batch_size, solver, guidance, num_images)
            check_memory(estimate, self.device, force, free)
            estimates.append(estimate)
        return estimates

    def generate(
        self,
        height: int,
        width: int,
        labels: torch.Tensor | TextFeatures,
        solver: SolverConfig = SolverConfig(),
        guidance: Guidance = Guidance(),
        rope: RopeScaling | None = None,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = True,
        force: bool = False,
        start: int = 0,
        generator: Generators = None,
        *,
        cache: CacheConfig = CacheConfig(),
        stats: CacheStats | None = None,
    ) -> np.ndarray:
        """uint8 images (N, H, W, 3), one per label (or per caption: :meth:`encode_prompts`).

        Sample i's noise (initial and, for SDE and DDPM, every step's) comes from its own generator
        seeded by (seed, height, width, start + i) (``start``: where these samples begin in a larger
        run), and images are decoded one at a time, so with the fixed-step
        solvers (euler, heun, sde, ddpm) image i depends only on (seed, size, i, its label), not on
        batch_size or the other labels, up to float rounding: BLAS picks its kernels by the number of
        rows, so a batch of 1 and one of 5 may differ in the last bit, which moves a rare pixel by one
        level. Adaptive solvers (dopri5, ...) choose their steps from the error of the whole batch, so
        there images agree across batch sizes only to the solver tolerance.
        ``generator`` instead of ``seed``: one torch.Generator draws every batch's noise from one stream, batch
        after batch (so images depend on the batch size and their order, as in diffusers), or a list of one
        generator per image gives image i its own draws.
        ``cache``: a feature cache (:mod:`.cache`); ``stats`` counts the block evaluations it ran and skipped.
        Checks the memory first (unless ``force``); ``progress``: one bar over the solver steps of all
        batches."""
        args = (solver, guidance, rope, seed, batch_size, progress, force, start, generator)
        return np.concatenate(self._generate(height, width, labels, *args, cache=cache, stats=stats, decode=True))

    def generate_latents(
        self, height: int, width: int, labels: torch.Tensor | TextFeatures, **options: Any
    ) -> torch.Tensor:
        """The latents (N, C, h·p, w·p) that :meth:`generate` decodes (its options, the same noise)."""
        return torch.cat(self._generate(height, width, labels, **options, decode=False))

    @torch.no_grad()
    def generate_mixed(
        self,
        sizes: list[tuple[int, int]],
        labels: torch.Tensor | TextFeatures,
        solver: SolverConfig = SolverConfig(),
        guidance: Guidance = Guidance(),
        rope: RopeScaling | None = None,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = True,
        force: bool = False,
        *,
        pack: bool = False,
        indices: list[int] | None = None,
        decode: bool = True,
        generator: Generators = None,
        cache: CacheConfig = CacheConfig(),
        stats: CacheStats | None = None,
    ) -> list[Any]:
        """Image j at ``sizes[j]`` (pixels) with label (or caption) j, many sizes in one batch: a list of
        uint8 (H_j, W_j, 3) images, or of latents (C, h·p, w·p) when not ``decode``.

        Up to ``batch_size`` images, longest first, share a model call: packed into rows as long as the
        longest (``pack``) or padded to it (the default: faster in ``benchmarks/results/mixed_sizes.md``).
        Image j's noise comes from (seed, H_j, W_j, ``indices[j]``),
        the index defaulting to how many images of its size precede it, so each image equals the one
        :meth:`generate` makes at its size (up to float rounding). ``generator``: one torch.Generator whose
        stream every image draws from in turn (batches of the longest images first), or one per image.
        """
        if len(sizes) != len(labels):
            raise ValueError(f"{len(sizes)} sizes for {len(labels)} conditions")
        if isinstance(generator, list | tuple) and len(generator) != len(sizes):
            raise ValueError(f"{len(generator)} generators for {len(sizes)} images")
        if decode:
            self.check_decoder()
        grids = [check_size(height, width, self.unit) for height, width in sizes]
        if indices is None:
            seen: dict[tuple[int, int], int] = {}
            indices = []
            for size in sizes:
                indices.append(seen.get(size, 0))
                seen[size] = indices[-1] + 1
        batch_size = max(1, min(batch_size, len(sizes)))
        largest = max(sizes, key=lambda s: s[0] * s[1])
        estimate = self.estimate_memory(*largest, batch_size, solver, guidance, len(sizes), masked=True)
        check_memory(estimate, self.device, force)
        order = sorted(range(len(sizes)), key=lambda j: -grids[j][0] * grids[j][1])

        def image_generator(j: int) -> torch.Generator:
            if generator is None:
                return seeds.generator(seed, *sizes[j], indices[j])
            return generator if isinstance(generator, torch.Generator) else generator[j]

        batches = [order[k : k + batch_size] for k in range(0, len(order), batch_size)]
        per_batch = solver.progress_steps
        bar = tqdm(
            total=per_batch * len(batches) if per_batch else None,
            desc=f"{len(set(sizes))} sizes",
            unit="step" if per_batch else "eval",
            disable=not progress,
        )
        p = self.model.config.patch_size
        out: list[Any] = [None] * len(sizes)
        with bar:
            for n, chunk in enumerate(batches, 1):
                bar.set_postfix_str(f"batch {n}/{len(batches)}")
                tokens = sample_mixed(
                    self.model,
                    [grids[j] for j in chunk],
                    labels[torch.tensor(chunk)],
                    [image_generator(j) for j in chunk],
                    solver=solver,
                    guidance=guidance,
                    rope=rope,
                    pack=pack,
                    on_step=bar.update,
                    cache=cache,
                    stats=stats,
                )
                for j, t in zip(chunk, tokens):
                    latent = unpatchify(t[None], *grids[j], p)
                    out[j] = to_uint8(self.autoencoder.decode(latent))[0].numpy() if decode else latent[0].cpu()
        return out

    @torch.no_grad()
    def _generate(
        self,
        height: int,
        width: int,
        labels: torch.Tensor | TextFeatures,
        solver: SolverConfig = SolverConfig(),
        guidance: Guidance = Guidance(),
        rope: RopeScaling | None = None,
        seed: int = 0,
        batch_size: int = 64,
        progress: bool = True,
        force: bool = False,
        start: int = 0,
        generator: Generators = None,
        *,
        cache: CacheConfig = CacheConfig(),
        stats: CacheStats | None = None,
        decode: bool,
    ) -> list[Any]:
        h, w = check_size(height, width, self.unit)
        if decode:
            self.check_decoder()
        if isinstance(generator, list | tuple) and len(generator) != len(labels):
            raise ValueError(f"{len(generator)} generators for {len(labels)} images")
        batch_size = max(1, min(batch_size, len(labels)))
        check_memory(self.estimate_memory(height, width, batch_size, solver, guidance, len(labels)), self.device, force)
        p = self.model.config.patch_size
        batches = range(0, len(labels), batch_size)
        per_batch = solver.progress_steps
        bar = tqdm(
            total=per_batch * len(batches) if per_batch else None,
            desc=f"{height}x{width}",
            unit="step" if per_batch else "eval",
            disable=not progress,
        )
        out: list[Any] = []
        with bar:
            for n, offset in enumerate(batches, 1):
                chunk = labels[offset : offset + batch_size]
                bar.set_postfix_str(f"batch {n}/{len(batches)}")
                first = start + offset
                generators: Generators
                if generator is None:  # image i's own stream, keyed by (seed, size, i)
                    generators = sample_generators(seed, height, width, range(first, first + len(chunk)))
                elif isinstance(generator, torch.Generator):  # one stream, drawn batch after batch
                    generators = generator
                else:
                    generators = list(generator[offset : offset + len(chunk)])
                tokens = sample_tokens(
                    self.model,
                    h,
                    w,
                    chunk,
                    solver=solver,
                    guidance=guidance,
                    rope=rope,
                    generator=generators,
                    on_step=bar.update,
                    cache=cache,
                    stats=stats,
                )
                latents = unpatchify(tokens, h, w, p)
                if not decode:
                    out.append(latents.cpu())
                    continue
                # One image at a time: decoding dominates memory at large sizes, and an image's
                # pixels stay the same whatever batch it was sampled in.
                out.extend(to_uint8(self.autoencoder.decode(latent[None])).numpy() for latent in latents)
        return out
