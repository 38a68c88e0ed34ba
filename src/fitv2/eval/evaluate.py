"""``fitv2 evaluate``: FD/sFD, IS, precision/recall and class consistency of generated images.

Images stream batch by batch from a PNG/JPG folder, an ADM-style ``.npz`` or a dataset JSONL;
images of different sizes are grouped into same-size batches. Only the per-image pooled
features and logits are kept (for precision/recall and IS), never the images. Reference
features and statistics are cached, keyed by the reference files, split, resize budget and
feature network, so later evaluations against the same reference skip that pass.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from ..checkpoint import atomic_write, read_state_dict, save_json, save_tensors
from ..data.images import IMAGE_SUFFIXES, SkipImage, load_rgb, resize_to_budget
from ..data.sources import list_jsonl
from ..errors import ConfigError, MissingFileError, UserError
from .classifier import WEIGHTS_FILE, load_classifier
from .inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL, load_inception
from .metrics import FeatureStats, class_consistency, frechet_distance, inception_score, precision_recall

CACHE_VERSION = 1
_LABEL_SUFFIX = re.compile(r"_(\d+)$")


__all__ = [
    "ClassifierFeatures",
    "FeatureExtractor",
    "ImageSource",
    "InceptionFeatures",
    "evaluate",
    "make_extractor",
    "open_source",
    "shape_batches",
]


# ----------------------------------------------------------------------------- feature networks


def _file_identity(path: Path) -> list:
    st = path.stat()
    return [str(path.resolve()), st.st_size, st.st_mtime_ns]


class FeatureExtractor:
    """A feature network: ``__call__(uint8 (B, H, W, 3)) -> {pool, spatial, logits}`` float tensors."""

    name = "features"
    device: torch.device = torch.device("cpu")
    images_seen = 0  # counts images through the network (lets tests see cache hits)

    def identity(self) -> dict[str, Any]:
        """What decides the features: name, weights file identity, preprocessing options."""
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> dict[str, torch.Tensor]:
        self.images_seen += len(images)
        out = self.forward(torch.from_numpy(np.ascontiguousarray(images)).to(self.device))
        return {k: out[k].float().cpu() for k in ("pool", "spatial", "logits")}


class InceptionFeatures(FeatureExtractor):
    """The FID Inception-v3: 2048-d pool, 2023-d spatial (sFID), ADM's 1008 unbiased logits."""

    name = "inception"

    def __init__(self, path: str | os.PathLike, device: str | torch.device = "cpu", tf_compat: bool = False) -> None:
        self.path, self.tf_compat, self.device = Path(path), tf_compat, torch.device(device)
        self.model = load_inception(self.path, device=self.device, tf_compat=tf_compat)

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "weights": _file_identity(self.path), "tf_compat": self.tf_compat}

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images.permute(0, 3, 1, 2), input_max=255.0)


class ClassifierFeatures(FeatureExtractor):
    """A classifier from ``fitv2 train-classifier``; images are resized to its input area first."""

    name = "classifier"

    def __init__(self, directory: str | os.PathLike, device: str | torch.device = "cpu") -> None:
        self.path, self.device = Path(directory), torch.device(device)
        self.model = load_classifier(self.path, device=self.device)
        self.num_classes = self.model.config.num_classes

    def identity(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights": _file_identity(self.path / WEIGHTS_FILE),
            "config": self.model.config.to_dict(),
        }

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model.embed(images)


# ----------------------------------------------------------------------------- image sources


class ImageSource:
    """Streams ``(uint8 (H, W, 3) image, label or None)``, optionally resized to area ≤ budget².

    Subclasses set ``count`` and ``labels`` (a per-image sequence, or None when unknown).
    """

    count: int = 0
    labels: list[int] | np.ndarray | None = None
    prompts: list[str] | None = None  # the prompt of each image (text-to-image samples), if known

    def __init__(self, path: Path, budget: int | None = None) -> None:
        self.path, self.budget = path, budget

    def __len__(self) -> int:
        return self.count

    def identity(self) -> dict[str, Any]:
        """What decides the images: the files (path, size, mtime) and the resize budget."""
        raise NotImplementedError

    def _images(self) -> Iterator[np.ndarray | Image.Image]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[tuple[np.ndarray, int | None]]:
        for i, image in enumerate(self._images()):
            if self.budget:
                img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
                image = resize_to_budget(img, self.budget, 1)
            yield np.asarray(image), (None if self.labels is None else int(self.labels[i]))

    def describe(self) -> str:
        return str(self.path) + (f" (budget {self.budget})" if self.budget else "")


