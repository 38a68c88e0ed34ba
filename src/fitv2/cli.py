"""The ``fitv2`` command line. Parsing only: every command calls into the library.

Every flag comes from a typed field in :mod:`fitv2.options`, so the choices, ranges and
defaults shown by ``--help`` are the ones checked. Each command builds and checks its
options (and the files and devices they name) before it opens data or builds a model. A
:class:`~fitv2.errors.UserError` prints as one ``error:`` line with exit status 2; any
other exception is a bug and keeps its traceback. torch is imported only once a command runs.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, MissingFileError, UserError
from .options import (
    ClassifierOptions,
    ConvertOptions,
    DemoOptions,
    EvaluateOptions,
    ModelsOptions,
    PrepareOptions,
    SampleOptions,
    ServeOptions,
    TrainConfig,
)
from .schema import Parser, add_options, given


def cmd_models(args: argparse.Namespace) -> int:
    opts = ModelsOptions.from_dict(given(args, ModelsOptions))
    from .config import PRESETS, model_config
    from .model.flops import model_summary

    rows = []
    for name in PRESETS:
        cfg = model_config(name)
        s = model_summary(cfg, tokens=opts.tokens)
        rows.append(
            (
                name,
                cfg.depth,
                cfg.hidden_size,
                cfg.num_heads,
                cfg.adaln,
                cfg.mlp_hidden,
                f"{s['params'] / 1e6:,.2f}M",
                f"{s['gflops']:.2f}",
            )
        )
    header = ("preset", "depth", "width", "heads", "adaLN", "ffn", "params", f"GFLOPs@{opts.tokens}")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
    print(
        f"GFLOPs: multiply-accumulates of the linear layers for one image of {opts.tokens} tokens "
        "(FiTv2 Table I convention, attention products excluded); counted on the meta device."
    )
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    opts = PrepareOptions.from_dict(given(args, PrepareOptions))
    opts.check_environment()
    from .data.autoencoder import load_autoencoder
    from .data.index import DatasetIndex
    from .data.prepare import prepare

    pixel = opts.autoencoder == "pixel"
    ae = load_autoencoder(
        None if pixel else opts.autoencoder,
        device=opts.device,
        scaling_factor=opts.scaling_factor,
        shift_factor=opts.shift_factor,
        downsample=opts.downsample,
    )
    patch = opts.patch_size if opts.patch_size is not None else (4 if pixel else 2)
    budget = opts.budget if opts.budget is not None else (32 if pixel else 256)
    out = Path(opts.out)
    if opts.overwrite:  # only what prepare writes; anything else in OUT stays
        for name in ("index.json", "items.jsonl"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "shards", ignore_errors=True)
        shutil.rmtree(out / "text", ignore_errors=True)
    report = prepare(
        opts.source,
        out,
        autoencoder=ae,
        patch_size=patch,
        budget=budget,
        split=opts.split,
        min_tokens=opts.min_tokens,
        workers=opts.workers,
        text_encoder=opts.text_encoder,
        captions=opts.captions,
    )
    print(f"{report.images} images -> {report.sequences} sequences, {report.tokens:,} tokens in {out}")
    if opts.text_encoder:
        index = DatasetIndex.load(out)
        print(f"captions: {index.images} encoded by {opts.text_encoder}, {index.text_len} tokens × {index.text_dim}")
    for reason, count in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {count:5d}  {reason}  (e.g. {report.examples[reason][0]})")
    return 0


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(pairs: list[str] | None) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model expects KEY=VALUE pairs (e.g. depth=4); got {pair!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value)
    return out


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"--config file not found: {path}")
    try:
        values = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config {path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a JSON object of training options")
    return values


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's options: a resumed run's saved options, then the --config file, then the flags given."""
    file_values = _read_config_file(args.config) if args.config else {}
    flags = given(args, TrainConfig)
    flags.pop("model", None)  # --model KEY=VALUE pairs, merged below
    values = {**file_values, **flags}
    models = {**values.get("model", {}), **_key_values(args.model)}
    resume = values.get("resume")
    base = None
    if resume:
        from .train import saved_train_config

        base = saved_train_config(values.get("out", TrainConfig.out), resume)
    if base is not None:
        models = {**base.get("model", {}), **models}
        values = {**base, **values}
    values["model"] = models
    return TrainConfig.from_dict(values, source="--config" if args.config else "the options")


