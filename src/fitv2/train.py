"""The training loop: one function that takes the resolved config.

AdamW with linear warmup, gradient clipping, EMA, label dropout for guidance, optional
bf16 autocast. Progress is counted in images and tokens. The noise, time and label dropout
of an example are functions of (seed, step, its position in the global batch), so the run
is the same on any number of ranks and a checkpoint (model, EMA, optimizer, scheduler,
step, data position; written to a temporary folder and renamed) resumes bit for bit.
Multi-process training (torchrun) is handled by :mod:`fitv2.distributed`.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from . import distributed as dist
from .checkpoint import CheckpointError, load_weights, read_state_dict, save_json, save_model_dir
from .config import ModelConfig, model_config
from .data.dataset import TokenDataset, TokenLoader
from .finetune import apply_finetune, load_pretrained, source_config
from .flow import TimeSampler, flow_loss
from .model.fit import FiT
from .model.rope import rope_scaling


@dataclass
class TrainConfig:
    """Everything a training run needs; saved in every checkpoint's config.json."""

    data: str = ""
    """Token dataset folder written by `fitv2 prepare`."""
    out: str = "runs/train"
    """Run folder: checkpoints/, log.jsonl, loss.png."""
    preset: str = "FiTv2-Tiny/4"
    """Model preset; num_classes, patch size and channels are taken from the dataset."""
    model: dict[str, Any] = field(default_factory=dict)
    """ModelConfig field overrides, e.g. {"depth": 4}."""
    data_mode: str = "mixed"
    """'mixed' (FiTv2), 'flexible' (FiT v1) or 'fixed' (square crops, DiT/SiT)."""
    time_sampling: str = "logit-normal"
    """'logit-normal' (FiTv2) or 'uniform'."""
    time_mean: float = 0.0
    time_std: float = 1.0
    batch_size: int = 32
    """Global batch (images), split across ranks."""
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 0
    """Linear warmup from lr·1e-4 (the reference's constant_with_warmup)."""
    grad_clip: float = 1.0
    ema_decay: float = 0.9999
    ema_warmup: bool = False
    """Use decay min(ema_decay, (1+step)/(10+step)) so short runs get a useful EMA."""
    steps: int = 1000
    max_minutes: float | None = None
    """Stop (and checkpoint) when this much wall time has passed."""
    train_tokens: float | None = None
    """Stop (and checkpoint) once this many real (non-padding) training tokens have been seen."""
    log_every: int = 10
    ckpt_every: int = 500
    keep_checkpoints: int = 2
    precision: str = "fp32"
    """'fp32' or 'bf16' (autocast for matmuls; parameters, norms, RoPE and loss stay fp32)."""
    seed: int = 0
    bucket: int = 0
    """Sort chunks of bucket × batch examples by length to reduce padding (0 = off)."""
    pack: int | None = None
    """Pack examples into rows of this many tokens instead of padding (first fit, longest first); 0 puts each
    rank's whole batch in one row with no padding at all, attention staying per image."""
    rope: str = "none"
    """RoPE extrapolation during training, per image (e.g. 'vision-ntk' for high-resolution tuning)."""
    device: str = "auto"
    compile: bool = False
    """torch.compile each transformer block (the masks, RoPE tables and attention plan stay eager: they make
    data-dependent choices that would break one whole-model graph)."""
    grad_checkpointing: bool = False
    """Activation checkpointing: recompute each block in the backward pass."""
    fsdp: bool = False
    """Under torchrun: shard parameters, gradients and optimizer state with FSDP2 (fully_shard)."""
    tensorboard: bool = False
    progress: bool = True
    resume: str | None = None
    """'latest' or a checkpoint folder to continue from."""
    init_from: str | None = None
    """Start from pretrained weights: a checkpoint folder (its architecture is used) or a released
    weights file of `preset` (e.g. high-resolution post-training of FiTv2-XL/2)."""
    finetune: str = "full"
    """'full', or 'partial': train only patch embedder, biases, adaLN modulation and final layer."""
    reinit_unfrozen: bool = False
    """With init_from: re-initialise the trained subset, as the released HR training code does."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(sorted(unknown))}")
        data = dict(data)
        if "betas" in data:
            data["betas"] = tuple(data["betas"])
        return cls(**data)


@dataclass
class TrainResult:
    step: int
    loss: float
    tokens_per_s: float
    seconds: float
    checkpoint: Path | None


def resolve_model_config(cfg: TrainConfig, dataset: TokenDataset) -> ModelConfig:
    overrides = {"num_classes": dataset.num_classes, "patch_size": dataset.patch_size,
                 "in_channels": dataset.meta["channels"], **cfg.model}
    if cfg.grad_checkpointing:
        overrides["grad_checkpointing"] = True
    pretrained = source_config(cfg.init_from) if cfg.init_from else None
    if pretrained is not None:  # the architecture is the checkpoint's; it keeps its L_train
        model_cfg = pretrained.replace(**overrides)
        if pretrained.num_classes != model_cfg.num_classes:
            raise ValueError(f"{cfg.init_from} has {pretrained.num_classes} classes, the dataset "
                             f"{model_cfg.num_classes}")
        return model_cfg
    model_cfg = model_config(cfg.preset, **overrides)
    if cfg.precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {cfg.precision!r}")
    if model_cfg.learn_sigma or not model_cfg.continuous_time:
        raise ValueError(f"{cfg.preset} is a DDPM model (FiT v1: learned variance, integer timesteps), and training "
                         "here is rectified flow; train its block with flow by overriding "
                         "--model learn_sigma=false continuous_time=true (Table II Config A)")
    if model_cfg.token_dim != dataset.token_dim:
        raise ValueError(f"model tokens hold {model_cfg.token_dim} values but the dataset's hold {dataset.token_dim}")
    if "rope_train_len" not in cfg.model and not cfg.init_from:  # RoPE scales from the training side
        model_cfg = model_cfg.replace(rope_train_len=math.isqrt(dataset.meta["max_tokens"]))
    return model_cfg


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step_{step:07d}"


def find_resume(cfg: TrainConfig) -> Path | None:
    if cfg.resume is None:
        return None
    if cfg.resume == "latest":
        pointer = Path(cfg.out) / "checkpoints" / "latest"
        if not pointer.is_file():
            return None  # nothing to resume: start fresh
        return Path(cfg.out) / "checkpoints" / pointer.read_text().strip()
    path = Path(cfg.resume)
    if not (path / "train_state.pt").is_file():
        raise CheckpointError(f"{path} is not a training checkpoint (no train_state.pt)")
    return path


@dataclass
class StepNoise:
    x0: torch.Tensor  # (B, N, D) noise, zero at padding
    t: torch.Tensor  # per image, like the labels
    label_drop: torch.Tensor  # bool, like the labels


def step_noise(seed: int, step: int, ids: torch.Tensor, size: torch.Tensor, token_dim: int, length: int,
               time_sampler: TimeSampler, drop_prob: float) -> StepNoise:
    """Noise, time and label dropout of every example, drawn from (seed, step, position in the
    global batch) alone: the same numbers whatever the number of ranks, padding or packing,
    and nothing to save for an exact resume."""
    rows = ids.shape[0]
    ids2, sizes = ids.reshape(rows, -1), size.reshape(rows, -1, 2)
    x0 = torch.zeros(rows, length, token_dim)
    t = torch.zeros(ids2.shape)
    drop = torch.zeros(ids2.shape, dtype=torch.bool)
    for r in range(rows):
        start = 0
        for slot in range(ids2.shape[1]):
            if ids2[r, slot] < 0:
                continue
            g = torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_000_033 + int(ids2[r, slot])) % 2**63)
            t[r, slot] = time_sampler((1,), generator=g)[0]
            drop[r, slot] = bool(torch.rand(1, generator=g)[0] < drop_prob)
            n = int(sizes[r, slot].prod())
            x0[r, start : start + n] = torch.randn(n, token_dim, generator=g)
            start += n
    return StepNoise(x0, t.reshape(ids.shape), drop.reshape(ids.shape))


def lr_lambda(warmup: int):
    def factor(step: int) -> float:
        if warmup <= 0 or step >= warmup:
            return 1.0
        return 1e-4 + (1 - 1e-4) * step / warmup

    return factor


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach().float(), 1 - decay)


def _save(env: dist.Env, out: Path, step: int, model: FiT, ema: FiT, optimizer, scheduler, loader: TokenLoader,
          cfg: TrainConfig, dataset: TokenDataset, totals: dict[str, float]) -> Path:
    """Gather full state on every rank (a collective under FSDP); rank 0 writes it once."""
    weights, ema_weights = dist.model_state(model), dist.model_state(ema)
    optim_state = dist.optimizer_state(model, optimizer)
    final = checkpoint_dir(out, step)
    if not env.is_main:
        return final
    tmp = final.with_name(final.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    extra = {"train": cfg.to_dict(), "dataset": {k: dataset.meta[k] for k in (
        "autoencoder", "patch_size", "channels", "downsample", "budget", "max_tokens", "num_classes", "class_names")},
        "step": step}
    save_model_dir(tmp, model.config, weights, ema_weights, extra)
    torch.save({"optimizer": optim_state, "scheduler": scheduler.state_dict(), "step": step,
                "loader": loader.state_dict(), "totals": totals}, tmp / "train_state.pt")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    pointer = out / "checkpoints" / "latest"
    pointer.with_suffix(".tmp").write_text(final.name)
    pointer.with_suffix(".tmp").replace(pointer)
    kept = sorted(p for p in (out / "checkpoints").glob("step_*") if not p.name.endswith(".tmp"))
    for old in kept[: max(0, len(kept) - cfg.keep_checkpoints)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _truncate_log(log_path: Path, step: int) -> None:
    if not log_path.is_file():
        return
    rows = [line for line in log_path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    log_path.write_text("".join(r + "\n" for r in rows))


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or continue) a training run; returns the final step, loss and throughput."""
    env = dist.setup(cfg.device)
    device = env.device
    out = Path(cfg.out)
    dataset = TokenDataset(cfg.data)
    model_cfg = resolve_model_config(cfg, dataset)
    torch.manual_seed(cfg.seed)
    model = FiT(model_cfg)
    if cfg.init_from and find_resume(cfg) is None:
        load_pretrained(model, cfg.init_from, reinit_unfrozen=cfg.reinit_unfrozen, mode=cfg.finetune)
    trainable = apply_finetune(model, cfg.finetune)
    if env.is_main and cfg.finetune != "full":
        print(f"finetune={cfg.finetune}: {trainable:,} of {model.num_parameters():,} parameters trainable "
              f"({trainable / model.num_parameters():.2%})")
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    loader = TokenLoader(dataset, cfg.batch_size, cfg.data_mode, cfg.seed, env.rank, env.world_size,
                         cfg.bucket, cfg.pack)
    time_sampler = TimeSampler(cfg.time_sampling, cfg.time_mean, cfg.time_std)
    rope = rope_scaling(cfg.rope).with_(per_sample=True)
    totals = {"images": 0.0, "tokens": 0.0, "padded_tokens": 0.0, "seconds": 0.0}
    step, state = 0, None

    resume = find_resume(cfg)
    if resume is not None:  # full weights go in before sharding; any number of ranks can resume
        load_weights(model, read_state_dict(resume / "model.safetensors"), source=str(resume))
        load_weights(ema, read_state_dict(resume / "ema.safetensors"), source=str(resume))
        state = torch.load(resume / "train_state.pt", map_location="cpu", weights_only=True)
        loader.load_state_dict(state["loader"])
        totals = dict(state["totals"])
        step = int(state["step"])
        if env.is_main:
            _truncate_log(out / "log.jsonl", step)

    model, ema = model.to(device), ema.to(device)
    train_model = dist.wrap(model, env, cfg)
    dist.shard_like(ema, env, cfg)
    # After wrapping: FSDP replaces the parameters, so the optimizer must see the new ones.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps))
    if state is not None:
        dist.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    if cfg.compile:
        for block in model.blocks:
            block.compile(dynamic=True)  # sequence lengths vary from batch to batch
    forward = train_model
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
        save_json({"model": model_cfg.to_dict(), "train": cfg.to_dict()}, out / "config.json")
    writer = _tensorboard(out) if cfg.tensorboard and env.is_main else None
    log = open(out / "log.jsonl", "a") if env.is_main else None
    bar = _progress_bar(cfg, step, totals, disable=not (cfg.progress and env.is_main))
    start = time.perf_counter() - totals["seconds"]
    window = {"tokens": 0, "time": time.perf_counter(), "loss": 0.0, "n": 0}
    loss_value, checkpoint = float("nan"), None
    model.train()
    while step < cfg.steps:
        batch = next(loader)
        tokens = batch.tokens.to(device)
        labels = batch.labels.to(device)
        noise = step_noise(cfg.seed, step, batch.ids, batch.tokens.size, tokens.x.shape[-1], tokens.x.shape[1],
                           time_sampler, model_cfg.class_dropout_prob)
        with autocast:
            result = flow_loss(forward, tokens.x, labels, tokens.grid, tokens.mask, tokens.size, tokens.segment,
                               t=noise.t.to(device), x0=noise.x0.to(device), rope=rope,
                               label_drop=noise.label_drop.to(device))
        loss = result.loss * dist.loss_scale(env, batch.images, cfg.batch_size)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        optimizer.step()
        scheduler.step()
        decay = min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay
        update_ema(ema, model, decay)
        step += 1

        valid = dist.all_sum(env, float(tokens.mask.sum()))
        computed = dist.all_sum(env, float(tokens.mask.numel()))
        loss_value = dist.all_mean(env, float(result.loss.detach()))
        totals["images"] += cfg.batch_size
        totals["tokens"] += valid
        totals["padded_tokens"] += computed - valid
        window["tokens"] += valid
        window["loss"] += loss_value
        window["n"] += 1
        totals["seconds"] = time.perf_counter() - start
        if env.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
            now = time.perf_counter()
            tps = window["tokens"] / max(now - window["time"], 1e-9)
            row = {"step": step, "loss": window["loss"] / window["n"], "lr": scheduler.get_last_lr()[0],
                   "grad_norm": float(grad_norm), "tokens_per_s": tps, "images": totals["images"],
                   "tokens": totals["tokens"], "padding": totals["padded_tokens"] / max(totals["tokens"] + totals[
                       "padded_tokens"], 1), "seconds": totals["seconds"]}
            log.write(json.dumps(row) + "\n")
            log.flush()
            if writer is not None:
                for k in ("loss", "lr", "grad_norm", "tokens_per_s"):
                    writer.add_scalar(f"train/{k}", row[k], step)
            bar.set_postfix(step=step, loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.1e}", tok_s=f"{tps:,.0f}")
            window = {"tokens": 0, "time": now, "loss": 0.0, "n": 0}
        _advance(bar, cfg, totals)
        out_of_time = cfg.max_minutes is not None and totals["seconds"] > cfg.max_minutes * 60
        out_of_time |= cfg.train_tokens is not None and totals["tokens"] >= cfg.train_tokens
        out_of_time = dist.any_true(env, out_of_time)
        if step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time:
            checkpoint = _save(env, out, step, model, ema, optimizer, scheduler, loader, cfg, dataset, totals)
            dist.barrier(env)
        if out_of_time:
            break
    bar.close()
    if log is not None:
        log.close()
        write_loss_plot(out)
    if writer is not None:
        writer.close()
    seconds = totals["seconds"]
    dist.cleanup(env)
    return TrainResult(step, loss_value, totals["tokens"] / max(seconds, 1e-9), seconds, checkpoint)


