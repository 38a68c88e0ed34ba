"""Images <-> token sequences: patchify, grids, padding and packing.

The only place that reshapes tokens to images. Conventions (shared with the released
checkpoints): tokens in row-major order over the h × w token grid; each token holds its
patch in (c, p1, p2) order; ``grid`` row 0 is the column index and row 1 the row index;
``size`` holds (h, w) per image, height first; padding has grid (0, 0) and mask 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


def patchify(images: Tensor, patch_size: int) -> Tensor:
    """(B, C, H, W) -> (B, h·w, C·p·p) with h = H/p, w = W/p."""
    B, C, H, W = images.shape
    p = patch_size
    if H % p or W % p:
        raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {p}")
    x = images.reshape(B, C, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(B, (H // p) * (W // p), C * p * p)  # (B, N, C·p·p)


def unpatchify(tokens: Tensor, h: int, w: int, patch_size: int) -> Tensor:
    """(B, ≥h·w, C·p·p) -> (B, C, h·p, w·p); extra (padding) tokens are ignored."""
    B, _, D = tokens.shape
    p = patch_size
    C = D // (p * p)
    x = tokens[:, : h * w].reshape(B, h, w, C, p, p)
    return x.permute(0, 3, 1, 4, 2, 5).reshape(B, C, h * p, w * p)


def make_grid(h: int, w: int) -> Tensor:
    """(2, h·w) long: row 0 = column index, row 1 = row index, row-major token order."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)])


@dataclass(frozen=True)
class TokenLayout:
    """Where every token of a batch sits: its image, its grid position, and whether it is real.

    Built once, by the loader for training and by the sampler for generation, and passed as
    one object to the model, the loss and the solvers. A row holds one image (padded) or
    several (packed: ``segment`` says which image each token belongs to).
    """

    grid: Tensor  # (B, 2, N) long: row 0 column index, row 1 row index; padding (0, 0)
    mask: Tensor  # (B, N) float, 1 = real token
    size: Tensor  # (B, n, 2) long, (h, w) in tokens of each image of a row; (0, 0) = empty slot
    segment: Tensor | None = None  # (B, N) long, 1-based image of each token, 0 = padding; packed rows only

    @classmethod
    def of(cls, grid: Tensor, mask: Tensor, size: Tensor | None = None, segment: Tensor | None = None) -> TokenLayout:
        """A layout from loose tensors (as the released code passes them); ``size`` from the grid if missing."""
        grid = grid.long()
        if size is None:  # one image per row, as large as its largest position
            size = torch.stack([grid[:, 1].amax(-1), grid[:, 0].amax(-1)], dim=-1)[:, None] + 1  # (B, 1, 2)
        return cls(grid, mask, size.long(), segment)

    @property
    def batch_size(self) -> int:
        return self.grid.shape[0]

    @property
    def length(self) -> int:
        return self.grid.shape[2]

    @property
    def images_per_row(self) -> int:
        return self.size.shape[1]

    @property
    def packed(self) -> bool:
        return self.segment is not None

    @property
    def device(self) -> torch.device:
        return self.grid.device

    def attention_segment(self) -> Tensor | None:
        """Which tokens may see each other: equal ids (B, N), 0 = padding; None when every token sees every
        token of its row (nothing padded, nothing packed)."""
        if self.segment is not None:
            return self.segment
        if bool(self.mask.bool().all()):
            return None
        return self.mask.long()  # one image per row: valid = 1, padding = 0

    def flat_image_index(self) -> Tensor | None:
        """Each token's image as a row of the flattened per-image table (B·n, ·): (B·N,) long; padding
        points at its row's first image. None when every row holds one image (values broadcast)."""
        if self.segment is None:
            return None
        B, n = self.batch_size, self.images_per_row
        return ((self.segment - 1).clamp(min=0) + n * torch.arange(B, device=self.segment.device)[:, None]).reshape(-1)

    def spread(self, values: Tensor) -> Tensor:
        """Per-image values (B, n, ...) -> per-token (B, N, ...), or (B, 1, ...) when every row holds one
        image (they broadcast over its tokens)."""
        index = self.flat_image_index()
        if index is None:
            return values[:, :1]
        rest = values.shape[2:]
        # Whole rows by index_select: far cheaper than an element-wise gather, forward and backward.
        return values.reshape(-1, *rest).index_select(0, index).reshape(self.batch_size, self.length, *rest)

    def real_images(self) -> Tensor:
        """(B, n) bool: the slots that hold an image."""
        return self.size.prod(-1) > 0

    def valid_tokens(self) -> int:
        return int(self.mask.sum())

    def to(self, device: torch.device | str) -> TokenLayout:
        seg = self.segment.to(device) if self.segment is not None else None
        return TokenLayout(self.grid.to(device), self.mask.to(device), self.size.to(device), seg)

    def repeat(self, times: int) -> TokenLayout:
        """The layout of ``times`` copies of the batch one after another (guidance doubles the batch)."""
        seg = torch.cat([self.segment] * times) if self.segment is not None else None
        return TokenLayout(
            torch.cat([self.grid] * times), torch.cat([self.mask] * times), torch.cat([self.size] * times), seg
        )


