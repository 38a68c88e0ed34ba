"""The index of a token dataset: what ``fitv2 prepare`` wrote and how, and one record per sequence.

    OUT/index.json         :class:`DatasetIndex` (autoencoder, patch size, budget, classes, shards,
                           skips); written last, so its presence marks a finished dataset
    OUT/records.npy        one :data:`RECORD` row per stored sequence, image by image, the resize
                           variant before the crop: a plain numpy array, loaded in one read
    OUT/images.jsonl       one line per image ``{"source": ..., "caption": ...}`` and
    OUT/images.offsets.npy its lines' byte offsets: read one line at a time, on demand

The records hold no Python object per sequence (22 bytes a row), so the index of ImageNet's 2.5
million sequences is 55 MB in every process that opens it. Datasets of format version 1 (one JSON
object per sequence in ``items.jsonl``) still open: their records are built from that file.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import atomic_write, save_json
from ..errors import MissingFileError, UserError

FORMAT = "fitv2-tokens"
VERSION = 2
INDEX_FILE = "index.json"
RECORDS_FILE = "records.npy"
IMAGES_FILE = "images.jsonl"
OFFSETS_FILE = "images.offsets.npy"
TEXT_PER_SHARD = 4096  # captions per text shard: group g is entry g % 4096 of shard g // 4096
VARIANTS = ("resize", "crop")  # a record's variant is its position here
DTYPES = ("float16", "bfloat16", "float32")  # how stored tokens may be held

RECORD = np.dtype(
    [
        ("shard", "<u4"),  # position in DatasetIndex.shards
        ("offset", "<u4"),  # first token row within the shard
        ("group", "<u4"),  # the source image: 0 .. images − 1
        ("label", "<i4"),
        ("h", "<u2"),  # token grid rows
        ("w", "<u2"),  # token grid columns
        ("variant", "u1"),  # 0 resize, 1 crop (VARIANTS)
        ("eligible", "u1"),  # 1: a crop that mixed mode may choose (both image sides exceed the budget)
    ]
)


@dataclass(frozen=True)
class DatasetIndex:
    autoencoder: dict[str, Any]  # the autoencoder's spec (kind, path, scaling and shift factors)
    patch_size: int  # tokens are p × p patches of the latents
    channels: int  # latent channels
    downsample: int  # pixels per latent side
    token_dim: int  # p² · channels values per token
    budget: int  # pixel side S: images were resized to area ≤ S²
    max_tokens: int  # tokens of an S × S image: (S / (p · downsample))²
    num_classes: int
    class_names: list[str]
    shards: list[str]  # paths of the safetensors shards, relative to the dataset folder
    images: int  # source images kept
    sequences: int  # stored sequences (1–2 variants per image)
    tokens: int  # tokens over all stored sequences
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> count
    skipped_examples: dict[str, list[str]] = field(default_factory=dict)  # reason -> up to five paths
    source: str = ""  # the image folder, JSONL file or released-latent folder
    split: str | None = None  # the JSONL split kept, if one was chosen
    text_encoder: dict[str, Any] | None = None  # text-to-image: the caption encoder's spec
    text_dim: int = 0  # its features per token
    text_len: int = 0  # text tokens per caption M
    text_shards: list[str] = field(default_factory=list)  # caption features, TEXT_PER_SHARD captions each
    dtype: str = "float16"  # of the stored tokens (DTYPES)
    source_kind: str = "images"  # "images" (encoded here) or "released" (latent files converted as they are)
    format: str = FORMAT
    version: int = VERSION

    @property
    def text_conditional(self) -> bool:
        return self.text_encoder is not None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, root: str | Path) -> None:
        save_json(self.to_dict(), Path(root) / INDEX_FILE)

    @classmethod
    def load(cls, root: str | Path) -> DatasetIndex:
        path = Path(root) / INDEX_FILE
        if not path.is_file():
            raise MissingFileError(f"{root} is not a token dataset (no {INDEX_FILE}); run `fitv2 prepare` first")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise UserError(f"{path} is not valid JSON: {err}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise UserError(f"{path} is not a fitv2 token-dataset index (format {FORMAT!r})")
        if data.get("version", VERSION) > VERSION:
            raise UserError(f"{path} has format version {data['version']}; this fitv2 reads up to {VERSION}")
        known = {f.name for f in fields(cls)}
        missing = sorted(
            f.name for f in fields(cls) if f.name not in data and f.default is MISSING and f.default_factory is MISSING
        )
        if missing:
            raise UserError(f"{path} lacks {', '.join(missing)}; prepare the dataset again")
        return cls(**{k: v for k, v in data.items() if k in known})


def save_array(array: np.ndarray, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would add .npy to a name
            np.save(f, array, allow_pickle=False)

    atomic_write(path, write)


def load_records(root: Path, index: DatasetIndex, mmap: bool = False) -> np.ndarray:
    """The RECORD array of a dataset (version 1: built from its ``items.jsonl``); ``mmap``: mapped
    from the file rather than read (the pages are then shared by every process on the machine)."""
    if index.version < 2:
        return _records_from_items(root / "items.jsonl")
    path = root / RECORDS_FILE
    if not path.is_file():
        raise MissingFileError(f"{root} lacks {RECORDS_FILE}; prepare the dataset again")
    records = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    if records.dtype != RECORD or len(records) != index.sequences:
        raise UserError(f"{path} does not hold the {index.sequences} sequences {INDEX_FILE} lists")
    return records


def _records_from_items(path: Path) -> np.ndarray:
    items = [json.loads(line) for line in path.read_text().splitlines() if line]
    records = np.zeros(len(items), RECORD)
    for name in ("shard", "offset", "group", "label", "h", "w", "eligible"):
        records[name] = [item[name] for item in items]
    records["variant"] = [VARIANTS.index(item["variant"]) for item in items]
    return records


def group_starts(records: np.ndarray) -> np.ndarray:
    """(images + 1,) uint32: the sequences of image g are rows starts[g] .. starts[g + 1] − 1."""
    group = records["group"]
    steps = np.diff(group.astype(np.int64))
    if len(group) and (group[0] != 0 or steps.min(initial=0) < 0 or steps.max(initial=0) > 1):
        raise UserError("the dataset's records are not ordered image by image; prepare it again")
    starts = np.flatnonzero(np.r_[True, steps != 0]) if len(group) else np.zeros(0, np.int64)
    return np.r_[starts, len(group)].astype(np.uint32)


class ImageTable:
    """Per-image strings (source path, caption), one JSON line each, read on demand: the dataset
    keeps only the file name and, once asked, a memory map of the line offsets."""

    def __init__(self, root: Path, index: DatasetIndex):
        self.root = root
        self.version = index.version
        self._offsets: np.ndarray | None = None
        self._legacy: list[dict[str, str]] | None = None

    def __getitem__(self, group: int) -> dict[str, str]:
        if self.version < 2:
            if self._legacy is None:
                first: dict[int, dict[str, str]] = {}
                for line in (self.root / "items.jsonl").read_text().splitlines():
                    if line:
                        item = json.loads(line)
                        first.setdefault(item["group"], {"source": item["source"], "caption": item["caption"]})
                self._legacy = [first[g] for g in sorted(first)]
            return self._legacy[group]
        if self._offsets is None:
            self._offsets = np.load(self.root / OFFSETS_FILE, mmap_mode="r")
        start, end = int(self._offsets[group]), int(self._offsets[group + 1])
        with open(self.root / IMAGES_FILE, "rb") as f:
            f.seek(start)
            return json.loads(f.read(end - start))


def write_image_table(root: Path, rows) -> int:
    """Write ``images.jsonl`` from an iterable of {"source", "caption"} dicts, then its offsets; the count."""
    offsets = array("Q", [0])  # 8 bytes an image, not a Python int

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False).encode() + b"\n")
                offsets.append(f.tell())

    atomic_write(root / IMAGES_FILE, write)
    save_array(np.asarray(offsets, np.uint64), root / OFFSETS_FILE)
    return len(offsets) - 1
