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


@dataclass
class TokenBatch:
    """A batch of images as padded (or packed) token sequences."""

    x: Tensor  # (B, N, C·p·p) token values
    grid: Tensor  # (B, 2, N) long
    mask: Tensor  # (B, N) float, 1 = real token
    size: Tensor  # (B, n, 2) long, (h, w) per image of a row
    segment: Tensor | None = None  # (B, N) long, 1-based image id per token, 0 = padding (packed rows only)

    @property
    def batch_size(self) -> int:
        return self.x.shape[0]

    @property
    def length(self) -> int:
        return self.x.shape[1]

    def to(self, device: torch.device | str) -> TokenBatch:
        seg = self.segment.to(device) if self.segment is not None else None
        return TokenBatch(self.x.to(device), self.grid.to(device), self.mask.to(device), self.size.to(device), seg)

    def model_inputs(self) -> dict[str, Tensor | None]:
        """Keyword arguments for FiT.forward besides x, t and y."""
        return dict(grid=self.grid, mask=self.mask, size=self.size, segment=self.segment)

    def valid_tokens(self) -> int:
        return int(self.mask.sum())


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
    return TokenBatch(x, grid, mask, size)


def pack_sequences(items: list[tuple[Tensor, int, int]], rows: list[list[int]],
                   length: int | None = None) -> TokenBatch:
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
    return TokenBatch(x, grid, mask, size, segment)


def first_fit_rows(lengths: list[int], budget: int) -> list[list[int]]:
    """Assign sequences to rows of at most ``budget`` tokens, longest first, first fit."""
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        n = lengths[i]
        if n > budget:
            raise ValueError(f"a sequence of {n} tokens does not fit the packing budget {budget}")
        for r, room in enumerate(free):
            if n <= room:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(budget - n)
    return rows


def size_batch(batch_size: int, h: int, w: int, token_dim: int, device: torch.device | str = "cpu",
               generator: torch.Generator | None = None) -> TokenBatch:
    """A batch of Gaussian noise tokens for sampling B images of h × w tokens (no padding)."""
    n = h * w
    x = torch.randn(batch_size, n, token_dim, generator=generator, device=device)
    grid = make_grid(h, w).to(device).expand(batch_size, -1, -1)
    mask = torch.ones(batch_size, n, device=device)
    size = torch.tensor([h, w], device=device).expand(batch_size, 1, 2)
    return TokenBatch(x, grid, mask, size)
