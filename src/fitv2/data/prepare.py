"""Images -> token dataset at native resolution and aspect ratio (FiTv2 §5, Algorithm 1).

Every image is resized to fit a token budget keeping its aspect ratio (area ≤ S², sides
floored to multiples of patch × autoencoder down-sampling, never up-sampled) and also
centre-cropped to S × S (ADM's ``center_crop_arr``); the crop is marked *eligible* for
FiTv2's mixed preprocessing when both sides exceed S. Each variant and its horizontal flip
go through the autoencoder and are stored as token sequences in safetensors shards:

    OUT/index.json          dataset metadata (autoencoder, patch size, budget, classes, skips)
    OUT/items.jsonl         one line per stored sequence: shard, offset, h, w, label, variant...
    OUT/shards/NNNNN.safetensors   "features": (tokens, 2, p²·C) float16, [image, flipped image]

Unreadable and degenerate files are skipped, counted by reason and never stop the run.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ..checkpoint import save_json, save_tensors
from ..tokens import patchify
from .autoencoder import Autoencoder, PixelSpace

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey image
Image.MAX_IMAGE_PIXELS = 16_000 * 16_000


class SkipImage(Exception):
    """An input that cannot become a training example; the message is the reason."""


@dataclass
class Source:
    path: Path
    label: int
    caption: str = ""


@dataclass
class PrepareReport:
    images: int = 0
    sequences: int = 0
    tokens: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)


# ----------------------------------------------------------------------------- inputs


def caption_from_name(path: Path) -> str:
    words = re.sub(r"[_\-.]+", " ", path.stem)
    words = re.sub(r"\d+", " ", words)
    return " ".join(words.split()).lower()


def list_folder(root: Path) -> tuple[list[Source], list[str]]:
    """One sub-folder per class (sorted names = labels 0..K−1)."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders")
    sources = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.is_file() and not f.name.startswith("."):
                sources.append(Source(f, label, caption_from_name(f)))
    return sources, classes


def list_jsonl(path: Path, split: str | None = None) -> tuple[list[Source], list[str]]:
    """Rows {path, label, caption?, split?, class_name?}; paths relative to the file's folder."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    if not rows:
        raise ValueError(f"{path} lists no images" + (f" in split {split!r}" if split else ""))
    base = path.parent
    sources = [Source(base / r["path"], int(r["label"]), r.get("caption") or caption_from_name(Path(r["path"])))
               for r in rows]
    classes_file = base / "classes.json"
    if classes_file.is_file():
        classes = json.loads(classes_file.read_text())
    else:
        names = {int(r["label"]): r.get("class_name", str(r["label"])) for r in rows}
        classes = [names.get(i, str(i)) for i in range(max(names) + 1)]
    return sources, classes


# ----------------------------------------------------------------------------- images


def load_rgb(path: Path) -> Image.Image:
    """Any PIL-readable file as RGB: EXIF rotation applied, transparency on white, 16-bit scaled."""
    try:
        with Image.open(path) as im:
            im.load()
            img = ImageOps.exif_transpose(im)
    except UnidentifiedImageError as err:
        raise SkipImage("not an image") from err
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise SkipImage("unreadable or truncated") from err
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0, 0, 255).astype(np.uint8))
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba)
    return img.convert("RGB")


def resize_to_budget(img: Image.Image, side: int, unit: int) -> Image.Image:
    """FiT's resize rule: area ≤ side² keeping the aspect ratio, sides floored to multiples of unit."""
    w, h = img.size
    if w * h >= side * side:
        new_w = math.sqrt(w / h) * side
        new_h = new_w * h / w
    elif w < unit:
        new_w, new_h = unit, unit * h / w
    elif h < unit:
        new_w, new_h = unit * w / h, unit
    else:
        new_w, new_h = w, h
    if new_w * new_h > side * side:  # a thin image widened to the minimum side can exceed the budget
        shrink = side / math.sqrt(new_w * new_h)
        new_w, new_h = new_w * shrink, new_h * shrink
    new_w, new_h = int(new_w / unit) * unit, int(new_h / unit) * unit
    if new_w == 0 or new_h == 0:
        raise SkipImage("aspect ratio too extreme for the budget")
    if (new_w, new_h) != (w, h):
        img = img.resize((new_w, new_h), Image.BICUBIC)
    return img


def center_crop(img: Image.Image, side: int) -> Image.Image:
    """ADM's center_crop_arr: halve with BOX while large, bicubic to short side, centre crop."""
    while min(img.size) >= 2 * side:
        img = img.resize(tuple(x // 2 for x in img.size), Image.BOX)
    scale = side / min(img.size)
    img = img.resize(tuple(round(x * scale) for x in img.size), Image.BICUBIC)
    w, h = img.size
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))


