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

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from torch import Tensor

from ..errors import ConfigError
from ..seeds import generator
from ..text import TextFeatures
from ..tokens import TokenBatch, first_fit_rows, pack_sequences, pad_sequences
from .index import TEXT_PER_SHARD, DatasetIndex

MODES = ("mixed", "flexible", "fixed")
BATCHINGS = ("pad", "pack", "flat")


class TokenDataset:
    """A folder written by ``fitv2 prepare``: one group per source image, 1–2 variants each."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.index = DatasetIndex.load(self.root)
        self.meta = self.index.to_dict()  # the same fields as a plain dict
        self.items = [json.loads(line) for line in (self.root / "items.jsonl").read_text().splitlines() if line]
        groups: dict[int, dict[str, int]] = {}
        for i, item in enumerate(self.items):
            groups.setdefault(item["group"], {})[item["variant"]] = i
        self.groups = [groups[g] for g in sorted(groups)]
        self._handles: dict[int, Any] = {}  # shard -> open safetensors file
        self._text_handles: dict[str, Any] = {}

    def __len__(self) -> int:
        return len(self.groups)

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

    def features(self, item: int, flip: bool = False) -> Tensor:
        """Tokens (h·w, D) float32 of a stored sequence (or of its mirror image)."""
        rec = self.items[item]
        shard = rec["shard"]
        if shard not in self._handles:
            self._handles[shard] = safe_open(str(self.root / self.index.shards[shard]), framework="pt")
        n = rec["h"] * rec["w"]
        rows = self._handles[shard].get_slice("features")[rec["offset"] : rec["offset"] + n]
        return rows[:, int(flip)].float()

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

    def variant(self, group: int, mode: str, coin: bool) -> int:
        """Item index used for ``group`` in ``mode``; ``coin`` picks the crop in mixed mode."""
        g = self.groups[group]
        if mode == "fixed":
            return g["crop"] if "crop" in g else g["resize"]
        if mode == "mixed" and coin and "crop" in g and self.items[g["crop"]]["eligible"]:
            return g["crop"]
        return g["resize"]

    def length(self, group: int, mode: str) -> int:
        """Token count of the group's (typical) example in a mode, for bucketing."""
        rec = self.items[self.variant(group, mode, coin=False)]
        return rec["h"] * rec["w"]

    def labels(self) -> list[int]:
        return [self.items[g["resize"]]["label"] for g in self.groups]


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
        self._order: list[list[int]] | None = None

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch_index": self.batch_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.batch_index = int(state["epoch"]), int(state["batch_index"])
        self._order = None

    def _epoch_batches(self) -> list[list[int]]:
        g = generator(self.seed, self.epoch)
        perm = torch.randperm(len(self.dataset), generator=g).tolist()
        n = self.batches_per_epoch * self.batch_size
        perm = perm[:n]
        if self.bucket > 1:  # sort chunks by length so batches pad less, then shuffle batch order
            chunk = self.bucket * self.batch_size
            perm = [
                i
                for s in range(0, n, chunk)
                for i in sorted(perm[s : s + chunk], key=lambda j: self.dataset.length(j, self.mode))
            ]
        batches = [perm[s : s + self.batch_size] for s in range(0, n, self.batch_size)]
        if self.bucket > 1:
            batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
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
        coins = torch.rand(len(groups), 2, generator=g) < 0.5  # (crop?, flip?) per example
        self.batch_index += 1
        mine = list(range(self.rank, len(groups), self.world_size))
        items, labels, texts = [], [], []
        M = self.dataset.text_len
        for i in mine:
            item = self.dataset.variant(groups[i], self.mode, bool(coins[i, 0]))
            rec = self.dataset.items[item]
            items.append((self.dataset.features(item, self.hflip and bool(coins[i, 1])), rec["h"], rec["w"]))
            labels.append(rec["label"])
            if M:
                texts.append(self.dataset.text(groups[i]))
        labels_t, ids_t = torch.tensor(labels), torch.tensor(mine)
        text = TextFeatures(torch.stack([f for f, _ in texts]), torch.stack([m for _, m in texts])) if M else None
        if self.batching == "pad":
            return Batch(pad_sequences(items, text_len=M), labels_t, ids_t, len(items), text)
        if self.batching == "flat":  # one row holding the whole batch, exactly as long as its tokens
            rows = [list(range(len(items)))]
            packed = pack_sequences(items, rows, text_len=M)
        else:
            rows = first_fit_rows([h * w + M for _, h, w in items], self.row_length)
            packed = pack_sequences(items, rows, length=self.row_length, text_len=M)
        n = packed.layout.images_per_row

        def by_row(values: Tensor, fill: int = 0) -> Tensor:
            """Per-example values (B, ...) -> per-slot (rows, n, ...); empty slots hold ``fill``."""
            out = values.new_full((len(rows), n, *values.shape[1:]), fill)
            for r, row in enumerate(rows):
                out[r, : len(row)] = values[row]
            return out

        row_text = TextFeatures(by_row(text.features), by_row(text.mask)) if text is not None else None
        return Batch(packed, by_row(labels_t), by_row(ids_t, -1), len(items), row_text)
