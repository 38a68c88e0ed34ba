"""Sampling for evaluation: many images of one size in one ADM-format ``.npz``, split over torchrun ranks.

    torchrun --nproc_per_node 8 -m fitv2.cli sample CKPT --sizes 256x256 --num 50000 --cfg-scale 1.5 --npz fid50k.npz

The images are cut into chunks of ``--batch-size``; chunk k goes to rank k mod world size and is written,
once sampled, to ``PATH.parts/chunk_K.npz``. A run that stops leaves its finished chunks there, and the
same command (with any number of ranks) samples only the missing ones; ``PATH.parts/run.json`` records
the settings, and a run with other settings is refused rather than mixed in. When every chunk is there,
rank 0 joins them into PATH (``arr_0`` uint8 (N, H, W, 3), ``arr_1`` the labels: what the ADM evaluator
and ``fitv2 evaluate`` read) and removes the parts.

Seeding: image i's noise comes from its own generator, seeded by (seed, H, W, i), and the labels are
drawn from the seed for the whole run, so image i is the same whichever rank samples it, with one
process or many, in one go or resumed, and equals image i of a plain ``fitv2 sample`` with the same
options. (The published sampler seeds each rank's stream with seed · world size + rank instead, which
makes every image depend on the number of processes and on the batches before it.)
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..checkpoint import atomic_write, save_json
from ..distributed import Env, barrier, broadcast_object
from ..errors import UserError
from .sampler import Sampler


def parts_folder(path: Path) -> Path:
    return path.with_name(path.name + ".parts")


def chunk_path(parts: Path, k: int) -> Path:
    return parts / f"chunk_{k:06d}.npz"


def _save_npz(path: Path, **arrays: Any) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would add .npz to a name
            np.savez(f, **arrays)

    atomic_write(path, write)


def _open_run(parts: Path, record: dict[str, Any]) -> str | None:
    """Create PATH.parts with its run.json, or check the one there; an error message or None."""
    saved = parts / "run.json"
    if saved.is_file():
        old = json.loads(saved.read_text())
        if old != record:
            changed = sorted(k for k in {*old, *record} if old.get(k) != record.get(k))
            return (
                f"{parts} holds a partly written run with other settings ({', '.join(changed)}); "
                "run the same command to finish it, or remove the folder to start again"
            )
        return None
    parts.mkdir(parents=True, exist_ok=True)
    save_json(record, saved)
    return None


def sample_npz(
    sampler: Sampler,
    path: str | Path,
    height: int,
    width: int,
    condition: torch.Tensor | Any,
    labels: torch.Tensor | None,
    record: dict[str, Any],
    env: Env = Env(),
    progress: bool = True,
    **options: Any,
) -> Path:
    """Sample one image per condition at height × width into the ``.npz`` at ``path`` (see the module
    docstring); ``options``: those of :meth:`Sampler.generate` (solver, guidance, rope, seed, batch_size,
    force); ``record``: the settings that must match to resume. Returns ``path`` (on every rank)."""
    path = Path(path)
    parts = parts_folder(path)
    record = {**record, "size": [height, width], "num": len(condition), "batch_size": options["batch_size"]}
    error = broadcast_object(env, _open_run(parts, record) if env.is_main else None)
    if error:
        raise UserError(error)
    size = options.pop("batch_size")
    chunks = -(-len(condition) // size)
    todo = [k for k in range(chunks) if not chunk_path(parts, k).is_file()]
    mine = [k for k in todo if k % env.world_size == env.rank]
    if env.is_main and progress and len(todo) < chunks:
        print(f"resuming {path}: {chunks - len(todo)} of {chunks} chunks already sampled")
    bar = tqdm(
        total=len(todo) * size,
        desc=f"{height}x{width} -> {path.name}",
        unit="img",
        disable=not (progress and env.is_main),
    )
    with bar:
        for k in mine:
            lo, hi = k * size, min(len(condition), (k + 1) * size)
            images = sampler.generate(
                height, width, condition[lo:hi], **options, batch_size=size, start=lo, progress=False
            )
            arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels[lo:hi].numpy()}
            _save_npz(chunk_path(parts, k), **arrays)
            bar.update((hi - lo) * env.world_size)  # the other ranks keep the same pace
    barrier(env)
    if env.is_main:
        loaded = [np.load(chunk_path(parts, k)) for k in range(chunks)]
        arrays = {key: np.concatenate([part[key] for part in loaded]) for key in loaded[0].files}
        if len(arrays["arr_0"]) != len(condition):
            raise RuntimeError(f"{parts} holds {len(arrays['arr_0'])} images for a run of {len(condition)}")
        _save_npz(path, **arrays)
        shutil.rmtree(parts)
    barrier(env)
    return path
