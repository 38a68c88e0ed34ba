"""``fitv2 serve``: a web page that samples a checkpoint (gradio, the ``fitv2[web]`` extra).

    fitv2 serve runs/demo/run --port 7860

The page offers the model's classes (or a prompt box for a text-to-image model), height and width
with aspect presets, steps, solver, guidance scale, RoPE extrapolation and seed; it shows a progress
bar while sampling, then the image and the ``fitv2 sample`` command that makes the same image.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UserError
from ..names import CACHE_METHODS, ROPE_METHODS

ASPECTS = {"1:1": (1, 1), "1:2": (1, 2), "2:1": (2, 1), "1:3": (1, 3), "3:1": (3, 1)}  # height : width
# The solvers offered for rectified-flow models; FiT v1 (DDPM) models take ddpm.
FLOW_SOLVERS = ("euler", "heun", "dpm++2m", "unipc", "sde", "dopri5")
INSTALL = "pip install 'fitv2[web]'"


@dataclass(frozen=True)
class Limits:
    """What one request may ask for, so that no request holds a worker for hours."""

    max_tokens: int  # tokens of the largest image (height / unit × width / unit)
    max_steps: int

    @classmethod
    def of(cls, sampler, max_tokens: int | None = None, max_steps: int = 250) -> Limits:
        """``max_tokens`` not set: 4× the tokens the model was trained at."""
        return cls(max_tokens or 4 * sampler.model.config.rope_train_len**2, max_steps)


def solver_choices(sampler) -> tuple[str, ...]:
    """The solvers that fit the model: ddpm for FiT v1 (DDPM) weights, the flow solvers otherwise."""
    return ("ddpm",) if sampler.defaults.solver == "ddpm" else FLOW_SOLVERS


def page_defaults(sampler) -> dict[str, Any]:
    """The page's initial values: the checkpoint's sampling defaults (as ``fitv2 sample`` and the pipeline
    take them), class 0 and seed 0."""
    d = sampler.defaults
    values = dict(height=d.height, width=d.width, steps=d.steps, solver=d.solver, guidance=d.guidance_scale)
    return {**values, "rope": d.rope, "time_shift": d.time_shift, "cache": "none", "seed": 0, "label": 0, "prompt": ""}


def check_gradio() -> None:
    """A ConfigError saying how to install gradio when it is missing."""
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise ConfigError(f"fitv2 serve needs gradio, which is not installed: {INSTALL}") from None


def aspect_size(aspect: str, side: int, unit: int) -> tuple[int, int]:
    """Height and width in pixels of ``aspect`` (height:width) with about side² pixels, multiples of ``unit``."""
    a, b = ASPECTS[aspect]
    m = max(1, round(side / (math.sqrt(a * b) * unit)))
    return a * m * unit, b * m * unit


@dataclass(frozen=True)
class Request:
    """One image the page asks for, checked before sampling."""

    height: int
    width: int
    steps: int
    solver: str
    guidance: float
    rope: str
    seed: int
    label: int | None = None
    prompt: str | None = None
    time_shift: str = "auto"  # 'auto', 'none' or a positive number
    cache: str = "none"

    def command(self, checkpoint: str, out: str = "runs/serve", loading: tuple[str, ...] = ()) -> str:
        """The ``fitv2 sample`` command that writes the same image (``loading``: how the checkpoint was
        loaded, e.g. ``("--preset", "FiTv2-XL/2")``)."""
        condition = ["--prompt", self.prompt] if self.prompt is not None else ["--labels", str(self.label)]
        args = [
            "fitv2",
            "sample",
            checkpoint,
            "--sizes",
            f"{self.height}x{self.width}",
            *condition,
            "--solver",
            self.solver,
            "--steps",
            str(self.steps),
            "--cfg-scale",
            f"{self.guidance:g}",
            "--rope",
            self.rope,
            "--time-shift",
            self.time_shift,
            *(["--cache", self.cache] if self.cache != "none" else []),
            "--seed",
            str(self.seed),
            "--out",
            out,
            *loading,
        ]
        return shlex.join(args)


def rope_choices() -> list[str]:
    """The extrapolation methods offered: auto, then the project's names (the reference's aliases name the
    same ones)."""
    return ["auto", *ROPE_METHODS]


def check_request(sampler, values: dict[str, Any], limits: Limits | None = None) -> Request:
    """A :class:`Request` from the page's values, or a UserError that names the field (``limits``: the
    largest image and most steps allowed, by default :meth:`Limits.of` the sampler)."""
    from ..sampling import check_size

    limits = limits or Limits.of(sampler)

    def integer(name: str, lo: int, hi: int | None = None) -> int:
        value = values.get(name)
        if value is None or float(value) != int(float(value)):
            raise UserError(f"{name} must be a whole number; got {value!r}")
        number = int(float(value))
        if number < lo or (hi is not None and number > hi):
            raise UserError(f"{name} must be between {lo} and {hi}; got {number}" if hi else f"{name} must be ≥ {lo}")
        return number

    height, width = integer("height", 1), integer("width", 1)
    h, w = check_size(height, width, sampler.unit)
    if h * w > limits.max_tokens:
        raise UserError(
            f"{height}x{width} is {h * w} tokens; this page samples at most {limits.max_tokens} "
            f"(fitv2 serve --max-tokens)"
        )
    steps = integer("steps", 1, limits.max_steps)
    solver = values.get("solver")
    if solver not in solver_choices(sampler):
        raise UserError(f"solver must be one of {', '.join(solver_choices(sampler))}; got {solver!r}")
    if solver == "sde" and steps < 2:
        raise UserError("the SDE solver needs at least 2 steps")
    guidance = float(values.get("guidance") or 0)
    if not 0 <= guidance <= 20:
        raise UserError(f"guidance scale must be between 0 and 20; got {guidance}")
    rope = values.get("rope")
    if rope not in rope_choices():
        raise UserError(f"extrapolation must be one of {', '.join(rope_choices())}; got {rope!r}")
    seed = integer("seed", 0)
    shift = str(values.get("time_shift", "auto")).strip()
    if shift not in ("auto", "none"):
        try:
            number = float(shift)
        except ValueError:
            number = math.nan
        if not 0 < number < 100:
            raise UserError(f"time shift must be auto, none or a number between 0 and 100; got {shift!r}")
        shift = f"{number:g}"
    cache = values.get("cache", "none")
    if cache not in CACHE_METHODS:
        raise UserError(f"cache must be one of {', '.join(CACHE_METHODS)}; got {cache!r}")
    common = dict(time_shift=shift, cache=cache)
    if sampler.text_conditional:
        prompt = (values.get("prompt") or "").strip()
        if not prompt:
            raise UserError("write a prompt")
        return Request(height, width, steps, solver, guidance, rope, seed, prompt=prompt, **common)
    label = values.get("label")
    if label is None:
        raise UserError("choose a class")
    label = integer("label", 0, sampler.model.config.num_classes - 1)
    return Request(height, width, steps, solver, guidance, rope, seed, label=label, **common)


def chosen(sampler, request: Request) -> str:
    """What ``auto`` picked for the request, for the page to show."""
    auto = sampler.auto_choices(request.height, request.width)
    parts = []
    if request.rope == "auto":
        parts.append(f"RoPE auto → `{auto['rope']}`")
    if request.time_shift == "auto":
        fixed = request.solver not in ("sde", "ddpm", "dopri5")
        parts.append(
            f"time shift auto → {auto['time_shift'] if fixed else 1} (training tokens: "
            f"{sampler.model.config.rope_train_len**2})"
        )
    return "; ".join(parts)


def generate(sampler, request: Request, progress: bool = True):
    """The uint8 image (H, W, 3) of ``request``: exactly what its ``fitv2 sample`` command writes."""
    import torch

    if request.prompt is not None:
        condition = sampler.encode_prompts([request.prompt])
    else:
        condition = torch.tensor([request.label])
    shift = request.time_shift if request.time_shift in ("auto", "none") else float(request.time_shift)
    settings = sampler.settings(
        solver=request.solver,
        steps=request.steps,
        guidance_scale=request.guidance,
        rope=request.rope,
        time_shift=shift,
        cache=request.cache,
    )
    images = sampler.generate(
        request.height,
        request.width,
        condition,
        settings.solver,
        settings.guidance,
        settings.rope,
        seed=request.seed,
        batch_size=1,
        progress=progress,
        cache=settings.cache,
    )
    return images[0]


# Small samples are scaled up with hard pixel edges rather than shown as a stamp.
CSS = "#result img { object-fit: contain; width: 100%; height: 100%; image-rendering: pixelated; }"


def build_app(sampler, checkpoint: str, loading: tuple[str, ...] = (), limits: Limits | None = None, workers: int = 1):
    """The gradio Blocks page for ``sampler``, loaded from ``checkpoint`` with the ``loading`` options
    (both are repeated in the commands it shows); ``limits`` bound each request, ``workers`` requests are
    sampled at once (each in its own thread)."""
    import gradio as gr

    cfg = sampler.model.config
    limits = limits or Limits.of(sampler)
    start = page_defaults(sampler)
    side = cfg.rope_train_len * sampler.unit
    params = sum(p.numel() for p in sampler.model.parameters())

    def run(*args, progress=gr.Progress(track_tqdm=True)):
        names = ["prompt" if sampler.text_conditional else "label", "height", "width", "steps", "solver"]
        values = dict(zip([*names, "guidance", "rope", "seed", "time_shift", "cache"], args))
        try:
            request = check_request(sampler, values, limits)
        except UserError as err:
            raise gr.Error(str(err)) from None
        image = generate(sampler, request)
        return image, request.command(checkpoint, loading=loading), chosen(sampler, request)

    with gr.Blocks(title=f"fitv2 · {cfg.name}") as app:
        gr.Markdown(
            f"## fitv2 · {cfg.name}\n{params:,} parameters, trained at {side}×{side} pixels "
            f"(RoPE `{sampler.training_rope}`). Any height and width in multiples of {sampler.unit} px, up to "
            f"{limits.max_tokens} tokens; at most {limits.max_steps} steps."
        )
        with gr.Row():
            with gr.Column(scale=1):
                condition: gr.Textbox | gr.Dropdown
                if sampler.text_conditional:
                    condition = gr.Textbox(label="Prompt", value=start["prompt"], elem_id="prompt")
                else:
                    choices = [(f"{i}: {name}", i) for i, name in enumerate(sampler.class_names)]
                    condition = gr.Dropdown(choices=choices, value=start["label"], label="Class", elem_id="label")
                with gr.Row():
                    height = gr.Number(
                        value=start["height"], label="Height (px)", precision=0, step=sampler.unit, elem_id="height"
                    )
                    width = gr.Number(
                        value=start["width"], label="Width (px)", precision=0, step=sampler.unit, elem_id="width"
                    )
                with gr.Row():
                    for aspect in ASPECTS:
                        name = f"aspect-{aspect.replace(':', '-')}"
                        button = gr.Button(aspect, size="sm", min_width=40, elem_id=name)
                        button.click(lambda a=aspect: aspect_size(a, side, sampler.unit), outputs=[height, width])
                steps = gr.Slider(1, limits.max_steps, value=start["steps"], step=1, label="Steps", elem_id="steps")
                solver = gr.Dropdown(
                    list(solver_choices(sampler)), value=start["solver"], label="Solver", elem_id="solver"
                )
                guidance = gr.Slider(
                    0, 20, value=start["guidance"], step=0.1, label="Guidance scale", elem_id="guidance"
                )
                rope = gr.Dropdown(rope_choices(), value=start["rope"], label="Extrapolation", elem_id="rope")
                with gr.Row():
                    time_shift = gr.Dropdown(
                        ["auto", "none", "1.5", "2", "3"],
                        value=start["time_shift"],
                        allow_custom_value=True,
                        label="Time shift",
                        elem_id="time-shift",
                    )
                    cache = gr.Dropdown(list(CACHE_METHODS), value=start["cache"], label="Cache", elem_id="cache")
                seed = gr.Number(value=start["seed"], label="Seed", precision=0, minimum=0, elem_id="seed")
                go = gr.Button("Generate", variant="primary", elem_id="generate")
            with gr.Column(scale=1):
                image = gr.Image(
                    label="Sample", type="numpy", format="png", height=420, elem_id="result", interactive=False
                )
                command = gr.Textbox(label="Reproduce with", elem_id="command", lines=2)
                auto = gr.Markdown(elem_id="chosen")
        go.click(
            run,
            inputs=[condition, height, width, steps, solver, guidance, rope, seed, time_shift, cache],
            outputs=[image, command, auto],
            api_name="generate",
            concurrency_limit=workers,
        )
    return app


def serve(opts) -> None:
    """Load the checkpoint and serve the page until interrupted (``opts``: :class:`fitv2.cli.options.ServeOptions`)."""
    from ..config import Runtime
    from ..sampling import Sampler

    sampler = Sampler.load(
        opts.checkpoint,
        preset=opts.preset,
        weights=opts.weights,
        autoencoder=opts.autoencoder,
        device=opts.device,
        runtime=Runtime(),
        text_encoder=opts.text_encoder,
    )
    sampler.check_decoder()  # a page shows images: released latents need their VAE folder
    loading: list[str] = []
    for flag, value, default in (
        ("--preset", opts.preset, None),
        ("--weights", opts.weights, "ema"),
        ("--autoencoder", opts.autoencoder, None),
        ("--text-encoder", opts.text_encoder, None),
        ("--device", opts.device, "cpu"),
    ):
        if value != default:
            loading += [flag, str(value)]
    limits = Limits.of(sampler, opts.max_tokens, opts.max_steps)
    app = build_app(sampler, str(Path(opts.checkpoint)), tuple(loading), limits, opts.workers)
    print(f"serving {sampler.model.config.name} from {opts.checkpoint} at http://{opts.host}:{opts.port}")
    app.queue().launch(server_name=opts.host, server_port=opts.port, show_error=True, css=CSS, quiet=True)
