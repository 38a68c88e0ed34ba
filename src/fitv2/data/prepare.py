"""Sources -> token dataset at native resolution and aspect ratio (FiTv2 §5).

Two kinds of source:

* an image folder (class sub-folders) or a JSONL list: every image is resized to the budget and
  centre-cropped, and both variants and their mirror images are encoded (``encode.py``);
* a folder of the released FiTv2 ImageNet latents (``from_16_to_256`` ...): its files are
  converted as they are, without re-encoding (``released.py``).

Either way the work is cut into shards of ``shard_images`` consecutive sources, made by torchrun's
ranks in turn and resumable after a kill (``shards.py``); rank 0 then joins them into the compact
index (``index.py``), encodes the captions if asked, and writes ``index.json`` last.

Unreadable, degenerate, too large (checked from the header, before decoding) and missing files
are skipped, counted by reason and never stop the run; a source with no usable image at all is
an error, and nothing is left in OUT.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..checkpoint import save_tensors
from ..distributed import Env, barrier, broadcast_object
from ..errors import ConfigError, MissingFileError, UserError
from ..text import TextEncoder, load_text_encoder, parse_text_encoder
from . import released
from .autoencoder import Autoencoder, PixelSpace
from .encode import BatchEncoder, decode
from .index import DTYPES, INDEX_FILE, TEXT_PER_SHARD, DatasetIndex
from .shards import Shard, ShardJob, merge, open_run, remove_dataset, run_shards, shard_name
from .sources import Listing, ReleasedListing, list_jsonl, released_budget

CAPTION_SOURCES = ("caption", "filename")


@dataclass
class PrepareReport:
    images: int = 0
    sequences: int = 0
    tokens: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)


def write_text(out: Path, encoder: TextEncoder | None, captions: list[str], progress: bool) -> dict:
    """Encode one caption per kept image into ``text/NNNNN.safetensors`` ("features" (n, M, dim)
    float16, "mask" (n, M) uint8) and the empty caption into ``text/null.safetensors``; the
    index fields that describe them. M: 77 for CLIP; for MiniLM the longest caption's tokens."""
    if encoder is None:
        return {}
    length = encoder.max_length
    if not encoder.full_context:
        length = min(encoder.max_length, max(encoder.token_counts([*captions, ""])))
    (out / "text").mkdir(parents=True, exist_ok=True)
    null = encoder.encode([""], length)
    save_tensors(
        {"features": null.features[0].half(), "mask": null.mask[0].to(torch.uint8)}, out / "text/null.safetensors"
    )
    names: list[str] = []
    starts = range(0, len(captions), TEXT_PER_SHARD)
    for start in tqdm(starts, desc="captions", unit="shard", disable=not progress or len(starts) < 2):
        text = encoder.encode(captions[start : start + TEXT_PER_SHARD], length)
        name = f"text/{len(names):05d}.safetensors"
        save_tensors({"features": text.features.half(), "mask": text.mask.to(torch.uint8)}, out / name)
        names.append(name)
    return dict(text_encoder=encoder.spec, text_dim=encoder.dim, text_len=length, text_shards=names)


def _count(name: str, value, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ConfigError(f"{name} must be an integer >= {low}; got {value!r}")
    return int(value)


def _skip_summary(skipped: Counter) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in skipped.most_common())


def _digest(lines) -> str:
    """A fingerprint of the source listing: a resumed run must see the same files in the same order."""
    h = hashlib.sha256()
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape") + b"\n")
    return h.hexdigest()[:16]


@dataclass
class _Plan:
    """What a kind of source contributes to a run: its shard job and the index fields it fixes."""

    job: ShardJob
    settings: dict[str, Any]
    fields: dict[str, Any]
    dtype: str


