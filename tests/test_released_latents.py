"""The released FiTv2 ImageNet latents (one safetensors file per image, four folders) convert into a
token dataset as they are: exact tokens, pairs as variants of one image, bad files skipped and counted."""

import json

import pytest
import torch
from imagegen import write_latent

from fitv2.cli import main
from fitv2.data.autoencoder import PixelSpace
from fitv2.data.dataset import TokenDataset
from fitv2.data.prepare import prepare
from fitv2.errors import ConfigError, UserError


def released_folder(root, dtype=torch.float16, budget=256, token_dim=16):
    """A small folder in the released layout (16x16-token budget): native-size files, resize/crop pairs (the
    crop written first), a resize without a crop, a small image, and broken or inconsistent files.
    Returns {relative path: (feature, label)} of the files expected in the dataset, and the skips."""
    L, side = budget, int(budget**0.5)
    native, resize, crop, small = (
        f"from_16_to_{L}",
        f"greater_than_{L}_resize",
        f"greater_than_{L}_crop",
        "less_than_16",
    )
    files = {}

    def put(rel, h, w, label, seed, **override):
        files[rel] = (write_latent(root / rel, h, w, label, dtype, seed, token_dim, **override), label)

    put(f"{crop}/n02_3.safetensors", side, side, 2, 10)  # the crop before its resize
    put(f"{resize}/n02_3.safetensors", side - 4, side + 4, 2, 11)
    put(f"{resize}/n01_7.safetensors", side - 2, side + 2, 1, 12)
    put(f"{crop}/n01_7.safetensors", side, side, 1, 13)
    put(f"{resize}/n03_1.safetensors", side - 6, side + 6, 3, 14)  # resize only
    put(f"{native}/n00_1.safetensors", 4, 6, 0, 15)
    put(f"{native}/n00_2.safetensors", side, side // 2, 0, 16)
    put(f"{small}/n04_1.safetensors", 3, 4, 4, 17)
    skips = {"unreadable latent file": 1, "inconsistent latent file": 3, "crop file without a usable resize file": 2}
    (root / native / "n09_broken.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    write_latent(root / native / "n09_grid.safetensors", 4, 5, 0, dtype, 1, token_dim, grid=torch.zeros(2, 20))
    write_latent(root / resize / "n09_size.safetensors", 4, 5, 0, dtype, 2, token_dim, size=torch.tensor([5, 4]))
    write_latent(root / crop / "n09_size.safetensors", side, side, 0, dtype, 3, token_dim)  # its resize is bad
    write_latent(root / crop / "n09_nan.safetensors", side, side, 0, dtype, 4, token_dim)  # crop only
    write_latent(root / native / "n09_over.safetensors", side + 1, side, 0, dtype, 5, token_dim)  # over the budget
    return files, skips


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_released_files_become_sequences_with_their_exact_tokens(tmp_path, dtype):
    files, skips = released_folder(tmp_path / "released", dtype)
    report = prepare(tmp_path / "released", tmp_path / "tokens", workers=1, progress=False, shard_images=3)
    assert dict(report.skipped) == skips
    ds = TokenDataset(tmp_path / "tokens")
    index = ds.index
    assert (index.patch_size, index.budget, index.max_tokens, index.token_dim, index.channels) == (2, 256, 256, 16, 4)
    assert index.autoencoder == {
        "name": "sd-vae",
        "model": "stabilityai/sd-vae-ft-ema",
        "scaling_factor": 0.18215,
        "shift_factor": 0.0,
        "downsample": 8,
    }
    assert index.dtype == str(dtype).removeprefix("torch.") and index.source_kind == "released"
    assert (len(ds), ds.num_sequences) == (5, 7)  # less_than_16 left out; two images with a crop
    assert index.num_classes == 4 and index.class_names == ["0", "1", "2", "3"]
    seen = set()
    for g in range(len(ds)):
        variants = ds.variants(g)
        resize_file = ds.source(g)
        assert set(variants) == ({"resize", "crop"} if "n01" in resize_file or "n02" in resize_file else {"resize"})
        for name, i in variants.items():
            rel = resize_file if name == "resize" else resize_file.replace("_resize/", "_crop/")
            feature, label = files[rel]
            h, w = feature.shape[1:3]
            rec = ds.record(i)
            assert (rec["h"], rec["w"], rec["label"], rec["group"]) == (h, w, label, g)
            assert rec["eligible"] == (name == "crop")
            stored = ds.index.dtype
            for flip in (False, True):
                tokens = ds._shards.rows(rec["shard"], rec["offset"], h * w)[:, int(flip)]
                assert str(tokens.dtype) == f"torch.{stored}"
                assert torch.equal(tokens, feature[int(flip)].reshape(h * w, 16))  # exact, not just close
                assert torch.equal(ds.features(i, flip), feature[int(flip)].reshape(h * w, 16).float())
            seen.add(rel)
    assert seen == {rel for rel in files if not rel.startswith("less_than_16")}
    assert ds.variant(next(g for g in range(len(ds)) if "crop" in ds.variants(g)), "mixed", coin=True) in {
        i for g in range(len(ds)) for n, i in ds.variants(g).items() if n == "crop"
    }


def test_small_images_are_kept_on_request_and_mixed_dtypes_widen_exactly(tmp_path):
    released_folder(tmp_path / "released", torch.float32)
    small = tmp_path / "released" / "less_than_16" / "n04_1.safetensors"
    feature = write_latent(small, 3, 4, 4, torch.bfloat16, 7)  # a bf16 file in a float32 dataset
    report = prepare(tmp_path / "released", tmp_path / "tokens", workers=1, progress=False, keep_small=True)
    ds = TokenDataset(tmp_path / "tokens")
    assert report.images == len(ds) == 6 and ds.index.dtype == "float32"
    g = next(g for g in range(len(ds)) if ds.source(g).startswith("less_than_16"))
    assert torch.equal(ds.features(ds.variants(g)["resize"], flip=True), feature[1].reshape(12, 16).float())
    fp16 = prepare(tmp_path / "released", tmp_path / "half", workers=1, progress=False, dtype="float16")
    assert fp16.images == 5 and TokenDataset(tmp_path / "half").index.dtype == "float16"


def test_patch_size_and_budget_come_from_the_files(tmp_path):
    root = tmp_path / "hr"
    feature = write_latent(root / "from_16_to_1024" / "a.safetensors", 20, 30, 7, torch.float16, 0, token_dim=64)
    prepare(root, tmp_path / "tokens", workers=1, progress=False)
    index = TokenDataset(tmp_path / "tokens").index
    assert (index.patch_size, index.max_tokens, index.budget, index.token_dim) == (4, 1024, 32 * 4 * 8, 64)
    assert index.num_classes == 8 and feature.shape == (2, 20, 30, 64)
    with pytest.raises(ConfigError, match="--patch-size 2 disagrees with the released latents' 4"):
        prepare(root, tmp_path / "other", patch_size=2, workers=1, progress=False)
    with pytest.raises(ConfigError, match="--budget 256 disagrees"):
        prepare(root, tmp_path / "other", budget=256, workers=1, progress=False)
    with pytest.raises(ConfigError, match="SD-VAE latents; the pixel autoencoder cannot decode them"):
        prepare(root, tmp_path / "other", autoencoder=PixelSpace(), workers=1, progress=False)
    odd = tmp_path / "odd"
    write_latent(odd / "from_16_to_256" / "a.safetensors", 4, 4, 0, torch.float16, 0, token_dim=12)
    with pytest.raises(UserError, match="12 values a token are not p²·4"):
        prepare(odd, tmp_path / "other", workers=1, progress=False)
    mixed = tmp_path / "mixed"
    write_latent(mixed / "from_16_to_256" / "a.safetensors", 4, 4, 0, torch.float16, 0)
    (mixed / "greater_than_1024_resize").mkdir()
    with pytest.raises(UserError, match=r"several token budgets \(\[256, 1024\]\)"):
        prepare(mixed, tmp_path / "other", workers=1, progress=False)


def test_the_command_converts_the_released_layout_and_trains_on_it(tmp_path, capsys):
    released_folder(tmp_path / "released")
    out = tmp_path / "tokens"
    assert main(["prepare", str(tmp_path / "released"), str(out), "--workers", "1", "--scaling-factor", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "5 images -> 7 sequences" in printed and "skipped     3  inconsistent latent file" in printed
    index = json.loads((out / "index.json").read_text())
    assert index["autoencoder"]["scaling_factor"] == 0.2 and "path" not in index["autoencoder"]
    assert main(["prepare", str(tmp_path / "released"), str(tmp_path / "t2"), "--min-tokens", "4"]) == 2
    assert "leave out --min-tokens" in capsys.readouterr().err
    train = ["train", "--data", str(out), "--out", str(tmp_path / "run"), "--preset", "FiTv2-Micro/4"]
    assert main([*train, "--batch-size", "2", "--steps", "2", "--no-progress", "--model", "depth=1"]) == 0
    config = json.loads((tmp_path / "run" / "checkpoints" / "step_0000002" / "config.json").read_text())
    assert (config["model"]["patch_size"], config["model"]["in_channels"], config["model"]["num_classes"]) == (2, 4, 4)
    assert config["dataset"]["autoencoder"]["model"] == "stabilityai/sd-vae-ft-ema"
