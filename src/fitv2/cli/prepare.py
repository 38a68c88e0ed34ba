"""``fitv2 prepare``: images (a class folder or a JSONL), or the released FiTv2 latents, to a token dataset.

Under ``torchrun`` every rank runs this command and makes its share of the shards (on its own GPU
with ``--device cuda``); rank 0 merges them and prints the summary.
"""

from __future__ import annotations

import argparse

from .flags import given
from .options import (
    PrepareOptions,
)


def run(args: argparse.Namespace) -> int:
    opts = PrepareOptions.from_dict(given(args, PrepareOptions))
    opts.check_environment()
    from .. import distributed as dist
    from ..data.autoencoder import Autoencoder, load_autoencoder
    from ..data.index import DatasetIndex
    from ..data.prepare import prepare
    from ..data.released import released_spec

    env = dist.setup(opts.device)
    try:
        factors = dict(scaling_factor=opts.scaling_factor, shift_factor=opts.shift_factor, downsample=opts.downsample)
        ae: Autoencoder | dict
        if opts.released():  # converted as they are: the autoencoder is only recorded
            ae = released_spec(None if opts.autoencoder == "pixel" else opts.autoencoder, **factors)
        else:
            pixel = opts.autoencoder == "pixel"
            ae = load_autoencoder(None if pixel else opts.autoencoder, device=env.device, **factors)
        report = prepare(
            opts.source,
            opts.out,
            autoencoder=ae,
            patch_size=opts.patch_size if opts.patch_size is not None or not _is_vae(ae) else 2,
            budget=opts.budget if opts.budget is not None or not _is_vae(ae) else 256,
            split=opts.split,
            min_tokens=opts.min_tokens,
            workers=opts.workers,
            shard_images=opts.shard_images,
            encode_batch=opts.encode_batch,
            seed=opts.seed,
            dtype=opts.dtype,
            keep_small=opts.keep_small,
            text_encoder=opts.text_encoder,
            captions=opts.captions,
            overwrite=opts.overwrite,
            progress=opts.progress,
            env=env,
        )
    finally:
        dist.cleanup(env)
    if not env.is_main:
        return 0
    index = DatasetIndex.load(opts.out)
    print(
        f"{report.images} images -> {report.sequences} sequences, {report.tokens:,} tokens in {opts.out} "
        f"({index.max_tokens} tokens at most, {index.patch_size}x{index.patch_size} patches, {index.dtype}; "
        f"{env.world_size} process(es))"
    )
    if opts.text_encoder:
        print(f"captions: {index.images} encoded by {opts.text_encoder}, {index.text_len} tokens × {index.text_dim}")
    for reason, count in sorted(report.skipped.items(), key=lambda kv: -kv[1]):
        print(f"  skipped {count:5d}  {reason}  (e.g. {report.examples[reason][0]})")
    return 0


def _is_vae(ae) -> bool:
    """A VAE that encodes here: its defaults are SD's patch 2 and 256 px (pixel space: prepare's own)."""
    return not isinstance(ae, dict) and ae.name != "pixel"
