"""Sampling defects that once slipped through: SBDM NaNs, batch-dependent noise, the training RoPE of a
checkpoint, memory estimates, compiled FlexAttention on the CPU and the demo report of a short run."""

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import randomize, tiny_config

from fitv2.checkpoint import save_model_dir, save_tensors
from fitv2.config import Runtime, model_config
from fitv2.data.autoencoder import PixelSpace
from fitv2.errors import ConfigError, UserError
from fitv2.model import FiT
from fitv2.model import attention as attention_module
from fitv2.model.attention import choose_attention
from fitv2.sampling import (
    Guidance,
    Sampler,
    SolverConfig,
    available_memory,
    check_memory,
    estimate_memory,
    integrate,
    sample_tokens,
)
from fitv2.sampling.sample import noise_tokens
from fitv2.sampling.sampler import sample_generators
from fitv2.sampling.solvers import LAST_STEPS, SDE_DIFFUSIONS, score_from_velocity
from fitv2.tokens import pack_sequences, pad_sequences

V1 = dict(adaln="full", mlp="swiglu-large", qk_norm=None, learn_sigma=True, continuous_time=False)


def pixel_sampler(**overrides) -> Sampler:
    cfg = tiny_config(in_channels=3, **overrides)
    return Sampler(randomize(FiT(cfg)).eval(), PixelSpace(), [str(i) for i in range(cfg.num_classes)])


# ----------------------------------------------------------------------------- 1. SBDM


@pytest.mark.parametrize("last_step", LAST_STEPS)
@pytest.mark.parametrize("form", SDE_DIFFUSIONS)
def test_every_sde_diffusion_form_gives_finite_samples(form, last_step):
    model = randomize(FiT(tiny_config())).eval()
    solver = SolverConfig("sde", steps=6, diffusion_form=form, last_step=last_step)
    out = sample_tokens(model, 3, 4, torch.tensor([1, 2]), solver=solver, generator=torch.Generator().manual_seed(0))
    assert out.shape == (2, 12, 16) and torch.isfinite(out).all()


def _gaussian_velocity(mu: float, s: float):
    """The exact velocity E[x1 − x0 | x_t] for data x1 ~ N(mu, s²) on the path x_t = t·x1 + (1 − t)·x0."""

    def v(t, x):
        t = torch.as_tensor(t, dtype=torch.float32)
        e_x1 = mu + t * s * s / (t * t * s * s + (1 - t) ** 2) * (x - t * mu)
        return e_x1 - (x - t * e_x1) / (1 - t)

    return v


@pytest.mark.parametrize("form", ["SBDM", "sigma"])
def test_sde_with_the_exact_velocity_samples_the_data_distribution(form):
    mu, s = 2.0, 0.5
    x0 = torch.randn(20000, generator=torch.Generator().manual_seed(0))
    out = integrate(
        _gaussian_velocity(mu, s),
        x0,
        SolverConfig("sde", steps=50, diffusion_form=form),
        generator=torch.Generator().manual_seed(1),
    )
    assert float(out.mean()) == pytest.approx(mu, abs=0.02)
    assert float(out.std()) == pytest.approx(s, abs=0.02)


def test_sde_settings_that_cannot_work_are_refused():
    with pytest.raises(ConfigError, match="steps >= 2"):
        SolverConfig("sde", steps=1)
    with pytest.raises(ConfigError, match="sample_eps"):
        SolverConfig("sde", diffusion_form="SBDM", sample_eps=0.0)
    # the score's 1/(1 − t) is never evaluated at t = 1, even without a last step
    seen = []
    integrate(
        lambda t, x: seen.append(float(t)) or -x,
        torch.ones(3),
        SolverConfig("sde", steps=5, last_step="Mean", last_step_size=0.0),
    )
    assert max(seen) < 1.0
    assert torch.isfinite(score_from_velocity(torch.ones(1), torch.ones(1), torch.tensor(max(seen))))


# ----------------------------------------------------------------------------- 2. per-sample noise


def test_sample_noise_depends_only_on_seed_size_and_index():
    whole = noise_tokens(5, 4, 6, 12, sample_generators(3, 8, 12, range(5))).x
    parts = [noise_tokens(len(idx), 4, 6, 12, sample_generators(3, 8, 12, idx)).x for idx in ([0], [1, 2], [3, 4])]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(noise_tokens(5, 4, 6, 12, sample_generators(3, 12, 8, range(5))).x, whole)


