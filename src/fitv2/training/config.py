"""The options of a training run: one typed dataclass, saved in every checkpoint's config.json.

Each field declares its type, default, range and help once; ``fitv2 train`` builds its flags from them,
and a config from flags, a ``--config`` file or a checkpoint's saved config is checked by the same
``__post_init__``. ``check_environment()`` looks at the machine and the file system before any data
is read. No torch import at module level.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..config import PRESETS, Runtime, model_config
from ..environment import check_attention, check_device, check_exists, check_output_dir
from ..errors import ConfigError, MissingFileError, UserError
from ..names import ATTENTION_NAMES, ROPE_NAMES
from ..schema import Options, build, check_fields, opt


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
    hflip: bool = opt(
        True, help="flip each example horizontally with probability 1/2 (off for glyphs: a mirrored b is a d)"
    )
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
    precision: Literal["auto", "fp32", "bf16"] = opt(
        "auto",
        help="'bf16': autocast for matmuls (parameters, norms, RoPE and loss stay fp32); 'auto': bf16 where a "
        "training step measured on this machine is faster in bf16, else fp32",
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

    def runtime(self, precision: str | None = None) -> Runtime:
        """How the model runs in this run (not part of the architecture); ``precision``: what 'auto' chose."""
        precision = precision or self.precision
        if precision == "auto":
            raise ValueError("precision 'auto' is chosen by measuring (fitv2.training.precision): pass the choice")
        return Runtime(self.attention, self.grad_checkpointing, self.compile, precision)

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


__all__ = ["TrainConfig"]
