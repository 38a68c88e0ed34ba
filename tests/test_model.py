"""Backbone: presets, initialisation, padding and packing invariance, layout."""

import pytest
import torch
from conftest import randomize, tiny_config

from fitv2.config import ablation_config, model_config
from fitv2.model import FiT
from fitv2.model.flops import model_summary
from fitv2.tokens import make_grid, pack_sequences, pad_sequences, patchify, unpatchify

# (params, Table I GFLOPs) from the issue / paper
EXPECTED = {
    "FiTv2-B/2": (128.15e6, 27.3),
    "FiTv2-XL/2": (671.05e6, 147),
    "FiTv2-3B/2": (2.97e9, 653),
    "FiT-XL/2": (823.6e6, 153),
}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_preset_params_and_gflops_match_paper(name):
    params, gflops = EXPECTED[name]
    summary = model_summary(model_config(name))
    assert summary["params"] == pytest.approx(params, rel=0.005)
    assert summary["gflops"] == pytest.approx(gflops, rel=0.005)


def test_ablation_rows_build():
    cfg_a, train_a = ablation_config("A")
    assert (cfg_a.adaln, cfg_a.mlp, cfg_a.qk_norm, cfg_a.depth) == ("full", "swiglu-large", None, 12)
    assert train_a == {"data_mode": "flexible", "time_sampling": "uniform"}
    cfg_c, _ = ablation_config("C")
    assert (cfg_c.adaln, cfg_c.depth, cfg_c.qk_norm) == ("lora", 15, "layernorm")
    assert ablation_config("F")[1]["time_sampling"] == "logit-normal"


def _inputs(cfg, sizes, generator=None):
    items = [(torch.randn(h * w, cfg.token_dim), h, w) for h, w in sizes]
    return items, pad_sequences(items)


@pytest.mark.parametrize("v1", [False, True])
def test_untrained_model_outputs_exact_zero(v1):
    cfg = tiny_config(adaln="full", mlp="swiglu-large", qk_norm=None, learn_sigma=True) if v1 else tiny_config()
    model = FiT(cfg)
    _, batch = _inputs(cfg, [(3, 5), (4, 4)])
    out = model(batch.x, torch.rand(2), torch.tensor([1, 2]), batch.layout)
    assert out.shape == (2, 16, cfg.patch_size**2 * cfg.out_channels)
    assert torch.count_nonzero(out) == 0
    # every block is the identity at init: gates are exactly zero
    c = model.conditioning(torch.rand(2), torch.tensor([1, 2]))
    for block in model.blocks:
        mod = block.adaLN_modulation(c)
        assert torch.count_nonzero(mod) == 0


def test_padding_never_changes_valid_outputs():
    cfg = tiny_config()
    model = randomize(FiT(cfg)).eval()
    items, batch = _inputs(cfg, [(3, 5), (6, 4), (2, 2)])
    t, y = torch.rand(3), torch.tensor([1, 4, 10])
    out = model(batch.x, t, y, batch.layout)
    for i, (tokens, h, w) in enumerate(items):
        alone = pad_sequences([(tokens, h, w)])
        single = model(alone.x, t[i : i + 1], y[i : i + 1], alone.layout)
        torch.testing.assert_close(out[i, : h * w], single[0], atol=1e-5, rtol=1e-5)
        assert torch.count_nonzero(out[i, h * w :]) == 0
    # and extra padding at the end changes nothing either
    longer = pad_sequences(items, length=40)
    out_long = model(longer.x, t, y, longer.layout)
    torch.testing.assert_close(out_long[:, : out.shape[1]], out, atol=1e-5, rtol=1e-5)


