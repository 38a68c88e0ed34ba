"""The index of a token dataset (``OUT/index.json``): what ``fitv2 prepare`` wrote and how.

One dataclass, written by ``prepare`` and read by :class:`~fitv2.data.dataset.TokenDataset`,
so the two cannot disagree on a field's name or meaning.
"""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from ..checkpoint import save_json
from ..errors import MissingFileError, UserError

FORMAT = "fitv2-tokens"
VERSION = 1
INDEX_FILE = "index.json"
TEXT_PER_SHARD = 4096  # captions per text shard: group g is entry g % 4096 of shard g // 4096


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
    source: str = ""  # the image folder or JSONL file
    split: str | None = None  # the JSONL split kept, if one was chosen
    text_encoder: dict[str, Any] | None = None  # text-to-image: the caption encoder's spec
    text_dim: int = 0  # its features per token
    text_len: int = 0  # text tokens per caption M
    text_shards: list[str] = field(default_factory=list)  # caption features, TEXT_PER_SHARD captions each
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
