"""CLIP score: the cosine similarity of an image's and its prompt's CLIP embeddings.

As the FiTv2 paper reports it (0.2535 for the text-to-image model at cfg 4): the plain cosine,
not ×100, averaged over the samples. The CLIP model (for the paper, CLIP-L) loads from a local
folder written by transformers' ``CLIPModel.save_pretrained``; images are resized (shorter side,
bicubic) and centre-cropped to the model's input size, then normalised with the mean and
standard deviation of its ``preprocessor_config.json`` (CLIP's own values if there is none).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import MissingFileError, UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


class ClipScorer:
    """A local CLIP model (text and vision towers) that scores images against prompts."""

    def __init__(self, folder: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        self.path = Path(folder)
        if not self.path.is_dir():
            raise MissingFileError(f"CLIP model folder not found: {self.path}")
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            import transformers
        except ImportError:
            raise UserError("the CLIP score needs transformers: pip install 'fitv2[text]'") from None
        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        try:
            self.model = transformers.CLIPModel.from_pretrained(str(self.path)).eval().requires_grad_(False)
            self.tokenizer = transformers.CLIPTokenizer.from_pretrained(str(self.path))
        except (OSError, ValueError) as err:
            raise UserError(
                f"{self.path} is not a CLIP model folder (text and vision towers, tokenizer): {err}"
            ) from None
        self.device = torch.device(device)
        self.model.to(self.device)
        self.size = int(self.model.config.vision_config.image_size)
        mean, std = CLIP_MEAN, CLIP_STD
        pre = self.path / "preprocessor_config.json"
        if pre.is_file():
            cfg = json.loads(pre.read_text())
            mean, std = tuple(cfg.get("image_mean", mean)), tuple(cfg.get("image_std", std))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)

    def preprocess(self, images: Iterable[np.ndarray]) -> torch.Tensor:
        """uint8 (H, W, 3) images -> normalised (B, 3, S, S) float."""
        out = []
        for image in images:
            img = Image.fromarray(np.asarray(image))
            scale = self.size / min(img.size)
            w, h = max(self.size, round(img.size[0] * scale)), max(self.size, round(img.size[1] * scale))
            img = img.resize((w, h), Image.Resampling.BICUBIC)
            left, top = (w - self.size) // 2, (h - self.size) // 2
            img = img.crop((left, top, left + self.size, top + self.size))
            out.append(torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1))
        x = torch.stack(out).float() / 255.0
        return (x - self.mean) / self.std

    @torch.no_grad()
    def image_embeddings(self, images: Iterable[np.ndarray]) -> torch.Tensor:
        pixels = self.preprocess(images).to(self.device)
        emb = self.model.get_image_features(pixel_values=pixels)
        emb = getattr(emb, "pooler_output", emb)  # a tensor, or an output object in some versions
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

    @torch.no_grad()
    def text_embeddings(self, prompts: list[str]) -> torch.Tensor:
        batch = self.tokenizer(list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt")
        emb = self.model.get_text_features(**{k: v.to(self.device) for k, v in batch.items()})
        emb = getattr(emb, "pooler_output", emb)
        return torch.nn.functional.normalize(emb.float(), dim=-1).cpu()

    def scores(self, images: Iterable[np.ndarray], prompts: list[str], batch_size: int = 64) -> np.ndarray:
        """Cosine similarity of each image with its prompt (in order)."""
        out: list[torch.Tensor] = []
        for chunk_images, chunk_prompts in _chunks(images, prompts, batch_size):
            cos = (self.image_embeddings(chunk_images) * self.text_embeddings(chunk_prompts)).sum(-1)
            out.append(cos)
        if sum(len(c) for c in out) != len(prompts):
            raise ValueError(f"{sum(len(c) for c in out)} images for {len(prompts)} prompts")
        return torch.cat(out).numpy()


def _chunks(
    images: Iterable[np.ndarray], prompts: list[str], size: int
) -> Iterator[tuple[list[np.ndarray], list[str]]]:
    batch: list[np.ndarray] = []
    start = 0
    for image in images:
        batch.append(image)
        if len(batch) == size:
            yield batch, prompts[start : start + size]
            start += size
            batch = []
    if batch:
        yield batch, prompts[start : start + len(batch)]
