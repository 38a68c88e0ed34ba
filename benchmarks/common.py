"""What the quality benchmarks share: a training run of a fixed number of image tokens, the CPU's name."""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

import numpy as np

from fitv2.training import TrainConfig, train


def train_for_tokens(
    data: Path, out: Path, model: dict[str, Any], s: dict[str, Any], seed: int, **options: Any
) -> tuple[Path, dict[str, Any]]:
    """Train FiTv2-Tiny/4 with ``model`` overrides on ``s["tokens"]`` real image tokens (batch ``s["batch"]``,
    lr ``s["lr"]``, EMA 0.999 with warm-up), resuming a run already in ``out``; its checkpoint and a summary."""
    cfg = TrainConfig(
        data=str(data),
        out=str(out),
        preset="FiTv2-Tiny/4",
        model=model,
        batch_size=s["batch"],
        lr=s["lr"],
        warmup_steps=100,
        ema_decay=0.999,
        ema_warmup=True,
        steps=10**9,
        train_tokens=s["tokens"],
        ckpt_every=10**9,
        log_every=20,
        seed=seed,
        resume="latest",
        **options,
    )
    result = train(cfg)
    if result.checkpoint is None:
        raise RuntimeError(f"training in {out} wrote no checkpoint")
    log = [json.loads(line) for line in (out / "log.jsonl").open()]
    # Training seconds come from the run's own totals, which survive an interrupted and resumed run.
    info = dict(
        steps=result.step,
        tokens=log[-1]["tokens"],
        images=log[-1]["images"],
        loss=float(np.mean([r["loss"] for r in log[-10:]])),
        seconds=log[-1]["seconds"],
        tokens_per_s=result.tokens_per_s,
        params=None,
    )
    return result.checkpoint, info


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
