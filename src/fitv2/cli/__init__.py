"""The ``fitv2`` command line: the app on top of the library.

Each command is one module of this package with a ``run(args) -> int``, imported only when the
command runs; its options are a typed dataclass of :mod:`fitv2.cli.options` (``train``'s is the
library's :class:`~fitv2.training.TrainConfig`), so the choices, ranges and defaults ``--help``
shows are the ones checked, and ``--help`` imports no torch. Each command builds and checks its
options (and the files and devices they name) before it opens data or builds a model. A
:class:`~fitv2.errors.UserError` prints as one ``error:`` line with exit status 2; any other
exception is a bug and keeps its traceback.

Nothing outside this package imports it.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import UserError
from ..training.config import TrainConfig
from .flags import Parser, add_options
from .options import (
    ClassifierOptions,
    ConvertOptions,
    DemoOptions,
    EvaluateOptions,
    ModelsOptions,
    PrepareOptions,
    SampleOptions,
    ServeOptions,
)

COMMANDS: dict[str, tuple[type, str]] = {
    # name: (options, help); the command runs fitv2.cli.<name with _ for ->.run(args)
    "models": (ModelsOptions, "list model presets with parameters and GFLOPs"),
    "prepare": (PrepareOptions, "image folder or JSONL -> token dataset"),
    "train": (TrainConfig, "train a model on a token dataset"),
    "sample": (SampleOptions, "generate images at any sizes"),
    "evaluate": (EvaluateOptions, "FD/sFD, IS, precision/recall, class consistency of generated images"),
    "train-classifier": (ClassifierOptions, "train the small feature network used by `fitv2 evaluate`"),
    "convert": (ConvertOptions, "turn released weights or a checkpoint into a from_pretrained folder"),
    "serve": (ServeOptions, "a web page that samples a checkpoint (needs fitv2[web])"),
    "demo": (DemoOptions, "prepare the embedded clipart data, train a small model on the CPU, sample"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="fitv2", description="FiTv2: flexible vision transformer for diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (options, text) in COMMANDS.items():
        p = sub.add_parser(name, help=text, description=text)
        if options is TrainConfig:
            p.add_argument("--config", help="JSON file of training options (flags override it)")
            p.add_argument("--model", nargs="*", metavar="KEY=VALUE", help="model config overrides, e.g. depth=4")
        add_options(p, options)
    return parser


def dispatch(args: argparse.Namespace) -> int:
    """Run the parsed command (its module is imported now); a UserError propagates."""
    return importlib.import_module(f"{__name__}.{args.command.replace('-', '_')}").run(args)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return dispatch(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:
        print(f"error: {err.strerror}: {err.filename}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


__all__ = ["COMMANDS", "build_parser", "dispatch", "main"]
