"""``fitv2 models``: the presets with their parameters and GFLOPs."""

from __future__ import annotations

import argparse

from .flags import given
from .options import (
    ModelsOptions,
)


def run(args: argparse.Namespace) -> int:
    opts = ModelsOptions.from_dict(given(args, ModelsOptions))
    from ..config import PRESETS, model_config
    from ..model.flops import model_summary

    rows = []
    for name in PRESETS:
        cfg = model_config(name)
        s = model_summary(cfg, tokens=opts.tokens)
        rows.append(
            (
                name,
                cfg.depth,
                cfg.hidden_size,
                cfg.num_heads,
                cfg.adaln,
                cfg.mlp_hidden,
                f"{s['params'] / 1e6:,.2f}M",
                f"{s['gflops']:.2f}",
            )
        )
    header = ("preset", "depth", "width", "heads", "adaLN", "ffn", "params", f"GFLOPs@{opts.tokens}")
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
    print(
        f"GFLOPs: multiply-accumulates of the linear layers for one image of {opts.tokens} tokens "
        "(FiTv2 Table I convention, attention products excluded); counted on the meta device."
    )
    return 0
