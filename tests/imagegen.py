"""Small synthetic image folders for data-pipeline tests, including broken and odd files."""

from pathlib import Path

import numpy as np
from PIL import Image


def shapes_image(label: int, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A coloured disc or bar on white; the class sets the colour and shape."""
    y, x = np.mgrid[0:h, 0:w]
    img = np.full((h, w, 3), 255, np.uint8)
    colour = np.array([(200, 30, 30), (30, 160, 40), (40, 60, 210), (220, 170, 20)][label % 4], np.uint8)
    cx, cy = w * rng.uniform(0.35, 0.65), h * rng.uniform(0.35, 0.65)
    if label % 2 == 0:
        inside = (x - cx) ** 2 + (y - cy) ** 2 < (0.3 * min(w, h)) ** 2
    else:
        inside = np.abs(y - cy) < 0.2 * h
    img[inside] = colour
    return Image.fromarray(img)


def make_class_folder(
    root: Path,
    classes: int = 2,
    per_class: int = 6,
    seed: int = 0,
    sizes=((48, 32), (32, 48), (40, 40), (64, 24), (24, 64), (36, 28)),
) -> Path:
    rng = np.random.default_rng(seed)
    for c in range(classes):
        d = root / f"class_{c}"
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            shapes_image(c, w, h, rng).save(d / f"img_{i:03d}.png")
    return root


def add_odd_files(folder: Path, rng_seed: int = 1) -> dict[str, str]:
    """Odd but valid images, and broken files; returns file name -> expected outcome."""
    rng = np.random.default_rng(rng_seed)
    base = shapes_image(0, 40, 30, rng)
    base.convert("RGBA").save(folder / "rgba.png")
    base.convert("P").save(folder / "palette.png")
    base.convert("L").save(folder / "gray.png")
    arr16 = (np.asarray(base.convert("L"), np.uint16) * 257).astype(np.uint16)
    Image.fromarray(arr16).save(folder / "gray16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90°: stored 40x30, shown 30x40
    base.save(folder / "rotated.jpg", exif=exif)
    data = (folder / "rgba.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "notes.txt").write_text("not an image")
    Image.new("RGB", (1, 1), (10, 20, 30)).save(folder / "one_pixel.png")
    shapes_image(1, 20000, 20, rng).save(folder / "very_wide.png")
    return {
        "rgba.png": "kept",
        "palette.png": "kept",
        "gray.png": "kept",
        "gray16.png": "kept",
        "rotated.jpg": "kept",
        "truncated.png": "skipped",
        "notes.txt": "skipped",
        "one_pixel.png": "skipped",
        "very_wide.png": "skipped",
    }


def write_latent(path: Path, h: int, w: int, label: int, dtype, seed: int, token_dim: int = 16, **override):
    """One file of the released FiTv2 latent layout: ``feature`` (2, h, w, D) (the image and its mirror),
    ``grid`` (2, h·w) (column, row), ``size`` (h, w), ``label``; ``override`` replaces any of them.
    Returns the feature as written."""
    import torch
    from safetensors.torch import save_file

    from fitv2.tokens import make_grid

    feature = torch.randn(2, h, w, token_dim, generator=torch.Generator().manual_seed(seed)).to(dtype)
    tensors = {"feature": feature, "grid": make_grid(h, w), "size": torch.tensor([h, w]), "label": torch.tensor(label)}
    tensors.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items() if v is not None}, str(path))
    return feature
