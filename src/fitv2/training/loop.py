"""The training loop: one function that takes the resolved config.

AdamW with linear warmup, gradient clipping (0: off), EMA, label dropout for guidance, optional
bf16 autocast. Progress is counted in images and tokens. The noise, time and label dropout
of an example are functions of (seed, step, its position in the global batch), so the run
is the same on any number of ranks and a checkpoint (model, EMA, optimizer, scheduler,
step, data position) resumes bit for bit. The run folder (refusing to train over an earlier
run, picking an intact checkpoint, writing one safely) is :mod:`fitv2.training.run`'s and
:mod:`fitv2.run_folder`'s; multi-process training (torchrun) is handled by :mod:`fitv2.distributed`.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from .. import distributed as dist
from ..checkpoint import atomic_write, load_pickle, load_weights, read_state_dict, save_json, save_model_dir, save_torch
from ..config import ModelConfig, model_config
from ..data.dataset import TokenDataset, TokenLoader
from ..errors import ConfigError, UserError
from ..flow import TimeSampler, flow_loss
from ..model.fit import FiT
from ..model.rope import rope_scaling
from ..run_folder import checkpoint_dir, write_checkpoint
from ..seeds import generator
from .config import TrainConfig
from .finetune import apply_finetune, load_pretrained, source_config
from .loggers import MetricLoggers, check_loggers
from .precision import bf16_matmul_speedup, bf16_step_speedup, choose_precision
from .run import RunPlan, clear_run, plan_run

__all__ = ["TrainResult", "make_optimizer", "train"]


@dataclass
class TrainResult:
    step: int
    loss: float
    tokens_per_s: float
    seconds: float
    checkpoint: Path | None


def _ddpm_refusal(source: str) -> str:
    return (
        f"{source} is a DDPM model (FiT v1: learned variance, integer timesteps), and training here is "
        "rectified flow; train its block with flow by overriding --model learn_sigma=false continuous_time=true "
        "(Table II Config A)"
    )


def check_model_config(model_cfg: ModelConfig, dataset: TokenDataset, source: str) -> None:
    """The checks every architecture a run trains passes, whether from a preset, --init-from or a checkpoint."""
    if model_cfg.learn_sigma or not model_cfg.continuous_time:
        raise ConfigError(_ddpm_refusal(source))
    if model_cfg.num_classes != dataset.num_classes:
        raise ConfigError(f"{source} has {model_cfg.num_classes} classes, the dataset {dataset.num_classes}")
    if (model_cfg.text_dim, model_cfg.text_len) != (dataset.index.text_dim, dataset.index.text_len):
        what = "class labels" if not dataset.index.text_conditional else f"{dataset.index.text_encoder} captions"
        raise ConfigError(
            f"{source} takes text features of {model_cfg.text_dim} values × {model_cfg.text_len} tokens, the dataset "
            f"{dataset.index.text_dim} × {dataset.index.text_len} ({what}); prepare it with the model's text encoder"
        )
    if model_cfg.token_dim != dataset.token_dim:
        raise ConfigError(
            f"{source}: model tokens hold {model_cfg.token_dim} values but the dataset's hold "
            f"{dataset.token_dim} (patch size {model_cfg.patch_size}, {model_cfg.in_channels} "
            f"channels vs the dataset's {dataset.patch_size} and {dataset.meta['channels']})"
        )


def resolve_model_config(cfg: TrainConfig, dataset: TokenDataset) -> ModelConfig:
    overrides = {
        "num_classes": dataset.num_classes,
        "patch_size": dataset.patch_size,
        "in_channels": dataset.meta["channels"],
        # captions encoded by `prepare --text-encoder`: the text-to-image model of FiTv2 §III-E
        "text_dim": dataset.index.text_dim,
        "text_len": dataset.index.text_len,
        **cfg.model,
    }
    pretrained = source_config(cfg.init_from) if cfg.init_from else None
    if pretrained is not None:  # the architecture is the checkpoint's; it keeps its L_train and text input
        source = f"--init-from {cfg.init_from}"
        for name in ("text_dim", "text_len"):
            if name not in cfg.model:
                overrides.pop(name)
        try:
            model_cfg = pretrained.replace(**overrides)
        except UserError as err:
            raise ConfigError(f"--model on {source}: {err}") from None
        check_model_config(model_cfg, dataset, source)
        if pretrained.num_classes != dataset.num_classes:
            raise ConfigError(f"{source} has {pretrained.num_classes} classes, the dataset {dataset.num_classes}")
        return model_cfg
    model_cfg = model_config(cfg.preset, **overrides)
    check_model_config(model_cfg, dataset, cfg.preset)
    if "rope_train_len" not in cfg.model and not cfg.init_from:  # RoPE scales from the training side
        model_cfg = model_cfg.replace(rope_train_len=math.isqrt(dataset.meta["max_tokens"]))
    return model_cfg


DATASET_KEYS = (
    "autoencoder",
    "patch_size",
    "channels",
    "downsample",
    "budget",
    "max_tokens",
    "num_classes",
    "class_names",
    "text_encoder",
    "text_dim",
    "text_len",
)
# What a resumed run's dataset must share with the checkpoint's (the autoencoder is a path, free to move).
_DATASET_CHECKED = tuple(k for k in DATASET_KEYS if k != "autoencoder")


def resumed_model_config(cfg: TrainConfig, plan: RunPlan, dataset: TokenDataset) -> ModelConfig:
    """The checkpoint's architecture, whatever --preset or --init-from would give now (runtime
    options such as gradient checkpointing are not part of it and follow this run's options)."""
    try:
        saved = ModelConfig.from_dict(plan.saved["model"])
    except (UserError, TypeError) as err:
        raise ConfigError(f"{plan.resume}/config.json: {err}") from None
    old = plan.saved.get("dataset", {})
    new = json.loads(json.dumps({k: dataset.meta.get(k) for k in _DATASET_CHECKED}))
    changed = [f"{k} {old[k]} -> {new[k]}" for k in _DATASET_CHECKED if k in old and old[k] != new[k]]
    if changed:
        raise ConfigError(f"the dataset {cfg.data} is not the one {plan.resume} was trained on: {', '.join(changed)}")
    check_model_config(saved, dataset, str(plan.resume))
    return saved


