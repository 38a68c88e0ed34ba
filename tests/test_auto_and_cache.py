"""What ``auto`` picks (RoPE and time shift) at the edges of the training budget, per image in mixed
batches, and the First-Block-Cache: threshold 0 is the uncached computation bit for bit, a positive one
skips blocks and says how many."""

import pytest
import torch
from conftest import randomize, tiny_config

from fitv2.model import FiT
from fitv2.model.rope import RopeScaling, auto_rope, auto_rope_name, rope_scaling
from fitv2.sampling import Guidance, SolverConfig, sample_mixed, sample_tokens
from fitv2.sampling.cache import CacheConfig, CacheStats
from fitv2.sampling.sample import time_points
from fitv2.seeds import generator
from fitv2.tokens import image_layout, pack_sequences, pad_sequences

CFG = tiny_config()  # rope_train_len 8: 64 training tokens


@pytest.fixture(scope="module")
def model():
    return randomize(FiT(CFG), std=0.05).eval()


def test_auto_rope_is_plain_within_the_training_tokens_and_the_papers_best_beyond():
    auto = auto_rope(CFG)
    assert (auto.method, auto.decouple, auto.attn_scale, auto.beyond) == ("ntk", True, "area", 64)
    assert auto_rope_name(CFG, "none", 64) == "none"  # 8x8: the training size
    assert auto_rope_name(CFG, "none", 65) == "vision-ntk+attn-scale"
    # weights trained with an extrapolation, and FiT v1 weights, keep their own method
    assert auto_rope(CFG, "vision-ntk") == rope_scaling("vision-ntk")
    assert auto_rope_name(CFG, "vision-ntk", 4) == "vision-ntk"
    v1 = CFG.replace(continuous_time=False, learn_sigma=True)
    assert auto_rope(v1) == RopeScaling() and auto_rope_name(v1, "none", 400) == "none"


def test_auto_rope_tables_per_image(model):
    """In one padded batch: a 4x16 image (64 tokens, one side beyond L_train) keeps the plain tables; a
    9x9 image (81 tokens) gets VisionNTK + attention scale, as it does alone."""
    from fitv2.model.rope import rope_tables

    items = [(torch.zeros(h * w, 1), h, w) for h, w in [(4, 16), (9, 9)]]
    layout = pad_sequences(items).layout
    cos, _ = rope_tables(layout, CFG.head_dim, CFG.rope_theta, auto_rope(CFG), CFG.rope_train_len)
    plain, _ = rope_tables(layout, CFG.head_dim, CFG.rope_theta, RopeScaling(), CFG.rope_train_len)
    best = rope_scaling("vision-ntk+attn-scale").with_(per_sample=True)
    scaled, _ = rope_tables(layout, CFG.head_dim, CFG.rope_theta, best, CFG.rope_train_len)
    assert torch.equal(cos[0, :64], plain[0, :64])
    assert torch.equal(cos[1], scaled[1]) and not torch.equal(cos[1], plain[1])


def test_auto_time_shift_is_one_within_the_training_tokens_and_per_image_beyond():
    solver = SolverConfig("euler", steps=4, time_shift="auto")
    assert time_points(solver, image_layout(2, 8, 8), 64) is None  # the training size: the plain grid
    one = time_points(solver, image_layout(2, 16, 16), 64)  # 256 tokens: s = 2 for both
    assert one.shape == (5,) and torch.allclose(one, torch.tensor([0, 1 / 7, 1 / 3, 0.6, 1]))
    items = [(torch.zeros(h * w, 1), h, w) for h, w in [(8, 8), (16, 16)]]
    padded = time_points(solver, pad_sequences(items).layout, 64)
    assert padded.shape == (5, 2, 1, 1) and torch.equal(padded[:, 0, 0, 0], torch.linspace(0, 1, 5))
    assert torch.allclose(padded[:, 1, 0, 0], one)
    packed = time_points(solver, pack_sequences(items, [[0, 1]]).layout, 64)
    assert packed.shape == (5, 1, 320, 1)
    assert torch.equal(packed[:, 0, 0, 0], torch.linspace(0, 1, 5)) and torch.allclose(packed[:, 0, 64, 0], one)
    assert time_points(SolverConfig("sde", steps=4, time_shift="auto"), image_layout(1, 16, 16), 64) is None
    assert time_points(SolverConfig("euler", steps=4, time_shift=2.0), image_layout(1, 16, 16), 64) is None


