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
import re
import struct
import warnings
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import Pool
from numbers import Integral, Real
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from tqdm import tqdm

from ..checkpoint import save_json, save_tensors
from ..errors import ConfigError, MissingFileError, UserError
from ..tokens import patchify
from .autoencoder import Autoencoder, PixelSpace

# Largest image decoded, checked from the file header before any pixel is read: one RGB copy of
# it is 200 MB, and loading, colour conversion and resizing hold about two at once.
MAX_PIXELS = 8192 * 8192
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey image
# PIL's own bomb check, a backstop behind ours (whose message gives the size): it warns past twice
# the limit and refuses past four times; either is reported as too large as well.
Image.MAX_IMAGE_PIXELS = 2 * MAX_PIXELS


class SkipImage(Exception):
    """An input that cannot become a training example.

    reason: the key skips are counted under; detail: what is particular to this file."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail


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


_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def list_folder(root: Path, *, broken_links: bool = False) -> tuple[list[Source], list[str]]:
    """One sub-folder per class (sorted names = labels 0..K−1).

    broken_links: also list symbolic links whose target is gone, so that they are reported as
    skipped rather than silently missing from the dataset."""
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        loose = any(f.suffix.lower() in _IMAGE_SUFFIXES and f.is_file() for f in root.iterdir())
        hint = "; put the images in one sub-folder per class (one sub-folder if unlabelled)" if loose else ""
        raise UserError(f"{root} has no class sub-folders{hint}")
    sources = []
    for label, name in enumerate(classes):
        for f in sorted((root / name).rglob("*")):
            if f.name.startswith("."):
                continue
            if f.is_file() or (broken_links and f.is_symlink() and not f.exists()):
                sources.append(Source(f, label, caption_from_name(f)))
    if not sources:
        raise UserError(
            f"the class folders of {root} ({', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}) hold no files"
        )
    return sources, classes


def _row_label(value, where: str) -> int:
    if isinstance(value, str) and value.strip().isdecimal():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{where}: 'label' must be a class number 0, 1, ...; got {value!r}")
    if value < 0:
        raise UserError(f"{where}: 'label' must be 0 or more; got {value}")
    return value


def _read_rows(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path} is not a JSONL text file (one JSON object per line)") from None
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror or err}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path} line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(
                f'{where} is not JSON ({err.msg}); each line must be an object like {{"path": "a.png", "label": 0}}'
            ) from None
        if not isinstance(row, dict):
            raise UserError(f"{where} is not a JSON object with 'path' and 'label'")
        for key in ("path", "label"):
            if key not in row:
                raise UserError(f"{where} has no {key!r}")
        if not isinstance(row["path"], str) or not row["path"].strip():
            raise UserError(f"{where}: 'path' must be a file name; got {row['path']!r}")
        row["label"] = _row_label(row["label"], where)
        for key in ("caption", "split", "class_name"):
            if row.get(key) is not None and not isinstance(row[key], str):
                raise UserError(f"{where}: {key!r} must be a string; got {row[key]!r}")
        rows.append(row)
    return rows


def list_jsonl(path: Path, split: str | None = None) -> tuple[list[Source], list[str]]:
    """Rows {path, label, caption?, split?, class_name?}; paths relative to the file's folder."""
    rows = _read_rows(path)
    if split is not None:
        rows = [r for r in rows if r.get("split") == split]
    if not rows:
        raise UserError(f"{path} lists no images" + (f" in split {split!r}" if split else ""))
    base = path.parent
    sources = [
        Source(base / r["path"], r["label"], r.get("caption") or caption_from_name(Path(r["path"]))) for r in rows
    ]
    top = max(r["label"] for r in rows)
    classes_file = base / "classes.json"
    if classes_file.is_file():
        try:
            classes = json.loads(classes_file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{classes_file} is not a JSON list of class names: {err}") from None
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise UserError(f"{classes_file} must be a JSON list of class names")
        if top >= len(classes):
            raise UserError(f"{path} uses label {top} but {classes_file} names only {len(classes)} classes")
    else:
        names = {r["label"]: r.get("class_name") or str(r["label"]) for r in rows}
        classes = [names.get(i, str(i)) for i in range(top + 1)]
    return sources, classes


# ----------------------------------------------------------------------------- images

# What PIL raises on a malformed file, whatever the format's parser trips on.
_DECODE_ERRORS = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    IndexError,
    KeyError,
    TypeError,
    struct.error,
    ZeroDivisionError,
)