@dataclass
class StepNoise:
    x0: torch.Tensor  # (B, N, D) noise, zero at padding
    t: torch.Tensor  # per image, like the labels
    label_drop: torch.Tensor  # bool, like the labels


def step_noise(
    seed: int,
    step: int,
    ids: torch.Tensor,
    size: torch.Tensor,
    token_dim: int,
    length: int,
    time_sampler: TimeSampler,
    drop_prob: float,
    text_len: int = 0,
) -> StepNoise:
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
            g = generator(seed, step, int(ids2[r, slot]))
            t[r, slot] = time_sampler((1,), generator=g)[0]
            drop[r, slot] = bool(torch.rand(1, generator=g)[0] < drop_prob)
            n = int(sizes[r, slot].prod())
            x0[r, start : start + n] = torch.randn(n, token_dim, generator=g)
            start += n + text_len  # an image's text slots follow its tokens
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


def _save(
    env: dist.Env,
    out: Path,
    step: int,
    model: FiT,
    ema: FiT,
    optimizer,
    scheduler,
    loader: TokenLoader,
    cfg: TrainConfig,
    dataset: TokenDataset,
    totals: dict[str, float],
    precision: dict[str, Any],
) -> Path:
    """Gather full state on every rank (a collective under FSDP); rank 0 writes it once."""
    weights, ema_weights = dist.model_state(model), dist.model_state(ema)
    optim_state = dist.optimizer_state(model, optimizer)
    final = checkpoint_dir(out, step)

    def write(folder: Path) -> None:
        extra = {"train": cfg.to_dict(), "dataset": {k: dataset.meta[k] for k in DATASET_KEYS}, "step": step}
        extra["precision"] = precision
        save_model_dir(folder, model.config, weights, ema_weights, extra)
        save_torch(
            {
                "optimizer": optim_state,
                "scheduler": scheduler.state_dict(),
                "step": step,
                "loader": loader.state_dict(),
                "totals": totals,
            },
            folder / "train_state.pt",
        )

    _on_main(env, lambda: write_checkpoint(final, write, cfg.keep_checkpoints))
    return final


