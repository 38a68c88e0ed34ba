"""Token dataset reader and the batch loader (pad, pack or flat), deterministic and resumable.

Modes (what each image contributes to a batch):
  ``mixed``     FiTv2: the resize variant, or with probability ½ the centre crop when both
                sides exceed the budget side (paper Algorithm 1);
  ``flexible``  FiT v1: the resize variant only;
  ``fixed``     DiT/SiT baseline: the square centre crop only (every image, no padding).
Every example is flipped horizontally with probability ½ (``hflip``; off where a mirror image is another
class, as for glyphs).

The order of an epoch is a permutation drawn from (seed, epoch); the random choices of a
batch from (seed, epoch, batch index). The loader's state is therefore just (epoch, batch),
and resuming from it replays exactly the same batches. With several ranks the global
batch is the same as in one process; rank r takes every world-size-th example of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from torch import Tensor

from ..errors import ConfigError, UserError
from ..seeds import generator
from ..text import TextFeatures
from ..tokens import TokenBatch, first_fit_rows, pack_sequences, pad_sequences
from .index import TEXT_PER_SHARD, VARIANTS, DatasetIndex, ImageTable, group_starts, load_records
from .shards import ShardReader

MODES = ("mixed", "flexible", "fixed")
BATCHINGS = ("pad", "pack", "flat")


class TokenDataset:
    """A folder written by ``fitv2 prepare``: one group per source image, 1–2 sequences each
    (its resize variant, then its centre crop)::

        ds = TokenDataset("runs/in1k_256")
        len(ds), ds.num_sequences      # images, stored sequences
        ds.record(i)                   # sequence i: group, variant, eligible, h, w, label, shard, offset
        ds.features(i, flip=False)     # its tokens (h·w, p²·C) float32, or those of its mirror image
        ds.variants(g)                 # image g's sequences: {"resize": i, "crop": j}
        ds.source(g), ds.caption(g)    # image g's file and caption, read from disk when asked

    The per-sequence fields are one numpy array (``ds.records``, 22 bytes a sequence) and the
    images' first sequences another (4 bytes an image), loaded in one read (or memory-mapped with
    ``mmap=True``); no Python object is kept per sequence or image.
    """

    def __init__(self, root: str | Path, mmap: bool = False):
        self.root = Path(root)
        self.index = DatasetIndex.load(self.root)
        self.meta = self.index.to_dict()  # the same fields as a plain dict
        self.records = load_records(self.root, self.index, mmap)
        self.starts = group_starts(self.records)  # (images + 1,): image g is sequences starts[g] .. starts[g+1] − 1
        if len(self.records) and self.records["variant"][self.starts[:-1]].any():
            raise UserError(f"{self.root}: an image without its resize variant; prepare the dataset again")
        self._shards = ShardReader(self.root, self.index.shards)
        self._images = ImageTable(self.root, self.index)
        self._lengths: dict[str, np.ndarray] = {}
        self._text_handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.starts) - 1

    @property
    def num_sequences(self) -> int:
        return len(self.records)

    @property
    def patch_size(self) -> int:
        return self.index.patch_size

    @property
    def token_dim(self) -> int:
        return self.index.token_dim

    @property
    def num_classes(self) -> int:
        return self.index.num_classes

    @property
    def class_names(self) -> list[str]:
        return self.index.class_names

    def record(self, item: int) -> dict[str, Any]:
        """Sequence ``item``'s fields as plain Python values."""
        rec = self.records[item]
        return {
            "group": int(rec["group"]),
            "variant": VARIANTS[int(rec["variant"])],
            "eligible": bool(rec["eligible"]),
            "h": int(rec["h"]),
            "w": int(rec["w"]),
            "label": int(rec["label"]),
            "shard": int(rec["shard"]),
            "offset": int(rec["offset"]),
        }

    def features(self, item: int, flip: bool = False) -> Tensor:
        """Tokens (h·w, D) float32 of a stored sequence (or of its mirror image)."""
        rec = self.records[item]
        rows = self._shards.rows(int(rec["shard"]), int(rec["offset"]), int(rec["h"]) * int(rec["w"]))
        return rows[:, int(flip)].float()

    def variants(self, group: int) -> dict[str, int]:
        """The sequences of image ``group`` by variant name."""
        return {VARIANTS[int(self.records["variant"][i])]: i for i in range(self.starts[group], self.starts[group + 1])}

    def source(self, group: int) -> str:
        return self._images[group]["source"]

    def caption(self, group: int) -> str:
        return self._images[group]["caption"]

    @property
    def text_len(self) -> int:
        """Text slots per image (0: no captions encoded, a class-conditional dataset)."""
        return self.index.text_len

    def _text_file(self, name: str) -> Any:
        if name not in self._text_handles:
            self._text_handles[name] = safe_open(str(self.root / name), framework="pt")
        return self._text_handles[name]

    def text(self, group: int) -> tuple[Tensor, Tensor]:
        """The caption of a group: features (M, dim) float32 and mask (M,) bool."""
        if not self.index.text_conditional:
            raise ValueError(f"{self.root} holds no caption features (prepare it with --text-encoder)")
        shard, offset = divmod(group, TEXT_PER_SHARD)
        f = self._text_file(self.index.text_shards[shard])
        return f.get_slice("features")[offset].float(), f.get_slice("mask")[offset].bool()

    def null_text(self) -> tuple[Tensor, Tensor]:
        """The empty caption's features (M, dim) and mask (M,), for caption dropout and guidance."""
        f = self._text_file("text/null.safetensors")
        return f.get_tensor("features").float(), f.get_tensor("mask").bool()

    def pick(self, groups: np.ndarray, mode: str, coins: np.ndarray | None = None) -> np.ndarray:
        """The sequence each image of ``groups`` contributes in ``mode``; ``coins`` (bool, one per
        image) choose the crop in mixed mode, where the image has an eligible one."""
        first = self.starts[groups].astype(np.int64)
        has_crop = self.starts[np.asarray(groups) + 1] - first > 1
        if mode == "fixed":
            use_crop = has_crop
        elif mode == "mixed" and coins is not None:
            crop = np.minimum(first + 1, max(len(self.records) - 1, 0))
            use_crop = has_crop & np.asarray(coins, bool) & (self.records["eligible"][crop] > 0)
        else:
            use_crop = np.zeros(len(first), bool)
        return first + use_crop

    def variant(self, group: int, mode: str, coin: bool) -> int:
        """Item index used for ``group`` in ``mode``; ``coin`` picks the crop in mixed mode."""
        return int(self.pick(np.array([group]), mode, np.array([coin]))[0])

    def lengths(self, mode: str) -> np.ndarray:
        """Token count of every image's typical example in a mode (no crop in mixed mode), for bucketing."""
        if mode not in self._lengths:
            rec = self.records[self.pick(np.arange(len(self)), mode)]
            self._lengths[mode] = rec["h"].astype(np.int32) * rec["w"]
        return self._lengths[mode]

    def length(self, group: int, mode: str) -> int:
        return int(self.lengths(mode)[group])

    def labels(self) -> np.ndarray:
        """The class of every image."""
        return self.records["label"][self.starts[:-1]]


