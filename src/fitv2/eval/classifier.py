"""A small CNN feature network, trained on a dataset's own training split.

The FID Inception weights cannot be fetched offline, so ``fitv2 evaluate`` can use this
compact classifier instead, in the same roles: the pooled feature for a Fréchet distance and
precision/recall, a small fixed-size spatial map for an sFID-like distance, and K-way logits
for an Inception-Score-like number and class consistency. Its numbers are only comparable
between evaluations that use the same classifier weights.

It takes RGB images of any size and aspect ratio. Training sees each image resized to a random
area budget (aspect kept), so its features do not hinge on one resolution; for evaluation
:meth:`Classifier.embed` resizes every image to the area ``input_side²`` first, as Inception
resizes everything to 299².
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..checkpoint import load_weights, read_state_dict, save_json, save_tensors
from ..data.prepare import list_folder, list_jsonl, load_rgb, resize_to_budget

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
FORMAT = "fitv2-classifier"

__all__ = ["Classifier", "ClassifierConfig", "load_classifier", "to_model_input", "train_classifier"]


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture; ``input_side`` is the evaluation resize (area input_side², aspect kept)."""

    num_classes: int
    widths: tuple[int, ...] = (32, 64, 128, 256)
    groups: int = 8
    input_side: int = 48
    spatial_stage: int = 1  # stage whose first channels form the spatial feature
    spatial_channels: int = 16
    spatial_size: int = 4

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown classifier config keys: {', '.join(unknown)}")
        return cls(**{**data, "widths": tuple(data.get("widths", cls.widths))})


def _conv(cin: int, cout: int, stride: int, groups: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.GroupNorm(min(groups, cout), cout),
                         nn.ReLU(inplace=True))


def to_model_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]; float (B, 3, H, W) passes through."""
    x = torch.as_tensor(images)
    if x.ndim != 4:
        raise ValueError(f"expected a batch of images (4 dims), got shape {tuple(x.shape)}")
    if x.dtype == torch.uint8:
        if x.shape[-1] != 3:
            raise ValueError(f"uint8 images must be (B, H, W, 3), got {tuple(x.shape)}")
        return x.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if x.shape[1] != 3:
        raise ValueError(f"float images must be (B, 3, H, W) in [-1, 1], got {tuple(x.shape)}")
    return x.float()


def fit_side(height: int, width: int, side: int) -> tuple[int, int]:
    """(h, w) with area ≈ side² and the aspect ratio of (height, width)."""
    aspect = math.sqrt(height / width)
    return max(1, round(side * aspect)), max(1, round(side / aspect))


class Classifier(nn.Module):
    """conv3x3-GroupNorm-ReLU stem, stride-2 stages, global average pool, linear head."""

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w, g = config.widths, config.groups
        if not 0 <= config.spatial_stage < len(w) or config.spatial_channels > w[config.spatial_stage]:
            raise ValueError("spatial_stage / spatial_channels do not fit the widths")
        self.stem = _conv(3, w[0], 1, g)
        self.stages = nn.ModuleList(
            nn.Sequential(_conv(cin, cout, 2, g), _conv(cout, cout, 1, g)) for cin, cout in zip((w[0], *w[:-1]), w)
        )
        self.head = nn.Linear(w[-1], config.num_classes)

    @property
    def feature_dims(self) -> dict[str, int]:
        c = self.config
        return {"pool": c.widths[-1], "spatial": c.spatial_channels * c.spatial_size**2, "logits": c.num_classes}

    def forward(self, images: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Features of images at their own size: pool (B, C), spatial (B, c·s·s), logits (B, K)."""
        x = self.stem(to_model_input(images).to(self.head.weight.device))
        spatial = None
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == self.config.spatial_stage:
                s = F.adaptive_avg_pool2d(x[:, : self.config.spatial_channels], self.config.spatial_size)
                spatial = s.permute(0, 2, 3, 1).flatten(1)  # (H, W, C) order, as ADM flattens its sFID map
        pool = x.mean(dim=(2, 3))
        return {"pool": pool, "spatial": spatial, "logits": self.head(pool)}

    @torch.no_grad()
    def embed(self, images: torch.Tensor | np.ndarray, side: int | None = -1) -> dict[str, torch.Tensor]:
        """Evaluation features: resize to area ``side²`` (default ``input_side``; None = as given) first."""
        x = to_model_input(images).to(self.head.weight.device)
        side = self.config.input_side if side == -1 else side
        if side:
            size = fit_side(x.shape[2], x.shape[3], side)
            if size != tuple(x.shape[2:]):
                x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
        return {k: v.float() for k, v in self.forward(x).items()}


def load_classifier(directory: str | Path, device: str | torch.device = "cpu") -> Classifier:
    """A classifier folder written by :func:`train_classifier`, loaded strictly, in eval mode."""
    directory = Path(directory)
    meta_path, weights = directory / CONFIG_FILE, directory / WEIGHTS_FILE
    if not meta_path.is_file() or not weights.is_file():
        raise FileNotFoundError(f"{directory} is not a classifier folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
                                "train one with `fitv2 train-classifier DATA --out DIR`")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{meta_path} is not a {FORMAT} file")
    model = Classifier(ClassifierConfig.from_dict(meta["config"]))
    load_weights(model, read_state_dict(weights), source=f"classifier weights {weights}")
    model.class_names = meta.get("class_names")
    model.meta = meta
    model.requires_grad_(False)
    return model.eval().to(device)


# ----------------------------------------------------------------------------- training


def _split_sources(data: Path) -> tuple[list, list, list[str]]:
    """(train, test, class names). A folder, or a JSONL without splits, holds out every 10th image per class."""
    if data.is_dir():
        sources, classes = list_folder(data)
    elif data.is_file():
        sources, classes = list_jsonl(data)
        rows = [json.loads(line) for line in data.read_text().splitlines() if line.strip()]
        splits = [r.get("split") for r in rows]
        if any(s is not None for s in splits):
            train = [s for s, sp in zip(sources, splits) if sp == "train"]
            test = [s for s, sp in zip(sources, splits) if sp == "test"]
            if not train:
                raise ValueError(f"{data} has no split='train' rows")
            return train, test, classes
    else:
        raise FileNotFoundError(f"no such image folder or JSONL file: {data}")
    seen: dict[int, int] = defaultdict(int)
    train, test = [], []
    for s in sources:
        seen[s.label] += 1
        (test if seen[s.label] % 10 == 0 else train).append(s)
    return train, test, classes


def _augmented(img: Image.Image, side: int, rng: random.Random) -> np.ndarray:
    """Random crop (60-100% of the area, aspect kept), resize to the area budget side², random flip."""
    w, h = img.size
    frac = math.sqrt(rng.uniform(0.6, 1.0))
    cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    img = resize_to_budget(img.crop((left, top, left + cw, top + ch)), side, 8)
    arr = np.asarray(img)
    return arr[:, ::-1] if rng.random() < 0.5 else arr