def _on_main(env: dist.Env, fn: Callable[[], Any]) -> Any:
    """``fn()`` on rank 0 and its result on every rank; if it fails, every rank raises (none waits forever)."""
    result, error = None, None
    if env.is_main:
        try:
            result = fn()
        except Exception as err:
            error = err
    message: tuple[Any, ...] = ("ok", result) if error is None else ("error", str(error), isinstance(error, UserError))
    shared = dist.broadcast_object(env, message)
    if error is not None:
        raise error
    if shared[0] == "error":
        raise (UserError if shared[2] else RuntimeError)(f"rank 0: {shared[1]}")
    return shared[1]


def _truncate_log(log_path: Path, step: int) -> None:
    """Drop the rows after ``step`` (a resumed run writes them again) and any line a crash cut short."""
    if not log_path.is_file():
        return
    rows = []
    for line in log_path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and row.get("step", 0) <= step:
            rows.append(line)
    atomic_write(log_path, lambda tmp: Path(tmp).write_text("".join(r + "\n" for r in rows)))


def make_optimizer(
    params: list[torch.nn.Parameter], lr: float, betas=(0.9, 0.999), weight_decay: float = 0.0, sharded: bool = False
) -> torch.optim.AdamW:
    """AdamW, fused into one kernel per step where torch has it for these parameters (CPU and CUDA
    float tensors; measured 3.7× faster than the per-tensor loop for FiTv2-B/2 blocks on the CPU);
    sharded (FSDP) parameters take the default implementation."""
    fusable = not sharded and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay, fused=fusable or None)