def _variants(args: tuple[Path, int, int, int, float]) -> tuple[list[tuple[str, bool, np.ndarray]], str | None]:
    """Worker: load one file and return its (variant, eligible, uint8 HWC) arrays or a skip reason."""
    path, side, unit, min_tokens, min_std = args
    try:
        img = load_rgb(path)
        if min(img.size) < 2:
            raise SkipImage("degenerate size")
        arr = np.asarray(img)
        if float(arr.std()) < min_std:
            raise SkipImage("blank (uniform colour)")
        resized = resize_to_budget(img, side, unit)
        if (resized.size[0] // unit) * (resized.size[1] // unit) < min_tokens:
            raise SkipImage("too few tokens")
        w, h = img.size
        crop = np.asarray(center_crop(img, side))
        return [("resize", True, np.asarray(resized)), ("crop", w > side and h > side, crop)], None
    except SkipImage as reason:
        return [], str(reason)


# ----------------------------------------------------------------------------- writing


class ShardWriter:
    def __init__(self, out: Path, shard_tokens: int):
        self.out = out
        self.shard_tokens = shard_tokens
        self.buffer: list[torch.Tensor] = []
        self.fill = 0
        self.names: list[str] = []
        (out / "shards").mkdir(parents=True, exist_ok=True)

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
        save_tensors({"features": torch.cat(self.buffer)}, self.out / name)
        self.names.append(name)
        self.buffer, self.fill = [], 0


def encode_pair(image: np.ndarray, autoencoder: Autoencoder, patch_size: int) -> torch.Tensor:
    """uint8 (H, W, 3) -> tokens (N, 2, p²·C) of the image and its horizontal flip."""
    x = torch.from_numpy(image.copy()).permute(2, 0, 1).float() / 127.5 - 1.0  # (3, H, W)
    pair = torch.stack([x, x.flip(-1)])
    latents = autoencoder.encode(pair)
    return patchify(latents.float().cpu(), patch_size).permute(1, 0, 2).to(torch.float16)  # (N, 2, D)


def prepare(source: str | Path, out: str | Path, *, autoencoder: Autoencoder | None = None, patch_size: int = 4,
            budget: int = 32, split: str | None = None, min_tokens: int | None = None, min_std: float = 1.0,
            workers: int | None = None, shard_tokens: int = 1 << 20, progress: bool = True) -> PrepareReport:
    """Build a token dataset from an image folder (class sub-folders) or a JSONL list."""
    source, out = Path(source), Path(out)
    autoencoder = autoencoder or PixelSpace()
    unit = patch_size * autoencoder.downsample
    if budget % unit:
        raise ValueError(f"budget side {budget} must be a multiple of patch × down-sampling = {unit}")
    max_tokens = (budget // unit) ** 2
    min_tokens = max(1, max_tokens // 16) if min_tokens is None else min_tokens
    if source.is_dir():
        sources, classes = list_folder(source)
    elif source.is_file():
        sources, classes = list_jsonl(source, split)
    else:
        raise FileNotFoundError(f"no such image folder or JSONL file: {source}")
    out.mkdir(parents=True, exist_ok=True)
    writer = ShardWriter(out, shard_tokens)
    report = PrepareReport()
    items = []
    jobs = [(s.path, budget, unit, min_tokens, min_std) for s in sources]
    workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    with Pool(workers) if workers > 1 else _InProcess() as pool:
        results = pool.imap(_variants, jobs, chunksize=8)
        bar = tqdm(zip(sources, results), total=len(sources), desc="prepare", unit="img", disable=not progress)
        for src, (variants, reason) in bar:
            if reason is not None:
                report.skipped[reason] += 1
                report.examples.setdefault(reason, []).append(str(src.path))
                continue
            for variant, eligible, image in variants:
                features = encode_pair(image, autoencoder, patch_size)
                shard, offset = writer.add(features)
                h, w = image.shape[0] // unit, image.shape[1] // unit
                items.append(dict(group=report.images, variant=variant, eligible=eligible, shard=shard, offset=offset,
                                  h=h, w=w, label=src.label, caption=src.caption, source=str(src.path)))
                report.sequences += 1
                report.tokens += h * w
            report.images += 1
            if report.images % 100 == 0:
                bar.set_postfix(kept=report.images, skipped=sum(report.skipped.values()), refresh=False)
    writer.flush()
    with open(out / "items.jsonl", "w") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    save_json(dict(format="fitv2-tokens", version=1, autoencoder=autoencoder.spec(), patch_size=patch_size,
                   channels=autoencoder.channels, downsample=autoencoder.downsample,
                   token_dim=patch_size**2 * autoencoder.channels, budget=budget, max_tokens=max_tokens,
                   num_classes=len(classes), class_names=classes, shards=writer.names, images=report.images,
                   sequences=report.sequences, skipped=dict(report.skipped),
                   skipped_examples={k: v[:5] for k, v in report.examples.items()}, source=str(source), split=split),
              out / "index.json")
    return report


class _InProcess:
    """Stand-in for a Pool when running single-process (tests, debugging)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def imap(self, fn, jobs, chunksize: int = 1):
        return map(fn, jobs)
