"""prepare -> token dataset -> loader, on generated folders with odd and broken files."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from imagegen import add_odd_files
from PIL import Image

from fitv2.data.dataset import TokenDataset, TokenLoader
from fitv2.data.images import SkipImage, center_crop, load_rgb, resize_to_budget
from fitv2.data.index import DatasetIndex
from fitv2.data.prepare import prepare
from fitv2.errors import UserError
from fitv2.tokens import unpatchify


@pytest.fixture(scope="module")
def odd_dataset(class_images, tmp_path_factory):
    root = tmp_path_factory.mktemp("odd")
    images = Path(shutil.copytree(class_images, root / "images"))  # the shared 2 x 4 images, and odd files
    expected = add_odd_files(images / "class_0")
    report = prepare(images, root / "tokens", patch_size=4, budget=32, workers=1, progress=False)
    return root, report, expected


def test_odd_files_are_kept_or_skipped_by_reason(odd_dataset):
    root, report, expected = odd_dataset
    kept = sum(v == "kept" for v in expected.values())
    assert report.images == 8 + kept
    assert report.skipped == {
        "unreadable or truncated": 1,
        "not an image": 1,
        "degenerate size": 1,
        "aspect ratio too extreme for the budget": 1,
    }
    index = json.loads((root / "tokens" / "index.json").read_text())
    assert index["skipped"] == dict(report.skipped)
    assert index["class_names"] == ["class_0", "class_1"] and index["max_tokens"] == 64
    ds = TokenDataset(root / "tokens")
    sources = {ds.source(g).split("/")[-1] for g in range(len(ds))}
    assert {name for name, outcome in expected.items() if outcome == "kept"} <= sources


def test_image_modes_load_as_rgb_with_exif_rotation(odd_dataset):
    root = odd_dataset[0] / "images" / "class_0"
    for name in ("rgba.png", "palette.png", "gray.png", "gray16.png"):
        img = load_rgb(root / name)
        assert img.mode == "RGB" and img.size == (40, 30)
    assert load_rgb(root / "rotated.jpg").size == (30, 40)
    # 16-bit grey keeps its contrast (not clipped to white)
    assert np.asarray(load_rgb(root / "gray16.png")).min() < 100


def test_resize_rule_and_crop():
    img = Image.new("RGB", (640, 480))
    out = resize_to_budget(img, 256, 16)  # area 256² keeping 4:3, floored to /16
    assert out.size == (288, 208)
    assert resize_to_budget(Image.new("RGB", (100, 60)), 256, 16).size == (96, 48)  # never up-sampled
    assert center_crop(img, 256).size == (256, 256)
    assert resize_to_budget(Image.new("RGB", (3, 40)), 32, 4).size == (4, 52)  # narrow side widened to the unit
    with pytest.raises(SkipImage, match="aspect ratio"):
        resize_to_budget(Image.new("RGB", (5, 3000)), 32, 4)


def test_stored_tokens_decode_to_the_resized_image(odd_dataset):
    root = odd_dataset[0]
    ds = TokenDataset(root / "tokens")
    group = next(g for g in range(len(ds)) if ds.source(g).endswith("rgba.png"))
    item = ds.variants(group)["resize"]
    rec = ds.record(item)
    img = unpatchify(ds.features(item)[None], rec["h"], rec["w"], 4)[0]
    expected = np.asarray(resize_to_budget(load_rgb(ds.source(group)), 32, 4)).astype(np.float32) / 127.5 - 1
    torch.testing.assert_close(img.permute(1, 2, 0), torch.from_numpy(expected), atol=4e-3, rtol=0)
    flipped = unpatchify(ds.features(item, flip=True)[None], rec["h"], rec["w"], 4)[0]
    torch.testing.assert_close(flipped, img.flip(-1))


@pytest.mark.parametrize("mode", ["mixed", "flexible", "fixed"])
def test_loader_modes_and_padding(odd_dataset, mode):
    ds = TokenDataset(odd_dataset[0] / "tokens")
    loader = TokenLoader(ds, batch_size=4, mode=mode, seed=0)
    seen = set()
    for _ in range(2 * loader.batches_per_epoch):
        batch = next(loader)
        lengths = batch.tokens.layout.mask.sum(1)
        assert batch.tokens.x.shape[1] == int(lengths.max())  # padded to the longest
        if mode == "fixed":
            assert (lengths == 64).all()
        for h, w in batch.tokens.layout.size[:, 0].tolist():
            seen.add((h, w))
    assert seen


def test_variant_choice_per_mode(odd_dataset):
    ds = TokenDataset(odd_dataset[0] / "tokens")
    groups = [ds.variants(g) for g in range(len(ds))]
    eligible = next(g for g, v in enumerate(groups) if ds.record(v["crop"])["eligible"])
    small = next(g for g, v in enumerate(groups) if not ds.record(v["crop"])["eligible"])
    crop, resize = groups[eligible]["crop"], groups[eligible]["resize"]
    assert ds.variant(eligible, "mixed", coin=True) == crop and ds.variant(eligible, "mixed", coin=False) == resize
    assert ds.variant(eligible, "flexible", coin=True) == resize
    assert ds.variant(eligible, "fixed", coin=False) == crop
    # images not larger than the budget side are never cropped in mixed mode, always in fixed mode
    assert ds.variant(small, "mixed", coin=True) == groups[small]["resize"]
    assert ds.variant(small, "fixed", coin=False) == groups[small]["crop"]


def test_without_hflip_the_loader_never_takes_a_mirror_image(odd_dataset):
    """--no-hflip (glyphs: a mirrored b is a d): the same draws, every example its unflipped tokens."""
    ds = TokenDataset(odd_dataset[0] / "tokens")
    flipped, plain = TokenLoader(ds, batch_size=4, seed=3), TokenLoader(ds, batch_size=4, seed=3, hflip=False)
    differ = 0
    for _ in range(2 * plain.batches_per_epoch):
        a, b = next(flipped), next(plain)
        assert torch.equal(a.tokens.layout.size, b.tokens.layout.size)  # the same images and variants
        differ += not torch.equal(a.tokens.x, b.tokens.x)
        for row, (h, w) in enumerate(b.tokens.layout.size[:, 0].tolist()):
            tokens = b.tokens.x[row, : h * w]
            assert any(torch.equal(tokens, ds.features(i)) for i in range(ds.num_sequences))
    assert differ > 0  # with flips on, some examples were mirrored


def test_loader_resume_replays_the_same_batches(odd_dataset):
    ds = TokenDataset(odd_dataset[0] / "tokens")
    a = TokenLoader(ds, batch_size=3, seed=5, bucket=2)
    for _ in range(4):
        next(a)
    state = a.state_dict()
    expected = [next(a) for _ in range(5)]
    b = TokenLoader(ds, batch_size=3, seed=5, bucket=2)
    b.load_state_dict(state)
    for e in expected:
        got = next(b)
        torch.testing.assert_close(got.tokens.x, e.tokens.x)
        assert torch.equal(got.labels, e.labels)


def test_ranks_split_the_global_batch(odd_dataset):
    ds = TokenDataset(odd_dataset[0] / "tokens")
    whole = next(TokenLoader(ds, batch_size=4, seed=1))
    parts = [next(TokenLoader(ds, batch_size=4, seed=1, rank=r, world_size=2)) for r in range(2)]
    assert sorted(whole.labels.tolist()) == sorted(parts[0].labels.tolist() + parts[1].labels.tolist())
    assert whole.labels[0::2].tolist() == parts[0].labels.tolist()


@pytest.mark.parametrize("batching,row_length", [("pack", 64), ("pack", None), ("flat", None)])
def test_packed_batches_hold_the_padded_batch_images(odd_dataset, batching, row_length):
    ds = TokenDataset(odd_dataset[0] / "tokens")
    padded = next(TokenLoader(ds, batch_size=4, seed=3))
    packed = next(TokenLoader(ds, batch_size=4, seed=3, batching=batching, row_length=row_length))
    valid = int(padded.tokens.layout.mask.sum())
    assert int(packed.tokens.layout.mask.sum()) == valid
    if batching == "flat":  # one row, exactly as long as the batch's tokens: no padding at all
        assert packed.tokens.x.shape[:2] == (1, valid) and bool(packed.tokens.layout.mask.all())
    else:  # rows of the given length, or of the dataset's token budget
        assert packed.tokens.x.shape[1] == (row_length or ds.meta["max_tokens"])
    assert sorted(packed.labels[packed.ids >= 0].tolist()) == sorted(padded.labels.tolist())


def test_dataset_index_round_trips_and_refuses_what_it_cannot_read(token_dataset, tmp_path):
    index = DatasetIndex.load(token_dataset)
    assert (index.patch_size, index.budget, index.max_tokens) == (4, 32, 64)
    assert index.token_dim == 4 * 4 * 3 and index.num_classes == 2 and index.images == 8
    assert TokenDataset(token_dataset).meta == index.to_dict()
    index.save(tmp_path)
    assert DatasetIndex.load(tmp_path) == index

    data = index.to_dict()
    for change, message in [
        ({"format": "other"}, "not a fitv2 token-dataset index"),
        ({"version": 99}, "format version 99"),
    ]:
        (tmp_path / "index.json").write_text(json.dumps({**data, **change}))
        with pytest.raises(UserError, match=message):
            DatasetIndex.load(tmp_path)
    del data["max_tokens"]
    (tmp_path / "index.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="lacks max_tokens"):
        DatasetIndex.load(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(UserError, match="not valid JSON"):
        DatasetIndex.load(tmp_path)
    with pytest.raises(UserError, match="not a token dataset"):
        DatasetIndex.load(tmp_path / "nowhere")