@dataclass
class Batch:
    tokens: TokenBatch
    labels: Tensor  # (B,) or (B, n) for packed rows
    ids: Tensor  # position of each example in the global batch, shaped like labels (−1 = empty slot)
    images: int  # real images in this rank's batch
    text: TextFeatures | None = None  # captions: (B, M, dim), or (B, n, M, dim) for packed rows


class TokenLoader:
    """Infinite iterator of batches; ``state_dict`` / ``load_state_dict`` for exact resume."""

    def __init__(
        self,
        dataset: TokenDataset,
        batch_size: int,
        mode: str = "mixed",
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        bucket: int = 0,
        batching: str = "pad",
        row_length: int | None = None,
        hflip: bool = True,
    ):
        if mode not in MODES:
            raise ConfigError(f"unknown data mode {mode!r}; choose one of {MODES}")
        if batch_size % world_size:
            raise ConfigError(f"--batch-size {batch_size} (the global batch) is not divisible by {world_size} ranks")
        if batch_size > len(dataset):
            raise ConfigError(f"--batch-size {batch_size} exceeds the dataset's {len(dataset)} images")
        if batching not in BATCHINGS:
            raise ConfigError(f"unknown batching {batching!r}; choose one of {BATCHINGS}")
        longest = dataset.index.max_tokens + dataset.text_len  # an image and its text slots
        self.row_length = longest if row_length is None else row_length  # tokens per packed row
        if batching == "pack":
            if self.row_length < longest:
                raise ConfigError(
                    f"--row-length {self.row_length}: rows must hold the dataset's longest sequence ({longest} tokens)"
                )
        self.dataset = dataset
        self.batch_size = batch_size
        self.mode = mode
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.bucket = bucket
        self.batching = batching
        self.hflip = hflip  # off: never the mirror image (glyphs: a mirrored b is a d)
        self.epoch = 0
        self.batch_index = 0
        self._order: np.ndarray | None = None  # (batches, batch_size) image ids of the epoch

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_index": self.batch_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])
        self._order = None

    def _epoch_batches(self) -> np.ndarray:
        g = generator(self.seed, self.epoch)
        n = self.batches_per_epoch * self.batch_size
        perm = torch.randperm(len(self.dataset), generator=g).numpy()[:n]
        if self.bucket > 1:  # sort chunks by length so batches pad less, then shuffle batch order
            chunk = self.bucket * self.batch_size
            lengths = self.dataset.lengths(self.mode)
            perm = np.concatenate(
                [part[np.argsort(lengths[part], kind="stable")] for part in np.split(perm, range(chunk, n, chunk))]
            )
        batches = perm.reshape(-1, self.batch_size)
        if self.bucket > 1:
            batches = batches[torch.randperm(len(batches), generator=g).numpy()]
        return batches

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._order is None:
            self._order = self._epoch_batches()
        if self.batch_index >= len(self._order):
            self.epoch, self.batch_index = self.epoch + 1, 0
            self._order = self._epoch_batches()
        groups = self._order[self.batch_index]
        g = generator(self.seed, self.epoch, self.batch_index)
        coins = (torch.rand(len(groups), 2, generator=g) < 0.5).numpy()  # (crop?, flip?) per example
        self.batch_index += 1
        mine = np.arange(self.rank, len(groups), self.world_size)
        items = self.dataset.pick(groups[mine], self.mode, coins[mine, 0])
        rec = self.dataset.records[items]
        hs, ws = rec["h"].tolist(), rec["w"].tolist()
        examples = [
            (self.dataset.features(i, self.hflip and flip), h, w)
            for i, flip, h, w in zip(items.tolist(), coins[mine, 1].tolist(), hs, ws)
        ]
        M = self.dataset.text_len
        texts = [self.dataset.text(int(groups[i])) for i in mine] if M else []
        labels_t, ids_t = torch.from_numpy(rec["label"].astype(np.int64)), torch.from_numpy(mine.astype(np.int64))
        text = TextFeatures(torch.stack([f for f, _ in texts]), torch.stack([m for _, m in texts])) if M else None
        if self.batching == "pad":
            return Batch(pad_sequences(examples, text_len=M), labels_t, ids_t, len(examples), text)
        if self.batching == "flat":  # one row holding the whole batch, exactly as long as its tokens
            rows = [list(range(len(examples)))]
            packed = pack_sequences(examples, rows, text_len=M)
        else:
            rows = first_fit_rows([h * w + M for h, w in zip(hs, ws)], self.row_length)
            packed = pack_sequences(examples, rows, length=self.row_length, text_len=M)
        n = packed.layout.images_per_row

        def by_row(values: Tensor, fill: int = 0) -> Tensor:
            """Per-example values (B, ...) -> per-slot (rows, n, ...); empty slots hold ``fill``."""
            out = values.new_full((len(rows), n, *values.shape[1:]), fill)
            for r, row in enumerate(rows):
                out[r, : len(row)] = values[row]
            return out

        row_text = TextFeatures(by_row(text.features), by_row(text.mask)) if text is not None else None
        return Batch(packed, by_row(labels_t), by_row(ids_t, -1), len(examples), row_text)
