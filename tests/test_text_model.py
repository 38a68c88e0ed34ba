"""The text-to-image model (FiTv2 §III-E): text slots in the layout, the caption embedder, joint
attention over [text ; image], diagonal text RoPE, caption dropout."""

import pytest
import torch

from fitv2.config import ModelConfig, model_config
from fitv2.errors import ConfigError
from fitv2.model import build_model, rope_scaling
from fitv2.model.rope import rope_tables
from fitv2.text import TextFeatures
from fitv2.tokens import TokenLayout, image_layout, make_grid, pack_sequences, pad_sequences, text_grid

M, DT = 4, 6  # text slots per image, text-encoder features


def _items(sizes, dim=48):
    return [(torch.randn(h * w, dim), h, w) for h, w in sizes]


def _model(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = model_config("FiTv2-Micro/4", text_dim=DT, text_len=M, **overrides)
    model = build_model(cfg).eval()
    with torch.no_grad():  # the zero-initialised output layers would make every test trivially pass
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _text(n, lengths=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n, M, DT, generator=g)
    lengths = lengths or [M] * n
    mask = torch.arange(M)[None] < torch.tensor(lengths)[:, None]
    return TextFeatures(features, mask)


def test_config_text_fields_go_together():
    assert not ModelConfig().text_conditional and ModelConfig(text_dim=8, text_len=77).text_conditional
    for dim, length in [(8, 0), (0, 77), (-1, -1)]:
        with pytest.raises(ConfigError, match="text_dim and text_len"):
            ModelConfig(text_dim=dim, text_len=length)


def test_text_slots_follow_each_image_on_the_diagonal_and_offset_the_image_grid():
    layout = pad_sequences(_items([(2, 3), (1, 2)]), text_len=M).layout
    assert layout.length == 6 + M and layout.text.sum(1).tolist() == [M, M]
    assert layout.mask.sum(1).tolist() == [6, 2]  # the mask is the image tokens: the loss sees nothing else
    assert torch.equal(layout.grid[0, :, :6], make_grid(2, 3) + M)  # image token (i, j) at (M + i, M + j)
    assert torch.equal(layout.grid[0, :, 6:], text_grid(M)) and text_grid(M)[0].tolist() == [0, 1, 2, 3]
    assert layout.text[1].tolist() == [False, False, True, True, True, True, False, False, False, False]
    valid = layout.in_context()
    assert valid.sum(1).tolist() == [6 + M, 2 + M]
    assert torch.equal(image_layout(2, 2, 3, text_len=M).grid[0], layout.grid[0])

    packed = pack_sequences(_items([(1, 3), (2, 2)]), rows=[[0, 1]], text_len=M).layout
    # each image's text shares its segment: [img 1 | text 1 | img 2 | text 2]
    assert packed.segment.tolist() == [[1] * (3 + M) + [2] * (4 + M)]
    values = torch.arange(2 * M, dtype=torch.float).reshape(1, 2, M)  # (B, n, M)
    placed = packed.place_text(values)[0]
    assert placed[3 : 3 + M].tolist() == [0, 1, 2, 3] and placed[7 + M :].tolist() == [4, 5, 6, 7]
    assert placed[:3].abs().sum() == 0


def test_text_slots_without_a_token_are_out_of_context():
    layout = pack_sequences(_items([(1, 3), (2, 2)]), rows=[[0, 1]], text_len=M).layout
    mask = torch.tensor([[[True, True, False, False], [True, False, False, False]]])
    segment = layout.attention_segment(layout.place_text(mask))
    assert segment.tolist() == [[1, 1, 1, 1, 1, 0, 0, 2, 2, 2, 2, 2, 0, 0, 0]]


def test_output_is_the_image_tokens_and_does_not_depend_on_the_token_order():
    """[image ; text] (how rows are stored) computes what the paper's [text ; image] does."""
    model = _model()
    batch = pad_sequences(_items([(2, 3)]), text_len=M)
    text = _text(1, [3])
    t = torch.tensor([0.4])
    out = model(batch.x, t, text, batch.layout)
    assert out[0, 6:].abs().sum() == 0 and out[0, :6].abs().sum() > 0
    order = torch.cat([torch.arange(6, 6 + M), torch.arange(6)])  # text first, as the paper writes it
    lay = batch.layout
    text_first = TokenLayout(lay.grid[:, :, order], lay.mask[:, order], lay.size, None, lay.text[:, order])
    out2 = model(batch.x[:, order], t, text, text_first)
    torch.testing.assert_close(out2[:, M:], out[:, :6], atol=1e-5, rtol=1e-5)


def test_caption_changes_the_output_and_padded_text_slots_do_not():
    model = _model()
    batch = pad_sequences(_items([(2, 2)]), text_len=M)
    t = torch.tensor([0.5])
    a = _text(1, [2], seed=1)
    out = model(batch.x, t, a, batch.layout)
    other = _text(1, [2], seed=2)
    assert (model(batch.x, t, other, batch.layout) - out).abs().max() > 1e-4
    changed = TextFeatures(a.features.clone(), a.mask)
    changed.features[0, 2:] += 5.0  # beyond the caption: padding, never seen
    torch.testing.assert_close(model(batch.x, t, changed, batch.layout), out)


def test_packed_text_rows_equal_each_image_alone():
    model = _model()
    items = _items([(2, 3), (1, 4), (2, 2)])
    texts = [_text(1, [length], seed=s) for s, length in [(1, 4), (2, 2), (3, 1)]]
    t = torch.tensor([0.2, 0.6, 0.9])
    alone = []
    for item, text, ti in zip(items, texts, t):
        b = pad_sequences([item], text_len=M)
        alone.append(model(b.x, ti[None], text, b.layout)[0, : item[1] * item[2]])
    packed = pack_sequences(items, rows=[[0, 1], [2]], length=30, text_len=M)
    feats = torch.zeros(2, 2, M, DT)
    mask = torch.zeros(2, 2, M, dtype=torch.bool)
    times = torch.zeros(2, 2)
    for (r, s), text, ti in zip([(0, 0), (0, 1), (1, 0)], texts, t):
        feats[r, s], mask[r, s], times[r, s] = text.features[0], text.mask[0], ti
    out = model(packed.x, times, TextFeatures(feats, mask), packed.layout)
    starts = [(0, 0), (0, 6 + M), (1, 0)]
    for (r, start), ref, (_, h, w) in zip(starts, alone, items):
        torch.testing.assert_close(out[r, start : start + h * w], ref, atol=2e-5, rtol=2e-5)
    assert out[packed.layout.text].abs().sum() == 0


def test_caption_dropout_is_the_empty_caption():
    model = _model()
    null = _text(1, [2], seed=9)
    model.caption_embedder.set_null(null.features[0], null.mask[0])
    batch = pad_sequences(_items([(2, 2)]), text_len=M)
    t = torch.tensor([0.3])
    dropped = model(batch.x, t, _text(1, [4], seed=3), batch.layout, label_drop=torch.tensor([True]))
    torch.testing.assert_close(dropped, model(batch.x, t, null, batch.layout))
    model.train()
    torch.manual_seed(0)
    drops = torch.rand(10_000) < model.caption_embedder.dropout_prob
    assert 0.08 < drops.float().mean() < 0.12  # the default 10 %


def test_pooled_condition_is_the_masked_mean_of_the_projected_tokens():
    model = _model()
    text = _text(2, [1, 3])
    tokens, pooled, _ = model.caption_embedder(text.features[:, None], text.mask[:, None], train=False)
    torch.testing.assert_close(pooled[0, 0], tokens[0, 0, 0])
    torch.testing.assert_close(pooled[1, 0], tokens[1, 0, :3].mean(0))


@pytest.mark.parametrize("method", ["pi", "ntk", "yarn", "vision-ntk", "vision-yarn", "paper-attn-scale"])
def test_extrapolation_at_the_training_size_equals_the_plain_tables_with_text_offsets(method):
    layout = pad_sequences(_items([(4, 4)]), text_len=M).layout
    scaling = rope_scaling("vision-ntk", attn_scale="paper") if method == "paper-attn-scale" else rope_scaling(method)
    plain = rope_tables(layout, 16, 10000.0, rope_scaling("none"), train_len=4)
    scaled = rope_tables(layout, 16, 10000.0, scaling, train_len=4)
    torch.testing.assert_close(scaled[0], plain[0])
    torch.testing.assert_close(scaled[1], plain[1])
    # The reference's attention scale (vision-ntk+attn-scale) is above 1 even at the training size
    # (its ×2, docs/text-to-image.md): the same angles, every table times one factor.
    ref_cos, _ = rope_tables(layout, 16, 10000.0, rope_scaling("vision-ntk+attn-scale"), train_len=4)
    factor = ref_cos[0, 0, 0] / plain[0][0, 0, 0]
    assert factor > 1 and torch.allclose(ref_cos, plain[0] * factor, atol=1e-6)
    # and they hold the offset positions: the text slot m at (m, m)
    diag = pad_sequences(_items([(1, 1)]), text_len=M).layout
    cos, _ = rope_tables(diag, 16, 10000.0, rope_scaling("none"), train_len=4)
    assert torch.allclose(cos[0, 1, :8], cos[0, 1, 8:])  # slot 0: row and column angles agree


def test_a_class_model_refuses_text_and_a_text_model_labels():
    text_model = _model()
    batch = pad_sequences(_items([(2, 2)]), text_len=M)
    with pytest.raises(TypeError, match="TextFeatures"):
        text_model(batch.x, torch.tensor([0.5]), torch.tensor([0]), batch.layout)
    plain = pad_sequences(_items([(2, 2)]))
    with pytest.raises(ValueError, match="text slots"):
        text_model(plain.x, torch.tensor([0.5]), _text(1), plain.layout)


def test_cpu_attention_kernels_agree_on_packed_rows_with_short_captions():
    from fitv2.config import Runtime

    model = _model()
    items = _items([(2, 3), (1, 4), (2, 2)])
    packed = pack_sequences(items, rows=[[0, 1], [2]], length=32, text_len=M)
    feats = torch.randn(2, 2, M, DT)
    mask = torch.tensor([[[True, True, False, False], [True, False, False, False]], [[True] * 4, [False] * 4]])
    text = TextFeatures(feats, mask)
    t = torch.tensor([[0.3, 0.7], [0.5, 0.0]])
    outs = {}
    for name in ("sdpa", "sdpa-varlen"):
        outs[name] = model(packed.x, t, text, packed.layout, runtime=Runtime(attention=name))
    torch.testing.assert_close(outs["sdpa"], outs["sdpa-varlen"], atol=2e-5, rtol=2e-5)
