"""A token dataset written in shards of consecutive source items, by any number of processes, resumably.

Source item i (an image, or a released image's latent files) belongs to shard i // K; the missing
shards are dealt to the ranks in turn, and each is written in one piece, to a temporary name
renamed once complete:

    OUT/prepare.json                the run's settings, written before any shard
    OUT/shards/NNNNNN.safetensors   "features" (tokens, 2, p²·C): each sequence and its mirror image;
                                    "sequences" (n, 6) int64: image within the shard, variant,
                                    eligible, h, w, label; metadata "fitv2": JSON {"images":
                                    [{"source", "caption"}], "skipped": {reason: n}, "examples"}

A shard depends only on its items and the settings (the autoencoder's posterior noise is seeded
per image, and images are batched within a shard), so N processes write what one writes, and a
run killed at any moment leaves complete shards only: the same command again makes the missing
ones. A command with other settings is refused by name rather than mixed in. Once every shard is
there, rank 0 merges their parts into the dataset's records (``index.py``); ``index.json`` last.
:class:`ShardReader` reads a sequence's rows back, one ``pread`` each.
"""

from __future__ import annotations

import ctypes
import functools
import json
import os
import shutil
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor
from tqdm import tqdm

from ..checkpoint import save_json, save_tensors
from ..distributed import Env, barrier, broadcast_object
from ..errors import UserError
from .index import IMAGES_FILE, INDEX_FILE, OFFSETS_FILE, RECORD, RECORDS_FILE, save_array, write_image_table

SETTINGS_FILE = "prepare.json"
SHARD_DIR = "shards"
EXAMPLES = 5  # paths kept per skip reason


def shard_name(k: int) -> str:
    return f"{SHARD_DIR}/{k:06d}.safetensors"


@dataclass
class Shard:
    """One shard being made: its sequences (in order), its kept images and its skips."""

    features: list[Tensor] = field(default_factory=list)  # (h·w, 2, D) per sequence
    # per sequence: image (within the shard), variant, eligible, h, w, label
    sequences: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    images: list[dict[str, str]] = field(default_factory=list)  # {"source", "caption"} per kept image
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        kept = self.examples.setdefault(reason, [])
        if len(kept) < EXAMPLES:
            kept.append(where)


def write_shard(out: Path, k: int, shard: Shard, dtype: torch.dtype, token_dim: int) -> None:
    features = (
        torch.cat([f.to(dtype) for f in shard.features])
        if shard.features
        else torch.zeros(0, 2, token_dim, dtype=dtype)
    )
    if features.shape[0] >= 2**32:
        raise UserError(f"shard {k} holds {features.shape[0]:,} tokens (at most 2³²); choose a smaller --shard-images")
    sequences = torch.tensor(shard.sequences, dtype=torch.int64).reshape(-1, 6)
    meta = {"images": shard.images, "skipped": dict(shard.skipped), "examples": shard.examples}
    save_tensors({"features": features, "sequences": sequences}, out / shard_name(k), {"fitv2": json.dumps(meta)})


