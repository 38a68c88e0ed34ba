"""The ``fitv2`` command line. Parsing only: every command calls into the library.

Errors a user can act on (a bad size, an unknown preset, a checkpoint that does not fit,
a missing file) print one ``error:`` line and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .checkpoint import CheckpointError
from .config import PRESETS, model_config


class UsageError(ValueError):
    """A request the user can fix; printed as one line, exit status 2."""


def cmd_models(args: argparse.Namespace) -> int:
    from .model.flops import model_summary

    rows = []
    for name in PRESETS:
        cfg = model_config(name)
        s = model_summary(cfg, tokens=args.tokens)
        rows.append((name, cfg.depth, cfg.hidden_size, cfg.num_heads, cfg.adaln, cfg.mlp_hidden,
                     f"{s['params'] / 1e6:,.2f}M", f"{s['gflops']:.2f}"))
    header = ("preset", "depth", "width", "heads", "adaLN", "ffn", "params", f"GFLOPs@{args.tokens}")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
    print(f"GFLOPs: multiply-accumulates of the linear layers for one image of {args.tokens} tokens "
          "(FiTv2 Table I convention, attention products excluded); counted on the meta device.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fitv2", description="FiTv2: flexible vision transformer for diffusion.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("models", help="list model presets with parameters and GFLOPs")
    p.add_argument("--tokens", type=int, default=256, help="tokens per image for the GFLOPs column (default 256)")
    p.set_defaults(func=cmd_models)

    return parser


USER_ERRORS = (UsageError, CheckpointError, FileNotFoundError, KeyError, ValueError)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except USER_ERRORS as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else str(err)
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
