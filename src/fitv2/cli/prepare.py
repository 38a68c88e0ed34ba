"""``fitv2 prepare``: images (a class folder or a JSONL) to a token dataset."""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from .flags import given
from .options import (
    PrepareOptions,
)


def run(args: argparse.Namespace) -> int:
    opts = PrepareOptions.from_dict(given(args, PrepareOptions))
    opts.check_environment()
    from ..data.autoencoder import load_autoencoder
    from ..data.index import DatasetIndex
    from ..data.prepare import prepare

    pixel = opts.autoencoder == "pixel"
    ae = load_autoencoder(
        None if pixel else opts.autoencoder,
        device=opts.device,
        scaling_factor=opts.scaling_factor,
        shift_factor=opts.shift_factor,
        downsample=opts.downsample,
    )
    patch = opts.patch_size if opts.patch_size is not None else (4 if pixel else 2)
    budget = opts.budget if opts.budget is not None else (32 if pixel else 256)
    out = Path(opts.out)
    if opts.overwrite:  # only what prepare writes; anything else in OUT stays
        for name in ("index.json", "items.jsonl"):
            (out / name).unlink(missing_ok=True)
        shutil.rmtree(out / "shards", ignore_errors=True)
        shutil.rmtree(out / "text", ignore_errors=True)
    report = prepare(
        opts.source,
        out,
        autoencoder=ae,
        patch_size=patch,
        budget=budget,
        split=opts.split,
        min_tokens=opts.min_tokens,
        workers=opts.workers,
        text_encoder=opts.text_encoder,
        captions=opts.captions,
    )
    print(f"{report.images} images -> {report.sequences} sequences, {report.tokens:,} tokens in {out}")
    if opts.text_encoder:
        index = DatasetIndex.load(out)
        print(f"captions: {index.images} encoded by {opts.text_encoder}, {index.text_len} tokens × {index.text_dim}")
    for reason, count in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {count:5d}  {reason}  (e.g. {report.examples[reason][0]})")
    return 0