def read_part(path: Path) -> tuple[np.ndarray, dict[str, Any]]:
    """A shard's (n, 6) sequence table and its metadata, without reading its tokens."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {})["fitv2"])
            sequences = f.get_tensor("sequences").numpy()
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as err:
        raise UserError(f"shard {path} is damaged ({err}); delete it and run the same command again") from None
    return sequences, meta


def open_run(out: Path, settings: dict[str, Any], env: Env) -> None:
    """Rank 0 records the settings in OUT/prepare.json, or checks them against a partly made run's
    (and removes what a killed write left); every rank raises the same one-line refusal."""
    error = None
    if env.is_main:
        saved = out / SETTINGS_FILE
        if saved.is_file():
            old = json.loads(saved.read_text())
            if old != settings:
                changed = sorted(k for k in {*old, *settings} if old.get(k) != settings.get(k))
                error = (
                    f"{out} holds a partly prepared dataset made with other settings ({', '.join(changed)}); "
                    "run the same command to finish it, or pass --overwrite to start afresh"
                )
        elif any((out / SHARD_DIR).glob("*.safetensors")):
            error = f"{out} holds shards of an unknown prepare (no {SETTINGS_FILE}); pass --overwrite to start afresh"
        else:
            save_json(settings, saved)
        for stale in (out / SHARD_DIR).glob(".*.tmp") if error is None else ():
            stale.unlink(missing_ok=True)  # a shard whose write was killed: it is made again
    error = broadcast_object(env, error)
    if error:
        raise UserError(error)


def pending(out: Path, shards: int) -> list[int]:
    return [k for k in range(shards) if not (out / shard_name(k)).is_file()]


def remove_dataset(out: Path) -> None:
    """What ``prepare`` writes in OUT, finished or partly made; anything else there stays. The
    settings go last: killed half way, what is left is still refused to another command."""
    for name in (INDEX_FILE, "items.jsonl", RECORDS_FILE, IMAGES_FILE, OFFSETS_FILE):
        (out / name).unlink(missing_ok=True)
    shutil.rmtree(out / SHARD_DIR, ignore_errors=True)
    shutil.rmtree(out / "text", ignore_errors=True)
    (out / SETTINGS_FILE).unlink(missing_ok=True)


@dataclass
class Merged:
    """The dataset the shards make together."""

    images: int
    sequences: int
    tokens: int
    max_tokens: int  # of the longest sequence
    max_label: int
    skipped: Counter
    examples: dict[str, list[str]]
    captions: list[str] | None  # per image, when asked for


def merge(out: Path, shards: int, keep_captions: bool = False) -> Merged:
    """Join the shards' parts into ``records.npy`` and ``images.jsonl`` (rank 0, every shard complete)."""
    parts: list[np.ndarray] = []
    skipped: Counter = Counter()
    examples: dict[str, list[str]] = {}
    captions: list[str] | None = [] if keep_captions else None
    images = 0

    def rows() -> Iterator[dict[str, str]]:
        nonlocal images
        for k in range(shards):
            sequences, meta = read_part(out / shard_name(k))
            part = np.zeros(len(sequences), RECORD)
            if len(sequences):
                image, variant, eligible, h, w, label = sequences.T
                tokens = h * w
                part["shard"], part["offset"] = k, np.cumsum(tokens) - tokens
                part["group"], part["label"] = images + image, label
                part["h"], part["w"], part["variant"], part["eligible"] = h, w, variant, eligible
            parts.append(part)
            skipped.update(meta["skipped"])
            for reason, paths in meta["examples"].items():
                kept = examples.setdefault(reason, [])
                kept.extend(paths[: EXAMPLES - len(kept)])
            images += len(meta["images"])
            for row in meta["images"]:
                if captions is not None:
                    captions.append(row["caption"])
                yield row

    count = write_image_table(out, rows())
    records = np.concatenate(parts) if parts else np.zeros(0, RECORD)
    assert count == images and (not len(records) or int(records["group"][-1]) == images - 1)
    save_array(records, out / RECORDS_FILE)
    tokens = records["h"].astype(np.int64) * records["w"]
    return Merged(
        images=images,
        sequences=len(records),
        tokens=int(tokens.sum()),
        max_tokens=int(tokens.max(initial=0)),
        max_label=int(records["label"].max(initial=-1)),
        skipped=skipped,
        examples=examples,
        captions=captions,
    )


@dataclass
class ShardJob:
    """How one kind of source becomes shards: ``item(i)`` is the picklable argument of
    ``worker`` (a module-level function run in the decoding pool, reading one source item), and
    ``build(k, first, results)`` turns the results of shard k's items (an iterator, consumed as the
    workers deliver) into the shard."""

    count: int
    item: Callable[[int], Any]
    worker: Callable[[Any], Any]
    build: Callable[[int, int, Iterator[Any]], Shard]


def shard_range(k: int, shard_items: int, count: int) -> range:
    return range(k * shard_items, min(count, (k + 1) * shard_items))


def run_shards(
    out: Path,
    job: ShardJob,
    env: Env,
    shard_items: int,
    workers: int,
    dtype: torch.dtype,
    token_dim: int,
    progress: bool = True,
) -> int:
    """Make this rank's share of the missing shards, reading items in ``workers``
    processes; every rank returns the number of shards once all of them are on the disk."""
    shards = -(-job.count // shard_items)
    todo = pending(out, shards)
    mine = todo[env.rank :: env.world_size]  # the missing shards dealt in turn: equal shares on a resume too
    if env.is_main and progress and len(todo) < shards:
        print(f"resuming {out}: {shards - len(todo)} of {shards} shards already made", flush=True)
    total = sum(len(shard_range(k, shard_items, job.count)) for k in todo)
    (out / SHARD_DIR).mkdir(parents=True, exist_ok=True)
    items = (job.item(i) for k in mine for i in shard_range(k, shard_items, job.count))
    bar = tqdm(total=total, desc="prepare", unit="img", smoothing=0.1, disable=not (progress and env.is_main))
    with bar, Pool(workers) if workers > 1 else _InProcess() as pool, _Window(64 * workers) as window:
        results = pool.imap(job.worker, window.feed(items), chunksize=4)

        def take() -> Any:
            result = next(results)
            window.release()
            return result

        for k in mine:
            span = shard_range(k, shard_items, job.count)
            shard = job.build(k, span.start, (take() for _ in span))
            write_shard(out, k, shard, dtype, token_dim)
            del shard
            _trim_heap()
            bar.update(min(len(span) * env.world_size, bar.total - bar.n))  # the other ranks keep the same pace
    barrier(env)
    return shards


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # the C library this process runs on
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows)
        return None


