"""The options of every ``fitv2`` command as typed dataclasses, checked at one boundary.

Each class declares its fields once (type, default, range, help); the CLI builds its flags
from them, and a config from flags, a ``--config`` file or a checkpoint's saved config is
checked by the same ``__post_init__``. Checks that look at the machine or the file system
(a CUDA device, torchrun, an output path) are in ``check_environment()``, called by the
commands before any data is opened or any model built. No torch import at module level.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from .config import ATTENTION_NAMES, PRESETS, Runtime, model_config
from .errors import ConfigError, MissingFileError, UserError
from .schema import build, check_fields, opt

# Names accepted by --rope (tests check this equals fitv2.model.rope.NAMED_SCALINGS).
ROPE_NAMES = (
    "none",
    "pi",
    "ntk",
    "ntk-by-parts",
    "yarn",
    "vision-ntk",
    "vision-ntk-by-parts",
    "vision-yarn",
    "vision-ntk+attn-scale",
    "normal",
    "no",
    "linear",
    "ntk-aware",
    "dynntk",
    "partntk",
    "ntk-aware-pro1",
    "ntkpro1",
    "ntk-aware-pro2",
    "ntkpro2",
)
ATTN_SCALES = ("none", "side", "area", "paper")
SDE_DIFFUSIONS = ("constant", "SBDM", "sigma", "linear", "decreasing", "increasing-decreasing")
LAST_STEPS = ("Mean", "Euler", "Tweedie", "None")
# Solvers of the sampler itself; any other torchdiffeq method name is also accepted.
SOLVERS = ("euler", "heun", "dopri5", "sde", "ddpm")
TORCHDIFFEQ_METHODS = (
    "dopri8",
    "dopri5",
    "bosh3",
    "fehlberg2",
    "adaptive_heun",
    "euler",
    "midpoint",
    "heun2",
    "heun3",
    "rk4",
    "explicit_adams",
    "implicit_adams",
    "fixed_adams",
    "scipy_solver",
)


def check_device(name: str) -> None:
    """'auto', 'cpu', 'cuda', 'cuda:N' or 'mps', and only one this machine has."""
    base, _, index = name.partition(":")
    if base not in ("auto", "cpu", "cuda", "mps") or (index and (base != "cuda" or not index.isdigit())):
        raise ConfigError(f"--device must be auto, cpu, cuda, cuda:N or mps; got {name!r}")
    if base in ("cuda", "mps"):
        import torch

        if base == "cuda" and not torch.cuda.is_available():
            build = "has no CUDA support" if torch.version.cuda is None else "sees no GPU"
            raise ConfigError(f"--device {name}: this torch ({torch.__version__}) {build}; use --device cpu")
        if base == "cuda" and index and int(index) >= torch.cuda.device_count():
            raise ConfigError(f"--device {name}: only {torch.cuda.device_count()} GPU(s) visible")
        if base == "mps" and not torch.backends.mps.is_available():
            raise ConfigError("--device mps: MPS is not available on this machine; use --device cpu")


def check_output_dir(path: str, what: str = "--out") -> None:
    """An output folder must not be an existing file (or sit below one)."""
    p = Path(path)
    for parent in (p, *p.parents):
        if parent.exists() and not parent.is_dir():
            raise ConfigError(f"{what} {path}: {parent} is a file, not a folder")


def check_attention(name: str, device: str) -> None:
    """An attention kernel this machine can run on ``device``."""
    if name == "auto":
        return
    import torch

    from .model.attention import attention_unavailable

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    why = attention_unavailable(name, device)
    if why is not None:
        raise ConfigError(f"--attention {name} {why}")


def check_exists(path: str, what: str) -> None:
    if not Path(path).exists():
        raise MissingFileError(f"{what} not found: {path}")


class Options:
    """Shared behaviour of the option dataclasses."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "options"):
        return build(cls, dict(data), source)


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
        positional=True, help="folder with one sub-folder per class, or a JSONL of {path, label, caption, split}"
    )
    out: str = opt(positional=True, help="output dataset folder")
    autoencoder: str = opt("pixel", help="'pixel' or a local diffusers AutoencoderKL folder")
    patch_size: int | None = opt(None, ge=1, help="model patch size (not set: 4 in pixel space, 2 for a VAE)")
    budget: int | None = opt(
        None,
        ge=1,
        help="budget side S in pixels: images are resized to area <= S² (not set: 32 in pixel space, 256 for a VAE)",
    )
    split: str | None = opt(None, help="with a JSONL: only rows whose 'split' equals this")
    min_tokens: int | None = opt(None, ge=1, help="skip images with fewer tokens (not set: budget tokens / 16)")
    workers: int | None = opt(None, ge=1, help="decoding processes (not set: min(4, CPUs))")
    device: str = opt("cpu", help="device for the autoencoder")
    scaling_factor: float | None = opt(
        None, gt=0, help="latent scaling factor (not set: the VAE config's scaling_factor)"
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
    overwrite: bool = opt(False, help="replace an existing dataset in OUT")

    def __post_init__(self) -> None:
        check_fields(self)
        if self.text_encoder is not None:
            check_text_encoder(self.text_encoder)
        if self.autoencoder == "pixel":
            for name in ("scaling_factor", "shift_factor", "downsample"):
                if getattr(self, name) is not None:
                    raise ConfigError(
                        f"--{name.replace('_', '-')} needs a VAE (--autoencoder DIR); pixel space has none"
                    )

    def check_environment(self) -> None:
        check_exists(self.source, "image folder or JSONL file")
        if self.autoencoder != "pixel":
            check_exists(self.autoencoder, "VAE folder")
        check_output_dir(self.out, "OUT")
        if self.text_encoder is not None and self.text_encoder.startswith("clip:"):
            check_exists(self.text_encoder[5:], "CLIP text model folder")
        if (Path(self.out) / "index.json").exists() and not self.overwrite:
            raise UserError(f"{self.out} already holds a token dataset; choose another OUT or pass --overwrite")
        check_device(self.device)


@dataclass
class TrainConfig(Options):
    """Everything a training run needs; saved in every checkpoint's config.json."""

    data: str = opt("", help="token dataset folder written by `fitv2 prepare`")
    out: str = opt("runs/train", help="run folder: checkpoints/, log.jsonl, loss.png")
    preset: str = opt(
        "FiTv2-Tiny/4",
        choices=tuple(PRESETS),
        help="model preset; num_classes, patch size and channels are taken from the dataset",
    )
    model: dict[str, Any] = opt(factory=dict, flag=False, help='ModelConfig field overrides, e.g. {"depth": 4}')
    data_mode: Literal["mixed", "flexible", "fixed"] = opt(
        "mixed", help="'mixed' (FiTv2), 'flexible' (FiT v1) or 'fixed' (square crops, DiT/SiT)"
    )
    time_sampling: Literal["logit-normal", "uniform"] = opt("logit-normal", help="training time distribution")
    time_mean: float = opt(0.0, help="logit-normal mean")
    time_std: float = opt(1.0, gt=0, help="logit-normal standard deviation")
    batch_size: int = opt(32, ge=1, help="global batch (images), split across ranks")
    lr: float = opt(1e-4, gt=0, help="AdamW learning rate")
    weight_decay: float = opt(0.0, ge=0, help="AdamW weight decay")
    betas: tuple[float, float] = opt((0.9, 0.999), ge=0, lt=1, metavar="B", help="AdamW betas")
    warmup_steps: int = opt(0, ge=0, help="linear warmup from lr·1e-4 (the reference's constant_with_warmup)")
    grad_clip: float = opt(1.0, ge=0, help="clip the gradient norm to this (0 = no clipping)")
    ema_decay: float = opt(0.9999, ge=0, le=1, help="EMA decay (the upper limit while ema_warmup is on)")
    ema_warmup: bool = opt(
        True,
        help="decay min(ema_decay, (1+step)/(10+step)): the EMA averages about the "
        "last tenth of any run, so short runs sample well too",
    )
    steps: int = opt(1000, ge=1, help="optimizer steps")
    max_minutes: float | None = opt(None, gt=0, help="stop (and checkpoint) after this much wall time")
    train_tokens: float | None = opt(None, gt=0, help="stop (and checkpoint) after this many real training tokens")
    log_every: int = opt(10, ge=1, help="log every N steps")
    ckpt_every: int = opt(500, ge=1, help="checkpoint every N steps (and at the end)")
    keep_checkpoints: int = opt(2, ge=1, help="checkpoints kept in the run folder (the newest)")
    precision: Literal["fp32", "bf16"] = opt(
        "fp32", help="'bf16': autocast for matmuls; parameters, norms, RoPE and loss stay fp32"
    )
    seed: int = opt(0, ge=0, help="seed of initialisation, data order and noise")
    bucket: int = opt(0, ge=0, help="sort chunks of bucket × batch examples by length to reduce padding (0 = off)")
    batching: Literal["pad", "pack", "flat"] = opt(
        "pad",
        help="'pad': one image per row, padded to the longest; "
        "'pack': images first fit (longest first) into rows of "
        "--row-length tokens; 'flat': each rank's batch in one row, "
        "no padding",
    )
    row_length: int | None = opt(
        None, ge=1, help="tokens per row for --batching pack (not set: the dataset's token budget)"
    )
    rope: str = opt(
        "none",
        choices=ROPE_NAMES,
        help="RoPE extrapolation during training, per image (e.g. vision-ntk for high-resolution tuning)",
    )
    device: str = opt("auto", help="auto, cpu, cuda, cuda:N or mps")
    attention: str = opt(
        "auto",
        choices=ATTENTION_NAMES,
        help="attention kernel (auto: flex on CUDA, else SDPA over whole rows or per image, whichever does less work)",
    )
    compile: bool = opt(False, help="torch.compile each transformer block")
    grad_checkpointing: bool = opt(False, help="activation checkpointing: recompute each block in the backward pass")
    fsdp: bool = opt(False, help="under torchrun: shard parameters, gradients and optimizer state with FSDP2")
    log_to: str = opt(
        "",
        metavar="LOGGERS",
        help="also log to: tensorboard, wandb or both (comma-separated; extras of the same names)",
    )
    wandb_project: str = opt("fitv2", help="the wandb project of --log-to wandb")
    tensorboard: bool = opt(False, help="the same as --log-to tensorboard (kept for older configs)")
    progress: bool = opt(True, help="progress bar")
    resume: str | None = opt(
        None,
        metavar="latest|DIR",
        help="'latest' (the run folder's newest intact checkpoint) or a checkpoint folder to continue from",
    )
    overwrite: bool = opt(False, help="start afresh in a run folder that already holds a run, deleting it")
    init_from: str | None = opt(
        None,
        metavar="PATH",
        help="start from pretrained weights: a checkpoint folder "
        "(its architecture is used) or a released weights file of --preset",
    )
    finetune: Literal["full", "partial"] = opt(
        "full", help="'partial': train only patch embedder, biases, adaLN modulation and final layer"
    )
    reinit_unfrozen: bool = opt(
        False,
        help="with --init-from and --finetune partial: re-initialise the trained "
        "subset, as the released HR training code does",
    )

    def __post_init__(self) -> None:
        check_fields(self)
        try:
            model_config(self.preset, **self.model)
        except UserError as err:
            raise ConfigError(f"--model: {err}") from err
        if self.reinit_unfrozen and (self.finetune != "partial" or not self.init_from):
            raise ConfigError(
                "--reinit-unfrozen needs --init-from and --finetune partial (it re-initialises the "
                "subset that partial fine-tuning trains)"
            )
        if self.overwrite and self.resume:
            raise ConfigError("--overwrite and --resume contradict each other: choose one")
        self.loggers  # noqa: B018  (parses --log-to)
        if not self.wandb_project.strip():
            raise ConfigError("--wandb-project must not be empty")
        if self.row_length is not None and self.batching != "pack":
            raise ConfigError(
                f"--row-length is the row of --batching pack; with --batching {self.batching} "
                "rows are as long as the batch needs"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "options"):
        """Options from a mapping; a saved config of an earlier version (``pack``: None, 0 or L) still loads."""
        data = dict(data)
        model = data.get("model")
        if isinstance(model, dict) and "grad_checkpointing" in model:  # once a model field, now a run option
            model = dict(model)
            data.setdefault("grad_checkpointing", bool(model.pop("grad_checkpointing")))
            data["model"] = model
        if "pack" in data:
            pack = data.pop("pack")
            data.setdefault("batching", "pad" if pack is None else "flat" if pack == 0 else "pack")
            if pack:
                data.setdefault("row_length", pack)
        return build(cls, data, source)

    def runtime(self) -> Runtime:
        """How the model runs in this run (not part of the architecture)."""
        return Runtime(self.attention, self.grad_checkpointing, self.compile, self.precision)

    @property
    def loggers(self) -> tuple[str, ...]:
        """The metric loggers of --log-to (and the older --tensorboard)."""
        from .loggers import parse_loggers

        names = parse_loggers(self.log_to)
        return names if not self.tensorboard or "tensorboard" in names else ("tensorboard", *names)

    def check_environment(self) -> None:
        """Checks against this machine and the file system, before any data is read."""
        if not self.data:
            raise ConfigError("no dataset: pass --data DIR (a folder written by `fitv2 prepare`)")
        check_exists(self.data, "dataset folder")
        if not (Path(self.data) / "index.json").is_file():
            raise MissingFileError(f"{self.data} is not a token dataset (no index.json; see `fitv2 prepare`)")
        check_output_dir(self.out)
        check_device(self.device)
        check_attention(self.attention, self.device)
        if self.fsdp and int(os.environ.get("WORLD_SIZE", "1")) < 2:
            raise ConfigError(
                "--fsdp shards across processes: launch with torchrun (e.g. torchrun --nproc_per_node "
                "2 -m fitv2.cli train ...), or drop --fsdp"
            )
        if self.init_from and not self.resume:  # a resumed run never reads its initial weights again
            check_exists(self.init_from, "--init-from weights")


@dataclass
class SampleOptions(Options):
    checkpoint: str = opt(
        positional=True,
        help="checkpoint folder, run folder (its newest checkpoint), or a released weights file with --preset",
    )
    preset: str | None = opt(None, choices=tuple(PRESETS), help="preset of a bare weights file, e.g. FiTv2-XL/2")
    weights: Literal["ema", "model"] = opt("ema", help="which weights of a checkpoint folder")
    autoencoder: str | None = opt(None, help="'pixel' or a VAE folder (not set: the one the model was trained with)")
    sizes: str = opt("32x32", help="comma-separated HEIGHTxWIDTH in pixels, e.g. 32x32,24x48")
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
    cfg_scale: float = opt(1.0, ge=0, help="classifier-free guidance scale (1 = off)")
    guidance_channels: Literal["all", "reference"] = opt(
        "all", help="'reference' guides latent channels 0-2 only, as the released samplers"
    )
    guidance_interval: str = opt("0,1", metavar="LO,HI", help="apply guidance for t in [LO, HI]")
    power_cos: float | None = opt(None, gt=0, help="power-cos guidance schedule with this exponent")
    solver: str | None = opt(
        None, help="euler (default), heun, dopri5 (or any torchdiffeq method), sde; FiT v1 models: ddpm (their default)"
    )
    steps: int | None = opt(None, ge=1, help="solver steps (fixed-step solvers, sde, ddpm); not set: 50, ddpm 250")
    atol: float = opt(1e-6, gt=0, help="adaptive solvers' absolute tolerance")
    rtol: float = opt(1e-3, gt=0, help="adaptive solvers' relative tolerance")
    diffusion_form: str = opt("sigma", choices=SDE_DIFFUSIONS, help="SDE diffusion form")
    last_step: str = opt("Mean", choices=LAST_STEPS, help="SDE last step")
    rope: str | None = opt(
        None, choices=ROPE_NAMES, help="RoPE extrapolation (not set: the checkpoint's training RoPE, else none)"
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
            if len(self.size_list) != 1:
                raise ConfigError(f"--npz holds images of one size; --sizes gives {len(self.size_list)}")
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
    def size_list(self) -> list[tuple[int, int]]:
        sizes = [parse_size(s) for s in self.sizes.split(",")]
        if not sizes:
            raise ConfigError("--sizes is empty")
        return sizes

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

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.host.strip():
            raise ConfigError("--host must not be empty")
        if self.text_encoder is not None:
            check_text_encoder(self.text_encoder)

    def check_environment(self) -> None:
        from .serve import check_gradio

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
    minutes: float = opt(8.0, gt=0, help="training time budget in minutes")
    out: str | None = opt(None, help="output folder (not set: runs/demo, with --text runs/demo_text)")
    text: bool = opt(
        False, help="the text-to-image model: train on the clipart captions, sample from test-split prompts"
    )
    preset: str = opt("FiTv2-Mini/4", choices=tuple(PRESETS), help="model preset")
    data: str | None = opt(None, help="dataset folder with metadata.jsonl (not set: the embedded data/clipart)")
    seed: int = opt(0, ge=0, help="seed")

    def __post_init__(self) -> None:
        check_fields(self)

    def check_environment(self) -> None:
        if self.data is not None:
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
    seed: int = opt(0, ge=0, help="seed")
    quiet: bool = opt(False, help="no progress output")

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.out:
            raise ConfigError("--out is required: the folder to write the classifier to")

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
    "TrainConfig",
    "check_device",
    "parse_size",
]
