"""Images of different sizes in one batch: padded or packed rows, each image equal to its size alone."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..model.rope import RopeScaling
from ..seeds import gaussian
from ..text import TextFeatures
from ..tokens import TokenBatch, TokenLayout, first_fit_rows, pack_sequences, pad_sequences
from .cache import CacheConfig, CacheStats
from .guidance import Guidance
from .sample import _progress_bar, _run, check_request
from .solvers import SolverConfig, StepCallback


@dataclass(frozen=True)
class MixedBatch:
    """Images of different token grids in one batch, padded (one image per row, as long as the longest)
    or packed (several per row, first fit, rows of ``pack`` tokens or, for ``pack=True``, as long as the
    longest image), and where each image lies.

    Each image i takes ``h_i·w_i`` tokens and, for a text-to-image model, its M text slots after them.
    """

    layout: TokenLayout
    grids: tuple[tuple[int, int], ...]
    where: tuple[tuple[int, int, int], ...]  # image i -> (row, slot in the row, first token)

    @classmethod
    def build(cls, grids: list[tuple[int, int]], text_len: int = 0, pack: bool | int = False) -> MixedBatch:
        M = text_len
        lengths = [h * w + M for h, w in grids]
        items = [(torch.zeros(h * w, 1), h, w) for h, w in grids]
        if pack:
            row_length = max(lengths) if pack is True else int(pack)
            if row_length < max(lengths):
                raise ValueError(f"packed rows of {row_length} tokens cannot hold an image of {max(lengths)}")
            rows = first_fit_rows(lengths, row_length)
            layout = pack_sequences(
                items, rows, length=max(sum(lengths[i] for i in r) for r in rows), text_len=M
            ).layout
        else:
            rows = [[i] for i in range(len(grids))]
            layout = pad_sequences(items, text_len=M).layout
        where: list[tuple[int, int, int]] = [(0, 0, 0)] * len(grids)
        for r, row in enumerate(rows):
            start = 0
            for slot, i in enumerate(row):
                where[i] = (r, slot, start)
                start += lengths[i]
        return cls(layout, tuple(grids), tuple(where))

    def scatter(self, values: list[Tensor]) -> Tensor:
        """Per-image values (n_i, D), n_i ≤ h_i·w_i + M, into the rows (B, N, D); zeros elsewhere."""
        out = values[0].new_zeros(self.layout.batch_size, self.layout.length, values[0].shape[-1])
        for (r, _, start), v in zip(self.where, values):
            out[r, start : start + len(v)] = v
        return out

    def gather(self, x: Tensor) -> list[Tensor]:
        """Each image's tokens (h_i·w_i, D) from rows (B, N, D)."""
        return [x[r, start : start + h * w] for (r, _, start), (h, w) in zip(self.where, self.grids)]

    def per_slot(self, values: Tensor | TextFeatures) -> Tensor | TextFeatures:
        """Per-image conditions (images, ...) as the rows take them: (B, ...) padded, (B, n, ...) packed.
        A packed row's empty slots repeat its first image's condition (they hold no token)."""
        if not self.layout.packed:  # row i holds image i
            return values
        B, n = self.layout.batch_size, self.layout.images_per_row
        index = torch.zeros(B, n, dtype=torch.long)
        for i, (r, slot, _) in enumerate(self.where):
            index[r, slot] = i
        empty = ~self.layout.real_images()
        index[empty] = index[:, :1].expand(B, n)[empty]
        return values[index]


@torch.no_grad()
def sample_mixed(
    model,
    grids: list[tuple[int, int]],
    labels: Tensor | TextFeatures,
    generators: list[torch.Generator],
    *,
    solver: SolverConfig = SolverConfig(),
    guidance: Guidance = Guidance(),
    rope: RopeScaling | None = None,
    pack: bool | int = False,
    progress: bool = False,
    on_step: StepCallback = None,
    cache: CacheConfig = CacheConfig(),
    stats: CacheStats | None = None,
) -> list[Tensor]:
    """Generate images of different sizes in one padded (``pack`` False) or packed batch (rows of ``pack``
    tokens; True: as long as the longest image; see :class:`MixedBatch`): image i has
    h_i × w_i tokens (``grids``), label (or caption) i and generator i; returns its tokens (h_i·w_i, p²·C).

    Image i's draws are those :func:`sample_tokens` makes for it alone with generator i (initial noise
    (h_i·w_i, p²·C), then SDE or DDPM step noise (h_i·w_i + M, p²·C) per step), and RoPE scales per
    image, so the result equals sampling each size alone up to float rounding (attention over a padded or
    packed row sums in another order)."""
    if not len(grids) == len(labels) == len(generators):
        raise ValueError(f"{len(grids)} sizes, {len(labels)} conditions and {len(generators)} generators")
    check_request(model, labels, solver)
    device = next(model.parameters()).device
    D, M = model.config.token_dim, model.config.text_len
    batch = MixedBatch.build(list(grids), M, pack)
    x = batch.scatter([gaussian((h * w, D), g) for (h, w), g in zip(grids, generators)])

    def draw(shape: torch.Size) -> Tensor:
        return batch.scatter([gaussian((h * w + M, D), g) for (h, w), g in zip(grids, generators)])

    sizes = sorted(set(grids), key=lambda g: g[0] * g[1])
    desc = ", ".join(f"{h}x{w}" for h, w in sizes[:3]) + (" ..." if len(sizes) > 3 else "") + " tokens"
    bar, on_step = _progress_bar(progress, on_step, solver, desc)
    tokens = TokenBatch(x, batch.layout).to(device)
    try:
        out = _run(
            model, tokens, batch.per_slot(labels).to(device), solver, guidance, rope, None, on_step, draw, cache, stats
        )
        return batch.gather(out)
    finally:
        if bar is not None:
            bar.close()