@pytest.mark.parametrize("pack", [False, True])
def test_mixed_batch_with_auto_equals_each_size_alone(model, pack):
    """Per-image RoPE and time grids: each image of a mixed batch is what its size gives alone."""
    grids = [(8, 8), (12, 12), (6, 10)]
    labels = torch.tensor([1, 2, 3])
    solver = SolverConfig("dpm++2m", steps=5, time_shift="auto")
    kw = dict(solver=solver, guidance=Guidance(scale=2.0), rope=auto_rope(CFG))
    mixed = sample_mixed(model, grids, labels, [generator(0, *g) for g in grids], pack=pack, **kw)
    for (h, w), y, out in zip(grids, labels, mixed):
        alone = sample_tokens(model, h, w, y[None], generator=[generator(0, h, w)], **kw)[0]
        torch.testing.assert_close(out, alone, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("layout_kind", ["one size", "padded", "packed"])
def test_cache_with_threshold_zero_is_the_uncached_computation_bit_for_bit(model, layout_kind):
    labels = torch.tensor([1, 2])
    kw = dict(solver=SolverConfig("euler", steps=6), guidance=Guidance(scale=3.0))
    stats = CacheStats()
    cached = CacheConfig("first-block", threshold=0.0)
    if layout_kind == "one size":
        a = sample_tokens(model, 6, 6, labels, generator=torch.Generator().manual_seed(0), **kw)
        b = sample_tokens(
            model, 6, 6, labels, generator=torch.Generator().manual_seed(0), cache=cached, stats=stats, **kw
        )
        assert torch.equal(a, b)
    else:
        grids = [(6, 6), (4, 8)]
        pack = layout_kind == "packed"
        a = sample_mixed(model, grids, labels, [generator(0, i) for i in range(2)], pack=pack, **kw)
        gens = [generator(0, i) for i in range(2)]
        b = sample_mixed(model, grids, labels, gens, pack=pack, cache=cached, stats=stats, **kw)
        assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert stats.skipped == 0 and stats.evaluated == 6 * 2 * 2 * CFG.depth  # steps x rows (with CFG) x blocks


def test_cache_skips_blocks_and_counts_them(model):
    labels = torch.tensor([1, 2])
    kw = dict(solver=SolverConfig("euler", steps=20), guidance=Guidance(scale=3.0))
    reference = sample_tokens(model, 6, 6, labels, generator=torch.Generator().manual_seed(0), **kw)
    stats = CacheStats()
    cached = sample_tokens(
        model,
        6,
        6,
        labels,
        generator=torch.Generator().manual_seed(0),
        cache=CacheConfig("first-block", threshold=0.5),
        stats=stats,
        **kw,
    )
    assert stats.skipped > 0 and stats.evaluated + stats.skipped == 20 * 4 * CFG.depth
    assert 0 < stats.fraction_skipped < 1 and "block evaluations" in stats.describe()
    err = (cached - reference).abs().max() / reference.abs().max()
    assert err < 0.5  # an approximation, not noise


def test_cache_decides_over_every_image_of_a_call(model):
    """A call skips only when every image's residual is unchanged: an image that changes keeps all the
    blocks running for its batch."""
    from fitv2.model.layers import LayoutPlan
    from fitv2.sampling.cache import FirstBlockCache

    plan = model.plan(pad_sequences([(torch.zeros(4, 1), 2, 2), (torch.zeros(4, 1), 2, 2)]).layout).blocks
    assert isinstance(plan, LayoutPlan)
    cache = FirstBlockCache(threshold=0.1)
    x = torch.ones(2, 4, 8)
    runs = []

    def rest(h):
        runs.append(1)
        return h * 2

    cache(x, lambda h: h + 1, rest, plan, depth=3)  # the first call always runs
    cache(x, lambda h: h + 1, rest, plan, depth=3)  # nothing changed: skipped
    assert len(runs) == 1 and cache.stats.skipped == 2 * 2
    moved = x.clone()
    moved[1] += 5.0  # image 1's residual changes (its first block is not linear here)
    cache(moved, lambda h: h + 1 + (h > 3).float(), rest, plan, depth=3)
    assert len(runs) == 2
