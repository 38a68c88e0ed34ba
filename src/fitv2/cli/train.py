"""``fitv2 train``: the run's options from a resumed checkpoint, a --config file and the flags, then the loop."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingFileError
from ..training.config import TrainConfig
from .flags import given


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _key_values(pairs: list[str] | None) -> dict[str, Any]:
    out = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--model expects KEY=VALUE pairs (e.g. depth=4); got {pair!r}")
        out[key.strip().replace("-", "_")] = _parse_value(value)
    return out


def _read_config_file(path: str) -> dict[str, Any]:
    file = Path(path)
    if not file.is_file():
        raise MissingFileError(f"--config file not found: {path}")
    try:
        values = json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise ConfigError(f"--config {path} is not valid JSON: {err.msg} at line {err.lineno}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"--config {path} must hold a JSON object of training options")
    return values


def train_config(args: argparse.Namespace) -> TrainConfig:
    """The run's options: a resumed run's saved options, then the --config file, then the flags given."""
    file_values = _read_config_file(args.config) if args.config else {}
    flags = given(args, TrainConfig)
    flags.pop("model", None)  # --model KEY=VALUE pairs, merged below
    values = {**file_values, **flags}
    models = {**values.get("model", {}), **_key_values(args.model)}
    resume = values.get("resume")
    base = None
    if resume:
        from ..training.run import saved_train_config

        base = saved_train_config(values.get("out", TrainConfig.out), resume)
    if base is not None:
        models = {**base.get("model", {}), **models}
        values = {**base, **values}
    values["model"] = models
    return TrainConfig.from_dict(values, source="--config" if args.config else "the options")


def run(args: argparse.Namespace) -> int:
    cfg = train_config(args)
    from ..training import train  # train() checks cfg.check_environment() before it reads any data

    result = train(cfg)
    print(
        f"step {result.step}: loss {result.loss:.4f}, {result.tokens_per_s:,.0f} tokens/s, "
        f"{result.seconds / 60:.1f} min; checkpoint {result.checkpoint}"
    )
    return 0
