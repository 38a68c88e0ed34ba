"""The text-to-image path from the command line: prepare --text-encoder, train, sample --prompt."""

import json

import numpy as np
import pytest
import torch
from imagegen import make_class_folder

from fitv2.cli import main
from fitv2.data.dataset import TokenDataset, TokenLoader
from fitv2.data.index import DatasetIndex
from fitv2.sampling import Sampler

CAPTIONS = ["a red round disc", "a green bar", "a blue disc on white"]


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """A captioned JSONL (3 classes x 4), its MiniLM token dataset and a 6-step text model."""
    root = tmp_path_factory.mktemp("text_run")
    make_class_folder(root / "images", classes=3, per_class=4)
    rows = [
        {"path": str(p.relative_to(root)), "label": c, "caption": f"{CAPTIONS[c]} number {i}"}
        for c in range(3)
        for i, p in enumerate(sorted((root / "images" / f"class_{c}").glob("*.png")))
    ]
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["prepare", str(root / "data.jsonl"), str(root / "tokens"), "--workers", "1", "--text-encoder", "minilm"]
    assert main(args) == 0
    train = ["train", "--data", str(root / "tokens"), "--out", str(root / "run"), "--preset", "FiTv2-Micro/4"]
    assert main([*train, "--batch-size", "4", "--steps", "6", "--no-progress", "--batching", "pack"]) == 0
    return root


def test_prepare_encodes_each_caption_once(text_run):
    index = DatasetIndex.load(text_run / "tokens")
    assert index.text_encoder == {"kind": "minilm"} and index.text_dim == 384
    dataset = TokenDataset(text_run / "tokens")
    from fitv2.text import load_text_encoder

    encoder = load_text_encoder("minilm")
    longest = max(encoder.token_counts([f"{c} number {i}" for c in CAPTIONS for i in range(4)]))
    assert index.text_len == longest and len(index.text_shards) == 1
    caption = dataset.caption(5)
    features, mask = dataset.text(5)
    expected = encoder.encode([caption], index.text_len)
    torch.testing.assert_close(features, expected.features[0], atol=2e-3, rtol=2e-3)  # stored in float16
    assert torch.equal(mask, expected.mask[0])
    null_features, null_mask = dataset.null_text()
    assert int(null_mask.sum()) == 2  # the empty caption: [CLS] [SEP]
    torch.testing.assert_close(null_features, encoder.encode([""], index.text_len).features[0], atol=2e-3, rtol=2e-3)


@pytest.mark.parametrize("batching", ["pad", "pack"])
def test_loader_gives_each_image_its_caption(text_run, batching):
    dataset = TokenDataset(text_run / "tokens")
    batch = next(iter(TokenLoader(dataset, 4, batching=batching, seed=1)))
    layout, M = batch.tokens.layout, dataset.text_len
    assert batch.text is not None and layout.text is not None
    assert int(layout.text.sum()) == 4 * M  # M slots per image
    features = batch.text.features.reshape(-1, M, 384)
    labels = batch.labels.reshape(-1)
    real = batch.ids.reshape(-1) >= 0
    assert int(real.sum()) == 4
    captions = {g: dataset.text(g)[0] for g in range(len(dataset))}
    for f, label in zip(features[real], labels[real]):
        match = [g for g, c in captions.items() if torch.equal(c, f)]
        assert len(match) == 1  # the captions are unique: "... number i"
        assert dataset.labels()[match[0]] == int(label)  # and it is this image's own


def test_checkpoint_records_the_text_model_and_samples_from_prompts(text_run, tmp_path):
    ckpt = text_run / "run" / "checkpoints" / "step_0000006"
    config = json.loads((ckpt / "config.json").read_text())
    assert config["model"]["text_dim"] == 384 and config["dataset"]["text_encoder"] == {"kind": "minilm"}
    sampler = Sampler.load(ckpt)
    null = sampler.model.caption_embedder.null_mask
    assert int(null.sum()) == 2  # the dataset's empty caption travelled with the weights
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a green bar\n\n a blue disc on white \n")
    out = tmp_path / "samples"
    args = ["sample", str(ckpt), "--prompt", "a red round disc", "--prompts-file", str(prompts)]
    assert main([*args, "--sizes", "32x32,16x32", "--steps", "4", "--cfg-scale", "3", "--out", str(out)]) == 0
    assert (out / "prompts.txt").read_text().splitlines() == ["a red round disc", "a green bar", "a blue disc on white"]
    with np.load(out / "16x32.npz") as f:
        assert f["arr_0"].shape == (3, 16, 32, 3) and list(f["prompts"]) == [
            "a red round disc",
            "a green bar",
            "a blue disc on white",
        ]
    assert sorted(p.name for p in (out / "32x32").iterdir()) == ["000000.png", "000001.png", "000002.png"]

    # the Python API: one prompt's image does not depend on the other prompts of its batch
    text = sampler.encode_prompts(["a red round disc", "a green bar"])
    both = sampler.generate(32, 32, text, seed=3, progress=False)
    alone = sampler.generate(32, 32, text[:1], seed=3, progress=False)  # sample i's noise: (seed, size, i)
    assert np.abs(both[:1].astype(int) - alone.astype(int)).max() <= 1
    assert np.abs(both[0].astype(int) - both[1].astype(int)).max() > 10
    assert both.shape == (2, 32, 32, 3)


def test_text_and_class_models_refuse_the_other_condition(text_run, cli_run, capsys):
    ckpt = text_run / "run" / "checkpoints" / "step_0000006"
    assert main(["sample", str(ckpt), "--per-class", "1"]) == 2
    assert "text-to-image model: give --prompt" in capsys.readouterr().err
    class_ckpt = cli_run / "run" / "checkpoints" / "step_0000006"
    assert main(["sample", str(class_ckpt), "--prompt", "a cat"]) == 2
    assert "class-conditional" in capsys.readouterr().err
    assert main(["sample", str(ckpt), "--prompt", "a", "--labels", "1"]) == 2
    assert main(["sample", str(ckpt), "--prompt", " "]) == 2
    assert main(["prepare", str(text_run / "data.jsonl"), str(text_run / "x"), "--text-encoder", "bert"]) == 2
    assert "minilm" in capsys.readouterr().err
    # a class dataset cannot train a text checkpoint further, nor the other way round
    args = ["train", "--data", str(cli_run / "tokens"), "--out", str(text_run / "other"), "--steps", "1"]
    assert main([*args, "--init-from", str(ckpt)]) == 2
    assert "text features" in capsys.readouterr().err


def test_the_pipeline_takes_prompts_and_saves_the_text_encoder(text_run, tmp_path):
    from fitv2 import FiTv2Pipeline

    pipe = FiTv2Pipeline.from_pretrained(text_run / "run" / "checkpoints" / "step_0000006")
    kwargs = dict(prompts=["a green bar", "a red round disc"], height=16, width=32, num_inference_steps=2)
    images = pipe(**kwargs, guidance_scale=3.0, output_type="np")
    assert images.shape == (2, 16, 32, 3)
    out = pipe.save_pretrained(tmp_path / "t2i")
    assert json.loads((out / "config.json").read_text())["dataset"]["text_encoder"] == {"kind": "minilm"}
    assert "captions encoded by `minilm`" in (out / "README.md").read_text()
    again = FiTv2Pipeline.from_pretrained(out)
    assert np.array_equal(again(**kwargs, guidance_scale=3.0, output_type="np"), images)
