"""2D RoPE: identity at the origin, relative positions, extrapolation methods at scale 1."""

import math

import pytest
import torch

from fitv2.model.rope import (
    RopeScaling,
    apply_rope,
    attention_scale_factor,
    axis_frequencies,
    base_frequencies,
    rope_scaling,
    rope_tables,
    yarn_mscale,
)
from fitv2.tokens import TokenLayout, make_grid

HEAD_DIM = 32


def _tables(h, w, scaling=RopeScaling(), train_len=8):
    grid = make_grid(h, w)[None]
    size = torch.tensor([[[h, w]]])
    return rope_tables(TokenLayout.of(grid, torch.ones(1, h * w), size), HEAD_DIM, 10000.0, scaling, train_len)


def test_origin_is_identity_rotation():
    cos, sin = _tables(5, 7)
    x = torch.randn(1, 2, 35, HEAD_DIM)
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out[:, :, 0], x[:, :, 0])


def test_score_depends_only_on_relative_position():
    cos, sin = _tables(12, 12)
    q, k = torch.randn(HEAD_DIM), torch.randn(HEAD_DIM)

    def score(a, b):  # tokens a and b as (row, col)
        ia, ib = a[0] * 12 + a[1], b[0] * 12 + b[1]
        qa = apply_rope(q.view(1, 1, 1, -1).expand(1, 1, 144, -1), cos, sin)[0, 0, ia]
        kb = apply_rope(k.view(1, 1, 1, -1).expand(1, 1, 144, -1), cos, sin)[0, 0, ib]
        return float(qa @ kb)

    base = score((2, 3), (5, 1))
    assert score((6, 8), (9, 6)) == pytest.approx(base, abs=1e-4)
    assert score((0, 2), (3, 0)) == pytest.approx(base, abs=1e-4)
    assert score((2, 3), (5, 2)) != pytest.approx(base, abs=1e-3)


def test_height_half_depends_only_on_rows():
    cos, _ = _tables(4, 6)
    a = HEAD_DIM // 2
    grid = make_grid(4, 6)
    for n in range(24):
        same_row = (grid[1] == grid[1, n]).nonzero().flatten()
        assert torch.equal(cos[0, same_row, :a], cos[0, n, :a].expand(len(same_row), -1))


@pytest.mark.parametrize("method", ["pi", "ntk", "ntk-by-parts", "yarn"])
def test_methods_equal_plain_frequencies_at_scale_one(method):
    plain = base_frequencies(16, 10000.0)
    for length in (4, 8):  # at and below the training length the scale is 1
        torch.testing.assert_close(axis_frequencies(method, 16, 10000.0, torch.tensor([length]), 8)[0], plain)
    for decouple in (False, True):
        scaled = _tables(8, 6, RopeScaling(method, decouple=decouple))
        torch.testing.assert_close(scaled, _tables(8, 6))


def test_methods_change_frequencies_beyond_training_length():
    plain = base_frequencies(16, 10000.0)
    for method in ("pi", "ntk", "yarn"):
        f = axis_frequencies(method, 16, 10000.0, torch.tensor([16]), 8)[0]
        assert (f <= plain + 1e-9).all() and (f < plain).any()
    torch.testing.assert_close(axis_frequencies("pi", 16, 10000.0, torch.tensor([16]), 8)[0], plain / 2)


def test_attention_scales():
    one = torch.tensor([16])
    # the reference's side / area factors have a built-in ×2: above 1 at the training size
    assert float(attention_scale_factor("area", one, one, 16)) ** 2 == pytest.approx(1.125, abs=1e-4)
    assert float(attention_scale_factor("side", one, one, 16)) ** 2 == pytest.approx(1.25, abs=1e-4)
    twenty = torch.tensor([20])
    assert float(attention_scale_factor("area", twenty, twenty, 16)) ** 2 == pytest.approx(1.2055, abs=1e-4)
    # the paper's Eq. 15 form is exactly 1 at (and below) the training size
    assert float(attention_scale_factor("paper", one, one, 16)) == 1.0
    assert float(attention_scale_factor("paper", twenty, twenty, 16)) ** 2 == pytest.approx(
        math.log(400) / math.log(256), abs=1e-5
    )
    assert float(yarn_mscale(torch.tensor([32]), 16)) == pytest.approx(0.1 * math.log(2) + 1)
    assert float(yarn_mscale(torch.tensor([16]), 16)) == 1.0


def test_per_sample_equals_batch_target_for_each_image():
    sizes = [(12, 12), (8, 20)]
    for name in ("vision-ntk", "vision-yarn", "vision-ntk+attn-scale", "pi", "ntk-by-parts"):
        scaling = rope_scaling(name)
        grids = [make_grid(h, w) for h, w in sizes]
        n = max(g.shape[1] for g in grids)
        grid = torch.zeros(2, 2, n, dtype=torch.long)
        for i, g in enumerate(grids):
            grid[i, :, : g.shape[1]] = g
        size = torch.tensor([[list(s)] for s in sizes])
        mask = (torch.arange(n) < torch.tensor([h * w for h, w in sizes])[:, None]).float()
        cos, sin = rope_tables(TokenLayout.of(grid, mask, size), HEAD_DIM, 10000.0, scaling.with_(per_sample=True), 8)
        for i, (h, w) in enumerate(sizes):
            ref_cos, ref_sin = _tables(h, w, scaling.with_(target=(h, w)))
            torch.testing.assert_close(cos[i, : h * w], ref_cos[0])
            torch.testing.assert_close(sin[i, : h * w], ref_sin[0])


def test_batch_size_one_and_positions_beyond_256():
    scaling = rope_scaling("vision-yarn").with_(per_sample=True)
    cos, _ = _tables(2, 300, scaling)
    assert cos.shape == (1, 600, HEAD_DIM) and torch.isfinite(cos).all()
    # position 299 on the width axis equals the angle computed directly
    f_w = axis_frequencies("yarn", 16, 10000.0, torch.tensor([300]), 8)[0]
    mscale = float(yarn_mscale(torch.tensor([300]), 8))
    expected = torch.cos(299 * f_w).repeat_interleave(2) * mscale
    torch.testing.assert_close(cos[0, 299, 16:], expected)


def test_named_scalings():
    assert rope_scaling("vision-ntk+attn-scale") == RopeScaling("ntk", decouple=True, attn_scale="area")
    assert rope_scaling("ntkpro2", decouple=True) == rope_scaling("vision-ntk+attn-scale")
    assert rope_scaling("VisionNTK".replace("VisionNTK", "vision-ntk")).decouple
    with pytest.raises(ValueError, match="unknown RoPE extrapolation"):
        rope_scaling("nope")
