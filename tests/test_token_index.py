"""The compact index: the reader's API, bytes per sequence on a large synthetic index, datasets of
format version 1, and the loader's epoch order (the one runs trained before the compact index used)."""

import json
import pickle
import shutil
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA
from safetensors import safe_open

from fitv2.data import TokenDataset, TokenLoader
from fitv2.data.index import RECORD, DatasetIndex, save_array
from fitv2.data.prepare import prepare
from fitv2.seeds import generator


def test_the_reader_api(token_dataset):
    ds = TokenDataset(token_dataset)
    assert len(ds) == 8 and ds.num_sequences == 16 and len(ds.labels()) == 8
    rec = ds.record(3)
    assert set(rec) == {"group", "variant", "eligible", "h", "w", "label", "shard", "offset"}
    assert rec["group"] == 1 and rec["variant"] == "crop" and ds.variants(1) == {"resize": 2, "crop": 3}
    x, mirror = ds.features(3), ds.features(3, flip=True)
    assert x.shape == (rec["h"] * rec["w"], 48) and x.dtype == torch.float32
    grid = x.reshape(rec["h"], rec["w"], 3, 4, 4)  # (c, p1, p2) within a token
    torch.testing.assert_close(mirror.reshape(rec["h"], rec["w"], 3, 4, 4), grid.flip(1).flip(-1))
    assert ds.source(1).endswith("class_0/img_001.png") and ds.caption(1) == "img"
    with safe_open(str(token_dataset / ds.index.shards[rec["shard"]]), framework="pt") as f:
        stored = f.get_tensor("features")[rec["offset"] : rec["offset"] + rec["h"] * rec["w"]]
    assert torch.equal(x, stored[:, 0].float())


def synthetic_index(root: Path, images: int) -> Path:
    """An index of ``images`` images with two sequences each (shards are not read to open it)."""
    records = np.zeros(2 * images, RECORD)
    records["group"] = np.repeat(np.arange(images), 2)
    records["variant"] = np.tile([0, 1], images)
    records["h"], records["w"], records["label"] = 16, 16, records["group"] % 1000
    records["shard"], records["offset"] = records["group"] // 1000, (np.arange(2 * images) % 2000) * 256
    root.mkdir(parents=True)
    save_array(records, root / "records.npy")
    DatasetIndex(
        autoencoder={"name": "pixel"},
        patch_size=2,
        channels=4,
        downsample=8,
        token_dim=16,
        budget=256,
        max_tokens=256,
        num_classes=1000,
        class_names=[str(c) for c in range(1000)],
        shards=[f"shards/{k:06d}.safetensors" for k in range(-(-images // 1000))],
        images=images,
        sequences=2 * images,
        tokens=512 * images,
    ).save(root)
    return root


def test_an_open_index_holds_at_most_64_bytes_a_sequence(tmp_path):
    root = synthetic_index(tmp_path / "big", 250_000)
    tracemalloc.start()
    start = time.perf_counter()
    ds = TokenDataset(root)
    seconds = time.perf_counter() - start
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert ds.num_sequences == 500_000 and len(ds) == 250_000
    assert held / ds.num_sequences <= 64 and peak / ds.num_sequences <= 96, (held, peak)
    assert seconds < 2.5  # about 0.05 s; the benchmark times a million sequences (benchmarks/scale.py)
    assert ds.variant(123_456, "mixed", coin=True) == 2 * 123_456  # a synthetic crop is not eligible
    assert ds.variant(123_456, "fixed", coin=False) == 2 * 123_456 + 1
    assert ds.lengths("mixed").nbytes == 4 * len(ds)


def test_a_version_1_dataset_still_opens(tmp_path):
    root = shutil.copytree(DATA / "dataset_v1", tmp_path / "v1")  # written by fitv2 0.x: items.jsonl
    assert json.loads((root / "index.json").read_text())["version"] == 1
    ds = TokenDataset(root)
    items = [json.loads(line) for line in (root / "items.jsonl").read_text().splitlines()]
    assert (len(ds), ds.num_sequences, ds.index.dtype) == (4, 8, "float16")
    for i, item in enumerate(items):
        assert ds.record(i) == {
            k: item[k] for k in ("group", "variant", "eligible", "h", "w", "label", "shard", "offset")
        }
    assert ds.source(2) == items[4]["source"] and ds.caption(2) == items[4]["caption"]
    assert ds.features(1, flip=True).shape == (16, 48)
    assert ds.variant(0, "mixed", coin=True) == 1 and ds.variant(1, "mixed", coin=True) == 2  # crop 3 not eligible
    batch = next(TokenLoader(ds, batch_size=2, seed=0, batching="pack"))
    assert batch.images == 2 and int(batch.tokens.layout.mask.sum()) in range(24, 33)


@pytest.mark.parametrize("bucket", [0, 3])
def test_the_epoch_order_is_the_one_earlier_versions_drew(token_dataset, bucket):
    """Exact resume of runs trained before the compact index: the same permutation, the same
    length-sorted chunks (Python's stable sort), the same shuffled batch order."""
    ds = TokenDataset(token_dataset)
    loader = TokenLoader(ds, batch_size=2, seed=7, bucket=bucket)
    loader.epoch = 3
    g = generator(7, 3)
    perm = torch.randperm(len(ds), generator=g).tolist()[:8]
    if bucket > 1:
        perm = [i for s in range(0, 8, 6) for i in sorted(perm[s : s + 6], key=lambda j: ds.length(j, "mixed"))]
    batches = [perm[s : s + 2] for s in range(0, 8, 2)]
    if bucket > 1:
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    assert loader._epoch_batches().tolist() == batches


def test_the_reader_keeps_few_files_open_and_travels_to_other_processes(class_images, tmp_path):
    prepare(class_images, tmp_path / "tokens", shard_images=3, workers=1, progress=False)
    ds, few = TokenDataset(tmp_path / "tokens"), TokenDataset(tmp_path / "tokens")
    few._shards.max_open = 1
    assert len(ds.index.shards) == 3
    for i in [*range(ds.num_sequences), 0, 15, 1, 14]:  # every shard in turn, then back and forth
        assert torch.equal(few.features(i, flip=i % 2 == 1), ds.features(i, flip=i % 2 == 1))
    assert len(few._shards._open) == 1
    copy = pickle.loads(pickle.dumps(few))  # as a DataLoader worker gets it: no file descriptors
    assert copy._shards._open == {} and torch.equal(copy.features(7), ds.features(7))
