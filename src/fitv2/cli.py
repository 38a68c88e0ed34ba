"""The ``fitv2`` command line. Parsing only: every command calls into the library.

Errors a user can act on (a bad size, an unknown preset, a checkpoint that does not fit,
a missing file) print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from .checkpoint import CheckpointError
from .config import PRESETS, model_config


class UsageError(ValueError):
    """A request the user can fix; printed as one line, exit status 2."""


def cmd_models(args: argparse.Namespace) -> int:
    from .model.flops import model_summary

    rows = []
    for name in PRESETS:
        cfg = model_config(name)
        s = model_summary(cfg, tokens=args.tokens)
        rows.append((name, cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.adaln, cfg.mlp_hidden,
                     f"{s['params'] / 1e6:,.2f}M", f"{s['gflops']:.2f}"))
    header = ("preset", "depth", "width", "heads", "adaLN", "ffn", "params", f"GFLOPs@{args.tokens}")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
    print(f"GFLOPs: multiply-accumulates of the linear layers for one image of {args.tokens} tokens "
          "(FiTv2 Table I convention, attention products excluded); counted on the meta device.")
    return 0


def cmd_prepare(args: argparse.Namespace) -> int:
    from .data.autoencoder import load_autoencoder
    from .data.prepare import prepare

    ae = load_autoencoder(None if args.autoencoder == "pixel" else args.autoencoder, device=args.device)
    patch = args.patch_size or (4 if ae.name == "pixel" else 2)
    budget = args.budget or (32 if ae.name == "pixel" else 256)
    report = prepare(args.source, args.out, autoencoder=ae, patch_size=patch, budget=budget, split=args.split,
                     min_tokens=args.min_tokens, workers=args.workers)
    print(f"{report.images} images -> {report.sequences} sequences, {report.tokens:,} tokens in {args.out}")
    for reason, count in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {count:5d}  {reason}  (e.g. {report.examples[reason][0]})")
    return 0


def _parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(pairs: list[str] | None) -> dict:
    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UsageError(f"expected KEY=VALUE, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip().replace("-", "_")] = _parse_value(value)
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    values = json.loads(Path(args.config).read_text()) if args.config else {}
    for f in dataclasses.fields(TrainConfig):
        given = getattr(args, f.name, None)
        if given is not None and f.name != "model":
            values[f.name] = given
    values["model"] = {**values.get("model", {}), **_key_values(args.model)}
    if not values.get("data"):
        raise UsageError("no dataset: pass --data DIR (a folder written by `fitv2 prepare`)")
    result = train(TrainConfig.from_dict(values))
    print(f"step {result.step}: loss {result.loss:.4f}, {result.tokens_per_s:,.0f} tokens/s, "
          f"{result.seconds / 60:.1f} min; checkpoint {result.checkpoint}")
    return 0


def _train_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per simple TrainConfig field (--batch-size 32 ...); None means 'not given'."""
    from .config import field_docs
    from .train import TrainConfig

    hints = typing.get_type_hints(TrainConfig)
    docs = field_docs(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("model", "betas"):
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = hints[f.name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        doc = docs.get(f.name, "").replace("%", "%%")
        if base is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=doc)
        else:
            parser.add_argument(flag, dest=f.name, type=base, default=None, help=doc)


def cmd_sample(args: argparse.Namespace) -> int:
    from .generate import Sampler, check_size, parse_size, write_samples
    from .model.rope import rope_scaling
    from .sampling import Guidance, SolverConfig

    sizes = [parse_size(s) for s in args.sizes.split(",")]
    sampler = Sampler.load(args.checkpoint, preset=args.preset, weights=args.weights,
                           autoencoder=args.autoencoder, device=args.device)
    for height, width in sizes:  # fail before any work on a bad size
        check_size(height, width, sampler.unit)
    labels = sampler.labels(per_class=args.per_class, num=args.num,
                            labels=[int(y) for y in args.labels.split(",")] if args.labels else None, seed=args.seed)
    lo, hi = (float(v) for v in args.guidance_interval.split(","))
    guidance = Guidance(scale=args.cfg_scale, channels=args.guidance_channels,
                        schedule="power-cos" if args.power_cos else "constant", power=args.power_cos or 1.0,
                        interval=(lo, hi))
    ddpm = not sampler.model.config.continuous_time  # FiT v1 weights
    solver = SolverConfig(args.solver or ("ddpm" if ddpm else "euler"), steps=args.steps or (250 if ddpm else 50),
                          atol=args.atol, rtol=args.rtol,
                          diffusion_form=args.diffusion_form, last_step=args.last_step)
    rope = rope_scaling(args.rope, attn_scale=args.attn_scale)
    results = {}
    for height, width in sizes:
        results[(height, width)] = sampler.generate(height, width, labels, solver, guidance, rope, args.seed,
                                                    args.batch_size)
    grid = write_samples(args.out, results, labels, sampler.class_names)
    print(f"{len(labels)} images at {len(sizes)} size(s) in {args.out}; grid: {grid}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig(out=args.out, minutes=args.minutes, preset=args.preset, seed=args.seed)
    if args.data:
        cfg.data = args.data
    out = run_demo(cfg)
    print(f"demo finished: see {out / 'report.md'} and {out / 'samples.png'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fitv2", description="FiTv2: flexible vision transformer for diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list model presets with parameters and GFLOPs")
    p.add_argument("--tokens", type=int, default=256, help="tokens per image for the GFLOPs column (default 256)")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("prepare", help="image folder or JSONL -> token dataset")
    p.add_argument("source", help="folder with one sub-folder per class, or a JSONL of {path, label, caption}")
    p.add_argument("out", help="output dataset folder")
    p.add_argument("--autoencoder", default="pixel", help="'pixel' (default) or a diffusers AutoencoderKL folder")
    p.add_argument("--patch-size", type=int, help="model patch size (default 4 in pixel space, 2 for a VAE)")
    p.add_argument("--budget", type=int, help="budget side S in pixels: area <= S² (default 32 pixel, 256 VAE)")
    p.add_argument("--split", help="with a JSONL: only rows whose 'split' equals this")
    p.add_argument("--min-tokens", type=int, help="skip images with fewer tokens (default budget tokens / 16)")
    p.add_argument("--workers", type=int, help="decoding processes (default min(4, CPUs))")
    p.add_argument("--device", default="cpu", help="device for the autoencoder")
    p.set_defaults(func=cmd_prepare)

    p = sub.add_parser("train", help="train a model on a token dataset")
    p.add_argument("--config", help="JSON file of training options (flags override it)")
    p.add_argument("--model", nargs="*", metavar="KEY=VALUE", help="model config overrides, e.g. depth=4")
    _train_flags(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("sample", help="generate images at any sizes")
    p.add_argument("checkpoint", help="checkpoint folder, or a released weights file with --preset")
    p.add_argument("--preset", help="preset of a bare weights file, e.g. FiTv2-XL/2")
    p.add_argument("--weights", default="ema", choices=["ema", "model"])
    p.add_argument("--autoencoder", help="'pixel' or a VAE folder (default: the one the model was trained with)")
    p.add_argument("--sizes", default="32x32", help="comma-separated HEIGHTxWIDTH in pixels, e.g. 32x32,24x48")
    p.add_argument("--labels", help="comma-separated class ids (default: random)")
    p.add_argument("--per-class", type=int, help="this many samples of every class")
    p.add_argument("--num", type=int, default=8, help="number of random-class samples (default 8)")
    p.add_argument("--cfg-scale", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--guidance-channels", default="all", choices=["all", "reference"],
                   help="'reference' guides latent channels 0-2 only, as the released samplers")
    p.add_argument("--guidance-interval", default="0,1", help="apply guidance for t in [lo,hi] (default 0,1)")
    p.add_argument("--power-cos", type=float, help="power-cos guidance schedule with this exponent")
    p.add_argument("--solver", help="euler (default), heun, dopri5 (or any torchdiffeq method), sde; "
                   "FiT v1 models: ddpm (their default)")
    p.add_argument("--steps", type=int, help="solver steps (fixed-step solvers, sde, ddpm); default 50, ddpm 250")
    p.add_argument("--atol", type=float, default=1e-6)
    p.add_argument("--rtol", type=float, default=1e-3)
    p.add_argument("--diffusion-form", default="sigma", help="SDE diffusion form")
    p.add_argument("--last-step", default="Mean", help="SDE last step: Mean, Euler, Tweedie, None")
    p.add_argument("--rope", default="none", help="RoPE extrapolation: none, pi, ntk, ntk-by-parts, yarn, "
                   "vision-ntk, vision-yarn, vision-ntk+attn-scale")
    p.add_argument("--attn-scale", choices=["none", "side", "area", "paper"], help="override the attention scale")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="runs/samples", help="output folder")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("demo", help="prepare the embedded clipart data, train a small model on the CPU, sample")
    p.add_argument("--minutes", type=float, default=8.0, help="training time budget (default 8)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--preset", default="FiTv2-Mini/4", help="model preset (default FiTv2-Mini/4, 1.6M parameters)")
    p.add_argument("--data", help="dataset folder with metadata.jsonl (default: the embedded data/clipart)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_demo)

    from .eval.commands import register as register_evaluation

    register_evaluation(sub)  # evaluate, train-classifier

    return parser


USER_ERRORS = (UsageError, CheckpointError, FileNotFoundError, KeyError, ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