def _precision(
    cfg: TrainConfig, plan: RunPlan, env: dist.Env, model: FiT, dataset: TokenDataset, device: torch.device
) -> dict[str, Any]:
    """The precision the run trains in, and the measured bf16 speed-up behind an 'auto' choice: a resumed run
    keeps the choice it recorded; otherwise rank 0 measures a step of the model (before it is wrapped) on
    its share of a batch of the dataset's largest images, and every rank takes its choice."""
    recorded = plan.saved.get("precision") if plan.resume is not None else None
    if cfg.precision == "auto" and isinstance(recorded, dict) and recorded.get("chosen") in ("fp32", "bf16"):
        return dict(recorded)

    def measure() -> float:
        share = max(1, cfg.batch_size // env.world_size)
        return bf16_step_speedup(model, share, int(dataset.meta["max_tokens"]), device)

    chosen, ratio = _on_main(env, lambda: choose_precision(cfg.precision, measure))
    if env.is_main and ratio is not None:
        faster = f"{ratio:.2f}x as fast as" if ratio > 1 else f"{1 / ratio:.2f}x the time of"
        print(f"precision auto: {chosen} (a bf16 training step measured {faster} fp32)", flush=True)
    return {"requested": cfg.precision, "chosen": chosen, "bf16_speedup": ratio}


def train(cfg: TrainConfig) -> TrainResult:
    """Run (or continue) a training run; returns the final step, loss and throughput."""
    cfg.check_environment()
    env = dist.setup(cfg.device)
    device = env.device
    out = Path(cfg.out)
    if env.is_main:
        check_loggers(cfg.loggers)
    if env.is_main and cfg.precision == "bf16" and device.type == "cpu":
        speedup = bf16_matmul_speedup()
        if speedup < 1.0:
            print(
                f"warning: --precision bf16 is slower than fp32 on this CPU (a bf16 matmul measured "
                f"{1 / speedup:.1f}x the time of fp32: no AMX or AVX-512-BF16 units); --precision fp32 trains faster",
                file=sys.stderr,
                flush=True,
            )
    plan: RunPlan = _on_main(env, lambda: plan_run(cfg))
    if env.is_main and plan.warning:
        print(f"warning: {plan.warning}", file=sys.stderr, flush=True)
    if env.is_main and plan.resume is not None:
        print(f"resuming from step {plan.step}: {plan.resume}", flush=True)
    dataset = TokenDataset(cfg.data)
    model_cfg = resolve_model_config(cfg, dataset) if plan.resume is None else resumed_model_config(cfg, plan, dataset)
    torch.manual_seed(cfg.seed)
    # The model's runtime holds no precision of its own: autocast is the loop's, chosen below.
    model = FiT(model_cfg, cfg.runtime("fp32"))
    if cfg.init_from and plan.resume is None:
        load_pretrained(model, cfg.init_from, reinit_unfrozen=cfg.reinit_unfrozen, mode=cfg.finetune)
    trainable = apply_finetune(model, cfg.finetune)
    if env.is_main and cfg.finetune != "full":
        print(
            f"finetune={cfg.finetune}: {trainable:,} of {model.num_parameters():,} parameters trainable "
            f"({trainable / model.num_parameters():.2%})"
        )
    if model.caption_embedder is not None:  # the dataset's empty caption: dropout and guidance use it
        model.caption_embedder.set_null(*dataset.null_text())
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    loader = TokenLoader(
        dataset,
        cfg.batch_size,
        cfg.data_mode,
        cfg.seed,
        env.rank,
        env.world_size,
        cfg.bucket,
        cfg.batching,
        cfg.row_length,
        cfg.hflip,
    )
    time_sampler = TimeSampler(cfg.time_sampling, cfg.time_mean, cfg.time_std)
    rope = rope_scaling(cfg.rope).with_(per_sample=True)
    totals = {"images": 0.0, "tokens": 0.0, "padded_tokens": 0.0, "seconds": 0.0}
    step, state = 0, None

    resume = plan.resume
    if resume is not None:  # full weights go in before sharding; any number of ranks can resume
        load_weights(model, read_state_dict(resume / "model.safetensors"), source=str(resume))
        load_weights(ema, read_state_dict(resume / "ema.safetensors"), source=str(resume))
        state = load_pickle(resume / "train_state.pt")
        loader.load_state_dict(state["loader"])
        totals = dict(state["totals"])
        step = int(state["step"])

    model, ema = model.to(device), ema.to(device)
    precision = _precision(cfg, plan, env, model, dataset, device)
    train_model = dist.wrap(model, env, cfg)
    dist.shard_like(ema, env, cfg)
    # After wrapping: FSDP replaces the parameters, so the optimizer must see the new ones.
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(params, cfg.lr, cfg.betas, cfg.weight_decay, sharded=cfg.fsdp and env.distributed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.warmup_steps))
    if state is not None:
        dist.load_optimizer_state(model, optimizer, state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    if cfg.compile:
        for block in model.blocks:
            block.compile(dynamic=True)  # sequence lengths vary from batch to batch
    forward = train_model
    autocast = cfg.runtime(precision["chosen"]).autocast(device)
    if env.is_main:
        if plan.clear:  # only now: a run that fails to start leaves the old one in place
            print(f"--overwrite: removed {', '.join(clear_run(out))} of the previous run in {out}", flush=True)
        out.mkdir(parents=True, exist_ok=True)
        if cfg.resume is not None:
            _truncate_log(out / "log.jsonl", step)
        save_json({"model": model_cfg.to_dict(), "train": cfg.to_dict(), "precision": precision}, out / "config.json")
    loggers = (
        MetricLoggers(cfg.loggers, out, cfg.to_dict(), cfg.wandb_project, step if cfg.resume is not None else None)
        if env.is_main and cfg.loggers
        else None
    )
    log = open(out / "log.jsonl", "a") if env.is_main else None
    bar = _progress_bar(cfg, step, totals, disable=not (cfg.progress and env.is_main))
    start = time.perf_counter() - totals["seconds"]
    window = {"tokens": 0, "time": time.perf_counter(), "loss": 0.0, "n": 0}
    loss_value, checkpoint = float("nan"), resume
    model.train()
    try:
        while step < cfg.steps:
            batch = next(loader)
            tokens = batch.tokens.to(device)
            labels = batch.labels.to(device)
            noise = step_noise(
                cfg.seed,
                step,
                batch.ids,
                batch.tokens.layout.size,
                tokens.x.shape[-1],
                tokens.length,
                time_sampler,
                model_cfg.class_dropout_prob,
                model_cfg.text_len,
            )
            condition = labels if batch.text is None else batch.text.to(device)
            with autocast:
                result = flow_loss(
                    forward,
                    tokens.x,
                    condition,
                    tokens.layout,
                    t=noise.t.to(device),
                    x0=noise.x0.to(device),
                    rope=rope,
                    label_drop=noise.label_drop.to(device),
                )
            loss = result.loss * dist.loss_scale(env, batch.images, cfg.batch_size)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
            else:  # no clipping; the norm is still worth logging
                grad_norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
            optimizer.step()
            scheduler.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step)) if cfg.ema_warmup else cfg.ema_decay
            update_ema(ema, model, decay)
            step += 1

            valid = dist.all_sum(env, float(tokens.layout.mask.sum()))  # image tokens
            text = dist.all_sum(env, float(batch.text.mask.sum())) if batch.text is not None else 0.0
            computed = dist.all_sum(env, float(tokens.layout.mask.numel()))
            loss_value = dist.all_mean(env, float(result.loss.detach()))
            totals["images"] += cfg.batch_size
            totals["tokens"] += valid
            totals["padded_tokens"] += computed - valid - text  # caption tokens are not padding
            totals["text_tokens"] = totals.get("text_tokens", 0.0) + text
            window["tokens"] += valid
            window["loss"] += loss_value
            window["n"] += 1
            totals["seconds"] = time.perf_counter() - start
            if log is not None and (step % cfg.log_every == 0 or step == cfg.steps):  # log: rank 0 only
                now = time.perf_counter()
                tps = window["tokens"] / max(now - window["time"], 1e-9)
                row = {
                    "step": step,
                    "loss": window["loss"] / window["n"],
                    "lr": scheduler.get_last_lr()[0],
                    "grad_norm": float(grad_norm),
                    "tokens_per_s": tps,
                    "images": totals["images"],
                    "tokens": totals["tokens"],
                    "padding": totals["padded_tokens"]
                    / max(totals["tokens"] + totals.get("text_tokens", 0.0) + totals["padded_tokens"], 1),
                    "seconds": totals["seconds"],
                }
                log.write(json.dumps(row) + "\n")
                log.flush()
                if loggers is not None:
                    loggers.log(row, step)
                bar.set_postfix(step=step, loss=f"{row['loss']:.4f}", lr=f"{row['lr']:.1e}", tok_s=f"{tps:,.0f}")
                window = {"tokens": 0, "time": now, "loss": 0.0, "n": 0}
            _advance(bar, cfg, totals)
            out_of_time = cfg.max_minutes is not None and totals["seconds"] > cfg.max_minutes * 60
            out_of_time |= cfg.train_tokens is not None and totals["tokens"] >= cfg.train_tokens
            out_of_time = dist.any_true(env, out_of_time)
            if step % cfg.ckpt_every == 0 or step == cfg.steps or out_of_time:
                checkpoint = _save(
                    env, out, step, model, ema, optimizer, scheduler, loader, cfg, dataset, totals, precision
                )
                dist.barrier(env)
            if out_of_time:
                break
    finally:
        bar.close()
        if log is not None:
            log.close()
        if loggers is not None:
            loggers.close()
    if log is not None:
        write_loss_plot(out)
    seconds = totals["seconds"]
    # The DDP reducer holds the process group. If it let go last, the group's destructor would run
    # with the GIL held and wait for gloo's threads, which may need the GIL to free a tensor: a hang.
    del forward, train_model
    gc.collect()
    dist.cleanup(env)
    return TrainResult(step, loss_value, totals["tokens"] / max(seconds, 1e-9), seconds, checkpoint)


