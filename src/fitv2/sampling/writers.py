"""Sample files: PNGs per size, an ADM-style .npz per size, one grid across sizes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..plot import image_grid


def write_samples(
    out: str | Path,
    results: dict[tuple[int, int], np.ndarray],
    labels: torch.Tensor | None,
    class_names: list[str],
    grid_columns: int = 16,
    prompts: list[str] | None = None,
) -> Path:
    """PNGs in OUT/HxW/, OUT/HxW.npz (arr_0 uint8 NHWC, arr_1 labels), OUT/grid.png across sizes.

    With ``prompts`` (a text-to-image model; ``labels`` None): PNGs named by index, the prompts in
    OUT/prompts.txt (line i = image i) and in each npz as ``prompts``; grid rows are the prompts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for (height, width), images in results.items():
        folder = out / f"{height}x{width}"
        folder.mkdir(exist_ok=True)
        for i, im in enumerate(images):
            name = f"{i:06d}.png" if labels is None else f"{i:06d}_{int(labels[i])}.png"
            Image.fromarray(im).save(folder / name)
        arrays: dict[str, Any] = {"arr_0": images}
        if labels is not None:
            arrays["arr_1"] = labels.numpy()
        if prompts is not None:
            arrays["prompts"] = np.array(prompts)
        np.savez(out / f"{height}x{width}.npz", **arrays)
    if prompts is not None:
        (out / "prompts.txt").write_text("".join(p.replace("\n", " ") + "\n" for p in prompts))
        grid = prompt_grid(results, prompts[:grid_columns])
    else:
        assert labels is not None
        cols = min(grid_columns, len(labels))
        rows = [list(images[:cols]) for images in results.values()]
        row_names = [f"{h}x{w}" for h, w in results]
        col_names = [class_names[int(y)] for y in labels[:cols]]
        grid = image_grid(rows, row_names, col_names, min_cell=64)
    grid.save(out / "grid.png")
    return out / "grid.png"


def prompt_grid(results: dict[tuple[int, int], np.ndarray], prompts: list[str], max_label: int = 48) -> Image.Image:
    """One row per prompt (labelled with it), one column per size."""
    smallest = min(min(h, w) for h, w in results)
    rows = [[images[i] for images in results.values()] for i in range(len(prompts))]
    labels = [p if len(p) <= max_label else p[: max_label - 1] + "…" for p in prompts]
    return image_grid(rows, labels, [f"{h}x{w}" for h, w in results], scale=max(1, -(-64 // smallest)))
