"""The command line, the pipeline and the web page sample a checkpoint with the same defaults, from one
library function (``Sampler.defaults``), so with defaults they give the same images: for a FiTv2
(rectified-flow) checkpoint and for a FiT v1 (DDPM) one. Latents need no autoencoder."""

import numpy as np
import pytest
import torch
from conftest import randomize

from fitv2 import FiTv2Pipeline
from fitv2.checkpoint import save_model_dir
from fitv2.cli import main
from fitv2.cli.page import check_request, generate, page_defaults, solver_choices
from fitv2.config import model_config
from fitv2.errors import UserError
from fitv2.model import FiT
from fitv2.sampling import Sampler
from fitv2.sampling.defaults import DDPM_STEPS, FLOW_SOLVER, FLOW_STEPS, GUIDANCE_SCALE

V1 = dict(adaln="full", mlp="swiglu-large", qk_norm=None, learn_sigma=True, continuous_time=False)


def _checkpoint(folder, channels: int = 3, record_autoencoder: bool = True, **overrides):
    """A FiT v1 checkpoint folder of the Micro width with random weights (pixel space unless ``channels``)."""
    cfg = model_config("FiTv2-Micro/4", num_classes=3, in_channels=channels, **overrides)
    model = randomize(FiT(cfg), std=0.02)
    dataset = {"class_names": ["a", "b", "c"], **({"autoencoder": {"name": "pixel"}} if record_autoencoder else {})}
    save_model_dir(folder, cfg, model.state_dict(), extra={"dataset": dataset, "train": {}})
    return folder


@pytest.fixture(scope="module")
def v1_checkpoint(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("v1") / "ckpt", **V1)


@pytest.fixture(scope="module")
def v2_checkpoint(cli_run):
    return cli_run / "run"  # a run folder: its newest checkpoint


def _three_ways(checkpoint, tmp_path, label: int = 1):
    """The image of ``label`` with every setting left to its default: CLI, pipeline and page."""
    assert main(["sample", str(checkpoint), "--labels", str(label), "--out", str(tmp_path), "--no-progress"]) == 0
    [npz] = tmp_path.glob("*.npz")
    cli = np.load(npz)["arr_0"][0]
    pipe = FiTv2Pipeline.from_pretrained(checkpoint)(labels=[label], output_type="np")[0]
    sampler = Sampler.load(checkpoint)
    page = generate(sampler, check_request(sampler, {**page_defaults(sampler), "label": label}), progress=False)
    return cli, pipe, page, sampler


def test_flow_checkpoint_samples_the_same_three_ways(v2_checkpoint, tmp_path):
    cli, pipe, page, sampler = _three_ways(v2_checkpoint, tmp_path)
    d = sampler.defaults
    assert (d.solver, d.steps, d.guidance_scale, d.rope, d.time_shift) == (
        FLOW_SOLVER,
        FLOW_STEPS,
        GUIDANCE_SCALE,
        "auto",
        "auto",
    )
    assert cli.shape == (d.height, d.width, 3) == (32, 32, 3)  # the training size
    assert np.array_equal(cli, pipe) and np.array_equal(cli, page)
    assert cli.std() > 0


def test_fit_v1_checkpoint_samples_the_same_three_ways_with_ddpm(v1_checkpoint, tmp_path):
    cli, pipe, page, sampler = _three_ways(v1_checkpoint, tmp_path, label=2)
    assert (sampler.defaults.solver, sampler.defaults.steps) == ("ddpm", DDPM_STEPS)
    assert solver_choices(sampler) == ("ddpm",)  # the page offers ddpm for a v1 model, nothing else
    assert np.array_equal(cli, pipe) and np.array_equal(cli, page)


def test_latents_need_no_autoencoder_and_images_name_it(tmp_path):
    """A 4-channel model with no autoencoder recorded (released weights): latents come out, images are a
    clear error before any sampling, naming autoencoder=."""
    folder = _checkpoint(tmp_path / "ckpt", channels=4, record_autoencoder=False, **V1)
    pipe = FiTv2Pipeline.from_pretrained(folder)
    latents = pipe(labels=[1], height=64, width=64, num_inference_steps=3, output_type="latent")
    assert latents.shape == (1, 4, 8, 8)  # SD-VAE ft-EMA's ×8, the released checkpoints' latent space
    with pytest.raises(UserError, match="autoencoder="):
        pipe(labels=[1], height=64, width=64, num_inference_steps=3, output_type="np")
    assert main(["sample", str(folder), "--labels", "1", "--sizes", "64x64", "--out", str(tmp_path / "s")]) == 2
    assert not (tmp_path / "s").exists()


def test_generator_follows_diffusers(v2_checkpoint):
    pipe = FiTv2Pipeline.from_pretrained(v2_checkpoint)
    kw = dict(labels=[0, 1], num_inference_steps=4, output_type="np")

    def gen(seed: int) -> torch.Generator:
        return torch.Generator().manual_seed(seed)

    one = pipe(**kw, generator=gen(3))
    assert np.array_equal(one, pipe(**kw, generator=gen(3)))  # the same stream, the same images
    assert not np.array_equal(one, pipe(**kw, generator=gen(4)))
    # a list: image i from generator i alone, whatever else is in the batch
    pair = pipe(**kw, generator=[gen(5), gen(6)])
    alone = pipe(labels=[1], num_inference_steps=4, output_type="np", generator=[gen(6)])
    assert np.array_equal(pair[1], alone[0])
    with pytest.raises(ValueError, match="2 generators for 1"):
        pipe(labels=[1], num_inference_steps=4, output_type="np", generator=[gen(1), gen(2)])