def _progress_bar(cfg: TrainConfig, step: int, totals: dict, disable: bool) -> tqdm:
    """Progress is shown in the unit of the run's budget: tokens, else seconds, else steps."""
    if cfg.train_tokens is not None:
        return tqdm(
            total=int(cfg.train_tokens),
            initial=int(totals["tokens"]),
            desc="train",
            unit="tok",
            unit_scale=True,
            disable=disable,
        )
    if cfg.max_minutes is not None:
        return tqdm(
            total=round(cfg.max_minutes * 60),
            initial=round(totals["seconds"]),
            desc="train",
            unit="s",
            bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s{postfix}",
            disable=disable,
        )
    return tqdm(total=cfg.steps, initial=step, desc="train", unit="step", disable=disable)


def _advance(bar: tqdm, cfg: TrainConfig, totals: dict) -> None:
    """One step's progress, in the unit :func:`_progress_bar` chose."""
    if cfg.train_tokens is not None:
        bar.update(int(min(totals["tokens"], cfg.train_tokens)) - bar.n)
    elif cfg.max_minutes is not None:
        bar.update(min(round(totals["seconds"]), round(cfg.max_minutes * 60)) - bar.n)
    else:
        bar.update(1)


def write_loss_plot(out: Path) -> None:
    from ..plot import loss_curve

    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines() if line]
    loss_curve([r["step"] for r in rows], [r["loss"] for r in rows]).save(out / "loss.png")
