"""prepare in shards: two torchrun processes equal one, a kill -9 at any moment then the same command
equals an uninterrupted run, another command into that folder is refused, the VAE's noise is per image."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from imagegen import make_class_folder

from fitv2.cli import main
from fitv2.data.dataset import TokenDataset
from fitv2.data.prepare import prepare
from fitv2.errors import UserError

ARGS = ["--workers", "1", "--shard-images", "2", "--no-progress"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Nine images (3 classes x 3), so shards of 2 leave a short last one."""
    return make_class_folder(tmp_path_factory.mktemp("shard_images") / "images", classes=3, per_class=3)


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory):
    """The dataset of an uninterrupted one-process run."""
    out = tmp_path_factory.mktemp("reference") / "tokens"
    assert main(["prepare", str(images), str(out), *ARGS]) == 0
    return out


def assert_same_dataset(a: Path, b: Path) -> None:
    """Same index, records, images and tokens, bit for bit."""
    assert json.loads((a / "index.json").read_text()) == json.loads((b / "index.json").read_text())
    x, y = TokenDataset(a), TokenDataset(b)
    assert np.array_equal(x.records, y.records)
    assert [x.source(g) for g in range(len(x))] == [y.source(g) for g in range(len(y))]
    for i in range(x.num_sequences):
        for flip in (False, True):
            assert torch.equal(x.features(i, flip), y.features(i, flip))


def torchrun(args: list[str], nproc: int = 2) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc)]
    return subprocess.run([*command, "-m", "fitv2.cli", *args], env=env, capture_output=True, text=True, timeout=300)


def test_shards_hold_consecutive_images_and_merge_into_one_index(reference):
    index = json.loads((reference / "index.json").read_text())
    assert index["version"] == 2 and index["shards"] == [f"shards/{k:06d}.safetensors" for k in range(5)]
    assert index["images"] == 9 and (reference / "prepare.json").is_file()
    ds = TokenDataset(reference)
    assert np.array_equal(ds.records["shard"][::2], [0, 0, 1, 1, 2, 2, 3, 3, 4])  # image i in shard i // 2
    assert ds.records["offset"][4] == 0 and ds.records["offset"][1] == ds.record(0)["h"] * ds.record(0)["w"]


@pytest.fixture(scope="module")
def vae(tmp_path_factory):
    """A tiny random ×8 SD-style VAE folder (posterior samples: the noise must not depend on the batch)."""
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("vae") / "vae"
    diffusers.AutoencoderKL(
        latent_channels=4,
        block_out_channels=(8,) * 4,
        layers_per_block=1,
        norm_num_groups=2,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    ).save_pretrained(folder)
    return folder


@pytest.mark.slow
@pytest.mark.parametrize("space", ["pixel", "vae"])
def test_two_processes_equal_one(images, reference, tmp_path, request, space):
    extra = []
    if space == "vae":
        extra = ["--autoencoder", str(request.getfixturevalue("vae")), "--budget", "64", "--encode-batch", "3"]
        reference = tmp_path / "one"
        assert main(["prepare", str(images), str(reference), *ARGS, *extra]) == 0
    out = tmp_path / "two"
    proc = torchrun(["prepare", str(images), str(out), *ARGS, *extra])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "9 images -> 18 sequences" in proc.stdout and "2 process(es)" in proc.stdout
    assert_same_dataset(reference, out)


KILL = {
    # a shard written to its temporary name, the process killed before the rename
    "shard": """
import fitv2.data.shards as shards
from fitv2.checkpoint import atomic_write
from safetensors.torch import save_file
calls = []
def save_tensors(tensors, path, metadata=None):
    calls.append(path)
    def write(tmp):
        save_file(tensors, tmp, metadata=metadata)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGKILL)
    atomic_write(path, write)
shards.save_tensors = save_tensors
""",
    # every shard made and merged, killed before index.json
    "merge": """
import fitv2.data.index as index
def save(self, root):
    os.kill(os.getpid(), signal.SIGKILL)
index.DatasetIndex.save = save
""",
}


@pytest.mark.slow
@pytest.mark.parametrize("moment", list(KILL))
def test_a_killed_prepare_resumes_to_the_same_dataset(images, reference, tmp_path, capsys, moment):
    out = tmp_path / "tokens"
    argv = ["prepare", str(images), str(out), *ARGS]
    script = f"import os, signal\n{KILL[moment]}\nfrom fitv2.cli import main\nmain({argv!r})\n"
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert not (out / "index.json").exists()
    made = sorted(p.name for p in (out / "shards").iterdir())
    if moment == "shard":  # two shards complete, the third's temporary file left behind
        assert made[-2:] == ["000000.safetensors", "000001.safetensors"] and made[0].endswith(".tmp")
    else:
        assert len(made) == 5 and (out / "records.npy").is_file()

    assert main(["prepare", str(images), str(out), *ARGS, "--budget", "16"]) == 2  # another command: refused
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "other settings (budget, min_tokens)" in err[0]
    assert "pass --overwrite" in err[0]

    assert main(["prepare", str(images), str(out), *ARGS[:-1]]) == 0  # the same command (with a progress bar)
    captured = capsys.readouterr()
    if moment == "shard":
        assert "resuming" in captured.out and "2 of 5 shards already made" in captured.out
    assert not any(p.name.endswith(".tmp") for p in (out / "shards").iterdir())
    assert_same_dataset(reference, out)
    assert main(["prepare", str(images), str(out), *ARGS]) == 2  # finished: the same command is refused too
    assert "already holds a token dataset" in capsys.readouterr().err
    assert main(["prepare", str(images), str(out), *ARGS, "--budget", "16", "--overwrite"]) == 0
    assert TokenDataset(out).index.budget == 16


@pytest.mark.slow
def test_the_vae_noise_is_drawn_per_image(images, vae, tmp_path):
    """Tokens do not depend on the batch an image was encoded in beyond float rounding, nor on the shard
    size; they change with the seed."""
    from fitv2.data.autoencoder import DiffusersVAE

    common = dict(autoencoder=DiffusersVAE(vae), patch_size=2, budget=64, workers=1, progress=False)
    runs = {
        "batched": dict(encode_batch=4, shard_images=9),
        "single": dict(encode_batch=1, shard_images=2),
        "seed": dict(encode_batch=4, shard_images=9, seed=1),
    }
    for name, kwargs in runs.items():
        prepare(images, tmp_path / name, **common, **kwargs)
    a, b, c = (TokenDataset(tmp_path / name) for name in runs)
    for i in range(a.num_sequences):
        torch.testing.assert_close(a.features(i), b.features(i), atol=2e-3, rtol=0)  # float16 storage of ±1e-7
        assert not torch.equal(a.features(i), c.features(i))


def test_shards_without_their_settings_are_not_adopted(images, reference, tmp_path):
    out = shutil.copytree(reference, tmp_path / "tokens")
    for name in ("index.json", "prepare.json"):
        (out / name).unlink()
    with pytest.raises(UserError, match="holds shards of an unknown prepare"):
        prepare(images, out, patch_size=4, budget=32, workers=1, shard_images=2, progress=False)
    prepare(images, out, patch_size=4, budget=32, workers=1, shard_images=2, progress=False, overwrite=True)
    assert_same_dataset(reference, out)