def cmd_train(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    from .train import train  # train() checks cfg.check_environment() before it reads any data

    result = train(cfg)
    print(
        f"step {result.step}: loss {result.loss:.4f}, {result.tokens_per_s:,.0f} tokens/s, "
        f"{result.seconds / 60:.1f} min; checkpoint {result.checkpoint}"
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    opts = SampleOptions.from_dict(given(args, SampleOptions))
    opts.check_environment()
    import numpy as np
    import torch

    from .config import Runtime
    from .distributed import setup
    from .generate import Sampler, check_size, write_samples
    from .model.rope import rope_scaling
    from .sampling import Guidance, SolverConfig

    sizes = opts.size_list
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
    for height, width in sizes:  # fail before any work on a bad size
        check_size(height, width, sampler.unit)
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
    guidance = Guidance(
        scale=opts.cfg_scale,
        channels=opts.guidance_channels,
        schedule="power-cos" if opts.power_cos else "constant",
        power=opts.power_cos or 1.0,
        interval=opts.interval,
    )
    ddpm = not sampler.model.config.continuous_time  # FiT v1 weights
    solver_name = opts.solver or ("ddpm" if ddpm else "euler")
    if ddpm != (solver_name == "ddpm"):
        kind = "FiT v1 (DDPM)" if ddpm else "rectified-flow"
        raise ConfigError(
            f"--solver {solver_name} does not fit this {kind} model; "
            + ("use --solver ddpm" if ddpm else "ddpm is for FiT v1 checkpoints")
        )
    steps = opts.steps if opts.steps is not None else (250 if ddpm else 50)
    solver = SolverConfig(
        solver_name,
        steps=steps,
        atol=opts.atol,
        rtol=opts.rtol,
        diffusion_form=opts.diffusion_form,
        last_step=opts.last_step,
    )
    rope_name = opts.rope if opts.rope is not None else sampler.training_rope
    rope = rope_scaling(rope_name, attn_scale=opts.attn_scale)
    if env is not None:
        return _sample_npz(opts, env, sampler, condition, labels, solver, guidance, rope, rope_name)
    sampler.check_memory(sizes, min(opts.batch_size, count), guidance, solver, num_images=count, force=opts.force)
    options = dict(seed=opts.seed, batch_size=opts.batch_size, progress=opts.progress, force=opts.force)
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
    print(f"{count} images at {len(sizes)} size(s) in {opts.out} (RoPE {rope_name}); grid: {grid}")
    return 0


def _sample_npz(opts, env, sampler, condition, labels, solver, guidance, rope, rope_name: str) -> int:
    """``fitv2 sample --npz``: one size into an ADM-format file, split over the torchrun ranks."""
    from dataclasses import asdict

    from .distributed import cleanup
    from .npz import sample_npz

    ignored = ("progress", "device", "attention", "out", "force", "npz", "batch_size", "mixed", "compile")
    record = {k: v for k, v in asdict(opts).items() if k not in ignored}
    record["checkpoint"] = str(Path(opts.checkpoint).resolve())
    (height, width) = opts.size_list[0]
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
        )
    finally:
        cleanup(env)
    if env.is_main:
        print(f"{len(condition)} images at {height}x{width} in {path} ({env.world_size} process(es), RoPE {rope_name})")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    opts = ServeOptions.from_dict(given(args, ServeOptions))
    opts.check_environment()
    from .serve import serve

    serve(opts)
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    opts = ConvertOptions.from_dict(given(args, ConvertOptions))
    opts.check_environment()
    from .pipeline import FiTv2Pipeline

    pipe = FiTv2Pipeline.from_pretrained(
        opts.source, preset=opts.preset, weights=opts.weights, autoencoder=opts.autoencoder
    )
    out = pipe.save_pretrained(opts.dest)
    params = sum(p.numel() for p in pipe.model.parameters())
    print(f"{pipe.config.name} ({params:,} parameters) written to {out} with a model card ({out / 'README.md'})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    opts = DemoOptions.from_dict(given(args, DemoOptions))
    opts.check_environment()
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(out=opts.output, minutes=opts.minutes, preset=opts.preset, seed=opts.seed, text=opts.text)
    if opts.data:
        cfg.data = opts.data
    out = run_demo(cfg)
    print(f"demo finished: see {out / 'report.md'} and {out / 'samples.png'}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    opts = EvaluateOptions.from_dict(given(args, EvaluateOptions))
    opts.check_environment()
    from .eval.commands import run_evaluate

    return run_evaluate(opts)


def cmd_train_classifier(args: argparse.Namespace) -> int:
    opts = ClassifierOptions.from_dict(given(args, ClassifierOptions))
    opts.check_environment()
    from .eval.commands import run_train_classifier

    return run_train_classifier(opts)


COMMANDS = {
    # name: (options, function, help)
    "models": (ModelsOptions, cmd_models, "list model presets with parameters and GFLOPs"),
    "prepare": (PrepareOptions, cmd_prepare, "image folder or JSONL -> token dataset"),
    "train": (TrainConfig, cmd_train, "train a model on a token dataset"),
    "sample": (SampleOptions, cmd_sample, "generate images at any sizes"),
    "evaluate": (EvaluateOptions, cmd_evaluate, "FD/sFD, IS, precision/recall, class consistency of generated images"),
    "train-classifier": (
        ClassifierOptions,
        cmd_train_classifier,
        "train the small feature network used by `fitv2 evaluate`",
    ),
    "convert": (ConvertOptions, cmd_convert, "turn released weights or a checkpoint into a from_pretrained folder"),
    "serve": (ServeOptions, cmd_serve, "a web page that samples a checkpoint (needs fitv2[web])"),
    "demo": (DemoOptions, cmd_demo, "prepare the embedded clipart data, train a small model on the CPU, sample"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fitv2", description="FiTv2: flexible vision transformer for diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (options, func, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if options is TrainConfig:
            p.add_argument("--config", help="JSON file of training options (flags override it)")
            p.add_argument("--model", nargs="*", metavar="KEY=VALUE", help="model config overrides, e.g. depth=4")
        add_options(p, options)
        p.set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:
        print(f"error: {err.strerror}: {err.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