def test_packed_rows_equal_unpacked_images():
    cfg = tiny_config()
    model = randomize(FiT(cfg)).eval()
    sizes = [(3, 5), (2, 4), (4, 4), (1, 3)]
    items = [(torch.randn(h * w, cfg.token_dim), h, w) for h, w in sizes]
    t, y = torch.rand(4), torch.tensor([1, 2, 3, 10])
    packed = pack_sequences(items, rows=[[0, 1], [2, 3]], length=24)
    tp = torch.stack([t[[0, 1]], t[[2, 3]]])
    yp = torch.stack([y[[0, 1]], y[[2, 3]]])
    out = model(packed.x, tp, yp, packed.layout)
    starts = {0: (0, 0), 1: (0, 15), 2: (1, 0), 3: (1, 16)}
    for i, (tokens, h, w) in enumerate(items):
        alone = pad_sequences([(tokens, h, w)])
        ref = model(alone.x, t[i : i + 1], y[i : i + 1], alone.layout)[0]
        row, start = starts[i]
        torch.testing.assert_close(out[row, start : start + h * w], ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("by_runs", [False, True], ids=["by-index", "by-runs"])
@pytest.mark.parametrize("shifted", [True, False])
def test_segment_modulation_gradients(shifted, by_runs):
    from types import SimpleNamespace

    from fitv2.model.attention import contiguous_runs
    from fitv2.model.layers import gate_tokens, modulate_tokens
    from fitv2.tokens import TokenLayout

    segment = torch.tensor([[1, 1, 1, 2, 2, 0], [1, 1, 2, 2, 2, 2]])
    layout = TokenLayout(
        torch.zeros(2, 2, 6, dtype=torch.long), (segment > 0).float(), torch.ones(2, 2, 2, dtype=torch.long), segment
    )
    plan = SimpleNamespace(rows=layout.flat_image_index(), runs=contiguous_runs(segment) if by_runs else None)
    x = torch.randn(2, 6, 3, dtype=torch.float64, requires_grad=True)
    shift, scale = (torch.randn(2, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(2))
    if shifted:
        torch.autograd.gradcheck(lambda a, b, c: modulate_tokens(a, b, c, plan), (x, shift, scale))
    else:
        torch.autograd.gradcheck(lambda a, b: gate_tokens(a, b, plan), (x, scale))
    # and the same values as spreading the parameters over the tokens by hand (at the real tokens)
    spread = [torch.stack([v[b, max(int(k), 1) - 1] for k in segment[b]]) for b in range(2) for v in (shift, scale)]
    by_hand = torch.stack([x[b] * (1 + spread[2 * b + 1]) + spread[2 * b] for b in range(2)])
    real = (segment > 0)[..., None]
    torch.testing.assert_close(modulate_tokens(x, shift, scale, plan) * real, by_hand * real)
    torch.testing.assert_close(layout.spread(shift), torch.stack(spread[0::2]))


def test_packed_rows_give_unpacked_parameter_gradients():
    cfg = tiny_config()
    model = randomize(FiT(cfg)).train()
    model.y_embedder.dropout_prob = 0.0
    sizes = [(3, 5), (2, 4), (4, 4), (1, 3)]
    items = [(torch.randn(h * w, cfg.token_dim), h, w) for h, w in sizes]
    t, y = torch.rand(4), torch.tensor([1, 2, 3, 10])
    packed = pack_sequences(items, rows=[[0, 1], [2, 3]], length=24)
    out = model(packed.x, torch.stack([t[[0, 1]], t[[2, 3]]]), torch.stack([y[[0, 1]], y[[2, 3]]]), packed.layout)
    out.square().sum().backward()
    packed_grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    for i, (tokens, h, w) in enumerate(items):
        alone = pad_sequences([(tokens, h, w)])
        model(alone.x, t[i : i + 1], y[i : i + 1], alone.layout).square().sum().backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(packed_grads[name], p.grad, atol=1e-5, rtol=1e-4, msg=name)


def test_patchify_roundtrip_and_channel_order():
    img = torch.randn(2, 4, 6, 10)
    tokens = patchify(img, 2)
    assert tokens.shape == (2, 15, 16)
    # token (i, j) channel (c, p1, p2) = latent[c, 2i + p1, 2j + p2]
    i, j, c, p1, p2 = 1, 3, 2, 1, 0
    assert tokens[0, i * 5 + j, c * 4 + p1 * 2 + p2] == img[0, c, 2 * i + p1, 2 * j + p2]
    torch.testing.assert_close(unpatchify(tokens, 3, 5, 2), img)


def test_grid_convention():
    grid = make_grid(3, 4)
    assert grid[0].tolist() == [0, 1, 2, 3] * 3
    assert grid[1].tolist() == [0] * 4 + [1] * 4 + [2] * 4


def test_grad_checkpointing_gives_same_gradients():
    from fitv2.config import Runtime

    cfg = tiny_config()
    model = randomize(FiT(cfg)).train()
    ckpt = randomize(FiT(cfg, Runtime(grad_checkpointing=True))).train()
    ckpt.load_state_dict(model.state_dict())
    model.y_embedder.dropout_prob = ckpt.y_embedder.dropout_prob = 0.0
    _, batch = _inputs(cfg, [(3, 5), (4, 4)])
    args = (batch.x, torch.rand(2), torch.tensor([1, 2]), batch.layout)
    model(*args).square().sum().backward()
    ckpt(*args).square().sum().backward()
    for (name, a), b in zip(model.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name)


def _fake_flash_varlen(q, k, v, cu_q, cu_k, max_q, max_k):
    """flash_attn_varlen_func's contract, computed sequence by sequence with SDPA."""
    out = torch.empty_like(q)
    for a, b in zip(cu_q[:-1].tolist(), cu_q[1:].tolist()):
        seq = [x[a:b].transpose(0, 1)[None] for x in (q, k, v)]  # (1, H, n, D)
        out[a:b] = torch.nn.functional.scaled_dot_product_attention(*seq)[0].transpose(0, 1)
    return out


@pytest.mark.filterwarnings("ignore")
def test_attention_backends_agree_on_padded_and_packed_rows():
    from fitv2.model import attention as A

    segment = torch.tensor([[1] * 10 + [2] * 8 + [0] * 6, [1] * 20 + [0] * 4, [1] * 24])
    q, k, v = (torch.randn(3, 2, 24, 16) for _ in range(3))
    valid = (segment > 0)[:, None, :, None]
    ref = A.SDPA(segment)(q, k, v)
    # the masked whole-row kernel against attention image by image, written out
    for b, row in enumerate(segment):
        for image in row.unique().tolist():
            idx = (row == image).nonzero().squeeze(1)
            alone = torch.nn.functional.scaled_dot_product_attention(*(x[b : b + 1, :, idx] for x in (q, k, v)))
            torch.testing.assert_close(ref[b : b + 1, :, idx], alone, atol=1e-5, rtol=1e-5)
    from torch.nn.attention.flex_attention import flex_attention

    flex_out = flex_attention(q, k, v, block_mask=A.document_block_mask(segment))  # eager: the CPU has no compiled one
    torch.testing.assert_close(flex_out, ref, atol=1e-5, rtol=1e-5)
    for cls in (A.FlashVarlen, A.TorchVarlen):  # their contract, with the CUDA kernel replaced
        varlen = cls(segment, kernel=_fake_flash_varlen)
        assert varlen.cu_seqlens.tolist() == [0, 10, 18, 38, 62]
        torch.testing.assert_close(varlen(q, k, v), ref * valid, atol=1e-5, rtol=1e-5)
    per_image = A.PerImageSDPA(segment)
    assert per_image.runs == [([10, 8, 6], [1, 2, 0]), ([20, 4], [1, 0]), ([24], [1])]
    torch.testing.assert_close(per_image(q, k, v), ref * valid, atol=1e-5, rtol=1e-5)
    # gradients through the views of q, k, v equal those of the masked kernel
    grads = []
    for kernel in (A.SDPA(segment), per_image):
        leaves = [x.clone().requires_grad_() for x in (q, k, v)]
        (kernel(*leaves) * valid).square().sum().backward()
        grads.append([x.grad for x in leaves])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    # an image in two runs (an empty slot inside it): the valid tokens are gathered instead
    holed = segment.clone()
    holed[0, 4] = 0
    gathered = A.PerImageSDPA(holed)
    assert gathered.runs is None and sorted(g.shape for g in gathered.groups) == [(1, 8), (1, 9), (1, 20), (1, 24)]
    torch.testing.assert_close(
        gathered(q, k, v), A.SDPA(holed)(q, k, v) * (holed > 0)[:, None, :, None], atol=1e-5, rtol=1e-5
    )
    # nothing padded: plain SDPA without a mask; heavy padding on the CPU: per image
    assert isinstance(A.choose_attention("auto", None), A.SDPA) and A.choose_attention("flex", None).mask is None
    assert A.choose_attention("auto", torch.tensor([[1] * 4 + [0] * 20, [1] * 24])).name == "sdpa-varlen"
    # images as contiguous runs: per image whenever that is less work (views, nothing gathered)
    assert A.choose_attention("auto", torch.tensor([[1] * 22 + [0] * 2, [1] * 24])).name == "sdpa-varlen"
    # tokens that would have to be gathered: per image only above 1.5x less work
    assert A.choose_attention("auto", torch.tensor([[1] * 11 + [0] + [1] * 10 + [0] * 2, [1] * 24])).name == "sdpa"
    assert (
        A.choose_attention("auto", torch.tensor([[1] * 2 + [0] + [1] * 2 + [0] * 19, [1] * 24])).name == "sdpa-varlen"
    )


def test_attention_names_and_availability():
    from fitv2.config import Runtime
    from fitv2.errors import ConfigError
    from fitv2.model.attention import BACKENDS, attention_unavailable, choose_attention
    from fitv2.names import ATTENTION_NAMES

    assert set(BACKENDS) == set(ATTENTION_NAMES) - {"auto"}
    assert attention_unavailable("sdpa", "cpu") is None and attention_unavailable("sdpa-varlen", "cpu") is None
    assert "CUDA" in attention_unavailable("torch-varlen", "cpu")
    assert attention_unavailable("flash-varlen", "cpu") is not None
    with pytest.raises(ConfigError, match="torch-varlen"):
        choose_attention("torch-varlen", torch.tensor([[1, 1, 0]]))
    with pytest.raises(ConfigError, match="attention must be one of"):
        Runtime(attention="fast")


@pytest.mark.parametrize("backend", ["sdpa", "sdpa-varlen"])
def test_model_backends_give_the_same_outputs(backend):
    from fitv2.config import Runtime

    cfg = tiny_config()
    model = randomize(FiT(cfg)).eval()
    items = [(torch.randn(h * w, cfg.token_dim), h, w) for h, w in [(3, 5), (2, 2), (4, 1)]]
    packed = pack_sequences(items, rows=[[0, 1], [2]], length=20)
    padded = pad_sequences(items)
    t, y = torch.rand(2, 2), torch.tensor([[1, 2], [3, 0]])
    ref = model(packed.x, t, y, packed.layout)
    ref_padded = model(padded.x, torch.cat([t[0], t[1, :1]]), torch.tensor([1, 2, 3]), padded.layout)
    runtime = Runtime(attention=backend)
    torch.testing.assert_close(model(packed.x, t, y, packed.layout, runtime=runtime), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        model(padded.x, torch.cat([t[0], t[1, :1]]), torch.tensor([1, 2, 3]), padded.layout, runtime=runtime),
        ref_padded,
        atol=1e-5,
        rtol=1e-5,
    )
