"""Where training metrics go besides OUT/log.jsonl: TensorBoard and Weights & Biases, both optional.

``--log-to tensorboard,wandb``. TensorBoard writes OUT/tensorboard; a resumed run drops the events
after its checkpoint's step. wandb logs to the project ``--wandb-project`` with the run's options
as its config; the wandb run id is kept in OUT/wandb_id, so a resumed training run continues the same
wandb run. wandb's own settings apply: ``WANDB_MODE=offline`` (or ``disabled``) is respected, and an
offline run is written under OUT/wandb for ``wandb sync``.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UserError

LOGGERS = ("tensorboard", "wandb")
METRICS = ("loss", "lr", "grad_norm", "tokens_per_s")


def parse_loggers(text: str) -> tuple[str, ...]:
    """'tensorboard,wandb' -> ('tensorboard', 'wandb'); '' -> ()."""
    names = tuple(dict.fromkeys(n.strip().lower() for n in text.split(",") if n.strip()))
    bad = [n for n in names if n not in LOGGERS]
    if bad:
        raise ConfigError(f"--log-to takes a comma-separated list of {', '.join(LOGGERS)}; got {', '.join(bad)}")
    return names


def check_loggers(names: tuple[str, ...]) -> None:
    """A UserError naming the extra to install for a logger whose package is missing."""
    for name in names:
        module = "torch.utils.tensorboard" if name == "tensorboard" else "wandb"
        try:
            importlib.import_module(module)
        except ImportError as err:
            raise UserError(f"--log-to {name} needs the {name} package: pip install 'fitv2[{name}]'") from err


class MetricLoggers:
    """The open loggers of one run; ``log`` sends a log row's metrics to each."""

    def __init__(
        self, names: tuple[str, ...], out: Path, config: dict[str, Any], project: str, resume_step: int | None
    ):
        check_loggers(names)
        self.writer = None
        self.wandb_run = None
        if "tensorboard" in names:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(out / "tensorboard"), purge_step=resume_step)
        if "wandb" in names:
            import wandb

            id_file = out / "wandb_id"
            run_id = id_file.read_text().strip() if id_file.is_file() and resume_step is not None else None
            run_id = run_id or wandb.util.generate_id()
            (out / "wandb").mkdir(parents=True, exist_ok=True)
            self.wandb_run = wandb.init(
                project=project, id=run_id, resume="allow", dir=str(out), config=config, name=out.name
            )
            id_file.write_text(run_id + "\n")

    def log(self, row: dict[str, Any], step: int) -> None:
        metrics = {f"train/{k}": row[k] for k in METRICS if k in row}
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(k, v, step)
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        if self.wandb_run is not None:
            self.wandb_run.finish()
