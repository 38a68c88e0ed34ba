"""Images -> token dataset at native resolution and aspect ratio (FiTv2 §5, Algorithm 1).

Every image is resized to fit a token budget keeping its aspect ratio (area ≤ S², sides
floored to multiples of patch × autoencoder down-sampling, never up-sampled) and also
centre-cropped to S × S (ADM's ``center_crop_arr``); the crop is marked *eligible* for
FiTv2's mixed preprocessing when both sides exceed S. Each variant and its horizontal flip
go through the autoencoder and are stored as token sequences in safetensors shards:

    OUT/index.json          dataset metadata (autoencoder, patch size, budget, classes, skips)
    OUT/items.jsonl         one line per stored sequence: shard, offset, h, w, label, variant...
    OUT/shards/NNNNN.safetensors   "features": (tokens, 2, p²·C) float16, [image, flipped image]

Unreadable, degenerate, too large (checked from the header, before decoding) and missing files
are skipped, counted by reason and never stop the run; a source with no usable image at all is
an error, and nothing is written.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass, field, replace
from multiprocessing import Pool
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import save_tensors
from ..errors import ConfigError, MissingFileError, UserError
from ..text import TextEncoder, load_text_encoder, parse_text_encoder
from ..tokens import patchify
from .autoencoder import Autoencoder, PixelSpace
from .images import SkipImage, center_crop, channel_std, load_rgb, resize_to_budget
from .index import TEXT_PER_SHARD, DatasetIndex
from .sources import caption_from_name, list_folder, list_jsonl


@dataclass
class PrepareReport:
    images: int = 0
    sequences: int = 0
    tokens: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)


def _variants(args: tuple[Path, int, int, int, float]) -> tuple[list[tuple[str, bool, np.ndarray]], str | None, str]:
    """Worker: load one file; its (variant, eligible, uint8 HWC) arrays, or a skip reason and detail."""
    path, side, unit, min_tokens, min_std = args
    try:
        img = load_rgb(path)
        if min(img.size) < 2:
            raise SkipImage("degenerate size")
        if float(channel_std(img).max()) < min_std:
            raise SkipImage("blank (uniform colour)")
        resized = resize_to_budget(img, side, unit)
        if (resized.size[0] // unit) * (resized.size[1] // unit) < min_tokens:
            raise SkipImage("too few tokens")
        w, h = img.size
        crop = np.asarray(center_crop(img, side))
        return [("resize", True, np.asarray(resized)), ("crop", w > side and h > side, crop)], None, ""
    except SkipImage as skip:
        return [], skip.reason, skip.detail


# ----------------------------------------------------------------------------- writing


class ShardWriter:
    def __init__(self, out: Path, shard_tokens: int):
        self.out = out
        self.shard_tokens = shard_tokens
        self.buffer: list[torch.Tensor] = []
        self.fill = 0
        self.names: list[str] = []

    def add(self, features: torch.Tensor) -> tuple[int, int]:
        """Queue (tokens, 2, D); returns (shard index, offset)."""
        where = (len(self.names), self.fill)
        self.buffer.append(features)
        self.fill += features.shape[0]
        if self.fill >= self.shard_tokens:
            self.flush()
        return where

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"shards/{len(self.names):05d}.safetensors"
        (self.out / "shards").mkdir(parents=True, exist_ok=True)  # not before: a failed run leaves no dataset
        save_tensors({"features": torch.cat(self.buffer)}, self.out / name)
        self.names.append(name)
        self.buffer, self.fill = [], 0


def encode_pair(image: np.ndarray, autoencoder: Autoencoder, patch_size: int) -> tuple[torch.Tensor, int, int]:
    """uint8 (H, W, 3) -> tokens (h·w, 2, p²·C) of the image and its horizontal flip, and (h, w).

    The token grid is that of the latents the autoencoder returned, checked against its
    declared down-sampling: what is stored and what the index records cannot disagree."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W)
    pair = torch.stack([x, x.flip(-1)])
    latents = autoencoder.encode(pair)
    (H, W), (lh, lw), f = image.shape[:2], latents.shape[-2:], autoencoder.downsample
    if (lh * f, lw * f) != (H, W):
        raise UserError(
            f"the {autoencoder.name} autoencoder encoded {H}x{W} pixels to {lh}x{lw} latents "
            f"(×{H / max(lh, 1):g} down-sampling), not the {H // f}x{W // f} of its declared ×{f}"
        )
    if latents.shape[1] != autoencoder.channels:
        raise ValueError(
            f"the {autoencoder.name} autoencoder returned {latents.shape[1]} channels, "
            f"not its declared {autoencoder.channels}"
        )
    tokens = patchify(latents.float().cpu(), patch_size).permute(1, 0, 2).to(torch.float16)  # (N, 2, D)
    return tokens, lh // patch_size, lw // patch_size


CAPTION_SOURCES = ("caption", "filename")


def write_text(out: Path, encoder: TextEncoder | None, captions: list[str], progress: bool) -> dict:
    """Encode one caption per kept image into ``text/NNNNN.safetensors`` ("features" (n, M, dim)
    float16, "mask" (n, M) uint8) and the empty caption into ``text/null.safetensors``; the
    index fields that describe them. M: 77 for CLIP; for MiniLM the longest caption's tokens."""
    if encoder is None:
        return {}
    length = encoder.max_length
    if not encoder.full_context:
        length = min(encoder.max_length, max(encoder.token_counts([*captions, ""])))
    (out / "text").mkdir(parents=True, exist_ok=True)
    null = encoder.encode([""], length)
    save_tensors(
        {"features": null.features[0].half(), "mask": null.mask[0].to(torch.uint8)}, out / "text/null.safetensors"
    )
    names: list[str] = []
    starts = range(0, len(captions), TEXT_PER_SHARD)
    for start in tqdm(starts, desc="captions", unit="shard", disable=not progress or len(starts) < 2):
        text = encoder.encode(captions[start : start + TEXT_PER_SHARD], length)
        name = f"text/{len(names):05d}.safetensors"
        save_tensors({"features": text.features.half(), "mask": text.mask.to(torch.uint8)}, out / name)
        names.append(name)
    return dict(text_encoder=encoder.spec, text_dim=encoder.dim, text_len=length, text_shards=names)


