"""Sample images to files: PNGs per size, an ADM-style ``.npz`` per size, one grid across sizes.

Sizes are in pixels, ``HEIGHTxWIDTH``; they must be multiples of patch × autoencoder
down-sampling (16 for SD-VAE latents with patch 2).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .checkpoint import CheckpointError, load_model
from .data.autoencoder import Autoencoder, load_autoencoder, to_uint8
from .model.fit import FiT
from .model.rope import RopeScaling
from .plot import image_grid
from .sampling import Guidance, SolverConfig, sample_tokens
from .tokens import unpatchify


class SizeError(ValueError):
    """A requested image size the model cannot produce."""


def parse_size(text: str) -> tuple[int, int]:
    """'256x512' -> (256, 512): height × width in pixels."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise SizeError(f"size {text!r} is not HEIGHTxWIDTH in pixels (e.g. 256x256)")
    return int(parts[0]), int(parts[1])


def check_size(height: int, width: int, unit: int) -> tuple[int, int]:
    """Token grid (h, w) for a pixel size, or a SizeError naming sizes that work."""
    if height > 0 and width > 0 and height % unit == 0 and width % unit == 0:
        return height // unit, width // unit

    def near(x: int) -> str:
        lo, hi = max(unit, x // unit * unit), max(unit, -(-x // unit) * unit)
        return str(lo) if lo == hi else f"{lo} or {hi}"

    raise SizeError(f"size {height}x{width} is not possible: height and width must be positive multiples of "
                    f"{unit} px (patch × autoencoder down-sampling); try {near(height)} x {near(width)}")


@dataclass
class Sampler:
    """A model with its autoencoder and class names, ready to generate."""

    model: FiT
    autoencoder: Autoencoder
    class_names: list[str]

    @property
    def unit(self) -> int:
        return self.model.config.patch_size * self.autoencoder.downsample

    @classmethod
    def load(cls, checkpoint: str | Path, preset: str | None = None, weights: str = "ema",
             autoencoder: str | None = None, device: str = "cpu", **overrides) -> Sampler:
        path = Path(checkpoint)
        if path.is_dir() and (path / "config.json").is_file():
            meta = json.loads((path / "config.json").read_text()).get("dataset", {})
        elif path.is_dir():
            raise CheckpointError(f"{path} is not a checkpoint folder (no config.json)")
        else:
            meta = {}
        model = load_model(path, preset=preset, weights=weights, device=device, **overrides)
        ae = load_autoencoder(autoencoder if autoencoder is not None else meta.get("autoencoder"), device=device)
        channels = model.config.in_channels
        if ae.channels != channels:
            raise ValueError(f"the model works on {channels}-channel inputs but the {ae.name} autoencoder has "
                             f"{ae.channels}; pass --autoencoder (a VAE folder, or 'pixel')")
        names = meta.get("class_names") or [str(i) for i in range(model.config.num_classes)]
        return cls(model, ae, names)

    def labels(self, per_class: int | None = None, num: int | None = None, labels: list[int] | None = None,
               seed: int = 0) -> torch.Tensor:
        k = self.model.config.num_classes
        if labels:
            bad = [y for y in labels if not 0 <= y < k]
            if bad:
                raise ValueError(f"class label(s) {bad} out of range 0..{k - 1}")
            return torch.tensor(labels)
        if per_class:
            return torch.arange(k).repeat_interleave(per_class)
        return torch.randint(0, k, (num or 8,), generator=torch.Generator().manual_seed(seed))

    @torch.no_grad()
    def generate(self, height: int, width: int, labels: torch.Tensor, solver: SolverConfig = SolverConfig(),
                 guidance: Guidance = Guidance(), rope: RopeScaling | None = None, seed: int = 0,
                 batch_size: int = 64, progress: bool = True) -> np.ndarray:
        """uint8 images (N, H, W, 3); the noise of sample i depends only on (seed, size, i)."""
        h, w = check_size(height, width, self.unit)
        p = self.model.config.patch_size
        out = []
        batches = range(0, len(labels), batch_size)
        for start in tqdm(batches, desc=f"{height}x{width}", unit="batch", disable=not progress or len(batches) < 2):
            chunk = labels[start : start + batch_size]
            g = torch.Generator().manual_seed(seed * 1_000_003 + height * 1009 + width + start)
            tokens = sample_tokens(self.model, h, w, chunk, solver=solver, guidance=guidance, rope=rope, generator=g)
            latents = unpatchify(tokens, h, w, p)
            out.append(to_uint8(self.autoencoder.decode(latents)).numpy())
        return np.concatenate(out)


def write_samples(out: str | Path, results: dict[tuple[int, int], np.ndarray], labels: torch.Tensor,
                  class_names: list[str], grid_columns: int = 16) -> Path:
    """PNGs in OUT/HxW/, OUT/HxW.npz (arr_0 uint8 NHWC, arr_1 labels), OUT/grid.png across sizes."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for (height, width), images in results.items():
        folder = out / f"{height}x{width}"
        folder.mkdir(exist_ok=True)
        for i, im in enumerate(images):
            Image.fromarray(im).save(folder / f"{i:06d}_{int(labels[i])}.png")
        np.savez(out / f"{height}x{width}.npz", arr_0=images, arr_1=labels.numpy())
    cols = min(grid_columns, len(labels))
    rows = [list(images[:cols]) for images in results.values()]
    row_names = [f"{h}x{w}" for h, w in results]
    col_names = [class_names[int(y)] for y in labels[:cols]]
    grid = image_grid(rows, row_names, col_names, min_cell=64)
    grid.save(out / "grid.png")
    return out / "grid.png"
