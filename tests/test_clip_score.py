"""The CLIP score (cosine, as the paper) and evaluation of text-to-image samples."""

import json

import numpy as np
import pytest
import torch
from imagegen import make_class_folder, shapes_image

from fitv2.cli import main
from fitv2.eval.clip_score import ClipScorer
from fitv2.eval.evaluate import open_source


def _images(n, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return np.stack([np.asarray(shapes_image(i % 3, size, size, rng)) for i in range(n)])


def test_clip_score_is_the_cosine_of_the_two_embeddings(tiny_clip_model):
    from transformers import CLIPModel, CLIPTokenizer

    scorer = ClipScorer(tiny_clip_model)
    images, prompts = _images(5), ["a red disc", "a green bar", "blue", "a red disc", "x"]
    scores = scorer.scores(iter(images), prompts, batch_size=2)
    assert scores.shape == (5,) and np.all(np.abs(scores) <= 1 + 1e-6)

    model, tokenizer = CLIPModel.from_pretrained(tiny_clip_model), CLIPTokenizer.from_pretrained(tiny_clip_model)
    pixels = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255 - scorer.mean) / scorer.std  # 32 px already
    with torch.no_grad():
        img = model.get_image_features(pixel_values=pixels)
        txt = model.get_text_features(**tokenizer(prompts, padding=True, return_tensors="pt"))
    img, txt = getattr(img, "pooler_output", img), getattr(txt, "pooler_output", txt)
    expected = torch.nn.functional.cosine_similarity(img, txt, dim=-1)
    np.testing.assert_allclose(scores, expected.numpy(), atol=1e-5)
    # a larger, non-square image is resized (shorter side) and centre-cropped to the model's 32 px
    assert scorer.preprocess([np.zeros((48, 96, 3), np.uint8)]).shape == (1, 3, 32, 32)


def test_evaluate_takes_prompts_labels_from_captions_and_adds_the_clip_score(tiny_clip_model, tmp_path, capsys):
    root = tmp_path
    make_class_folder(root / "images", classes=3, per_class=6)
    captions = ["a red disc", "a green bar", "a blue disc"]
    rows = []
    for c in range(3):
        for i, p in enumerate(sorted((root / "images" / f"class_{c}").glob("*.png"))):
            split = "test" if i < 3 else "train"
            rows.append({"path": str(p.relative_to(root)), "label": c, "caption": captions[c], "split": split})
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert (
        main(["train-classifier", str(root / "data.jsonl"), "--out", str(root / "clf"), "--epochs", "1", "--quiet"])
        == 0
    )

    images, prompts = _images(6), [captions[i % 3] for i in range(6)]
    np.savez(root / "samples.npz", arr_0=images, prompts=np.array(prompts))
    assert open_source(root / "samples.npz").prompts == prompts
    args = ["evaluate", str(root / "samples.npz"), "--reference", str(root / "data.jsonl"), "--split", "test"]
    args += ["--classifier", str(root / "clf"), "--no-cache", "--quiet", "--json", str(root / "m.json")]
    assert main([*args, "--clip", str(tiny_clip_model)]) == 0
    out = capsys.readouterr().out
    assert "their captions' classes" in out and "CLIP score" in out
    metrics = json.loads((root / "m.json").read_text())
    assert metrics["class_consistency"] is not None  # labels came from the captions
    expected = ClipScorer(tiny_clip_model).scores(iter(images), prompts).mean()
    assert metrics["clip_score"] == pytest.approx(float(expected), abs=1e-6)

    # a prompt that is no caption: no labels, so no consistency, and still a CLIP score
    np.savez(root / "free.npz", arr_0=images[:2], prompts=np.array(["a cat", "a red disc"]))
    args[1] = str(root / "free.npz")
    assert main([*args, "--clip", str(tiny_clip_model)]) == 0
    metrics = json.loads((root / "m.json").read_text())
    assert metrics["class_consistency"] is None and -1 <= metrics["clip_score"] <= 1

    # class samples have no prompts to score
    np.savez(root / "plain.npz", arr_0=images, arr_1=np.zeros(6, np.int64))
    args[1] = str(root / "plain.npz")
    assert main([*args, "--clip", str(tiny_clip_model)]) == 2
    assert "records none" in capsys.readouterr().err
    assert main([*args, "--clip", str(root / "nowhere")]) == 2


def test_a_sample_folder_finds_its_prompts(tmp_path):
    folder = tmp_path / "samples" / "32x32"
    folder.mkdir(parents=True)
    from PIL import Image

    for i, im in enumerate(_images(2)):
        Image.fromarray(im).save(folder / f"{i:06d}.png")
    (tmp_path / "samples" / "prompts.txt").write_text("a\nb\n")
    assert open_source(folder).prompts == ["a", "b"]
