"""The options of every ``fitv2`` command as typed dataclasses, checked at one boundary.

Each class declares its fields once (type, default, range, help); the CLI builds its flags
from them, and a config from flags, a ``--config`` file or a checkpoint's saved config is
checked by the same ``__post_init__``. Checks that look at the machine or the file system
(a CUDA device, torchrun, an output path) are in ``check_environment()``, called by the
commands before any data is opened or any model built. No torch import at module level.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import PRESETS
from ..environment import check_attention, check_device, check_exists, check_output_dir
from ..errors import ConfigError, MissingFileError, UserError
from ..names import (
    ATTENTION_NAMES,
    ATTN_SCALES,
    CACHE_METHODS,
    GUIDED_CHANNELS,
    LAST_STEPS,
    ROPE_NAMES,
    SDE_DIFFUSIONS,
    SOLVERS,
    TORCHDIFFEQ_METHODS,
)
from ..sampling.defaults import DDPM_STEPS, FLOW_SOLVER, FLOW_STEPS, GUIDANCE_SCALE
from ..schema import Options, check_fields, opt


@dataclass
class ModelsOptions(Options):
    tokens: int = opt(256, ge=1, help="tokens per image for the GFLOPs column")

    def __post_init__(self) -> None:
        check_fields(self)


def check_text_encoder(value: str) -> None:
    """'minilm' or 'clip:PATH' (the folder is checked with the environment)."""
    if value != "minilm" and not (value.startswith("clip:") and len(value) > 5):
        raise ConfigError(f"--text-encoder must be 'minilm' or 'clip:PATH'; got {value!r}")


@dataclass
class PrepareOptions(Options):
    source: str = opt(
        positional=True,
        help="folder with one sub-folder per class, a JSONL of {path, label, caption, split}, or a folder of the "
        "released FiTv2 ImageNet latents (from_16_to_256, greater_than_256_resize, ...)",
    )
    out: str = opt(positional=True, help="output dataset folder")
    autoencoder: str = opt(
        "pixel",
        help="'pixel' or a local diffusers AutoencoderKL folder (released latents: SD-VAE ft-EMA is recorded; a "
        "folder given here is recorded as its local copy)",
    )
    patch_size: int | None = opt(
        None, ge=1, help="model patch size (not set: 4 in pixel space, 2 for a VAE, derived for released latents)"
    )
    budget: int | None = opt(
        None,
        ge=1,
        help="budget side S in pixels: images are resized to area <= S² (not set: 32 in pixel space, 256 for a VAE, "
        "derived for released latents)",
    )
    split: str | None = opt(None, help="with a JSONL: only rows whose 'split' equals this")
    min_tokens: int | None = opt(None, ge=1, help="skip images with fewer tokens (not set: budget tokens / 16)")
    workers: int | None = opt(None, ge=1, help="decoding processes per rank (not set: min(4, CPUs / ranks))")
    device: str = opt("cpu", help="device for the autoencoder (under torchrun, cuda means each rank's own GPU)")
    scaling_factor: float | None = opt(
        None, gt=0, help="latent scaling factor (not set: the VAE config's scaling_factor; released: 0.18215)"
    )
    shift_factor: float | None = opt(None, help="latent shift factor (not set: the VAE config's shift_factor, else 0)")
    downsample: int | None = opt(
        None, ge=1, help="VAE spatial down-sampling (not set: from the VAE config, checked against an encoded image)"
    )
    text_encoder: str | None = opt(
        None,
        help="encode every caption for the text-to-image model: 'minilm' (offline) or 'clip:PATH' "
        "(a local CLIP text model folder, e.g. CLIP-L)",
    )
    captions: Literal["caption", "filename"] = opt(
        "caption", help="caption text: a JSONL row's 'caption' (else its file name), or always the file name"
    )
    shard_images: int = opt(1000, ge=1, help="source images per shard: the unit of work, of ranks and of resuming")
    encode_batch: int = opt(32, ge=1, help="images of one size per autoencoder call")
    seed: int = opt(0, ge=0, help="seed of the VAE's posterior samples (per image: any ranks, any batching)")
    dtype: Literal["float16", "bfloat16", "float32"] | None = opt(
        None, help="stored token type (not set: float16; released latents: their own)"
    )
    keep_small: bool = opt(False, help="released latents: also the images of fewer than 16 tokens (less_than_16)")
    overwrite: bool = opt(False, help="replace a dataset, finished or partly made, in OUT")
    progress: bool = opt(True, help="a progress bar (images/s and time left) on rank 0")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.text_encoder is not None:
            check_text_encoder(self.text_encoder)

    def released(self) -> bool:
        """Whether the source is a folder of released latents (its token budget read from the folder names)."""
        from ..data.sources import released_budget

        return released_budget(Path(self.source)) is not None

    def check_environment(self) -> None:
        check_exists(self.source, "image folder or JSONL file")
        if self.autoencoder != "pixel":
            check_exists(self.autoencoder, "VAE folder")
        released = self.released()
        if self.autoencoder == "pixel" and not released:
            for name in ("scaling_factor", "shift_factor", "downsample"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"--{name.replace('_', '-')} needs a VAE (--autoencoder DIR); pixel space has none"
                    )
        if self.keep_small and not released:
            raise ConfigError(f"--keep-small is for released latents; {self.source} is not such a folder")
        check_output_dir(self.out, "OUT")
        if self.text_encoder is not None and self.text_encoder.startswith("clip:"):
            check_exists(self.text_encoder[5:], "CLIP text model folder")
        if (Path(self.out) / "index.json").exists() and not self.overwrite:
            raise UserError(f"{self.out} already holds a token dataset; choose another OUT or pass --overwrite")
        check_device(self.device)


@dataclass
class SampleOptions(Options):
    checkpoint: str = opt(
        positional=True,
        help="checkpoint folder, run folder (its newest checkpoint), or a released weights file with --preset",
    )
    preset: str | None = opt(None, choices=tuple(PRESETS), help="preset of a bare weights file, e.g. FiTv2-XL/2")
    weights: Literal["ema", "model"] = opt("ema", help="which weights of a checkpoint folder")
    autoencoder: str | None = opt(None, help="'pixel' or a VAE folder (not set: the one the model was trained with)")
    sizes: str | None = opt(
        None, help="comma-separated HEIGHTxWIDTH in pixels, e.g. 32x32,24x48 (not set: the training size)"
    )
    labels: str | None = opt(None, help="comma-separated class ids (not set: random)")
    per_class: int | None = opt(None, ge=1, help="this many samples of every class")
    num: int = opt(
        8,
        ge=1,
        aliases=("--num-images",),
        help="number of random-class samples (--num-images under torchrun, whose own --numa-binding takes --num)",
    )
    prompt: list[str] | None = opt(
        None,
        metavar="TEXT",
        help="text-to-image model: a prompt (repeat the flag for more); each is sampled at every size",
    )
    prompts_file: str | None = opt(None, help="text-to-image model: a file of prompts, one a line")
    text_encoder: str | None = opt(
        None,
        help="'minilm' or 'clip:PATH' instead of the text encoder the model records (e.g. a CLIP folder that moved)",
    )
    cfg_scale: float | None = opt(
        None, ge=0, help=f"classifier-free guidance scale, 1 = off (not set: {GUIDANCE_SCALE:g})"
    )
    guidance_channels: str = opt(
        "all", choices=GUIDED_CHANNELS, help="'reference' guides latent channels 0-2 only, as the released samplers"
    )
    guidance_interval: str = opt("0,1", metavar="LO,HI", help="apply guidance for t in [LO, HI]")
    power_cos: float | None = opt(None, gt=0, help="power-cos guidance schedule with this exponent")
    solver: str | None = opt(
        None,
        help=f"{FLOW_SOLVER} (default), heun, dopri5 (or any torchdiffeq method), sde; FiT v1 models: ddpm "
        "(their default)",
    )
    steps: int | None = opt(
        None, ge=1, help=f"solver steps (fixed-step solvers, sde, ddpm); not set: {FLOW_STEPS}, ddpm {DDPM_STEPS}"
    )
    atol: float = opt(1e-6, gt=0, help="adaptive solvers' absolute tolerance")
    rtol: float = opt(1e-3, gt=0, help="adaptive solvers' relative tolerance")
    diffusion_form: str = opt("sigma", choices=SDE_DIFFUSIONS, help="SDE diffusion form")
    last_step: str = opt("Mean", choices=LAST_STEPS, help="SDE last step")
    rope: str | None = opt(
        None,
        choices=ROPE_NAMES,
        help="RoPE extrapolation (not set: auto = none within the training tokens, beyond them "
        "vision-ntk+attn-scale for FiTv2 weights, else the method the weights were trained with)",
    )
    time_shift: str | None = opt(
        None,
        metavar="none|auto|S",
        help="SD3's time shift of the ODE grid toward the noise, s > 0 (not set: auto = each image's "
        "max(1, sqrt(tokens / training tokens)); the fixed-step solvers only)",
    )
    cache: str = opt(
        "none",
        choices=CACHE_METHODS,
        help="feature cache: first-block skips the other blocks at steps where the first block's residual "
        "barely changed",
    )
    cache_threshold: float = opt(
        0.08, ge=0, help="first-block: largest relative change of the first block's residual to skip at (0: never)"
    )
    attn_scale: str | None = opt(None, choices=ATTN_SCALES, help="override the attention scale")
    seed: int = opt(0, ge=0, help="seed of the noise and the random labels")
    batch_size: int = opt(64, ge=1, help="images per model call (does not change the images)")
    compile: bool = opt(
        False,
        help="torch.compile each block: 1.07-1.15x faster sampling measured on a CPU, after seconds per block and size",
    )
    mixed: Literal["padded", "packed", "per-size"] = opt(
        "padded",
        help="several --sizes: one batch of all sizes, padded rows (fastest measured) or packed ones; or one "
        "batch per size (the images are the same beyond rounding)",
    )
    device: str = opt("cpu", help="auto, cpu, cuda, cuda:N or mps")
    attention: str = opt(
        "auto", choices=ATTENTION_NAMES, help="attention kernel (does not change the images beyond rounding)"
    )
    out: str = opt("runs/samples", help="output folder")
    npz: str | None = opt(
        None,
        metavar="PATH",
        help="evaluation: all images of one size in this ADM-format .npz instead of --out (split over "
        "torchrun ranks, resumable)",
    )
    force: bool = opt(False, help="sample even when the estimated memory exceeds what is free")
    progress: bool = opt(True, help="progress bars")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.npz is not None:
            if not self.npz.endswith(".npz"):
                raise ConfigError(f"--npz must name a .npz file; got {self.npz!r}")
            if len(self.size_list or [None]) != 1:
                raise ConfigError(f"--npz holds images of one size; --sizes gives {len(self.size_list or [])}")
        if self.solver is not None and self.solver not in (*SOLVERS, *TORCHDIFFEQ_METHODS):
            raise ConfigError(
                f"--solver must be one of {', '.join(SOLVERS)} or a torchdiffeq method "
                f"({', '.join(m for m in TORCHDIFFEQ_METHODS if m not in SOLVERS)}); got {self.solver!r}"
            )
        lo, hi = self.interval
        if not 0 <= lo < hi <= 1:
            raise ConfigError(
                f"--guidance-interval must be LO,HI with 0 <= LO < HI <= 1; got {self.guidance_interval!r}"
            )
        self.size_list  # noqa: B018  (parses --sizes)
        self.shift  # noqa: B018  (parses --time-shift)
        self.label_list  # noqa: B018
        if self.text_encoder is not None:
            check_text_encoder(self.text_encoder)
        if self.prompt is not None and any(not p.strip() for p in self.prompt):
            raise ConfigError("--prompt must not be empty (guidance already samples against the empty caption)")
        if (self.prompt or self.prompts_file) and (self.labels is not None or self.per_class is not None):
            raise ConfigError("--prompt/--prompts-file and --labels/--per-class do not go together")

    @property
    def interval(self) -> tuple[float, float]:
        parts = self.guidance_interval.split(",")
        try:
            lo, hi = (float(p) for p in parts)
        except ValueError:
            raise ConfigError(
                f"--guidance-interval must be two numbers LO,HI (e.g. 0,1); got {self.guidance_interval!r}"
            ) from None
        return lo, hi

    @property
    def size_list(self) -> list[tuple[int, int]] | None:
        """The sizes asked for (None: the checkpoint's training size)."""
        if self.sizes is None:
            return None
        sizes = [parse_size(s) for s in self.sizes.split(",")]
        if not sizes:
            raise ConfigError("--sizes is empty")
        return sizes

    @property
    def shift(self) -> float | str | None:
        """--time-shift: 'auto', a positive number (none = 1), or None when not set."""
        if self.time_shift is None or self.time_shift == "auto":
            return self.time_shift
        if self.time_shift == "none":
            return 1.0
        try:
            value = float(self.time_shift)
        except ValueError:
            value = math.nan
        if not 0 < value < math.inf:
            raise ConfigError(f"--time-shift must be none, auto or a positive number; got {self.time_shift!r}")
        return value

    @property
    def label_list(self) -> list[int] | None:
        if self.labels is None:
            return None
        try:
            labels = [int(y) for y in self.labels.split(",")]
        except ValueError:
            raise ConfigError(f"--labels must be comma-separated class ids (e.g. 3,7); got {self.labels!r}") from None
        if any(y < 0 for y in labels):
            raise ConfigError(f"--labels must be non-negative class ids; got {self.labels!r}")
        return labels

    def prompts(self) -> list[str] | None:
        """--prompt values, then the lines of --prompts-file (blank lines skipped); None if neither."""
        if self.prompt is None and self.prompts_file is None:
            return None
        prompts = [p.strip() for p in self.prompt or []]
        if self.prompts_file is not None:
            try:
                text = Path(self.prompts_file).read_text(encoding="utf-8")
            except UnicodeDecodeError:
                raise UserError(f"--prompts-file {self.prompts_file} is not a UTF-8 text file") from None
            prompts += [line.strip() for line in text.splitlines() if line.strip()]
        if not prompts:
            raise UserError(f"--prompts-file {self.prompts_file} holds no prompts")
        return prompts

    def check_environment(self) -> None:
        check_exists(self.checkpoint, "checkpoint")
        if self.autoencoder not in (None, "pixel"):
            check_exists(self.autoencoder, "VAE folder")
        if self.prompts_file is not None:
            check_exists(self.prompts_file, "prompts file")
        if self.text_encoder is not None and self.text_encoder.startswith("clip:"):
            check_exists(self.text_encoder[5:], "CLIP text model folder")
        if self.npz is None:
            if int(os.environ.get("WORLD_SIZE", "1")) > 1:
                raise ConfigError("under torchrun, sample writes one evaluation file: give --npz PATH")
            check_output_dir(self.out)
        else:
            if Path(self.npz).exists():
                raise ConfigError(f"--npz {self.npz} exists; remove it or choose another path (it is not overwritten)")
            check_output_dir(str(Path(self.npz).parent), "--npz")
        check_device(self.device)
        check_attention(self.attention, self.device)


def parse_size(text: str) -> tuple[int, int]:
    """'256x512' -> (256, 512): height × width in pixels."""
    parts = text.strip().lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ConfigError(f"size {text!r} is not HEIGHTxWIDTH in pixels (e.g. 256x256)")
    height, width = int(parts[0]), int(parts[1])
    if height < 1 or width < 1:
        raise ConfigError(f"size {text!r}: height and width must be positive")
    return height, width


@dataclass
class ConvertOptions(Options):
    source: str = opt(positional=True, help="a released weights file (.safetensors, .bin, .pt) or a checkpoint folder")
    dest: str = opt(positional=True, help="the folder to write (save_pretrained layout, with a model card)")
    preset: str | None = opt(
        None, choices=tuple(PRESETS), help="the preset of a released weights file, e.g. FiTv2-XL/2"
    )
    weights: Literal["ema", "model"] = opt("ema", help="which weights of a checkpoint folder")
    autoencoder: str | None = opt(
        None, help="'pixel' or the VAE folder to record (a released latent model needs one, e.g. SD-VAE ft-EMA)"
    )
    overwrite: bool = opt(False, help="write into a DEST that already holds files")

    def __post_init__(self) -> None:
        check_fields(self)

    def check_environment(self) -> None:
        check_exists(self.source, "checkpoint")
        if Path(self.source).is_file() and self.preset is None:
            raise ConfigError(f"{self.source} is a bare weights file: name its preset with --preset (e.g. FiTv2-XL/2)")
        if self.autoencoder not in (None, "pixel"):
            check_exists(self.autoencoder, "VAE folder")
        check_output_dir(self.dest, "DEST")
        dest = Path(self.dest)
        if dest.is_dir() and any(dest.iterdir()) and not self.overwrite:
            raise UserError(f"{self.dest} already holds files; choose another DEST or pass --overwrite")


@dataclass
class ServeOptions(Options):
    checkpoint: str = opt(
        positional=True, help="checkpoint, run or pretrained folder, or released weights with --preset"
    )
    host: str = opt("127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    port: int = opt(7860, ge=1, le=65535, help="port to listen on")
    preset: str | None = opt(None, choices=tuple(PRESETS), help="preset of a bare weights file, e.g. FiTv2-XL/2")
    weights: Literal["ema", "model"] = opt("ema", help="which weights of a checkpoint folder")
    autoencoder: str | None = opt(None, help="'pixel' or a VAE folder (not set: the one the model was trained with)")
    text_encoder: str | None = opt(None, help="'minilm' or 'clip:PATH' instead of the text encoder the model records")
    device: str = opt("cpu", help="auto, cpu, cuda, cuda:N or mps")
    max_tokens: int | None = opt(
        None, ge=1, help="largest image the page samples, in tokens (not set: 4x the training tokens)"
    )
    max_steps: int = opt(250, ge=1, help="most solver steps one request may ask for")
    workers: int = opt(2, ge=1, help="requests sampled at once (a small one is not stuck behind a large one)")

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.host.strip():
            raise ConfigError("--host must not be empty")
        if self.text_encoder is not None:
            check_text_encoder(self.text_encoder)

    def check_environment(self) -> None:
        from .page import check_gradio

        check_gradio()
        check_exists(self.checkpoint, "checkpoint")
        if Path(self.checkpoint).is_file() and self.preset is None:
            raise ConfigError(f"{self.checkpoint} is a bare weights file: name its preset with --preset")
        if self.autoencoder not in (None, "pixel"):
            check_exists(self.autoencoder, "VAE folder")
        check_device(self.device)
        check_port(self.host, self.port)


def check_port(host: str, port: int) -> None:
    """The address must be free to listen on."""
    import socket

    try:
        with socket.socket() as s:
            s.bind((host, port))
    except OSError as err:
        raise ConfigError(f"cannot listen on {host}:{port}: {err.strerror}; choose another --port or --host") from None


@dataclass
class DemoOptions(Options):
    minutes: float = opt(10.0, gt=0, help="training time budget in minutes")
    out: str | None = opt(None, help="output folder (not set: runs/demo, with --text runs/demo_text)")
    text: bool = opt(
        False, help="the text-to-image model: train on the data's captions, sample from test-split prompts"
    )
    preset: str = opt("FiTv2-Mini/4", choices=tuple(PRESETS), help="model preset")
    data: str = opt(
        "glyphs",
        help="glyphs (the embedded glyph data; their classifier says how often the samples are recognised), "
        "clipart (the embedded clipart), or a folder with metadata.jsonl",
    )
    classifier: str | None = opt(
        None, help="classifier folder that judges the samples (not set: the glyphs' own; none for other data)"
    )
    seed: int = opt(0, ge=0, help="seed")

    def __post_init__(self) -> None:
        check_fields(self)

    def check_environment(self) -> None:
        if self.classifier is not None:
            check_exists(self.classifier, "classifier folder")
        if self.data not in ("glyphs", "clipart"):
            check_exists(self.data, "dataset folder")
            if not (Path(self.data) / "metadata.jsonl").is_file():
                raise MissingFileError(f"{self.data} has no metadata.jsonl")
        check_output_dir(self.output)

    @property
    def output(self) -> str:
        return self.out if self.out is not None else ("runs/demo_text" if self.text else "runs/demo")


@dataclass
class EvaluateOptions(Options):
    generated: str = opt(
        positional=True,
        help="folder of PNG/JPG samples (labels from '_<int>' name suffixes) or "
        "an ADM-style .npz (arr_0 uint8 NHWC, arr_1 labels)",
    )
    reference: str = opt(
        "",
        help="reference images: a dataset .jsonl, a folder or an .npz (required); an ADM reference batch's "
        "stored mu/sigma are used with --features inception, and a statistics-only .npz is accepted",
    )
    split: str | None = opt(None, help="with a .jsonl reference: only rows of this split (e.g. test)")
    features: Literal["classifier", "inception"] = opt(
        "classifier", help="feature network: classifier (trained offline with `fitv2 train-classifier`) or inception"
    )
    classifier: str = opt("runs/classifier", help="classifier folder")
    inception: str | None = opt(None, help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    tf_compat: bool = opt(False, help="Inception: TF1 resize as the ADM evaluator")
    reference_budget: int | None = opt(
        None, ge=1, metavar="S", help="resize reference images to area <= S² keeping the aspect ratio"
    )
    clip: str | None = opt(
        None,
        metavar="DIR",
        help="CLIP model folder (e.g. CLIP-L saved by transformers): also the CLIP score of samples with prompts",
    )
    batch_size: int = opt(64, ge=1, help="images per forward pass")
    cache_dir: str | None = opt(None, help="reference feature cache (not set: ~/.cache/fitv2/eval)")
    no_cache: bool = opt(False, help="neither read nor write the reference cache")
    json: str | None = opt(None, help="metrics file (not set: <folder>/metrics.json or <file>_metrics.json)")
    device: str = opt("cpu", help="auto, cpu, cuda, cuda:N or mps")
    quiet: bool = opt(False, help="no progress bars")

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.reference:
            raise ConfigError("--reference is required: a dataset .jsonl, an image folder or an .npz")

    def check_environment(self) -> None:
        check_exists(self.generated, "generated images")
        check_exists(self.reference, "reference")
        if self.clip is not None:
            check_exists(self.clip, "CLIP model folder")
        check_device(self.device)


@dataclass
class ClassifierOptions(Options):
    data: str = opt(
        positional=True, help="dataset .jsonl with train/test splits, or a folder with one sub-folder per class"
    )
    out: str = opt("", help="output folder (classifier.safetensors + classifier.json) (required)")
    epochs: int = opt(20, ge=1, help="training epochs")
    batch_size: int = opt(64, ge=1, help="images per step")
    lr: float = opt(2e-3, gt=0, help="learning rate")
    budget: int = opt(32, ge=16, help="input side S: trains on areas (S/2)²..(4S/3)², evaluates at S²")
    max_minutes: float | None = opt(None, gt=0, help="stop after this long (the schedule adapts)")
    hflip: bool = opt(True, help="random horizontal flips (off for glyphs: a mirrored b is a d)")
    widths: str = opt("32,64,128,256", metavar="W1,W2,...", help="channels of the stem and each stage")
    seed: int = opt(0, ge=0, help="seed")
    quiet: bool = opt(False, help="no progress output")

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.out:
            raise ConfigError("--out is required: the folder to write the classifier to")
        self.width_list  # noqa: B018  (parses --widths)

    @property
    def width_list(self) -> tuple[int, ...]:
        try:
            widths = tuple(int(w) for w in self.widths.split(","))
        except ValueError:
            widths = ()
        if len(widths) < 2 or min(widths) < 1:
            raise ConfigError(
                f"--widths must be two or more positive whole numbers, e.g. 32,64,128; got {self.widths!r}"
            )
        return widths

    def check_environment(self) -> None:
        check_exists(self.data, "image folder or JSONL file")
        check_output_dir(self.out)


__all__ = [
    "ClassifierOptions",
    "DemoOptions",
    "EvaluateOptions",
    "ModelsOptions",
    "PrepareOptions",
    "SampleOptions",
    "parse_size",
]
