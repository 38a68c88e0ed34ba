"""Training: the loop, its options, the run folder, partial fine-tuning and the metric loggers.

config.py    ``TrainConfig``: every option of a run, saved in each checkpoint (torch-free)
loop.py      ``train(cfg)``: the loop (AdamW, warmup, clipping, EMA, label dropout, bf16 autocast)
run.py       the run folder: refusing to train over a run, resuming, rotating checkpoints
finetune.py  high-resolution post-training: the partial subset and ``--init-from``
loggers.py   tensorboard and wandb beside ``log.jsonl``
"""

from __future__ import annotations

from typing import Any

from .config import TrainConfig

__all__ = ["TrainConfig", "TrainResult", "train"]


def __getattr__(name: str) -> Any:
    # The loop is imported on first use: `fitv2 --help` reads TrainConfig and must not pay for torch.
    if name in ("train", "TrainResult"):
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module 'fitv2.training' has no attribute {name!r}")