def _images_plan(source, autoencoder, patch_size, budget, split, min_tokens, min_std, captions, batch, seed, dtype):
    unit = patch_size * autoencoder.downsample
    if budget % unit:
        raise ConfigError(
            f"budget side {budget} must be a multiple of patch × down-sampling = "
            f"{patch_size} × {autoencoder.downsample} = {unit}"
        )
    max_tokens = (budget // unit) ** 2
    min_tokens = max(1, max_tokens // 16) if min_tokens is None else _count("min_tokens", min_tokens)
    if min_tokens > max_tokens:
        raise ConfigError(
            f"min_tokens {min_tokens} exceeds the {max_tokens} tokens of the budget "
            f"({budget} px / {unit} = {budget // unit} per side): every image would be skipped"
        )
    if source.is_dir():
        listing = Listing.of_folder(source, broken_links=True)
    elif source.is_file():
        listing = Listing.of_sources(*list_jsonl(source, split))
    else:
        raise MissingFileError(f"no such image folder or JSONL file: {source}")
    if captions == "filename":
        listing.captions = None  # from the file names, as for a class folder
    dtype = dtype or "float16"
    stored = getattr(torch, dtype)

    def build(k: int, first: int, results: Iterator) -> Shard:
        shard, encoder, kept = Shard(), BatchEncoder(autoencoder, patch_size, batch, seed, stored), []
        for i, (variants, reason, detail) in enumerate(results, start=first):
            src = listing[i]
            if reason is not None:
                shard.skip(reason, f"{src.path} ({detail})" if detail else str(src.path))
                continue
            image = len(shard.images)
            shard.images.append({"source": str(src.path), "caption": src.caption})
            for v, (eligible, pixels) in enumerate(variants):
                encoder.add((image, v), pixels, (i, v))
                kept.append((image, v, eligible, src.label))
        done = encoder.flush()
        for image, v, eligible, label in kept:
            tokens, h, w = done[(image, v)]
            shard.features.append(tokens)
            shard.sequences.append((image, v, int(eligible), h, w, label))
        return shard

    job = ShardJob(
        len(listing),
        lambda i: (Path(listing.paths[i]), budget, unit, min_tokens, min_std),
        decode,
        build,
    )
    lines = (f"{listing.paths[i]}\t{listing.labels[i]}" for i in range(len(listing)))
    settings = dict(
        kind="images",
        listing=_digest(lines),
        autoencoder=autoencoder.spec(),
        patch_size=patch_size,
        budget=budget,
        min_tokens=min_tokens,
        min_std=min_std,
        split=split,
        captions=captions,
        seed=seed,
    )
    fields = dict(
        autoencoder=autoencoder.spec(),
        patch_size=patch_size,
        channels=autoencoder.channels,
        downsample=autoencoder.downsample,
        token_dim=patch_size**2 * autoencoder.channels,
        budget=budget,
        max_tokens=max_tokens,
        num_classes=len(listing.classes),
        class_names=listing.classes,
        source_kind="images",
    )
    return _Plan(job, settings, fields, dtype)


def _released_plan(source, budget_tokens, spec, patch_size, budget, keep_small, dtype):
    listing = ReleasedListing(source, budget_tokens, keep_small)
    token_dim, first_dtype = released.probe(source, listing)
    p = released.check_given("patch-size", patch_size, released.derive_patch_size(token_dim), f"{token_dim} = p²·4")
    side = released.derive_budget(budget_tokens, p, spec["downsample"])
    released.check_given("budget", budget, side, f"{budget_tokens} tokens of {p}×{p} ×{spec['downsample']} latents")
    job = ShardJob(
        len(listing),
        lambda i: (source, listing[i], token_dim, budget_tokens),
        released.read_item,
        lambda k, first, results: released.build_shard(first, results, listing),
    )
    names = (f"{listing.flags[i]}\t{listing.names[i]}" for i in range(len(listing)))
    settings = dict(kind="released", listing=_digest(names), autoencoder=spec, keep_small=keep_small)
    fields = dict(
        autoencoder=spec,
        patch_size=p,
        channels=released.CHANNELS,
        downsample=spec["downsample"],
        token_dim=token_dim,
        budget=side,
        max_tokens=budget_tokens,
        source_kind="released",
    )
    return _Plan(job, settings, fields, dtype or first_dtype)


def prepare(
    source: str | Path,
    out: str | Path,
    *,
    autoencoder: Autoencoder | dict | None = None,
    patch_size: int | None = None,
    budget: int | None = None,
    split: str | None = None,
    min_tokens: int | None = None,
    min_std: float = 1.0,
    workers: int | None = None,
    shard_images: int = 1000,
    encode_batch: int = 32,
    seed: int = 0,
    dtype: str | None = None,
    keep_small: bool = False,
    progress: bool = True,
    text_encoder: str | dict | None = None,
    captions: str = "caption",
    overwrite: bool = False,
    env: Env | None = None,
) -> PrepareReport:
    """Build a token dataset from an image folder (class sub-folders), a JSONL list, or a folder of
    released FiTv2 latents; under torchrun every rank calls it (``env``) and makes its share.

    autoencoder: for images, the one that encodes them (pixel space if None); for released latents,
    the spec to record (SD-VAE ft-EMA if None, see ``released.released_spec``). patch_size, budget:
    for images 4 and 32 px if None; for released latents derived from the files (a given value must
    agree). min_std: images whose every channel varies less than this (in 0..255 levels) are blank.
    shard_images: sources per shard, the unit of work and of resumption. encode_batch: images of one
    size per autoencoder call. seed: of the autoencoder's posterior samples. dtype: of the stored
    tokens (float16 for images, the released files' own if None). keep_small: also the released
    ``less_than_16`` images. text_encoder: 'minilm' or 'clip:PATH' encodes every kept image's
    caption once into ``text/`` (text-to-image). captions: 'caption' (a JSONL row's caption, else
    the file name) or 'filename'. overwrite: remove a dataset (finished or partial) in OUT first."""
    source, out, env = Path(source), Path(out), env or Env()
    shard_images, encode_batch = _count("shard_images", shard_images), _count("encode_batch", encode_batch)
    seed = _count("seed", seed, low=0)
    world = env.world_size
    workers = _count("workers", workers) if workers is not None else max(1, min(4, (os.cpu_count() or 1) // world))
    if isinstance(min_std, bool) or not isinstance(min_std, Real) or not 0 <= min_std < math.inf:
        raise ConfigError(f"min_std must be a number >= 0; got {min_std!r}")
    if captions not in CAPTION_SOURCES:
        raise ConfigError(f"captions must be one of {', '.join(CAPTION_SOURCES)}; got {captions!r}")
    if dtype is not None and dtype not in DTYPES:
        raise ConfigError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype!r}")
    text_spec = parse_text_encoder(text_encoder) if text_encoder is not None else None
    budget_tokens = released_budget(source)
    if budget_tokens is not None:
        if min_tokens is not None:
            raise ConfigError("the released latent folders fix each image's tokens: leave out --min-tokens")
        if text_spec is not None:
            raise ConfigError("the released ImageNet latents have class labels, no captions: leave out --text-encoder")
        if autoencoder is None or isinstance(autoencoder, dict):
            spec = autoencoder or released.released_spec()
        elif autoencoder.name == "sd-vae":  # a loaded copy of the VAE: its path and factors are recorded
            spec = {**released.released_spec(), **autoencoder.spec()}
        else:
            raise ConfigError(
                f"the released latents are SD-VAE latents; the {autoencoder.name} autoencoder cannot decode them"
            )
        plan = _released_plan(source, budget_tokens, spec, patch_size, budget, keep_small, dtype)
    else:
        if isinstance(autoencoder, dict):
            raise ConfigError(f"{source} is not a folder of released latents: pass an autoencoder, not a spec")
        ae = autoencoder or PixelSpace()
        p = _count("patch_size", patch_size if patch_size is not None else 4)
        side = _count("budget", budget if budget is not None else 32)
        plan = _images_plan(source, ae, p, side, split, min_tokens, min_std, captions, encode_batch, seed, dtype)
    settings = {
        **plan.settings,
        "source": str(source.resolve()),
        "shard_images": shard_images,
        "dtype": plan.dtype,
        "text_encoder": text_spec,
    }
    encoder = load_text_encoder(text_spec) if text_spec is not None else None  # before hours of encoding
    if (out / INDEX_FILE).exists() and not overwrite:
        raise UserError(f"{out} already holds a token dataset; choose another OUT or pass --overwrite")
    created = not out.exists()
    if env.is_main and overwrite:
        remove_dataset(out)
    barrier(env)
    if env.is_main:
        out.mkdir(parents=True, exist_ok=True)
    barrier(env)
    open_run(out, settings, env)
    torch_dtype = getattr(torch, plan.dtype)
    threads = torch.get_num_threads()
    if plan.fields["autoencoder"]["name"] == "pixel" or plan.settings["kind"] == "released":
        torch.set_num_threads(1)  # only tiny tensor copies here: threads would wait on each other (and on workers)
    try:
        shards = run_shards(out, plan.job, env, shard_images, workers, torch_dtype, plan.fields["token_dim"], progress)
    except UserError:
        if env.is_main and not any((out / shard_name(k)).exists() for k in range(1 + plan.job.count // shard_images)):
            _remove(out, created)  # nothing was made: leave no trace of a run that cannot work
        raise
    finally:
        torch.set_num_threads(threads)
    report = PrepareReport()
    error = None
    if env.is_main:
        merged = merge(out, shards, keep_captions=encoder is not None)
        report = PrepareReport(merged.images, merged.sequences, merged.tokens, merged.skipped, merged.examples)
        if merged.images == 0:
            error = (
                f"no usable images in {source}: all {plan.job.count} files were skipped "
                f"({_skip_summary(merged.skipped)}); nothing was written"
            )
            _remove(out, created)
        else:
            fields = dict(plan.fields)
            if plan.settings["kind"] == "released":  # class names are not released: the labels seen
                fields["num_classes"] = merged.max_label + 1
                fields["class_names"] = [str(c) for c in range(merged.max_label + 1)]
            text = write_text(out, encoder, merged.captions or [], progress)
            DatasetIndex(
                **fields,
                shards=[shard_name(k) for k in range(shards)],
                images=merged.images,
                sequences=merged.sequences,
                tokens=merged.tokens,
                skipped=dict(merged.skipped),
                skipped_examples=merged.examples,
                source=str(source),
                split=split,
                dtype=plan.dtype,
                **text,
            ).save(out)
    error = broadcast_object(env, error)
    if error:
        raise UserError(error)
    barrier(env)
    return report


def _remove(out: Path, created: bool) -> None:
    remove_dataset(out)
    if created and out.is_dir() and not any(out.iterdir()):
        out.rmdir()