@dataclass
class TokenBatch:
    """A batch of images as token sequences: values and their layout."""

    x: Tensor  # (B, N, C·p·p) token values
    layout: TokenLayout

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def length(self) -> int:
        return self.x.shape[1]

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(self.x.to(device), self.layout.to(device))


def pad_sequences(items: list[tuple[Tensor, int, int]], length: int | None = None) -> TokenBatch:
    """Pad (tokens (h·w, D), h, w) items to one length (default: the longest)."""
    longest = max(h * w for _, h, w in items)
    length = length or longest
    if length < longest:
        raise ValueError(f"padded length {length} is shorter than the longest sequence ({longest})")
    D = items[0][0].shape[-1]
    B = len(items)
    x = torch.zeros(B, length, D, dtype=items[0][0].dtype)
    grid = torch.zeros(B, 2, length, dtype=torch.long)
    mask = torch.zeros(B, length)
    size = torch.zeros(B, 1, 2, dtype=torch.long)
    for i, (tokens, h, w) in enumerate(items):
        n = h * w
        if tokens.shape[0] != n:
            raise ValueError(f"item {i}: {tokens.shape[0]} tokens for a {h}x{w} grid")
        x[i, :n] = tokens
        grid[i, :, :n] = make_grid(h, w)
        mask[i, :n] = 1
        size[i, 0] = torch.tensor([h, w])
    return TokenBatch(x, TokenLayout(grid, mask, size))


def pack_sequences(
    items: list[tuple[Tensor, int, int]], rows: list[list[int]], length: int | None = None
) -> TokenBatch:
    """Pack items into rows: ``rows[r]`` lists the item indices placed one after another in row r.

    Every image keeps its own grid positions; ``segment`` marks which image each token
    belongs to, so attention, modulation and the loss stay per image.
    """
    lengths = [sum(items[i][1] * items[i][2] for i in row) for row in rows]
    length = length or max(lengths)
    if length < max(lengths):
        raise ValueError(f"packed length {length} is shorter than the fullest row ({max(lengths)})")
    D = items[0][0].shape[-1]
    n_max = max(len(row) for row in rows)
    B = len(rows)
    x = torch.zeros(B, length, D, dtype=items[0][0].dtype)
    grid = torch.zeros(B, 2, length, dtype=torch.long)
    mask = torch.zeros(B, length)
    size = torch.zeros(B, n_max, 2, dtype=torch.long)
    segment = torch.zeros(B, length, dtype=torch.long)
    for r, row in enumerate(rows):
        start = 0
        for slot, i in enumerate(row):
            tokens, h, w = items[i]
            n = h * w
            x[r, start : start + n] = tokens
            grid[r, :, start : start + n] = make_grid(h, w)
            mask[r, start : start + n] = 1
            segment[r, start : start + n] = slot + 1
            size[r, slot] = torch.tensor([h, w])
            start += n
    return TokenBatch(x, TokenLayout(grid, mask, size, segment))


def first_fit_rows(lengths: list[int], row_length: int) -> list[list[int]]:
    """Assign sequences to rows of at most ``row_length`` tokens, longest first, first fit."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        if n > row_length:
            raise ValueError(f"a sequence of {n} tokens does not fit a row of {row_length}")
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(row_length - n)
    return rows


def image_layout(batch_size: int, h: int, w: int) -> TokenLayout:
    """The layout of B images of h × w tokens each: one image per row, nothing padded."""
    n = h * w
    grid = make_grid(h, w).expand(batch_size, -1, -1)  # (B, 2, N)
    size = torch.tensor([h, w]).expand(batch_size, 1, 2)  # (B, 1, 2)
    return TokenLayout(grid, torch.ones(batch_size, n), size)
