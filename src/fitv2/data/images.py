"""Reading images: any PIL-readable file as RGB, safely, and FiT's resize and crop rules.

Used by ``fitv2 prepare`` and by evaluation, which must read test images exactly as the
training images were read. A file that cannot become an image raises :class:`SkipImage`
with the reason it is counted under.
"""

from __future__ import annotations

import math
import re
import struct
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

# Largest image decoded, checked from the file header before any pixel is read: one RGB copy of
# it is 200 MB, and loading, colour conversion and resizing hold about two at once.
MAX_PIXELS = 8192 * 8192
ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, not a half-grey image
# PIL's own bomb check, a backstop behind ours (whose message gives the size): it warns past twice
# the limit and refuses past four times; either is reported as too large as well.
Image.MAX_IMAGE_PIXELS = 2 * MAX_PIXELS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


class SkipImage(Exception):
    """An input that cannot become a training example.

    reason: the key skips are counted under; detail: what is particular to this file."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason} ({detail})" if detail else reason)
        self.reason = reason
        self.detail = detail


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
                img: Image.Image = Image.open(f)
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
        img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
    return img


def center_crop(img: Image.Image, side: int) -> Image.Image:
    """ADM's center_crop_arr: halve with BOX while large, bicubic to short side, centre crop."""
    while min(img.size) >= 2 * side:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), Image.Resampling.BOX)
    scale = side / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), Image.Resampling.BICUBIC)
    w, h = img.size
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side))