def _listing_digest(files: Iterable[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(json.dumps(_file_identity(f)).encode())
    return h.hexdigest()


def _load(path: Path) -> Image.Image:
    try:
        return load_rgb(path)
    except SkipImage as err:
        raise UserError(f"cannot read image {path}: {err}") from err


class FolderSource(ImageSource):
    """PNG/JPG files under a folder (recursive, sorted); labels from an ``_<int>`` name suffix if all have one.

    ``grid.png`` (the overview ``fitv2 sample`` writes) is left out.
    """

    def __init__(self, path: Path, budget: int | None = None) -> None:
        super().__init__(path, budget)
        self.files = sorted(
            f
            for f in path.rglob("*")
            if f.suffix.lower() in IMAGE_SUFFIXES
            and f.is_file()
            and f.name != "grid.png"
            and not f.name.startswith(".")
        )
        if not self.files:
            raise UserError(f"{path} holds no PNG/JPG images")
        found = [_LABEL_SUFFIX.search(f.stem) for f in self.files]
        labels = [int(m.group(1)) for m in found if m is not None]
        self.count, self.labels = len(self.files), labels if len(labels) == len(found) else None
        for listing in (path / "prompts.txt", path.parent / "prompts.txt"):  # as `fitv2 sample` writes them
            if listing.is_file():
                prompts = listing.read_text(encoding="utf-8").splitlines()
                if len(prompts) == self.count:
                    self.prompts = prompts
                    break

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "folder",
            "path": str(self.path.resolve()),
            "files": _listing_digest(self.files),
            "budget": self.budget,
        }

    def _images(self):
        return map(_load, self.files)


def _npy_header(f) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = read(f)
    if fortran:
        raise UserError("Fortran-ordered arrays are not supported")
    return shape, dtype


class NpzSource(ImageSource):
    """ADM-style ``.npz`` (``arr_0`` uint8 NHWC, optional ``arr_1`` labels) read in chunks, or a ``.npy``.

    An ADM reference batch also stores Inception statistics (``mu``/``sigma`` of the pool features,
    ``mu_s``/``sigma_s`` of the spatial ones): they are kept in ``stored_stats``, and a file with the
    statistics but no images is accepted (``count`` 0)."""

    stored_stats: dict[str, np.ndarray] | None = None

    def __init__(self, path: Path, budget: int | None = None, chunk: int = 256) -> None:
        super().__init__(path, budget)
        self.chunk = chunk
        self.shape: tuple[int, ...] = (0, 0, 0, 3)
        if path.suffix == ".npy":
            arr = np.load(path, mmap_mode="r")
            shape, dtype = arr.shape, arr.dtype
        else:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
                if {"mu.npy", "sigma.npy"} <= set(names):
                    with np.load(path) as data:
                        self.stored_stats = {
                            k: data[k].astype(np.float64)
                            for k in ("mu", "sigma", "mu_s", "sigma_s")
                            if f"{k}.npy" in names
                        }
                if "arr_0.npy" not in names:
                    if self.stored_stats is not None:  # statistics only
                        self.count = 0
                        return
                    raise UserError(f"{path} has no arr_0 (expected an ADM-style sample batch) and no mu/sigma")
                with zf.open("arr_0.npy") as f:
                    shape, dtype = _npy_header(f)
                if "arr_1.npy" in zf.namelist():
                    with np.load(path) as data:
                        self.labels = data["arr_1"].reshape(-1).astype(np.int64)
                if "prompts.npy" in zf.namelist():
                    with np.load(path) as data:
                        self.prompts = [str(p) for p in data["prompts"].reshape(-1)]
        if len(shape) != 4 or shape[-1] != 3 or dtype != np.uint8:
            raise UserError(f"{path}: arr_0 must be uint8 (N, H, W, 3), got {dtype} {shape}")
        if self.labels is not None and len(self.labels) != shape[0]:
            raise UserError(f"{path}: {shape[0]} images but {len(self.labels)} labels in arr_1")
        if self.prompts is not None and len(self.prompts) != shape[0]:
            raise UserError(f"{path}: {shape[0]} images but {len(self.prompts)} prompts")
        self.shape, self.count = shape, shape[0]

    def identity(self) -> dict[str, Any]:
        return {"kind": "npz", "file": _file_identity(self.path), "budget": self.budget}

    def describe(self) -> str:
        if self.count == 0:
            return f"{self.path} (statistics only)"
        return super().describe()

    def _images(self):
        if self.path.suffix == ".npy":
            arr = np.load(self.path, mmap_mode="r")
            for i in range(0, self.count, self.chunk):
                yield from np.array(arr[i : i + self.chunk])
            return
        # np.load cannot memory-map inside a zip; reading the member as a stream keeps memory flat
        row = math.prod(self.shape[1:])
        with zipfile.ZipFile(self.path) as zf, zf.open("arr_0.npy") as f:
            _npy_header(f)
            for i in range(0, self.count, self.chunk):
                n = min(self.chunk, self.count - i)
                yield from np.frombuffer(f.read(n * row), np.uint8).reshape(n, *self.shape[1:])


class JsonlSource(ImageSource):
    """A dataset JSONL (``data/clipart/metadata.jsonl``), optionally one split, images at native size."""

    def __init__(self, path: Path, split: str | None = None, budget: int | None = None) -> None:
        super().__init__(path, budget)
        self.split = split
        self.sources, self.class_names = list_jsonl(path, split)
        self.count, self.labels = len(self.sources), [s.label for s in self.sources]

    def identity(self) -> dict[str, Any]:
        return {
            "kind": "jsonl",
            "file": _file_identity(self.path),
            "split": self.split,
            "budget": self.budget,
            "files": _listing_digest(s.path for s in self.sources),
        }

    def _images(self):
        return (_load(s.path) for s in self.sources)

    def labels_of_captions(self, prompts: list[str]) -> list[int] | None:
        """The class of every prompt that is a caption of this listing with one class; None if any is not."""
        classes: dict[str, set[int]] = {}
        for s in list_jsonl(self.path)[0]:  # every split: a prompt may be any row's caption
            classes.setdefault(s.caption, set()).add(s.label)
        found = [classes.get(p, set()) for p in prompts]
        if not all(len(c) == 1 for c in found):
            return None
        return [next(iter(c)) for c in found]

    def describe(self) -> str:
        return super().describe() + (f" split {self.split}" if self.split else "")


def open_source(path: str | os.PathLike, split: str | None = None, budget: int | None = None) -> ImageSource:
    """A folder, ``.npz``/``.npy`` or ``.jsonl``; ``split`` only applies to a JSONL."""
    path = Path(path)
    if not path.exists():
        raise MissingFileError(f"no such image folder, .npz or .jsonl: {path}")
    if path.suffix == ".jsonl":
        return JsonlSource(path, split, budget)
    if split is not None:
        raise UserError(f"--split applies to a JSONL reference, not {path}")
    if path.is_dir():
        return FolderSource(path, budget)
    if path.suffix in (".npz", ".npy"):
        return NpzSource(path, budget)
    raise UserError(f"{path}: expected an image folder, an .npz/.npy sample batch or a .jsonl list")


def shape_batches(
    items: Iterable[tuple[np.ndarray, int | None]], batch_size: int, max_pending: int | None = None
) -> Iterator[tuple[np.ndarray, list[int | None]]]:
    """Group a stream of images into same-shape batches, holding at most ``max_pending`` images."""
    max_pending = max_pending or 4 * batch_size
    pending: dict[tuple[int, ...], list] = {}
    held = 0
    for image, label in items:
        bucket = pending.setdefault(image.shape, [])
        bucket.append((image, label))
        held += 1
        if len(bucket) >= batch_size or held > max_pending:
            # with many distinct shapes (native-size references), flush the fullest bucket to bound memory
            shape = image.shape if len(bucket) >= batch_size else max(pending, key=lambda s: len(pending[s]))
            out = pending.pop(shape)
            held -= len(out)
            yield np.stack([im for im, _ in out]), [y for _, y in out]
    for out in pending.values():
        yield np.stack([im for im, _ in out]), [y for _, y in out]


# ----------------------------------------------------------------------------- features and metrics


@dataclass
class Features:
    """Streaming statistics plus the per-image pieces that metrics need whole."""

    pool: FeatureStats
    spatial: FeatureStats
    pool_features: np.ndarray  # (N, D) float32, for precision/recall
    logits: np.ndarray  # (N, K) float32, for IS and class consistency
    labels: np.ndarray | None
    shapes: dict[str, int]


def extract(
    source: ImageSource,
    extractor: FeatureExtractor,
    batch_size: int = 64,
    progress: bool = False,
    desc: str = "features",
) -> Features:
    """Run every image of ``source`` through ``extractor``, batch by batch."""
    pool, spatial = FeatureStats(), FeatureStats()
    feats, logits, labels = [], [], []
    shapes: dict[str, int] = {}
    with tqdm(total=len(source), desc=desc, unit="img", disable=not progress) as bar:
        for images, ys in shape_batches(source, batch_size):
            out = extractor(images)
            pool.update(out["pool"])
            spatial.update(out["spatial"])
            feats.append(out["pool"].numpy().astype(np.float32))
            logits.append(out["logits"].numpy().astype(np.float32))
            labels.extend(ys)
            key = f"{images.shape[1]}x{images.shape[2]}"
            shapes[key] = shapes.get(key, 0) + len(images)
            bar.update(len(images))
    if pool.n < 2:
        raise UserError(f"{source.path}: need at least 2 images, found {pool.n}")
    known = all(y is not None for y in labels)
    return Features(
        pool,
        spatial,
        np.concatenate(feats),
        np.concatenate(logits),
        np.array(labels, np.int64) if known else None,
        shapes,
    )


def _save_stats(stats: FeatureStats, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            stats.save(f)

    atomic_write(path, write)


def reference_features(
    source: ImageSource,
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike | None,
    batch_size: int = 64,
    progress: bool = False,
) -> tuple[Features, bool]:
    """Reference features from the cache if present, else computed and cached; also says which."""
    key_data = {"version": CACHE_VERSION, "source": source.identity(), "features": extractor.identity()}
    key = hashlib.sha256(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]
    folder = Path(cache_dir).expanduser() / f"{extractor.name}-{key}" if cache_dir else None
    if folder is not None and (folder / "meta.json").is_file():
        meta = json.loads((folder / "meta.json").read_text())
        t = read_state_dict(folder / "features.safetensors")
        labels = t["labels"].numpy() if "labels" in t else None
        return Features(
            FeatureStats.load(folder / "pool.npz"),
            FeatureStats.load(folder / "spatial.npz"),
            t["pool"].numpy(),
            t["logits"].numpy(),
            labels,
            meta["shapes"],
        ), True
    feats = extract(source, extractor, batch_size, progress, desc="reference")
    if folder is not None:
        tensors = {"pool": torch.from_numpy(feats.pool_features), "logits": torch.from_numpy(feats.logits)}
        if feats.labels is not None:
            tensors["labels"] = torch.from_numpy(feats.labels)
        _save_stats(feats.pool, folder / "pool.npz")
        _save_stats(feats.spatial, folder / "spatial.npz")
        save_tensors(tensors, folder / "features.safetensors")
        save_json({**key_data, "shapes": feats.shapes, "count": feats.pool.n}, folder / "meta.json")  # last: marks done
    return feats, False


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "fitv2" / "eval"


def evaluate(
    generated: str | os.PathLike | ImageSource,
    reference: str | os.PathLike | ImageSource,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 64,
    cache_dir: str | os.PathLike | None = "default",
    reference_budget: int | None = None,
    split: str | None = None,
    k: int = 3,
    progress: bool = False,
) -> dict[str, Any]:
    """Metrics of generated images against a reference set (``cache_dir=None`` disables the cache).

    Keys: ``fid``/``sfid`` (Inception) or ``fd``/``sfd`` (classifier) on pool/spatial features,
    ``is``/``is_std`` (on the network's logits), ``precision``/``recall`` (k-NN, k=3),
    ``class_consistency`` (classifier, generated labels known), the same IS/consistency for the
    reference set (``reference_is``, ``reference_class_consistency``), counts and settings.
    """
    gen_src = generated if isinstance(generated, ImageSource) else open_source(generated)
    ref_src = reference if isinstance(reference, ImageSource) else open_source(reference, split, reference_budget)
    cache = default_cache_dir() if cache_dir == "default" else cache_dir
    stored = getattr(ref_src, "stored_stats", None)
    if stored is not None and extractor.name != "inception":
        stored = None  # an ADM batch stores Inception statistics, which no other network's features match
    if len(ref_src) == 0 and stored is None:
        raise UserError(
            f"{ref_src.path} holds only Inception statistics: evaluate against it with --features inception"
        )
    ref, cached = (
        (None, False) if len(ref_src) == 0 else reference_features(ref_src, extractor, cache, batch_size, progress)
    )
    gen = extract(gen_src, extractor, batch_size, progress, desc="generated")
    fd = "fid" if extractor.name == "inception" else "fd"
    out: dict[str, Any] = {"features": extractor.name}
    if stored is not None:
        out["reference_statistics"] = "stored in the reference .npz (mu, sigma" + (
            ", mu_s, sigma_s)" if "mu_s" in stored else ")"
        )
        out[fd] = frechet_distance(gen.pool.mean, gen.pool.cov, stored["mu"], stored["sigma"])
    else:
        assert ref is not None
        out["reference_statistics"] = "computed from the reference images"
        out[fd] = frechet_distance(gen.pool.mean, gen.pool.cov, ref.pool.mean, ref.pool.cov)
    if stored is not None and "mu_s" in stored:
        out["s" + fd] = frechet_distance(gen.spatial.mean, gen.spatial.cov, stored["mu_s"], stored["sigma_s"])
    elif ref is not None:
        out["s" + fd] = frechet_distance(gen.spatial.mean, gen.spatial.cov, ref.spatial.mean, ref.spatial.cov)
    else:
        out["s" + fd] = None
    out["is"], out["is_std"] = inception_score(gen.logits, split_size=5000)
    # Precision/recall and the reference's own scores need its images (a statistics-only batch has none).
    if ref is not None and min(len(gen.pool_features), len(ref.pool_features)) > k:
        out["precision"], out["recall"] = precision_recall(
            ref.pool_features, gen.pool_features, k=k, device=extractor.device
        )
    else:
        out["precision"] = out["recall"] = None  # k-NN radii need more than k images per set
    out["class_consistency"] = _consistency(extractor, gen)
    out["reference_is"] = inception_score(ref.logits, split_size=5000)[0] if ref is not None else None
    out["reference_class_consistency"] = _consistency(extractor, ref) if ref is not None else None
    out.update(
        num_generated=gen.pool.n,
        num_reference=ref.pool.n if ref is not None else None,
        generated_shapes=gen.shapes,
        generated=gen_src.describe(),
        reference=ref_src.describe(),
        reference_cached=cached,
        weights=str(getattr(extractor, "path", "")),
    )
    return out


def _consistency(extractor: FeatureExtractor, feats: Features) -> float | None:
    # Inception's 1008 outputs are not the dataset's classes, so only a classifier can judge labels.
    if extractor.name != "classifier" or feats.labels is None:
        return None
    if feats.labels.min() < 0 or feats.labels.max() >= feats.logits.shape[1]:
        return None
    return class_consistency(feats.logits, feats.labels)


def make_extractor(
    kind: str,
    *,
    classifier: str | os.PathLike | None = None,
    inception: str | os.PathLike | None = None,
    device: str = "cpu",
    tf_compat: bool = False,
):
    """The feature network of ``--features``: 'classifier' (a classifier folder) or 'inception' (FID weights)."""
    if kind == "classifier":
        if classifier is None:
            raise ConfigError("--features classifier needs --classifier DIR (see `fitv2 train-classifier`)")
        return ClassifierFeatures(classifier, device)
    if kind == "inception":
        if inception is None:
            raise MissingFileError(
                f"--features inception needs --inception PATH to {FID_WEIGHTS_NAME} "
                f"(download {FID_WEIGHTS_URL} on a machine with internet access)"
            )
        return InceptionFeatures(inception, device, tf_compat)
    raise ConfigError(f"unknown feature network {kind!r} (use classifier or inception)")
