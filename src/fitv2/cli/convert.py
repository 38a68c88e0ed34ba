"""``fitv2 convert``: released weights or a checkpoint folder to a ``from_pretrained`` folder with a model card."""

from __future__ import annotations

import argparse

from .flags import given
from .options import (
    ConvertOptions,
)


def run(args: argparse.Namespace) -> int:
    opts = ConvertOptions.from_dict(given(args, ConvertOptions))
    opts.check_environment()
    from ..pipeline import FiTv2Pipeline

    pipe = FiTv2Pipeline.from_pretrained(
        opts.source, preset=opts.preset, weights=opts.weights, autoencoder=opts.autoencoder
    )
    out = pipe.save_pretrained(opts.dest)
    params = sum(p.numel() for p in pipe.model.parameters())
    print(f"{pipe.config.name} ({params:,} parameters) written to {out} with a model card ({out / 'README.md'})")
    return 0