def _trim_heap() -> None:
    """Return a finished shard's freed buffers to the system: glibc keeps freed heap, and shards of
    many tensor sizes fragment it, so without this the RSS creeps up shard after shard."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


class _Window:
    """At most ``size`` items handed to the pool and not yet taken back. A pool's feeder thread
    would queue every item at once, and while the encoder is slower than the decoders their
    results (decoded images) would pile up: memory would grow with the dataset."""

    def __init__(self, size: int):
        self.slots = threading.Semaphore(size)
        self.closed = False

    def feed(self, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            self.slots.acquire()
            if self.closed:
                return
            yield item

    def release(self) -> None:
        self.slots.release()

    def __enter__(self) -> _Window:
        return self

    def __exit__(self, *exc) -> None:
        self.closed = True
        self.slots.release()  # wakes a feeder waiting for a slot, which then stops


class _InProcess:
    """Stand-in for a Pool when reading in this process (one worker: tests, debugging)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def imap(self, fn, jobs, chunksize: int = 1):
        return map(fn, jobs)


_ST_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32}


class ShardReader:
    """Token rows of a dataset's shards (``features`` (tokens, 2, D) of a safetensors file), one
    ``pread`` a sequence. Each shard's header is parsed once and kept (a few numbers a shard); at
    most ``max_open`` files are open at once (ImageNet has over a thousand shards), the least
    recently used closed first, so a reopen costs one ``open``. Safe across ``fork``: a
    position-free read shares no state with other processes."""

    def __init__(self, root: Path, names: list[str], max_open: int = 512):
        self.root, self.names, self.max_open = root, names, max_open
        self._headers: dict[int, tuple[int, torch.dtype, int]] = {}  # shard -> data start, dtype, D
        self._open: dict[int, int] = {}  # shard -> file descriptor, least recently used first

    def __getstate__(self) -> dict[str, Any]:  # file descriptors do not travel to another process
        return {**self.__dict__, "_open": {}}

    def _header(self, shard: int, fd: int) -> tuple[int, torch.dtype, int]:
        path = self.root / self.names[shard]
        try:
            size = int.from_bytes(os.pread(fd, 8, 0), "little")
            header = json.loads(os.pread(fd, size, 8))["features"]
            if header["dtype"] not in _ST_DTYPES or len(header["shape"]) != 3:
                raise UserError(f"{path}: 'features' of {header['dtype']} {header['shape']} is not (tokens, 2, D)")
        except (KeyError, ValueError) as err:
            raise UserError(f"{path} is not a token shard ({err}); prepare the dataset again") from None
        return 8 + size + header["data_offsets"][0], _ST_DTYPES[header["dtype"]], header["shape"][2]

    def _file(self, shard: int) -> tuple[int, int, torch.dtype, int]:
        fd = self._open.pop(shard, None)
        if fd is None:
            fd = os.open(self.root / self.names[shard], os.O_RDONLY)
            if shard not in self._headers:
                try:
                    self._headers[shard] = self._header(shard, fd)
                except UserError:
                    os.close(fd)
                    raise
            if len(self._open) >= self.max_open:
                os.close(self._open.pop(next(iter(self._open))))
        self._open[shard] = fd  # most recently used last
        return (fd, *self._headers[shard])

    def rows(self, shard: int, offset: int, count: int) -> Tensor:
        """(count, 2, D) tokens from row ``offset`` of a shard, in their stored dtype."""
        fd, start, dtype, dim = self._file(shard)
        rows = torch.empty((count, 2, dim), dtype=dtype)
        array = rows.view(torch.int16 if dtype == torch.bfloat16 else dtype).numpy()  # numpy has no bfloat16
        buffer = array.reshape(-1).view(np.uint8).data
        if os.preadv(fd, [buffer], start + offset * 2 * dim * rows.element_size()) != len(buffer):
            raise UserError(f"{self.root / self.names[shard]} is shorter than its index says; prepare it again")
        return rows

    def close(self) -> None:
        for fd in self._open.values():
            os.close(fd)
        self._open.clear()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass
