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

BatchNorm rather than GroupNorm: on the clipart data GroupNorm learnt far slower (6 epochs:
34% vs 45% test accuracy at 32²) and ran slower on a CPU. Images of different shapes in one
training batch share BatchNorm statistics (:meth:`Classifier.forward_groups`); at evaluation
the frozen statistics make every image's features independent of its batch.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, replace
from functools import reduce
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm import tqdm

from ..checkpoint import load_weights, read_state_dict, save_json, save_tensors
from ..data.images import load_rgb, resize_to_budget
from ..data.sources import list_folder, list_jsonl
from ..errors import MissingFileError, UserError
from ..schema import refuse_unknown

WEIGHTS_FILE = "classifier.safetensors"
CONFIG_FILE = "classifier.json"
FORMAT = "fitv2-classifier"

__all__ = ["Classifier", "ClassifierConfig", "load_classifier", "to_model_input", "train_classifier"]


@dataclass(frozen=True)
class ClassifierConfig:
    """Architecture; ``input_side`` is the evaluation resize (area input_side², aspect kept)."""

    num_classes: int
    widths: tuple[int, ...] = (32, 64, 128, 256)
    norm: str = "batch"  # or "group"
    groups: int = 8
    input_side: int = 32
    spatial_stage: int = 1  # stage whose first channels form the spatial feature
    spatial_channels: int = 16
    spatial_size: int = 4

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "widths": list(self.widths)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        refuse_unknown(cls, data, "classifier config key(s)")
        return cls(**{**data, "widths": tuple(data.get("widths", cls.widths))})


def _conv(cin: int, cout: int, stride: int, config: ClassifierConfig) -> nn.Sequential:
    if config.norm not in ("batch", "group"):
        raise ValueError(f"norm must be 'batch' or 'group', got {config.norm!r}")
    norm = nn.BatchNorm2d(cout) if config.norm == "batch" else nn.GroupNorm(min(config.groups, cout), cout)
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), norm, nn.ReLU())


def _joint_batch_norm(bn: nn.BatchNorm2d, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    """Training-mode BatchNorm with one set of statistics over tensors of different spatial sizes."""
    running_mean, running_var, batches = bn.running_mean, bn.running_var, bn.num_batches_tracked
    assert running_mean is not None and running_var is not None and batches is not None and bn.momentum is not None
    n = sum(x.numel() // x.shape[1] for x in xs)
    mean = reduce(torch.add, [x.sum((0, 2, 3)) for x in xs]) / n
    var = reduce(torch.add, [((x - mean[:, None, None]) ** 2).sum((0, 2, 3)) for x in xs]) / n
    with torch.no_grad():
        running_mean.lerp_(mean, bn.momentum)
        running_var.lerp_(var * n / max(1, n - 1), bn.momentum)  # running_var is unbiased, as in PyTorch
        batches += 1
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    shift = bn.bias - mean * scale
    return [x * scale[:, None, None] + shift[:, None, None] for x in xs]


def to_model_input(images: torch.Tensor | np.ndarray) -> torch.Tensor:
    """uint8 (B, H, W, 3) -> float (B, 3, H, W) in [-1, 1]; float (B, 3, H, W) passes through."""
    if isinstance(images, np.ndarray) and not images.flags.writeable:
        images = images.copy()  # read-only (a PIL image's pixels, a loaded file): torch.as_tensor would warn
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
    """conv3x3-norm-ReLU stem, four stride-2 stages of two such convs, global average pool, linear head."""

    class_names: list[str] | None = None  # set by load_classifier from its folder
    meta: dict[str, Any] | None = None

    def __init__(self, config: ClassifierConfig) -> None:
        super().__init__()
        self.config = config
        w = config.widths
        if not 0 <= config.spatial_stage < len(w) or config.spatial_channels > w[config.spatial_stage]:
            raise ValueError("spatial_stage / spatial_channels do not fit the widths")
        self.stem = _conv(3, w[0], 1, config)
        self.stages = nn.ModuleList(
            nn.Sequential(_conv(cin, cout, 2, config), _conv(cout, cout, 1, config))
            for cin, cout in zip((w[0], *w[:-1]), w)
        )
        self.head = nn.Linear(w[-1], config.num_classes)

    @property
    def feature_dims(self) -> dict[str, int]:
        c = self.config
        return {"pool": c.widths[-1], "spatial": c.spatial_channels * c.spatial_size**2, "logits": c.num_classes}

    def forward(self, images: torch.Tensor | np.ndarray) -> dict[str, torch.Tensor]:
        """Features of images at their own size: pool (B, C), spatial (B, c·s·s), logits (B, K)."""
        return self.forward_groups([images])

    def forward_groups(self, groups: list[torch.Tensor | np.ndarray]) -> dict[str, torch.Tensor]:
        """Features of several same-shape groups (shapes may differ between groups), concatenated.

        In training, BatchNorm takes its statistics over all groups together: batches drawn from
        one aspect ratio would otherwise be normalised by statistics that carry class information
        (aspect ratio and class are correlated), which the model learns to lean on.
        """
        device = self.head.weight.device
        xs = [to_model_input(g).to(device) for g in groups]
        spatial = []
        for i, block in enumerate([self.stem, *self.stages]):
            for layer in block.modules():
                if isinstance(layer, nn.BatchNorm2d) and layer.training and len(xs) > 1:
                    xs = _joint_batch_norm(layer, xs)
                elif not isinstance(layer, nn.Sequential):
                    xs = [layer(x) for x in xs]
            if i - 1 == self.config.spatial_stage:
                c, size = self.config.spatial_channels, self.config.spatial_size
                # (H, W, C) order, as ADM flattens its sFID map
                spatial = [F.adaptive_avg_pool2d(x[:, :c], size).permute(0, 2, 3, 1).flatten(1) for x in xs]
        pool = torch.cat([x.mean(dim=(2, 3)) for x in xs])
        return {"pool": pool, "spatial": torch.cat(spatial), "logits": self.head(pool)}

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
        raise MissingFileError(
            f"{directory} is not a classifier folder (needs {CONFIG_FILE} and {WEIGHTS_FILE}); "
            "train one with `fitv2 train-classifier DATA --out DIR`"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{meta_path} is not valid JSON ({err})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise UserError(f"{meta_path} is not a {FORMAT} file")
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


ASPECTS = (1 / 4, 1 / 3, 1 / 2, 2 / 3, 1, 3 / 2, 2, 3, 4)  # width / height of the training batch shapes
# Light augmentation: within a 5-minute CPU budget this small network underfits the clipart data
# (crop 0.6 / jitter 0.15 / sides from budget/3 gave 37% test accuracy, these 46%).
MIN_CROP = 0.85  # random crops keep this much of the image area or more
JITTER = 0.08  # colour jitter strength
MIN_SIDE_FRACTION = 0.5  # training budgets span (budget/2)² .. (4·budget/3)², sides in steps of 8 px


def _aspect_bucket(width: int, height: int) -> int:
    return min(range(len(ASPECTS)), key=lambda i: abs(math.log(width / height / ASPECTS[i])))


def _augmented(img: Image.Image, size: tuple[int, int], rng: random.Random, flip: bool = True) -> np.ndarray:
    """Random crop (85-100% of the area, aspect kept), resize to ``size`` (w, h), random flip (if ``flip``)."""
    w, h = img.size
    frac = math.sqrt(rng.uniform(MIN_CROP, 1.0))
    cw, ch = max(1, round(w * frac)), max(1, round(h * frac))
    left, top = rng.randint(0, w - cw), rng.randint(0, h - ch)
    arr = np.asarray(img.crop((left, top, left + cw, top + ch)).resize(size, Image.Resampling.BICUBIC))
    return arr[:, ::-1] if flip and rng.random() < 0.5 else arr


def _jitter(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Small per-image saturation, contrast and brightness changes on [-1, 1] images."""
    u = (torch.rand(x.shape[0], 3, 1, 1, 1, generator=gen) * 2 - 1) * JITTER
    gray = x.mean(1, keepdim=True)
    x = gray + (x - gray) * (1 + u[:, 0])
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = mean + (x - mean) * (1 + u[:, 1])
    return (x + u[:, 2] * 0.7).clamp(-1, 1)


def _batch(
    images: list[Image.Image],
    labels: list[int],
    buckets: list[int],
    idx: list[int],
    side: int,
    rng: random.Random,
    flip: bool = True,
) -> tuple[list[np.ndarray], np.ndarray]:
    """One training batch: a uint8 array per aspect bucket (area ≈ side²) and the labels in that order."""
    groups: dict[int, list[int]] = defaultdict(list)
    for i in idx:
        groups[buckets[i]].append(i)
    arrays, order = [], []
    for b, members in sorted(groups.items()):
        aspect = math.sqrt(ASPECTS[b])
        size = (max(8, round(side * aspect)), max(8, round(side / aspect)))  # (w, h)
        arrays.append(np.stack([_augmented(images[i], size, rng, flip) for i in members]))
        order += members
    return arrays, np.array([labels[i] for i in order])


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


def train_classifier(
    data: str | Path,
    out_dir: str | Path,
    *,
    epochs: int = 20,
    batch_size: int = 64,
    lr: float = 2e-3,
    budget: int = 32,
    seed: int = 0,
    max_minutes: float | None = None,
    weight_decay: float = 0.05,
    config: ClassifierConfig | None = None,
    hflip: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Train on the split=train rows of a JSONL (or a class folder), test on split=test; save to ``out_dir``.

    Each batch is a random draw of images at one random area budget between (budget/2)² and
    (4·budget/3)² (steps of 8 px of side: 16²..40² for budget 32); within it, images are grouped
    by aspect ratio (nine buckets from 1:4 to 4:1; an image's aspect ratio changes by ≤ 22%) into
    same-shape tensors that share BatchNorm statistics (:meth:`Classifier.forward_groups`).
    Augmentation: random crop, horizontal flip (unless ``hflip`` is off: glyphs, whose mirror images are
    other classes, b and d) and colour jitter. The learning rate
    warms up then follows a cosine; with ``max_minutes`` the schedule tracks elapsed time too,
    so training ends on time at a small learning rate. ``config`` sets the architecture; its
    ``num_classes`` and ``input_side`` are taken from the data and ``budget``. Returns the saved metadata.
    """
    data, out_dir = Path(data), Path(out_dir)
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    train_src, test_src, classes = _split_sources(data)
    pre_side = math.ceil(budget * 4 / 3 / math.sqrt(MIN_CROP))  # keep enough pixels for the largest crop
    images = [resize_to_budget(load_rgb(s.path), pre_side, 1) for s in train_src]
    labels = [s.label for s in train_src]
    buckets = [_aspect_bucket(*im.size) for im in images]
    test_images = [np.asarray(load_rgb(s.path)) for s in test_src]
    test_labels = [s.label for s in test_src]
    sides = list(range(max(16, round(budget * MIN_SIDE_FRACTION) // 8 * 8), max(16, budget * 4 // 3) + 1, 8))
    config = replace(config or ClassifierConfig(num_classes=0), num_classes=len(classes), input_side=budget)
    model = Classifier(config)
    decay = [p for p in model.parameters() if p.ndim > 1]
    rest = [p for p in model.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0}], lr=lr
    )
    per_epoch = len(images) // batch_size + (len(images) % batch_size > 1)  # BatchNorm needs 2+ images
    if len(images) < 2:
        raise ValueError(f"{data}: too few training images ({len(images)})")
    total, warmup = epochs * per_epoch, max(1, per_epoch // 2)
    start, step, history = time.perf_counter(), 0, []
    limit = max_minutes * 60 if max_minutes else None
    done = False
    for epoch in range(epochs):
        model.train()
        losses, correct, seen = [], 0, 0
        order = list(range(len(images)))
        rng.shuffle(order)
        plan = [order[i : i + batch_size] for i in range(0, len(order), batch_size)][:per_epoch]
        for idx in tqdm(plan, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress, leave=False):
            elapsed = time.perf_counter() - start
            frac = max(step / total, elapsed / limit if limit else 0.0)
            if frac >= 1.0:
                done = True
                break
            scale = min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * frac))
            for group in opt.param_groups:
                group["lr"] = lr * scale
            arrays, y_np = _batch(images, labels, buckets, idx, rng.choice(sides), rng, hflip)
            y = torch.from_numpy(y_np)
            logits = model.forward_groups([_jitter(to_model_input(torch.from_numpy(a)), gen) for a in arrays])["logits"]
            loss = F.cross_entropy(logits, y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            correct += int((logits.argmax(1) == y).sum())
            seen += len(y)
            step += 1
        if seen:
            history.append(
                dict(
                    epoch=epoch + 1,
                    loss=float(np.mean(losses)),
                    train_accuracy=correct / seen,
                    seconds=round(time.perf_counter() - start, 1),
                )
            )
            if progress:
                h = history[-1]
                print(
                    f"epoch {h['epoch']}: loss {h['loss']:.3f}, train acc {h['train_accuracy']:.3f}, "
                    f"{h['seconds']:.0f}s",
                    flush=True,
                )
        if done:
            break
    seconds = time.perf_counter() - start
    model.eval()
    eval_sides = sorted({budget // 2, budget, budget * 4 // 3}) if test_images else []
    by_side = {str(s): _accuracy(model, test_images, test_labels, s) for s in eval_sides}
    meta = dict(
        format=FORMAT,
        version=1,
        config=config.to_dict(),
        class_names=list(classes),
        test_accuracy=by_side.get(str(budget)),
        test_accuracy_by_side=by_side,
        num_train=len(images),
        num_test=len(test_images),
        parameters=sum(p.numel() for p in model.parameters()),
        train=dict(
            data=str(data),
            epochs=epochs,
            epochs_run=len(history),
            steps=step,
            batch_size=batch_size,
            lr=lr,
            weight_decay=weight_decay,
            budget=budget,
            train_sides=sides,
            seed=seed,
            hflip=hflip,
            max_minutes=max_minutes,
            seconds=round(seconds, 1),
        ),
        history=history,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    save_tensors(model.state_dict(), out_dir / WEIGHTS_FILE)
    save_json(meta, out_dir / CONFIG_FILE)
    return meta
