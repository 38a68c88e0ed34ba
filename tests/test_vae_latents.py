"""The sd-vae autoencoder takes its latent space (scaling, shift, down-sampling) from the VAE,
checks it against what the VAE really does, and a dataset and its models keep it."""

import json
import shutil
import sys

import pytest
import torch
from imagegen import make_class_folder
from safetensors import safe_open

from fitv2.data.autoencoder import DiffusersVAE, load_autoencoder
from fitv2.data.dataset import TokenDataset
from fitv2.data.prepare import prepare
from fitv2.errors import MissingFileError, UserError

diffusers = pytest.importorskip("diffusers")

SDXL_SCALE, FLUX_SHIFT = 0.13025, 0.1159


def _tiny_vae(path, blocks: int, **config):
    vae = diffusers.AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8,) * blocks,
        layers_per_block=1,
        norm_num_groups=2,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        **config,
    )
    vae.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def vaes(tmp_path_factory):
    root = tmp_path_factory.mktemp("vaes")
    torch.manual_seed(0)
    return {
        "x8": _tiny_vae(root / "x8", 4),
        "x4": _tiny_vae(root / "x4", 3),
        "sdxl": _tiny_vae(root / "sdxl", 4, scaling_factor=SDXL_SCALE, shift_factor=FLUX_SHIFT),
    }


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_class_folder(
        tmp_path_factory.mktemp("vae_images") / "images", classes=2, per_class=3, sizes=((48, 32), (64, 80), (40, 40))
    )


def _raw(path):
    return diffusers.AutoencoderKL.from_pretrained(str(path), local_files_only=True).eval()


def test_factors_are_read_from_the_vae_config(vaes):
    x8, x4, sdxl = (DiffusersVAE(vaes[k]) for k in ("x8", "x4", "sdxl"))
    assert (x8.downsample, x8.scaling_factor, x8.shift_factor, x8.channels) == (8, 0.18215, 0.0, 4)
    assert (x4.downsample, x4.scaling_factor, x4.shift_factor) == (4, 0.18215, 0.0)
    assert (sdxl.downsample, sdxl.scaling_factor, sdxl.shift_factor) == (8, SDXL_SCALE, FLUX_SHIFT)
    assert sdxl.spec() == {
        "name": "sd-vae",
        "path": str(vaes["sdxl"]),
        "scaling_factor": SDXL_SCALE,
        "shift_factor": FLUX_SHIFT,
        "downsample": 8,
    }
    over = load_autoencoder(str(vaes["sdxl"]), scaling_factor=0.5, shift_factor=-0.25)
    assert (over.scaling_factor, over.shift_factor, over.downsample) == (0.5, -0.25, 8)


def test_encode_and_decode_follow_the_diffusers_convention(vaes):
    ae, raw = DiffusersVAE(vaes["sdxl"], sample=False), _raw(vaes["sdxl"])
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        z = raw.encode(x).latent_dist.mean
        latents = ae.encode(x)
        assert latents.shape == (2, 4, 4, 6)
        torch.testing.assert_close(latents, (z - FLUX_SHIFT) * SDXL_SCALE)
        decoded = raw.decode(latents / SDXL_SCALE + FLUX_SHIFT).sample.clamp(-1, 1)
        torch.testing.assert_close(ae.decode(latents), decoded)
        sampled = DiffusersVAE(vaes["sdxl"])  # a posterior sample, the same draw as the raw VAE's
        torch.manual_seed(3)
        got = sampled.encode(x)
        torch.manual_seed(3)
        torch.testing.assert_close(got, (raw.encode(x).latent_dist.sample() - FLUX_SHIFT) * SDXL_SCALE)


@pytest.mark.parametrize("kind,declared,real", [("x4", 8, 4), ("x8", 4, 8)])
def test_a_wrong_down_sampling_is_caught_on_encode(vaes, kind, declared, real):
    ae = load_autoencoder(str(vaes[kind]), downsample=declared)
    with pytest.raises(UserError, match=f"×{real} down-sampling, but ×{declared} was expected"):
        ae.encode(torch.zeros(1, 3, 32, 32))


def test_prepare_with_a_misdeclared_vae_fails_and_writes_nothing(vaes, images, tmp_path):
    ae = load_autoencoder(str(vaes["x4"]), downsample=8)
    with pytest.raises(UserError, match=r"×4 down-sampling.*×8"):
        prepare(images, tmp_path / "tokens", autoencoder=ae, patch_size=2, budget=64, workers=1, progress=False)
    assert not (tmp_path / "tokens").exists()


class _LyingAutoencoder:
    """Declares ×2 but encodes at full resolution."""

    name, channels, downsample = "liar", 3, 2

    def encode(self, images):
        return images

    def spec(self):
        return {"name": self.name}


def test_prepare_checks_any_autoencoder_against_its_grid(images, tmp_path):
    with pytest.raises(UserError, match=r"×1 down-sampling.*declared ×2"):
        prepare(
            images,
            tmp_path / "tokens",
            autoencoder=_LyingAutoencoder(),
            patch_size=2,
            budget=32,
            workers=1,
            progress=False,
        )


