"""The run folder of ``fitv2 train``: refusing to train over an earlier run, what a resume continues
from and with which options, and removing a run for ``--overwrite``.

Which checkpoint is intact and newest, and how one is written, is :mod:`fitv2.run_folder`'s.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, read_config_json
from ..errors import ConfigError, UserError
from ..run_folder import checkpoints_dir, is_inside, pick_resume, step_of
from ..schema import flag_name
from .config import TrainConfig

RUN_ENTRIES = ("checkpoints", "log.jsonl", "loss.png", "config.json", "tensorboard", "wandb", "wandb_id")
# Options that only say how long or how to run. Any other option changes what is trained, so a
# resume must keep the checkpoint's value; a new option is refused until it is listed here. Batching
# is one of them: every example's noise and time are keyed by its place in the global batch and the
# loss is a mean over images, so padded, packed and flat rows train the same model.
RUN_ONLY_OPTIONS = frozenset(
    {
        "steps",
        "max_minutes",
        "train_tokens",
        "log_every",
        "ckpt_every",
        "keep_checkpoints",
        "progress",
        "tensorboard",
        "log_to",
        "wandb_project",
        "device",
        "attention",
        "compile",
        "grad_checkpointing",
        "batching",
        "row_length",
        "pack",
        "fsdp",
        "resume",
        "overwrite",
        "out",
    }
)
RUN_ONLY_MODEL_FIELDS = frozenset({"grad_checkpointing"})


def run_markers(out: str | Path) -> list[str]:
    """What shows that ``out`` already holds a run (empty for a new or unrelated folder)."""
    out = Path(out)
    found = []
    if checkpoints_dir(out).is_dir():
        found.append("checkpoints/")
    if (out / "log.jsonl").exists():
        found.append("log.jsonl")
    return found


def clear_run(out: str | Path) -> list[str]:
    """Remove what a run wrote into ``out`` (and nothing else); returns the names removed."""
    removed = []
    for name in RUN_ENTRIES:
        path = Path(out) / name
        if path.is_symlink() or path.is_file():
            path.unlink()
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            continue
        removed.append(name + "/" if name in ("checkpoints", "tensorboard", "wandb") else name)
    return removed


def _show(value: Any) -> str:
    if value is None:
        return "not set"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


def changed_options(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """'--lr 0.001 -> 0.002' for each option that changes what is trained and differs from ``saved``."""
    current = json.loads(json.dumps(cfg.to_dict()))  # the form config.json stores (tuples as lists)
    changes = []
    for name, new in current.items():
        if name in RUN_ONLY_OPTIONS or name not in saved:
            continue
        old = saved[name]
        if name == "model" and isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new)):
                if key not in RUN_ONLY_MODEL_FIELDS and old.get(key) != new.get(key):
                    changes.append(f"--model {key}: {_show(old.get(key))} -> {_show(new.get(key))}")
        elif old != new:
            changes.append(f"{flag_name(name)}: {_show(old)} -> {_show(new)}")
    return changes


@dataclass
class RunPlan:
    """What a training run does with its run folder, decided before any data is read."""

    resume: Path | None = None
    step: int = 0  # the step resumed from
    saved: dict[str, Any] = field(default_factory=dict)  # the resumed checkpoint's config.json
    clear: bool = False  # remove the previous run (--overwrite) before writing
    warning: str | None = None


def plan_run(cfg: TrainConfig) -> RunPlan:
    out = Path(cfg.out)
    existing = run_markers(out)
    if cfg.overwrite:
        if (
            cfg.init_from
            and existing
            and any(
                is_inside(Path(cfg.init_from), out / name) or Path(cfg.init_from).resolve() == (out / name).resolve()
                for name in RUN_ENTRIES
            )
        ):
            raise ConfigError(
                f"--init-from {cfg.init_from} lies in the run that --overwrite would delete; copy it elsewhere first"
            )
        return RunPlan(clear=bool(existing))
    choice = pick_resume(out, cfg.resume)
    if choice.path is None:
        if existing and cfg.resume is None:
            raise UserError(
                f"{out} already holds a run ({' and '.join(existing)}): pass --resume latest to continue "
                "it, --overwrite to delete it and start afresh, or choose another --out"
            )
        return RunPlan(warning=choice.warning)
    saved = read_config_json(choice.path)
    changes = changed_options(saved.get("train", {}), cfg)
    if changes:
        raise ConfigError(
            f"{choice.path} was trained with other options, and changing them changes what is "
            f"trained: {', '.join(changes)}; resume with the saved values, or start a new run "
            "(another --out, or --overwrite)"
        )
    step = saved.get("step")
    return RunPlan(
        choice.path, int(step) if isinstance(step, int) else step_of(choice.path) or 0, saved, warning=choice.warning
    )


def saved_train_config(out: str | Path, resume: str | None) -> dict[str, Any] | None:
    """The training options of the checkpoint ``--resume resume`` would continue from (None if
    there is none), without resume and overwrite, which belong to each invocation: the base that
    options given again are merged onto."""
    choice = pick_resume(out, resume)
    if choice.path is None:
        return None
    saved = read_config_json(choice.path).get("train")
    if not isinstance(saved, dict):
        raise CheckpointError(f"{choice.path}/config.json holds no training options")
    known = {f.name for f in dataclasses.fields(TrainConfig)} - {"resume", "overwrite"}
    return {k: v for k, v in saved.items() if k in known}


__all__ = ["RunPlan", "changed_options", "clear_run", "plan_run", "run_markers", "saved_train_config"]