def _same_images(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal, but for the rare pixel that float rounding of batched matrix products moves by one level
    (BLAS picks its kernels by the number of rows, so a 1-row and a 5-row product may differ in the
    last bit)."""
    diff = np.abs(a.astype(int) - b.astype(int))
    return a.shape == b.shape and diff.max() <= 1 and (diff == 0).mean() >= 0.999


@pytest.mark.parametrize("solver", [SolverConfig("euler", steps=4), SolverConfig("sde", steps=4)])
def test_images_do_not_depend_on_the_batch_size(solver):
    sampler = pixel_sampler(patch_size=2)
    labels = torch.tensor([1, 2, 3, 4, 5])
    runs = [
        sampler.generate(8, 12, labels, solver, Guidance(scale=2.0), seed=3, batch_size=b, progress=False)
        for b in (1, 2, 5)
    ]
    assert runs[0].shape == (5, 8, 12, 3) and runs[0].std() > 10
    for run in runs[1:]:
        assert _same_images(run, runs[0])
    other_seed = sampler.generate(8, 12, labels, solver, Guidance(scale=2.0), seed=4, batch_size=5, progress=False)
    assert not _same_images(other_seed, runs[0])


def test_ddpm_noise_is_per_sample_too():
    model = randomize(FiT(tiny_config(**V1))).eval()
    solver = SolverConfig("ddpm", steps=5)

    def run(batch: list[int]) -> torch.Tensor:
        generators = [torch.Generator().manual_seed(100 + i) for i in batch]
        return sample_tokens(model, 2, 3, torch.tensor(batch), solver=solver, generator=generators)

    both, alone = run([0, 1]), run([1])
    torch.testing.assert_close(alone[0], both[1], atol=1e-3, rtol=1e-4)  # float rounding only
    assert not torch.allclose(both[0], both[1], atol=1e-2)


def test_one_generator_for_the_batch_still_works():
    model = randomize(FiT(tiny_config())).eval()
    runs = [
        sample_tokens(
            model,
            3,
            5,
            torch.tensor([1, 2]),
            solver=SolverConfig("sde", steps=3),
            generator=torch.Generator().manual_seed(7),
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], atol=0, rtol=0)
    with pytest.raises(ValueError, match="3 generators for 2 samples"):
        sample_tokens(model, 3, 5, torch.tensor([1, 2]), generator=[torch.Generator() for _ in range(3)])


# ----------------------------------------------------------------------------- 3. training RoPE


def test_training_rope_comes_from_the_checkpoint(tmp_path):
    cfg = model_config("FiTv2-Mini/4", num_classes=3)
    weights = FiT(cfg).state_dict()
    dataset = {"autoencoder": {"name": "pixel"}, "class_names": ["a", "b", "c"]}
    hr = save_model_dir(tmp_path / "hr", cfg, weights, extra={"train": {"rope": "vision-ntk"}, "dataset": dataset})
    plain = save_model_dir(tmp_path / "plain", cfg, weights, extra={"dataset": dataset})
    assert Sampler.load(hr).training_rope == "vision-ntk"
    assert Sampler.load(plain).training_rope == "none"
    save_tensors(weights, tmp_path / "released.safetensors")
    assert Sampler.load(tmp_path / "released.safetensors", preset="FiTv2-Mini/4", num_classes=3).training_rope == "none"
    odd = save_model_dir(tmp_path / "odd", cfg, weights, extra={"train": {"rope": "warp-9"}, "dataset": dataset})
    with pytest.raises(UserError, match="warp-9"):
        Sampler.load(odd)


# ----------------------------------------------------------------------------- 4. memory

MEASURE = """
import json, sys, torch
from fitv2.config import ModelConfig
from fitv2.data.autoencoder import PixelSpace
from fitv2.sampling import Sampler
from fitv2.model import FiT
from fitv2.sampling import Guidance, SolverConfig

torch.set_num_threads(1)
height, width, batch = json.loads(sys.argv[1])
cfg = ModelConfig(hidden_size=128, depth=2, num_heads=2, patch_size=4, in_channels=3, num_classes=10)
sampler = Sampler(FiT(cfg).eval(), PixelSpace(), [str(i) for i in range(10)])
solver, guidance = SolverConfig("euler", steps=1), Guidance(scale=2.0)
sampler.generate(16, 16, torch.arange(2), solver, guidance, progress=False)  # load every kernel first
def status(key):
    line = next(x for x in open("/proc/self/status") if x.startswith(key + ":"))
    return int(line.split()[1]) * 1024
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current size
    f.write("5")
before = status("VmRSS")
labels = torch.arange(batch) % 10
sampler.generate(height, width, labels, solver, guidance, batch_size=batch, progress=False)
peak = status("VmHWM") - before
print(json.dumps([peak, sampler.estimate_memory(height, width, batch, solver, guidance, batch).total]))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="ru_maxrss in bytes/KiB differs by platform")
@pytest.mark.parametrize("size", [(128, 128, 16), (256, 256, 6)])
def test_memory_estimate_is_within_a_factor_two_of_the_measured_peak(size):
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, json.dumps(size)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": "1"},
        check=True,
    )
    measured, estimate = json.loads(done.stdout.strip().splitlines()[-1])
    assert measured > 100 * 2**20  # large enough that the comparison means something
    assert 0.5 <= estimate / measured <= 2.0, (measured, estimate)


