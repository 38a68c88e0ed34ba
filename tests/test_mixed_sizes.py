"""Mixed sizes in one padded or packed batch equal each size sampled alone with the same noise."""

import pytest
import torch
from conftest import randomize, tiny_config

from fitv2.model.fit import FiT
from fitv2.sampling import Guidance, MixedBatch, SolverConfig, sample_mixed, sample_tokens
from fitv2.seeds import generator
from fitv2.text import TextFeatures

GRIDS = [(4, 4), (2, 8), (2, 2), (3, 5), (1, 3)]


def alone(model, grids, labels, solver, guidance, seed=0):
    """Each image sampled by itself (a batch of one of its size) with its own generator."""
    return [
        sample_tokens(
            model, h, w, labels[i : i + 1], solver=solver, guidance=guidance, generator=[generator(seed, h, w, i)]
        )[0]
        for i, (h, w) in enumerate(grids)
    ]


@pytest.mark.parametrize("pack", [False, True, 32], ids=["padded", "packed", "packed-32"])
@pytest.mark.parametrize(
    "solver, guidance",
    [(SolverConfig("euler", steps=4), Guidance(scale=3.0)), (SolverConfig("sde", steps=4), Guidance())],
    ids=["euler-cfg", "sde"],
)
def test_mixed_batch_equals_each_size_alone(pack, solver, guidance):
    model = randomize(FiT(tiny_config())).eval()
    labels = torch.tensor([1, 2, 3, 4, 5])
    gens = [generator(0, h, w, i) for i, (h, w) in enumerate(GRIDS)]
    mixed = sample_mixed(model, GRIDS, labels, gens, solver=solver, guidance=guidance, pack=pack)
    single = alone(model, GRIDS, labels, solver, guidance)
    for (h, w), a, b in zip(GRIDS, mixed, single):
        assert a.shape == (h * w, model.config.token_dim)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    # the images differ from one another: the per-image noise is really per image
    assert not torch.allclose(mixed[0], mixed[1])


def test_mixed_text_batch_equals_each_size_alone():
    model = randomize(FiT(tiny_config(text_len=3, text_dim=8))).eval()
    features = torch.randn(len(GRIDS), 3, 8)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    text = TextFeatures(features, mask)
    solver, guidance = SolverConfig("sde", steps=3), Guidance(scale=2.0)
    for pack in (False, 40):
        gens = [generator(0, h, w, i) for i, (h, w) in enumerate(GRIDS)]
        mixed = sample_mixed(model, GRIDS, text, gens, solver=solver, guidance=guidance, pack=pack)
        single = alone(model, GRIDS, text, solver, guidance)
        for a, b in zip(mixed, single):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_packed_layout_places_every_image_once():
    batch = MixedBatch.build(GRIDS, text_len=2, pack=True)
    lengths = [h * w + 2 for h, w in GRIDS]
    assert batch.layout.length == max(lengths)
    assert batch.layout.packed
    assert batch.layout.batch_size < len(GRIDS)  # some rows hold several images
    x = batch.scatter([torch.full((n, 1), float(i + 1)) for i, n in enumerate(lengths)])
    for i, got in enumerate(batch.gather(x)):
        assert got.shape[0] == GRIDS[i][0] * GRIDS[i][1]
        assert bool((got == i + 1).all())
    labels = batch.per_slot(torch.arange(len(GRIDS)))
    assert labels.shape == batch.layout.size.shape[:2]
    for i, (r, slot, _) in enumerate(batch.where):
        assert int(labels[r, slot]) == i


def test_mixed_sizes_need_one_generator_per_image():
    model = FiT(tiny_config()).eval()
    with pytest.raises(ValueError, match="generators"):
        sample_mixed(model, GRIDS, torch.zeros(5, dtype=torch.long), [generator(0)])


def test_packed_rows_must_hold_the_longest_image():
    with pytest.raises(ValueError, match="cannot hold"):
        MixedBatch.build(GRIDS, pack=8)


def test_mixed_ddpm_batch_of_a_fit_v1_model_equals_each_size_alone():
    v1 = dict(adaln="full", mlp="swiglu-large", qk_norm=None, learn_sigma=True, continuous_time=False)
    model = randomize(FiT(tiny_config(**v1))).eval()
    labels = torch.tensor([1, 2, 3, 4, 5])
    solver, guidance = SolverConfig("ddpm", steps=4), Guidance(scale=2.0)
    gens = [generator(0, h, w, i) for i, (h, w) in enumerate(GRIDS)]
    mixed = sample_mixed(model, GRIDS, labels, gens, solver=solver, guidance=guidance, pack=True)
    for a, b in zip(mixed, alone(model, GRIDS, labels, solver, guidance)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_sample_command_puts_all_sizes_in_one_batch(cli_run, tmp_path, capsys):
    import numpy as np

    from fitv2.cli import main

    ckpt = cli_run / "run" / "checkpoints" / "step_0000006"
    args = ["sample", str(ckpt), "--sizes", "16x32,32x16,16x16", "--labels", "0,2", "--steps", "3", "--cfg-scale", "2"]
    outputs = {}
    for mode in ("packed", "padded", "per-size"):
        assert main([*args, "--mixed", mode, "--out", str(tmp_path / mode), "--no-progress"]) == 0
        outputs[mode] = {s: np.load(tmp_path / mode / f"{s}.npz")["arr_0"] for s in ("16x32", "32x16", "16x16")}
    for mode in ("packed", "padded"):
        for size, want in outputs["per-size"].items():
            got = outputs[mode][size]
            assert got.shape == want.shape
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1
    with pytest.raises(SystemExit) as exit_:
        main([*args, "--mixed", "stacked", "--out", str(tmp_path / "x")])
    assert exit_.value.code == 2
    assert "--mixed" in capsys.readouterr().err
