"""FiTv2Pipeline: from_pretrained / save_pretrained with a model card, and the one-call sampler."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fitv2 import FiTv2Pipeline
from fitv2.cli import main
from fitv2.sampling import Guidance, Sampler, SolverConfig


@pytest.fixture(scope="module")
def ckpt(cli_run):
    return cli_run / "run" / "checkpoints" / "step_0000006"


def test_one_call_equals_the_sampler(ckpt):
    pipe = FiTv2Pipeline.from_pretrained(ckpt)
    images = pipe(labels=[0, 2], height=16, width=32, num_inference_steps=4, guidance_scale=2.0, output_type="np")
    sampler = Sampler.load(ckpt)
    expected = sampler.generate(
        16, 32, torch.tensor([0, 2]), SolverConfig("euler", steps=4), Guidance(scale=2.0), progress=False
    )
    assert images.dtype == np.uint8 and np.array_equal(images, expected)
    pil = pipe(labels=torch.tensor([1]), height=16, width=32, num_inference_steps=4, guidance_scale=2.0)
    assert isinstance(pil[0], Image.Image) and pil[0].size == (32, 16)
    latents = pipe(labels=[0, 2], height=16, width=32, num_inference_steps=4, output_type="latent")
    assert latents.shape == (2, 3, 16, 32)  # pixel space: the latents are the images in [-1, 1]
    default = pipe(labels=[1], num_inference_steps=2, output_type="np")
    side = pipe.config.rope_train_len * 4
    assert default.shape == (1, side, side, 3)  # the training size by default


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "padded"])
def test_sizes_in_one_batch_equal_each_size_alone(ckpt, pack):
    pipe = FiTv2Pipeline.from_pretrained(ckpt)
    sizes = [(16, 32), (32, 16), (16, 16), (16, 32)]
    kwargs = dict(num_inference_steps=4, guidance_scale=2.0, output_type="np")
    mixed = pipe(labels=[0, 1, 2, 1], sizes=sizes, pack=pack, **kwargs)
    wide = pipe(labels=[0, 1], height=16, width=32, **kwargs)  # the two 16x32 images: indices 0 and 1
    alone = [
        wide[0],
        pipe(labels=[1], height=32, width=16, **kwargs)[0],
        pipe(labels=[2], height=16, width=16, **kwargs)[0],
        wide[1],
    ]
    for got, want, (h, w) in zip(mixed, alone, sizes):
        assert got.shape == (h, w, 3)
        diff = np.abs(got.astype(int) - want.astype(int))
        assert diff.max() <= 1 and (diff > 0).mean() < 0.01  # float rounding moves a rare pixel one level
    pil = pipe(labels=[0, 1], sizes=[(16, 32), (32, 16)], num_inference_steps=2)
    assert [im.size for im in pil] == [(32, 16), (16, 32)]
    latents = pipe(labels=[0], sizes=[(16, 32)], num_inference_steps=2, output_type="latent")
    assert latents[0].shape == (3, 16, 32)
    with pytest.raises(ValueError, match="not both"):
        pipe(labels=[0], sizes=[(16, 16)], height=16)
    with pytest.raises(ValueError, match="2 sizes for 1"):
        pipe(labels=[0], sizes=[(16, 16), (16, 32)])


def test_save_pretrained_round_trips_and_writes_a_model_card(ckpt, tmp_path):
    pipe = FiTv2Pipeline.from_pretrained(ckpt)
    out = pipe.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["format"] == "fitv2-pipeline" and config["model"] == pipe.config.to_dict()
    assert config["dataset"]["class_names"] == pipe.sampler.class_names and config["step"] == 6
    card = (out / "README.md").read_text()
    params = sum(p.numel() for p in pipe.model.parameters())
    assert f"{params:,} parameters" in card and "from fitv2 import FiTv2Pipeline" in card
    assert "arXiv:2410.13925" in card and "arXiv:2402.12376" in card and "license: mit" in card
    assert "6 steps of batch 4" in card

    again = FiTv2Pipeline.from_pretrained(out)
    kwargs = dict(labels=[0, 1], height=16, width=16, num_inference_steps=3, output_type="np")
    assert np.array_equal(again(**kwargs), pipe(**kwargs))
    assert (
        main(["sample", str(out), "--sizes", "16x16", "--per-class", "1", "--steps", "2", "--out", str(tmp_path / "s")])
        == 0
    )


def test_bad_calls(ckpt):
    pipe = FiTv2Pipeline.from_pretrained(ckpt)
    with pytest.raises(ValueError, match=r"labels .* or prompts"):
        pipe(labels=[0], prompts=["a"])
    with pytest.raises(ValueError, match="output_type"):
        pipe(labels=[0], output_type="tensor")
    with pytest.raises(ValueError, match="class-conditional"):
        pipe(prompts=["a red disc"])


def test_importing_fitv2_stays_light():
    code = "import sys, fitv2; assert 'torch' not in sys.modules; fitv2.FiTv2Pipeline; assert 'torch' in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_convert_turns_a_released_weights_file_into_a_pretrained_folder(tmp_path, capsys, suffix):
    from conftest import randomize
    from safetensors.torch import save_file

    from fitv2.config import model_config
    from fitv2.model import build_model

    model = randomize(build_model(model_config("FiTv2-Micro/4"))).eval()
    file = tmp_path / f"released{suffix}"
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, file) if suffix == ".safetensors" else torch.save({"ema": state}, file)
    assert main(["convert", str(file), str(tmp_path / "out"), "--preset", "FiTv2-Micro/4"]) == 0
    assert "with a model card" in capsys.readouterr().out
    pipe = FiTv2Pipeline.from_pretrained(tmp_path / "out")
    direct = FiTv2Pipeline.from_pretrained(file, preset="FiTv2-Micro/4")
    kwargs = dict(labels=[1, 4], height=16, width=16, num_inference_steps=3, output_type="np")
    assert np.array_equal(pipe(**kwargs), direct(**kwargs))
    assert "not recorded (converted from released weights)" in (tmp_path / "out" / "README.md").read_text()

    assert main(["convert", str(file), str(tmp_path / "out"), "--preset", "FiTv2-Micro/4"]) == 2  # not over it
    assert "already holds files" in capsys.readouterr().err
    assert main(["convert", str(file), str(tmp_path / "other")]) == 2
    assert "--preset" in capsys.readouterr().err


def test_a_run_folder_loads_its_newest_checkpoint(cli_run, ckpt):
    by_run = FiTv2Pipeline.from_pretrained(cli_run / "run")
    by_folder = FiTv2Pipeline.from_pretrained(cli_run / "run" / "checkpoints")
    direct = FiTv2Pipeline.from_pretrained(ckpt)
    kwargs = dict(labels=[1], height=16, width=16, num_inference_steps=2, output_type="np")
    assert np.array_equal(by_run(**kwargs), direct(**kwargs)) and np.array_equal(by_folder(**kwargs), direct(**kwargs))
    assert by_run.sampler.record["step"] == 6