def _count(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _skip_summary(report: PrepareReport) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in report.skipped.most_common())


def prepare(
    source: str | Path,
    out: str | Path,
    *,
    autoencoder: Autoencoder | None = None,
    patch_size: int = 4,
    budget: int = 32,
    split: str | None = None,
    min_tokens: int | None = None,
    min_std: float = 1.0,
    workers: int | None = None,
    shard_tokens: int = 1 << 20,
    progress: bool = True,
    text_encoder: str | dict | None = None,
    captions: str = "caption",
) -> PrepareReport:
    """Build a token dataset from an image folder (class sub-folders) or a JSONL list.

    min_std: images whose every channel varies less than this (in 0..255 levels) are blank.
    text_encoder: 'minilm' or 'clip:PATH' encodes every kept image's caption once into
    ``text/`` (for the text-to-image model). captions: 'caption' (a JSONL row's caption, else
    the file name) or 'filename' (always the file name, as for a class folder)."""
    source, out = Path(source), Path(out)
    autoencoder = autoencoder or PixelSpace()
    patch_size, budget = _count("patch_size", patch_size), _count("budget", budget)
    shard_tokens = _count("shard_tokens", shard_tokens)
    workers = _count("workers", workers) if workers is not None else min(4, os.cpu_count() or 1)
    if isinstance(min_std, bool) or not isinstance(min_std, Real) or not 0 <= min_std < math.inf:
        raise ConfigError(f"min_std must be a number >= 0; got {min_std!r}")
    unit = patch_size * autoencoder.downsample
    if budget % unit:
        raise ConfigError(
            f"budget side {budget} must be a multiple of patch × down-sampling = "
            f"{patch_size} × {autoencoder.downsample} = {unit}"
        )
    max_tokens = (budget // unit) ** 2
    min_tokens = max(1, max_tokens // 16) if min_tokens is None else _count("min_tokens", min_tokens)
    if min_tokens > max_tokens:
        raise ConfigError(
            f"min_tokens {min_tokens} exceeds the {max_tokens} tokens of the budget "
            f"({budget} px / {unit} = {budget // unit} per side): every image would be skipped"
        )
    if captions not in CAPTION_SOURCES:
        raise ConfigError(f"captions must be one of {', '.join(CAPTION_SOURCES)}; got {captions!r}")
    text_spec = parse_text_encoder(text_encoder) if text_encoder is not None else None
    if source.is_dir():
        sources, classes = list_folder(source, broken_links=True)
    elif source.is_file():
        sources, classes = list_jsonl(source, split)
    else:
        raise MissingFileError(f"no such image folder or JSONL file: {source}")
    if captions == "filename":
        sources = [replace(s, caption=caption_from_name(s.path)) for s in sources]
    encoder = load_text_encoder(text_spec) if text_spec is not None else None  # before hours of encoding
    writer = ShardWriter(out, shard_tokens)
    report = PrepareReport()
    items = []
    captions = []  # one per kept image, in group order
    jobs = [(s.path, budget, unit, min_tokens, min_std) for s in sources]
    with Pool(workers) if workers > 1 else _InProcess() as pool:
        results = pool.imap(_variants, jobs, chunksize=8)
        bar = tqdm(zip(sources, results), total=len(sources), desc="prepare", unit="img", disable=not progress)
        for src, (variants, reason, detail) in bar:
            if reason is not None:
                report.skipped[reason] += 1
                report.examples.setdefault(reason, []).append(f"{src.path} ({detail})" if detail else str(src.path))
                continue
            for variant, eligible, image in variants:
                features, h, w = encode_pair(image, autoencoder, patch_size)
                shard, offset = writer.add(features)
                items.append(
                    dict(
                        group=report.images,
                        variant=variant,
                        eligible=eligible,
                        shard=shard,
                        offset=offset,
                        h=h,
                        w=w,
                        label=src.label,
                        caption=src.caption,
                        source=str(src.path),
                    )
                )
                report.sequences += 1
                report.tokens += h * w
            captions.append(src.caption)
            report.images += 1
            if report.images % 100 == 0:
                bar.set_postfix(kept=report.images, skipped=sum(report.skipped.values()), refresh=False)
    if report.images == 0:
        raise UserError(
            f"no usable images in {source}: all {len(sources)} files were skipped "
            f"({_skip_summary(report)}); nothing was written"
        )
    text = write_text(out, encoder, captions, progress)
    writer.flush()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    DatasetIndex(
        autoencoder=autoencoder.spec(),
        patch_size=patch_size,
        channels=autoencoder.channels,
        downsample=autoencoder.downsample,
        token_dim=patch_size**2 * autoencoder.channels,
        budget=budget,
        max_tokens=max_tokens,
        num_classes=len(classes),
        class_names=classes,
        shards=writer.names,
        images=report.images,
        sequences=report.sequences,
        tokens=report.tokens,
        skipped=dict(report.skipped),
        skipped_examples={k: v[:5] for k, v in report.examples.items()},
        source=str(source),
        split=split,
        **text,
    ).save(out)
    return report


class _InProcess:
    """Stand-in for a Pool when running single-process (tests, debugging)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def imap(self, fn, jobs, chunksize: int = 1):
        return map(fn, jobs)
