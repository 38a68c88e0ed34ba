"""Images -> token sequences (FiTv2 §5.2–5.4): decoding in worker processes, encoding in batches.

Every image is resized to fit the token budget keeping its aspect ratio (area ≤ S², sides
floored to multiples of patch × autoencoder down-sampling, never up-sampled) and also
centre-cropped to S × S (ADM's ``center_crop_arr``); the crop is *eligible* for FiTv2's mixed
preprocessing when both sides exceed S. Each variant and its horizontal flip become a pair of
token sequences (tokens, 2, p²·C).

Variants of one pixel size have one token grid and are encoded together, up to ``batch`` images
a call. A sampling autoencoder draws the posterior noise of image i's variant v (flip f) from
``seeds.generator(seed, i, 2v + f)``, so an image's tokens do not depend on the images it was
batched with; batches never cross a shard, so they do not depend on the number of ranks either.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import UserError
from ..seeds import generator
from ..tokens import patchify
from .autoencoder import Autoencoder
from .images import SkipImage, center_crop, channel_std, load_rgb, resize_to_budget

Variants = list[tuple[bool, np.ndarray]]  # (eligible, uint8 (H, W, 3)) for resize, crop


def decode(args: tuple[Any, int, int, int, float]) -> tuple[Variants, str | None, str]:
    """Worker: load one file; its variants, or a skip reason and detail."""
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
        return [(True, np.asarray(resized)), (w > side and h > side, crop)], None, ""
    except SkipImage as skip:
        return [], skip.reason, skip.detail


def encode_images(
    images: list[np.ndarray], autoencoder: Autoencoder, patch_size: int, keys: list[tuple[int, ...]] | None = None
) -> tuple[torch.Tensor, int, int]:
    """uint8 (H, W, 3) images of one size -> tokens (n, h·w, 2, p²·C) of each and its mirror, and (h, w).

    keys: per image, the seed key of its posterior noise (the flip appended). The token grid is
    that of the latents the autoencoder returned, checked against its declared down-sampling: what
    is stored and what the index records cannot disagree."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0  # (n, 3, H, W)
    pairs = torch.stack([x, x.flip(-1)], dim=1).flatten(0, 1)  # (2n, 3, H, W): image, mirror, image, ...
    if keys is not None and getattr(autoencoder, "sample", False):
        gens = [generator(*key, flip) for key in keys for flip in (0, 1)]
        latents = autoencoder.encode(pairs, generators=gens)  # type: ignore[call-arg]
    else:
        latents = autoencoder.encode(pairs)
    (H, W), (lh, lw), f = images[0].shape[:2], latents.shape[-2:], autoencoder.downsample
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
    tokens = patchify(latents.float().cpu(), patch_size)  # (2n, N, D)
    tokens = tokens.unflatten(0, (len(images), 2)).transpose(1, 2)  # (n, N, 2, D)
    return tokens, lh // patch_size, lw // patch_size


class BatchEncoder:
    """Queues images by pixel size and encodes a size's queue when it holds ``batch`` images, or
    the fullest queue when ``4 × batch`` images wait in all (memory stays bounded); ``flush``
    encodes the rest and returns every result (tokens in ``dtype``, h, w) by the caller's key."""

    def __init__(self, autoencoder: Autoencoder, patch_size: int, batch: int, seed: int, dtype: torch.dtype):
        self.autoencoder, self.patch_size, self.batch, self.seed = autoencoder, patch_size, batch, seed
        self.dtype = dtype  # of the stored tokens: a shard's tokens are held in it until written
        self.queues: dict[tuple[int, ...], list[tuple[Any, np.ndarray, tuple[int, ...]]]] = {}
        self.waiting = 0
        self.done: dict[Any, tuple[torch.Tensor, int, int]] = {}

    def add(self, key: Any, image: np.ndarray, noise_key: tuple[int, ...]) -> None:
        queue = self.queues.setdefault(image.shape, [])
        queue.append((key, image, (self.seed, *noise_key)))
        self.waiting += 1
        if len(queue) >= self.batch:
            self._encode(image.shape)
        elif self.waiting >= 4 * self.batch:
            self._encode(max(self.queues, key=lambda shape: len(self.queues[shape])))

    def flush(self) -> dict[Any, tuple[torch.Tensor, int, int]]:
        for shape in list(self.queues):
            self._encode(shape)
        done, self.done = self.done, {}
        return done

    def _encode(self, shape: tuple[int, ...]) -> None:
        queue = self.queues.pop(shape)
        self.waiting -= len(queue)
        tokens, h, w = encode_images(
            [image for _, image, _ in queue], self.autoencoder, self.patch_size, [key for _, _, key in queue]
        )
        for (key, _, _), t in zip(queue, tokens.to(self.dtype)):
            self.done[key] = (t, h, w)