def _jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small per-image brightness, contrast and saturation changes on [-1, 1] images."""
    b = x.shape[0]
    u = torch.rand(b, 3, 1, 1, 1, generator=gen) * 0.3 - 0.15
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * (1 + u[:, 0])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (1 + u[:, 1])
    return (x + u[:, 2] * 0.7).clamp(-1, 1)


def _epoch_batches(images: list[Image.Image], labels: list[int], sides: list[int], batch_size: int,
                   rng: random.Random) -> list[tuple[np.ndarray, np.ndarray]]:
    """Every image once at a random budget, grouped into same-shape batches, in random order."""
    groups: dict[tuple[int, int], list[tuple[np.ndarray, int]]] = defaultdict(list)
    for img, y in zip(images, labels):
        arr = _augmented(img, rng.choice(sides), rng)
        groups[arr.shape[:2]].append((arr, y))
    batches = []
    for items in groups.values():
        rng.shuffle(items)
        for i in range(0, len(items), batch_size):
            chunk = items[i : i + batch_size]
            batches.append((np.stack([a for a, _ in chunk]), np.array([y for _, y in chunk])))
    rng.shuffle(batches)
    return batches


@torch.no_grad()
def _accuracy(model: Classifier, images: list[np.ndarray], labels: list[int], side: int) -> float:
    """Top-1 accuracy through the evaluation path (:meth:`Classifier.embed`), batched by native shape."""
    by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for i, a in enumerate(images):
        by_shape[a.shape].append(i)
    correct = 0
    for idx in by_shape.values():
        for j in range(0, len(idx), 64):
            chunk = idx[j : j + 64]
            pred = model.embed(np.stack([images[i] for i in chunk]), side=side)["logits"].argmax(1)
            correct += int((pred == torch.tensor([labels[i] for i in chunk])).sum())
    return correct / max(1, len(images))


def train_classifier(data: str | Path, out_dir: str | Path, *, epochs: int = 20, batch_size: int = 64,
                     lr: float = 2e-3, budget: int = 48, seed: int = 0, max_minutes: float | None = None,
                     weight_decay: float = 0.05, config: ClassifierConfig | None = None,
                     progress: bool = True) -> dict[str, Any]:
    """Train on the split=train rows of a JSONL (or a class folder), test on split=test; save to ``out_dir``.

    Each epoch resizes every image to a random area budget between (budget/3)² and (4·budget/3)²
    in steps of 8 px of side (16²..64² for budget 48), keeping its aspect ratio, with a random
    crop, flip and colour jitter; same-shape images are batched together. The learning rate
    warms up then follows a cosine; with ``max_minutes`` the schedule tracks elapsed time too,
    so training ends on time at a small learning rate. Returns the saved metadata.
    """
    data, out_dir = Path(data), Path(out_dir)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train_src, test_src, classes = _split_sources(data)
    pre_side = math.ceil(budget * 4 / 3 / math.sqrt(0.6))  # keep enough pixels for the largest crop
    images = [resize_to_budget(load_rgb(s.path), pre_side, 1) for s in train_src]
    labels = [s.label for s in train_src]
    test_images = [np.asarray(load_rgb(s.path)) for s in test_src]
    test_labels = [s.label for s in test_src]
    sides = list(range(max(8, budget // 3 // 8 * 8), budget * 4 // 3 + 1, 8))
    config = config or ClassifierConfig(num_classes=len(classes), input_side=budget)
    model = Classifier(config)
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0}],
                            lr=lr)
    batches = _epoch_batches(images, labels, sides, batch_size, rng)
    # shape buckets make the batch count vary a little between epochs; the first one sets the schedule
    total, warmup = max(1, epochs * len(batches)), max(1, len(batches) // 2)
    start, step, history = time.perf_counter(), 0, []
    limit = max_minutes * 60 if max_minutes else None
    done = False
    for epoch in range(epochs):
        model.train()
        losses, correct, seen = [], 0, 0
        if epoch:
            batches = _epoch_batches(images, labels, sides, batch_size, rng)
        for x_np, y_np in tqdm(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            elapsed = time.perf_counter() - start
            frac = max(step / total, elapsed / limit if limit else 0.0)
            if frac >= 1.0:
                done = True
                break
            scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            x = _jitter(to_model_input(torch.from_numpy(x_np)), gen)
            y = torch.from_numpy(y_np)
            logits = model(x)["logits"]
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            step += 1
        if seen:
            history.append(dict(epoch=epoch + 1, loss=float(np.mean(losses)), train_accuracy=correct / seen,
                                seconds=round(time.perf_counter() - start, 1)))
            if progress:
                h = history[-1]
                print(f"epoch {h['epoch']}: loss {h['loss']:.3f}, train acc {h['train_accuracy']:.3f}, "
                      f"{h['seconds']:.0f}s", flush=True)
        if done:
            break
    seconds = time.perf_counter() - start
    model.eval()
    eval_sides = sorted({budget // 2, budget, budget * 4 // 3}) if test_images else []
    by_side = {str(s): _accuracy(model, test_images, test_labels, s) for s in eval_sides}
    meta = dict(format=FORMAT, version=1, config=config.to_dict(), class_names=list(classes),
                test_accuracy=by_side.get(str(budget)), test_accuracy_by_side=by_side, num_train=len(images),
                num_test=len(test_images), parameters=sum(p.numel() for p in model.parameters()),
                train=dict(data=str(data), epochs=epochs, epochs_run=len(history), steps=step,
                           batch_size=batch_size, lr=lr, weight_decay=weight_decay, budget=budget,
                           train_sides=sides, seed=seed, max_minutes=max_minutes, seconds=round(seconds, 1)),
                history=history)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(model.state_dict(), out_dir / WEIGHTS_FILE)
    save_json(meta, out_dir / CONFIG_FILE)
    return meta