def _too_large(detail: str) -> SkipImage:
    return SkipImage("too large", f"{detail}; the limit is {MAX_PIXELS:,} pixels")


def load_rgb(path: Path) -> Image.Image:
    """Any PIL-readable file as RGB: EXIF rotation applied, transparency on white, 16-bit scaled.

    The size is checked from the header before decoding; peak memory stays near two copies of
    the decoded image."""
    path = Path(path)
    if not path.exists():
        raise SkipImage("broken link" if path.is_symlink() else "missing file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with open(path, "rb") as f:  # closing our file leaves the decoded image (closing PIL's frees it)
                img = Image.open(f)
                w, h = img.size
                if w * h > MAX_PIXELS:
                    raise _too_large(f"{w}x{h} pixels")
                img.load()
                ImageOps.exif_transpose(img, in_place=True)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        raise _too_large(f"{int(found.group(1)):,} pixels" if found else "decompression bomb") from err
    except UnidentifiedImageError as err:
        raise SkipImage("not an image") from err
    except _DECODE_ERRORS as err:
        raise SkipImage("unreadable or truncated") from err
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr *= 255.0 / top
        np.clip(arr, 0, 255, out=arr)
        img = Image.fromarray(arr.astype(np.uint8))
        del arr
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("LA", "PA", "RGBa", "La"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":  # on white; pasting through the alpha band makes no full-size RGBA copies
        white = Image.new("RGB", img.size, (255, 255, 255))
        white.paste(img, mask=img)
        img = white
    return img if img.mode == "RGB" else img.convert("RGB")


def channel_std(img: Image.Image) -> np.ndarray:
    """Standard deviation of each channel, from the histograms (no float copy of the image)."""
    counts = np.asarray(img.histogram(), np.float64).reshape(len(img.getbands()), 256)
    levels = np.arange(256, dtype=np.float64)
    n = counts.sum(1)
    mean = counts @ levels / n
    return np.sqrt(np.maximum(counts @ levels**2 / n - mean**2, 0.0))


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
) -> PrepareReport:
    """Build a token dataset from an image folder (class sub-folders) or a JSONL list.

    min_std: images whose every channel varies less than this (in 0..255 levels) are blank."""
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
    if source.is_dir():
        sources, classes = list_folder(source, broken_links=True)
    elif source.is_file():
        sources, classes = list_jsonl(source, split)
    else:
        raise MissingFileError(f"no such image folder or JSONL file: {source}")
    writer = ShardWriter(out, shard_tokens)
    report = PrepareReport()
    items = []
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
            report.images += 1
            if report.images % 100 == 0:
                bar.set_postfix(kept=report.images, skipped=sum(report.skipped.values()), refresh=False)
    if report.images == 0:
        raise UserError(
            f"no usable images in {source}: all {len(sources)} files were skipped "
            f"({_skip_summary(report)}); nothing was written"
        )
    writer.flush()
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "items.jsonl", "w") as f:
        for item in items:
            f.write(json.dumps(item) + "\n")
    save_json(
        dict(
            format="fitv2-tokens",
            version=1,
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
        ),
        out / "index.json",
    )
    return report


class _InProcess:
    """Stand-in for a Pool when running single-process (tests, debugging)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def imap(self, fn, jobs, chunksize: int = 1):
        return map(fn, jobs)
