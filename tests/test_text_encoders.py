"""Text encoders: CLIP (penultimate layer, 77 tokens) from a local folder, and MiniLM offline."""

import pytest
import torch

from fitv2.errors import ConfigError, MissingFileError, UserError
from fitv2.text import CLIP_TOKENS, load_text_encoder, parse_text_encoder

PROMPTS = ["a red apple", "", "a yellow school bus on a wide road under a blue sky"]


def test_clip_gives_the_penultimate_layer_over_77_tokens(tiny_clip):
    from transformers import CLIPTextModel, CLIPTokenizer

    encoder = load_text_encoder(f"clip:{tiny_clip}")
    assert (encoder.dim, encoder.max_length, encoder.name) == (32, CLIP_TOKENS, f"clip:{tiny_clip}")
    text = encoder.encode(PROMPTS)
    assert text.features.shape == (3, 77, 32) and text.features.dtype == torch.float32
    assert text.mask.all()  # CLIP's padding (its end token) stays in context, as in the paper

    tokenizer, model = CLIPTokenizer.from_pretrained(tiny_clip), CLIPTextModel.from_pretrained(tiny_clip)
    ids = tokenizer(PROMPTS, padding="max_length", max_length=77, truncation=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        hidden = model(input_ids=ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(text.features, hidden[-2])  # penultimate, not the last layer
    assert (hidden[-1] - hidden[-2]).abs().max() > 1e-3


def test_clip_truncates_long_prompts(tiny_clip):
    encoder = load_text_encoder(f"clip:{tiny_clip}")
    long = "word " * 200
    assert encoder.token_counts([long])[0] > 77
    assert encoder.encode([long]).features.shape == (1, 77, 32)


def test_minilm_loads_offline_and_masks_past_the_prompt():
    encoder = load_text_encoder("minilm")
    assert encoder.dim == 384 and encoder.name == "minilm"
    counts = encoder.token_counts(PROMPTS)
    assert counts[1] == 2  # the empty caption: its two special tokens
    text = encoder.encode(PROMPTS, length=12)
    assert text.features.shape == (3, 12, 384)
    assert text.mask.sum(1).tolist() == [min(c, 12) for c in counts]
    # one prompt's features do not depend on the others in its batch
    alone = encoder.encode(PROMPTS[:1], length=12)
    torch.testing.assert_close(alone.features[0], text.features[0], atol=1e-4, rtol=1e-4)
    assert (text.features[0] - text.features[2]).abs().max() > 0.1
    assert load_text_encoder("minilm") is encoder  # loaded once per process


def test_text_encoder_names_are_checked(tmp_path):
    assert parse_text_encoder("minilm") == {"kind": "minilm"}
    assert parse_text_encoder("clip:/models/clip-l") == {"kind": "clip", "path": "/models/clip-l"}
    for bad in ["clip", "clip:", "bert", "", {"kind": "t5"}]:
        with pytest.raises(ConfigError, match="minilm"):
            parse_text_encoder(bad)
    with pytest.raises(MissingFileError, match="not found"):
        load_text_encoder(f"clip:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a CLIP text model folder"):
        load_text_encoder(f"clip:{tmp_path / 'empty'}")
    with pytest.raises(ConfigError, match=r"outside 1\.\.77"):
        load_text_encoder("minilm").encode(["a"], length=78)