@pytest.mark.parametrize("kind", ["x8", "x4"])
def test_prepare_stores_exactly_the_tokens_the_index_records(vaes, images, tmp_path, kind):
    ae = DiffusersVAE(vaes[kind])
    out = tmp_path / "tokens"
    report = prepare(images, out, autoencoder=ae, patch_size=2, budget=64, workers=1, progress=False)
    index = json.loads((out / "index.json").read_text())
    assert index["downsample"] == ae.downsample and index["token_dim"] == 2 * 2 * 4 and index["channels"] == 4
    assert index["autoencoder"] == {
        "name": "sd-vae",
        "path": str(vaes[kind]),
        "scaling_factor": 0.18215,
        "shift_factor": 0.0,
        "downsample": ae.downsample,
    }
    assert index["max_tokens"] == (64 // (2 * ae.downsample)) ** 2
    stored = 0
    for shard in index["shards"]:
        with safe_open(str(out / shard), framework="pt") as f:
            features = f.get_tensor("features")
        assert features.shape[1:] == (2, index["token_dim"])
        stored += features.shape[0]
    ds = TokenDataset(out)
    tokens = ds.records["h"].astype(int) * ds.records["w"]
    assert stored == tokens.sum() == report.tokens == index["tokens"]
    assert tokens.max() <= index["max_tokens"]
    last = ds.record(ds.num_sequences - 1)
    assert ds.features(ds.num_sequences - 1).shape == (last["h"] * last["w"], index["token_dim"])


def test_a_recorded_spec_keeps_its_latent_space(vaes, images, tmp_path):
    ae = DiffusersVAE(vaes["sdxl"], scaling_factor=0.5)
    prepare(images, tmp_path / "tokens", autoencoder=ae, patch_size=2, budget=64, workers=1, progress=False)
    spec = json.loads((tmp_path / "tokens" / "index.json").read_text())["autoencoder"]
    assert (spec["scaling_factor"], spec["shift_factor"], spec["downsample"]) == (0.5, FLUX_SHIFT, 8)
    reloaded, raw = load_autoencoder(spec), _raw(vaes["sdxl"])
    z = torch.randn(1, 4, 3, 2)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.decode(z), raw.decode(z / 0.5 + FLUX_SHIFT).sample.clamp(-1, 1))
    # The VAE named anew (a moved copy): the recorded latent space, not the copy's config.
    moved = shutil.copytree(vaes["sdxl"], tmp_path / "moved")
    again = load_autoencoder(str(moved), recorded=spec)
    assert (again.path, again.scaling_factor, again.shift_factor) == (moved, 0.5, FLUX_SHIFT)
    assert load_autoencoder(None, recorded=spec).spec() == spec
    assert load_autoencoder(str(moved), recorded=spec, scaling_factor=0.3).scaling_factor == 0.3
    assert load_autoencoder("pixel", recorded=spec).name == "pixel"
    with pytest.raises(UserError, match="down-samples ×4 but the latents were made ×8"):
        load_autoencoder(str(vaes["x4"]), recorded=spec)
    with pytest.raises(UserError, match="down-samples ×4 but the latents were made ×8"):
        load_autoencoder({**spec, "path": str(vaes["x4"])})


def test_a_spec_written_before_the_factors_were_read_still_loads(vaes):
    old = {"name": "sd-vae", "path": str(vaes["sdxl"]), "scaling": 0.18215}
    ae = load_autoencoder(old)
    assert (ae.scaling_factor, ae.shift_factor, ae.downsample) == (0.18215, 0.0, 8)  # its latents were never shifted
    assert load_autoencoder(str(vaes["sdxl"]), recorded=old).scaling_factor == 0.18215


def test_the_vae_folder_is_checked_before_diffusers(vaes, tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    pipeline = tmp_path / "pipeline"
    shutil.copytree(vaes["x8"], pipeline / "vae")
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if diffusers were not installed
    with pytest.raises(MissingFileError, match="VAE folder not found") as err:
        load_autoencoder(str(tmp_path / "nowhere"))
    assert "diffusers" not in str(err.value).replace("a diffusers AutoencoderKL folder", "")
    with pytest.raises(UserError, match="not a diffusers VAE folder"):
        load_autoencoder(str(tmp_path / "empty"))
    with pytest.raises(UserError, match=r"did you mean .*pipeline/vae"):
        load_autoencoder(str(pipeline))
    with pytest.raises(UserError, match="needs diffusers"):
        load_autoencoder(str(vaes["x8"]))


def test_a_vae_folder_without_weights_is_a_user_error(vaes, tmp_path):
    folder = tmp_path / "no_weights"
    folder.mkdir()
    shutil.copy(vaes["x8"] / "config.json", folder / "config.json")
    with pytest.raises(UserError, match="cannot load the VAE"):
        load_autoencoder(str(folder))
    (tmp_path / "unet").mkdir()
    (tmp_path / "unet" / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(UserError, match="UNet2DConditionModel, not an AutoencoderKL"):
        load_autoencoder(str(tmp_path / "unet"))
