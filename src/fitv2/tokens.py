"""Images <-> token sequences: patchify, grids, padding and packing.

The only place that reshapes tokens to images. Conventions (shared with the released
checkpoints): tokens in row-major order over the h × w token grid; each token holds its
patch in (c, p1, p2) order; ``grid`` row 0 is the column index and row 1 the row index;
``size`` holds (h, w) per image, height first; padding has grid (0, 0) and mask 0.

Text-to-image rows (``text_len`` M > 0) give every image M text slots right after its image
tokens: slot m at grid position (m, m), the image's tokens at (M + j, M + i) (FiTv2 Eq. 14).
The paper writes the sequence as [text ; image ; padding]; attention sees a token's place only
through its RoPE position and the mask, so the order within a row does not change the result,
and image tokens first keep every image where the class-conditional code finds it.
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


def make_grid(h: int, w: int, offset: int = 0) -> Tensor:
    """(2, h·w) long: row 0 = column index, row 1 = row index, row-major token order, both + offset."""
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([cols.reshape(-1), rows.reshape(-1)]) + offset


def text_grid(text_len: int) -> Tensor:
    """(2, M) long: text slot m at (m, m), the diagonal (FiTv2 Eq. 14)."""
    return torch.arange(text_len).expand(2, text_len)


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
    text: Tensor | None = None  # (B, N) bool, True at the M text slots of each image; text-to-image only

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

    def in_context(self, text_valid: Tensor | None = None) -> Tensor:
        """(B, N) bool: the tokens that take part in attention, image tokens and the text slots that
        hold a token (``text_valid`` (B, N), from :meth:`place_text`; default every text slot)."""
        valid = self.mask.bool()
        if self.text is not None:
            valid = valid | (self.text if text_valid is None else text_valid & self.text)
        return valid

    def attention_segment(self, text_valid: Tensor | None = None) -> Tensor | None:
        """Which tokens may see each other: equal ids (B, N), 0 = padding; None when every token sees every
        token of its row (nothing padded, nothing packed). An image's text slots share its id."""
        valid = self.in_context(text_valid)
        if self.segment is not None:
            return self.segment if self.text is None else self.segment * valid
        if bool(valid.all()):
            return None
        return valid.long()  # one image per row: valid = 1, padding = 0

    def place_text(self, values: Tensor) -> Tensor:
        """Per-image text values (B, n, M, ...) in the text slots of the rows: (B, N, ...), zero elsewhere.

        Slots lie in row-major order image by image, so the values of the real images, flattened,
        fill them in order."""
        if self.text is None:
            raise ValueError("this layout has no text slots")
        B, N = self.text.shape
        rest = values.shape[3:]
        source = values[self.real_images()]  # (images, M, ...)
        if source.shape[0] * source.shape[1] != int(self.text.sum()):
            raise ValueError(
                f"{source.shape[0]} images × {source.shape[1]} text tokens for {int(self.text.sum())} text slots"
            )
        where = self.text.reshape(B, N, *([1] * len(rest)))
        return values.new_zeros(B, N, *rest).masked_scatter(where, source)

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
        seg, text = (None if t is None else t.to(device) for t in (self.segment, self.text))
        return TokenLayout(self.grid.to(device), self.mask.to(device), self.size.to(device), seg, text)

    def repeat(self, times: int) -> TokenLayout:
        """The layout of ``times`` copies of the batch one after another (guidance doubles the batch)."""

        def tile(t: Tensor) -> Tensor:
            return torch.cat([t] * times)

        seg, text = (None if t is None else tile(t) for t in (self.segment, self.text))
        return TokenLayout(tile(self.grid), tile(self.mask), tile(self.size), seg, text)


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


def pad_sequences(items: list[tuple[Tensor, int, int]], length: int | None = None, text_len: int = 0) -> TokenBatch:
    """Pad (tokens (h·w, D), h, w) items to one length (default: the longest), one image per row;
    ``text_len`` M > 0 gives each image M text slots after its tokens."""
    rows = [[i] for i in range(len(items))]
    return _lay_out(items, rows, length, text_len, packed=False)


def pack_sequences(
    items: list[tuple[Tensor, int, int]], rows: list[list[int]], length: int | None = None, text_len: int = 0
) -> TokenBatch:
    """Pack items into rows: ``rows[r]`` lists the item indices placed one after another in row r.

    Every image keeps its own grid positions; ``segment`` marks which image each token
    belongs to (its text slots included), so attention, modulation and the loss stay per image.
    """
    return _lay_out(items, rows, length, text_len, packed=True)


def _lay_out(
    items: list[tuple[Tensor, int, int]], rows: list[list[int]], length: int | None, text_len: int, packed: bool
) -> TokenBatch:
    M = text_len
    lengths = [sum(items[i][1] * items[i][2] + M for i in row) for row in rows]
    length = length or max(lengths)
    if length < max(lengths):
        kind = "packed length" if packed else "padded length"
        what = "the fullest row" if packed else "the longest sequence"
        raise ValueError(f"{kind} {length} is shorter than {what} ({max(lengths)})")
    D = items[0][0].shape[-1]
    B, n_max = len(rows), max(len(row) for row in rows)
    x = torch.zeros(B, length, D, dtype=items[0][0].dtype)
    grid = torch.zeros(B, 2, length, dtype=torch.long)
    mask = torch.zeros(B, length)
    size = torch.zeros(B, n_max, 2, dtype=torch.long)
    segment = torch.zeros(B, length, dtype=torch.long)
    text = torch.zeros(B, length, dtype=torch.bool)
    for r, row in enumerate(rows):
        start = 0
        for slot, i in enumerate(row):
            tokens, h, w = items[i]
            n = h * w
            if tokens.shape[0] != n:
                raise ValueError(f"item {i}: {tokens.shape[0]} tokens for a {h}x{w} grid")
            x[r, start : start + n] = tokens
            grid[r, :, start : start + n] = make_grid(h, w, offset=M)
            mask[r, start : start + n] = 1
            grid[r, :, start + n : start + n + M] = text_grid(M)
            text[r, start + n : start + n + M] = True
            segment[r, start : start + n + M] = slot + 1
            size[r, slot] = torch.tensor([h, w])
            start += n + M
    layout = TokenLayout(grid, mask, size, segment if packed else None, text if M else None)
    return TokenBatch(x, layout)


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


def image_layout(batch_size: int, h: int, w: int, text_len: int = 0) -> TokenLayout:
    """The layout of B images of h × w tokens each: one image per row, nothing padded (with
    ``text_len`` M > 0, the image's M text slots after its tokens)."""
    n, M = h * w, text_len
    grid = torch.cat([make_grid(h, w, offset=M), text_grid(M)], dim=1).expand(batch_size, -1, -1)  # (B, 2, N)
    size = torch.tensor([h, w]).expand(batch_size, 1, 2)  # (B, 1, 2)
    mask = torch.cat([torch.ones(n), torch.zeros(M)]).expand(batch_size, -1)
    text = torch.cat([torch.zeros(n, dtype=torch.bool), torch.ones(M, dtype=torch.bool)]).expand(batch_size, -1)
    return TokenLayout(grid, mask.contiguous(), size, None, text.contiguous() if M else None)