def _bar_unit(cfg: TrainConfig) -> str:
    """Progress is shown in the unit of the run's budget: tokens, else seconds, else steps."""
    return "tok" if cfg.train_tokens is not None else "s" if cfg.max_minutes is not None else "step"


def _progress_bar(cfg: TrainConfig, step: int, totals: dict, disable: bool) -> tqdm:
    unit = _bar_unit(cfg)
    if unit == "tok":
        return tqdm(total=int(cfg.train_tokens), initial=int(totals["tokens"]), desc="train", unit="tok",
                    unit_scale=True, disable=disable)
    if unit == "s":
        return tqdm(total=round(cfg.max_minutes * 60), initial=round(totals["seconds"]), desc="train", unit="s",
                    bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}", disable=disable)
    return tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=disable)


def _advance(bar: tqdm, cfg: TrainConfig, totals: dict) -> None:
    unit = _bar_unit(cfg)
    if unit == "tok":
        bar.update(int(min(totals["tokens"], cfg.train_tokens)) - bar.n)
    elif unit == "s":
        bar.update(min(round(totals["seconds"]), round(cfg.max_minutes * 60)) - bar.n)
    else:
        bar.update(1)


def write_loss_plot(out: Path) -> None:
    from .plot import loss_curve

    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line]
    loss_curve([r["step"] for r in rows], [r["loss"] for r in rows]).save(out / "loss.png")


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:
        raise ValueError("--tensorboard needs the tensorboard package: pip install 'fitv2[tensorboard]'") from err
    return SummaryWriter(str(out / "tensorboard"))
