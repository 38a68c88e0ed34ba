"""``fitv2 sample``: images at any sizes into PNGs, ADM .npz files and a grid, or one evaluation .npz
over torchrun ranks."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .flags import given
from .options import (
    SampleOptions,
)


def run(args: argparse.Namespace) -> int:
    opts = SampleOptions.from_dict(given(args, SampleOptions))
    opts.check_environment()
    import numpy as np
    import torch

    from ..config import Runtime
    from ..distributed import setup
    from ..sampling import Sampler, check_size, write_samples
    from ..sampling.cache import CacheStats

    env = setup(opts.device) if opts.npz else None
    sampler = Sampler.load(
        opts.checkpoint,
        preset=opts.preset,
        weights=opts.weights,
        autoencoder=opts.autoencoder,
        device=str(env.device) if env else opts.device,
        runtime=Runtime(attention=opts.attention, compile=opts.compile),
        text_encoder=opts.text_encoder,
    )
    defaults = sampler.defaults  # what every unset option takes (the pipeline and the page take the same)
    sizes = opts.size_list or [(defaults.height, defaults.width)]
    for height, width in sizes:  # fail before any work on a bad size
        check_size(height, width, sampler.unit)
    sampler.check_decoder()
    prompts = opts.prompts()
    if sampler.text_conditional and prompts is None:
        raise ConfigError("this is a text-to-image model: give --prompt TEXT (repeatable) or --prompts-file FILE")
    if prompts is not None and not sampler.text_conditional:
        raise ConfigError("this model is class-conditional: use --labels or --per-class, not --prompt")
    labels = None
    condition: Any  # class labels (a tensor) or caption features
    if prompts is None:
        labels = sampler.labels(per_class=opts.per_class, num=opts.num, labels=opts.label_list, seed=opts.seed)
        condition = labels
    else:
        condition = sampler.encode_prompts(prompts)
    count = len(condition)
    ddpm = defaults.solver == "ddpm"  # FiT v1 weights
    if opts.solver is not None and ddpm != (opts.solver == "ddpm"):
        kind = "FiT v1 (DDPM)" if ddpm else "rectified-flow"
        raise ConfigError(
            f"--solver {opts.solver} does not fit this {kind} model; "
            + ("use --solver ddpm" if ddpm else "ddpm is for FiT v1 checkpoints")
        )
    settings = sampler.settings(
        solver=opts.solver,
        steps=opts.steps,
        guidance_scale=opts.cfg_scale,
        rope=opts.rope,
        time_shift=opts.shift,
        cache=opts.cache,
        cache_threshold=opts.cache_threshold,
        attn_scale=opts.attn_scale,
        guidance_options=dict(
            channels=opts.guidance_channels,
            schedule="power-cos" if opts.power_cos else "constant",
            power=opts.power_cos or 1.0,
            interval=opts.interval,
        ),
        solver_options=dict(
            atol=opts.atol, rtol=opts.rtol, diffusion_form=opts.diffusion_form, last_step=opts.last_step
        ),
    )
    solver, guidance, rope = settings.solver, settings.guidance, settings.rope
    rope_name, cache = settings.rope_name, settings.cache
    stats = CacheStats()
    if env is not None:
        return _sample_npz(opts, env, sampler, sizes[0], condition, labels, solver, guidance, rope, rope_name, cache)
    sampler.check_memory(sizes, min(opts.batch_size, count), guidance, solver, num_images=count, force=opts.force)
    options = dict(seed=opts.seed, batch_size=opts.batch_size, progress=opts.progress, force=opts.force)
    options.update(cache=cache, stats=stats)
    results = {}
    if len(sizes) > 1 and opts.mixed != "per-size":  # every (size, image) in one job of mixed batches
        every = [size for size in sizes for _ in range(count)]
        conditions = condition[torch.arange(count).repeat(len(sizes))]
        images = sampler.generate_mixed(
            every, conditions, solver, guidance, rope, **options, pack=opts.mixed == "packed"
        )
        for k, size in enumerate(sizes):
            results[size] = np.stack(images[k * count : (k + 1) * count])
    else:
        for height, width in sizes:
            results[(height, width)] = sampler.generate(height, width, condition, solver, guidance, rope, **options)
    grid = write_samples(opts.out, results, labels, sampler.class_names, prompts=prompts)
    print(f"{count} images at {len(sizes)} size(s) in {opts.out}; grid: {grid}")
    for height, width in sizes:
        print(f"  {height}x{width}: {describe_choices(sampler, height, width, rope_name, solver)}")
    if cache.enabled:
        print(f"cache {cache.method} (threshold {cache.threshold:g}): {stats.describe()}")
    return 0


def describe_choices(sampler, height: int, width: int, rope_name: str, solver) -> str:
    """The RoPE and time shift an image of height × width gets, saying what ``auto`` chose."""
    auto = sampler.auto_choices(height, width)
    rope = f"RoPE auto -> {auto['rope']}" if rope_name == "auto" else f"RoPE {rope_name}"
    if solver.time_shift == "auto":
        shift = f"time shift auto -> {auto['time_shift']}" if solver.progress_steps else "no time shift"
    else:
        shift = f"time shift {solver.time_shift:g}"
    return f"{rope}, {shift}"


def _sample_npz(opts, env, sampler, size, condition, labels, solver, guidance, rope, rope_name: str, cache) -> int:
    """``fitv2 sample --npz``: one size into an ADM-format file, split over the torchrun ranks."""
    from dataclasses import asdict

    from ..distributed import cleanup
    from ..sampling.npz import sample_npz

    ignored = ("progress", "device", "attention", "out", "force", "npz", "batch_size", "mixed", "compile")
    record = {k: v for k, v in asdict(opts).items() if k not in ignored}
    record["checkpoint"] = str(Path(opts.checkpoint).resolve())
    # what the unset options resolved to: a resume must sample with the same settings
    record.update(solver=solver.solver, steps=solver.steps, cfg_scale=guidance.scale, rope=rope_name)
    record.update(time_shift=solver.time_shift)
    height, width = size
    try:
        path = sample_npz(
            sampler,
            opts.npz,
            height,
            width,
            condition,
            labels,
            record,
            env,
            opts.progress,
            solver=solver,
            guidance=guidance,
            rope=rope,
            seed=opts.seed,
            batch_size=opts.batch_size,
            force=opts.force,
            cache=cache,
        )
    finally:
        cleanup(env)
    if env.is_main:
        print(f"{len(condition)} images at {height}x{width} in {path} ({env.world_size} process(es), RoPE {rope_name})")
    return 0