def test_an_impossible_size_is_refused_before_any_sampling():
    sampler = pixel_sampler(patch_size=2)
    free = available_memory("cpu")
    assert free is None or free > 0
    estimate = estimate_memory(sampler.model, sampler.autoencoder, 8192, 8192, 64, guidance=Guidance(scale=4.0))
    with pytest.raises(UserError) as err:
        check_memory(estimate, "cpu", free=8 * 2**30)
    message = str(err.value)
    assert f"{estimate.total / 2**30:.1f} GiB" in message and "8.0 GiB is free" in message and "--force" in message
    check_memory(estimate, "cpu", force=True, free=8 * 2**30)
    if free is not None and free < estimate.total:
        with pytest.raises(UserError, match="needs about"):
            sampler.check_memory([(16, 16), (8192, 8192)], 64, Guidance(scale=4.0))
        with pytest.raises(UserError, match="needs about"):  # refused at once, not after hours of sampling
            sampler.generate(8192, 8192, torch.arange(64) % 10, guidance=Guidance(scale=4.0), progress=False)
    assert [e.height for e in sampler.check_memory([(16, 16), (32, 48)], 4)] == [16, 32]


def test_a_batch_size_that_fits_is_suggested():
    sampler = pixel_sampler(patch_size=2)
    estimate = sampler.estimate_memory(512, 512, 64)
    with pytest.raises(UserError, match=r"a batch size of at most \d+ fits"):
        check_memory(estimate, "cpu", free=estimate.total // 2)


def test_progress_reaches_every_solver_step(capsys):
    sampler = pixel_sampler(patch_size=2)
    steps = []
    sample_tokens(
        sampler.model, 2, 2, torch.tensor([1, 2]), solver=SolverConfig("heun", steps=3), on_step=lambda: steps.append(1)
    )
    assert len(steps) == 3
    sampler.generate(8, 8, torch.arange(3), SolverConfig("euler", steps=2), batch_size=2, progress=True)
    assert "4/4" in capsys.readouterr().err  # 2 batches (of 2 and 1) x 2 steps


# ----------------------------------------------------------------------------- 5. compiled FlexAttention


@pytest.mark.slow
def test_compiled_blocks_with_flex_attention_match_eager(monkeypatch):
    monkeypatch.setattr(attention_module, "_flex_support", {})  # decide afresh in this test
    device = "cuda" if torch.cuda.is_available() else "cpu"
    cfg = tiny_config()
    model = randomize(FiT(cfg)).eval().to(device)
    items = [(torch.randn(h * w, cfg.token_dim), h, w) for h, w in [(3, 4), (2, 3), (4, 4), (3, 3)]]
    cases = [
        (pad_sequences(items), torch.rand(4), torch.tensor([1, 2, 3, 4]), None),
        (pack_sequences(items, [[0, 1], [2, 3]]), torch.rand(2, 2), torch.tensor([[1, 2], [3, 0]]), True),
    ]
    with torch.no_grad():
        eager = [model(b.x.to(device), t.to(device), y.to(device), b.to(device).layout) for b, t, y, _ in cases]
        flex = Runtime(attention="flex")
        for block in model.blocks:
            block.compile(dynamic=True)  # as train.py compiles them
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            compiled = [
                model(b.x.to(device), t.to(device), y.to(device), b.to(device).layout, runtime=flex)
                for b, t, y, _ in cases
            ]
            segment = torch.tensor([[1] * 5 + [0] * 3]).to(device)
            plan = choose_attention("flex", segment)
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    fallbacks = [w for w in caught if "FlexAttention" in str(w.message)]
    if attention_module._flex_support[(str(torch.device(device)), False)]:
        assert plan.name == "flex" and not fallbacks
    else:  # decided once: one warning however many plans are built
        assert plan.name in ("sdpa", "sdpa-varlen") and len(fallbacks) == 1


# ----------------------------------------------------------------------------- 6. demo report


@pytest.mark.parametrize("rows", [0, 1, 3, 40])
def test_demo_report_works_for_any_number_of_log_rows(tmp_path, rows):
    from fitv2.cli.demo import DemoConfig, _report, demo_sizes

    log = [
        {
            "step": 10 * (i + 1),
            "loss": 1.0 - 0.01 * i,
            "images": 320.0 * (i + 1),
            "tokens": 2e4 * (i + 1),
            "padding": 0.1,
        }
        for i in range(rows)
    ]
    result = SimpleNamespace(step=max(3, 10 * rows), tokens_per_s=1234.0, checkpoint=tmp_path / "ckpt")
    sampler = SimpleNamespace(model=FiT(tiny_config()))
    _report(tmp_path, DemoConfig(out=str(tmp_path)), result, {"train": 3.0}, log, sampler, demo_sizes(24, (7, 5)))
    report = (tmp_path / "report.md").read_text()
    assert f"Training: {result.step} steps" in report and "Loss:" in report
    assert "nan" not in report.lower()


@pytest.mark.slow
def test_a_demo_too_short_for_one_log_row_still_reports(tmp_path):
    # a few glyphs of every class (the embedded files, listed by absolute path) keep the demo's data quick
    import json

    from fitv2.cli.demo import GLYPHS, DemoConfig, run_demo, training_shape

    rows, seen = [], {}
    for line in (GLYPHS / "metadata.jsonl").read_text().splitlines():
        row = json.loads(line)
        key = (row["label"], row["split"])
        if row["split"] in ("train", "test") and seen.get(key, 0) < 2:
            seen[key] = seen.get(key, 0) + 1
            rows.append({**row, "path": str(GLYPHS / row["path"])})
    (tmp_path / "glyphs").mkdir()
    (tmp_path / "glyphs" / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = DemoConfig(
        data=str(tmp_path / "glyphs"), out=str(tmp_path / "demo"), minutes=0.002, steps=2, preset="FiTv2-Micro/4"
    )
    cfg.recognise_per_class = 1  # judged by the glyphs' own classifier
    out = run_demo(cfg)
    report = (out / "report.md").read_text()
    logged = (out / "run" / "log.jsonl").read_text().strip()
    assert ("Loss: not logged" in report) == (not logged)  # a 0.1 s budget leaves no time for 10 steps
    assert (out / "samples.png").is_file() and (out / "loss.png").is_file()
    # the glyph demo judges its samples with its own classifier: one line says how often they are recognised
    recognised = [line for line in report.splitlines() if line.startswith("Recognised:")]
    # at the glyphs' own training shape (taller than wide), not the square
    h, w = training_shape(out / "tokens")
    assert h > w and cfg.budget == 24
    assert len(recognised) == 1 and f"of the samples at {4 * h}x{4 * w}" in recognised[0]
    assert "real test images" in recognised[0]
    assert f"| {4 * h}x{4 * w} | {h * w} | none | the most common training shape" in report


def test_text_demo_prompts_and_nearest_training_images():
    import json

    import numpy as np

    from fitv2.cli.demo import EMBEDDED, demo_prompts, nearest_training_images
    from fitv2.data.images import center_crop, load_rgb

    metadata = EMBEDDED / "metadata.jsonl"
    prompts = demo_prompts(metadata)
    rows = [json.loads(line) for line in metadata.read_text().splitlines()]
    classes = sorted({r["class_name"] for r in rows})
    assert [c for _, c in prompts] == classes  # one per class, in class order
    assert all(any(r["caption"] == p and r["split"] == "test" for r in rows) for p, _ in prompts)
    train = [r for r in rows if r["split"] == "train"]
    picks = [train[5], train[900]]
    samples = np.stack([np.asarray(center_crop(load_rgb(metadata.parent / r["path"]), 32)) for r in picks])
    near = nearest_training_images(samples, metadata, 32)
    assert [n["caption"] for n in near] == [r["caption"] for r in picks]  # a training image finds itself


@pytest.mark.slow
def test_the_text_demo_runs_end_to_end(tmp_path):
    from fitv2.cli.demo import DemoConfig, run_demo

    out = run_demo(DemoConfig.for_data("clipart", out=str(tmp_path / "demo"), minutes=0.002, steps=2, text=True))
    report = (out / "report.md").read_text()
    assert "text-to-image (MiniLM captions" in report and "| prompt | its class |" in report
    assert len((out / "samples" / "prompts.txt").read_text().splitlines()) == 17
    assert (out / "samples.png").is_file() and '--prompt "a red apple"' in report
