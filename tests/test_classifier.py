"""Tests for fitv2.eval.classifier: any-size inputs, training, strict save/load."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
import torch
from imagegen import make_class_folder

from fitv2.checkpoint import CheckpointError, read_state_dict, save_tensors
from fitv2.eval.classifier import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    Classifier,
    ClassifierConfig,
    fit_side,
    load_classifier,
    train_classifier,
)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("clf")
    make_class_folder(root / "images", classes=3, per_class=10)
    meta = train_classifier(root / "images", root / "model", epochs=2, batch_size=8, budget=24, progress=False)
    return root, meta


@pytest.mark.parametrize("size", [(16, 16), (16, 64), (48, 48), (37, 91), (120, 30)])
def test_any_size_and_aspect_ratio(size):
    model = Classifier(ClassifierConfig(num_classes=5)).eval()
    dims = model.feature_dims
    images = torch.randint(0, 256, (2, *size, 3), dtype=torch.uint8)
    for out in (model(images), model(images.permute(0, 3, 1, 2).float() / 127.5 - 1), model.embed(images)):
        assert {k: tuple(v.shape) for k, v in out.items()} == {k: (2, d) for k, d in dims.items()}
        assert all(torch.isfinite(v).all() for v in out.values())
    assert dims == {"pool": 256, "spatial": 16 * 4 * 4, "logits": 5}


def test_uint8_and_float_inputs_agree_and_bad_shapes_fail():
    model = Classifier(ClassifierConfig(num_classes=3)).eval()
    images = torch.randint(0, 256, (2, 20, 28, 3), dtype=torch.uint8)
    a = model(images)["pool"]
    b = model(images.permute(0, 3, 1, 2).float() / 127.5 - 1)["pool"]
    torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="uint8 images"):
        model(torch.zeros(1, 3, 20, 20, dtype=torch.uint8))
    with pytest.raises(ValueError, match="4 dims"):
        model(torch.zeros(20, 20, 3, dtype=torch.uint8))


def test_a_read_only_array_is_taken_without_a_warning():
    """Pixels of a PIL image or a loaded file are read-only numpy arrays: classified as they are, no warning."""
    model = Classifier(ClassifierConfig(num_classes=3)).eval()
    images = np.random.default_rng(0).integers(0, 256, (2, 20, 28, 3), dtype=np.uint8)
    frozen = images.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        torch.testing.assert_close(model(frozen)["pool"], model(images)["pool"])


def test_embed_resizes_to_the_input_area():
    assert fit_side(30, 120, 48) == (24, 96)
    assert fit_side(50, 50, 48) == (48, 48)
    model = Classifier(ClassifierConfig(num_classes=3, input_side=32)).eval()
    big = torch.randint(0, 256, (1, 64, 64, 3), dtype=torch.uint8)
    small = (
        torch.nn.functional.interpolate(big.permute(0, 3, 1, 2).float(), size=(32, 32), mode="bicubic", antialias=True)
        .round()
        .clamp(0, 255)
        .byte()
        .permute(0, 2, 3, 1)
    )
    # the evaluation path sees a 64² image and its 32² downsample nearly alike
    a, b = model.embed(big)["pool"], model.embed(small)["pool"]
    assert torch.allclose(a, b, atol=0.05 * float(a.abs().max()))


def test_train_save_load_round_trip(trained):
    root, meta = trained
    assert (root / "model" / WEIGHTS_FILE).is_file() and (root / "model" / CONFIG_FILE).is_file()
    saved = json.loads((root / "model" / CONFIG_FILE).read_text())
    assert saved["class_names"] == ["class_0", "class_1", "class_2"]
    assert saved["num_train"] == 27 and saved["num_test"] == 3  # every 10th image per class is held out
    assert 0.0 <= saved["test_accuracy"] <= 1.0 and set(saved["test_accuracy_by_side"]) == {"12", "24", "32"}
    assert saved["train"]["epochs_run"] == 2 and saved["parameters"] == meta["parameters"]
    model = load_classifier(root / "model")
    again = load_classifier(root / "model")
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    images = torch.randint(0, 256, (3, 24, 40, 3), dtype=torch.uint8)
    for k, v in model.embed(images).items():
        assert torch.equal(v, again.embed(images)[k])
    assert model.config.input_side == 24 and model.class_names == saved["class_names"]


def test_strict_load_errors(trained, tmp_path):
    root, _ = trained
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        load_classifier(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CONFIG_FILE).write_text((root / "model" / CONFIG_FILE).read_text())
    state = read_state_dict(root / "model" / WEIGHTS_FILE)
    state.pop("head.bias")
    state["head.weight"] = torch.zeros(4, 256)
    save_tensors(state, bad / WEIGHTS_FILE)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): head.bias(.|\n)*wrong shapes"):
        load_classifier(bad)
    (bad / CONFIG_FILE).write_text(json.dumps({"format": "something-else"}))
    with pytest.raises(ValueError, match="not a fitv2-classifier"):
        load_classifier(bad)


def test_jsonl_splits(tmp_path):
    make_class_folder(tmp_path / "images", classes=2, per_class=4)
    rows = []
    for label in range(2):
        for i in range(4):
            rows.append(
                {
                    "path": f"images/class_{label}/img_{i:03d}.png",
                    "label": label,
                    "split": "test" if i == 3 else "train",
                }
            )
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    meta = train_classifier(
        tmp_path / "metadata.jsonl", tmp_path / "m", epochs=1, batch_size=4, budget=16, progress=False
    )
    assert meta["num_train"] == 6 and meta["num_test"] == 2
    assert meta["class_names"] == ["0", "1"]


def test_groups_share_batch_norm_statistics():
    torch.manual_seed(0)
    a, b = Classifier(ClassifierConfig(num_classes=4)), Classifier(ClassifierConfig(num_classes=4))
    b.load_state_dict(a.state_dict())
    x = torch.randn(6, 3, 16, 20)
    joint = a.forward_groups([x[:2], x[2:]])["logits"]  # two groups, statistics over all six images
    torch.testing.assert_close(joint, b(x)["logits"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), atol=1e-6, rtol=1e-6)  # running stats too
    mixed = a.forward_groups([torch.randn(2, 3, 16, 32), torch.randn(1, 3, 24, 24)])
    assert mixed["pool"].shape == (3, 256)
    mixed["logits"].sum().backward()
    assert a.head.weight.grad is not None
    group = Classifier(ClassifierConfig(num_classes=4, norm="group")).eval()
    assert group(torch.randint(0, 256, (1, 20, 30, 3), dtype=torch.uint8))["logits"].shape == (1, 4)
    with pytest.raises(ValueError, match="norm"):
        Classifier(ClassifierConfig(num_classes=4, norm="layer"))
