"""Tests for fitv2.eval.evaluate and the evaluate / train-classifier commands."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from imagegen import make_class_folder, shapes_image
from PIL import Image

from fitv2.cli import build_parser, dispatch
from fitv2.cli.evaluate import default_json_path, format_table
from fitv2.eval import inception as inception_module
from fitv2.eval.classifier import ClassifierConfig, train_classifier
from fitv2.eval.evaluate import (
    ClassifierFeatures,
    InceptionFeatures,
    NpzSource,
    evaluate,
    extract,
    open_source,
    shape_batches,
)
from fitv2.eval.inception import FIDInceptionV3


def _images(classes, per_class: int, size=(32, 32), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.array(classes), per_class)
    images = np.stack([np.asarray(shapes_image(int(c), size[1], size[0], rng)) for c in labels])
    return images, labels


def _write(root, images: np.ndarray, labels: np.ndarray | None, name: str):
    """The layouts `fitv2 sample` writes: NAME/NNNNNN_<label>.png and NAME.npz."""
    folder = root / name
    folder.mkdir(parents=True)
    for i, im in enumerate(images):
        Image.fromarray(im).save(folder / (f"{i:06d}_{labels[i]}.png" if labels is not None else f"{i:06d}.png"))
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    np.savez(root / f"{name}.npz", **arrays)
    return folder, root / f"{name}.npz"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    make_class_folder(root / "train", classes=4, per_class=8)
    small = ClassifierConfig(num_classes=0, widths=(8, 16, 32, 64), spatial_channels=4)  # fast FD: 64-d features
    train_classifier(root / "train", root / "clf", epochs=2, batch_size=8, budget=32, config=small, progress=False)
    real, real_y = _images([0, 1, 2, 3], 8, seed=1)
    ref_folder, ref_npz = _write(root, real, real_y, "ref")
    gen_folder, gen_npz = _write(root, *_images([0, 1, 2, 3], 6, seed=2), "gen")
    _, inv_npz = _write(root, 255 - real, real_y, "inverted")
    return dict(
        root=root,
        clf=ClassifierFeatures(root / "clf"),
        ref=ref_npz,
        ref_folder=ref_folder,
        gen=gen_npz,
        gen_folder=gen_folder,
        inv=inv_npz,
    )


def test_self_comparison_and_a_different_set(setup, tmp_path):
    clf = setup["clf"]
    same = evaluate(setup["ref"], setup["ref"], clf, cache_dir=None)
    assert abs(same["fd"]) < 1e-3 and abs(same["sfd"]) < 1e-3
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    close = evaluate(setup["gen"], setup["ref"], clf, cache_dir=None)
    far = evaluate(setup["inv"], setup["ref"], clf, cache_dir=None)
    assert far["fd"] > 2 * close["fd"] > 0 and far["sfd"] > close["sfd"]
    assert far["precision"] < close["precision"]
    for m in (same, close, far):
        assert {
            "fd",
            "sfd",
            "is",
            "is_std",
            "precision",
            "recall",
            "class_consistency",
            "reference_is",
            "num_generated",
            "num_reference",
            "reference_cached",
        } <= set(m)
        assert m["features"] == "classifier" and "fid" not in m
        assert 1.0 <= m["is"] <= 4.0 + 1e-6
    assert close["num_generated"] == 24 and close["num_reference"] == 32
    assert close["generated_shapes"] == {"32x32": 24}
    table = format_table(close)
    assert "FD" in table and "precision" in table and "class consistency" in table


def test_npz_and_png_folder_agree_and_labels_from_both(setup):
    clf = setup["clf"]
    a = evaluate(setup["gen"], setup["ref"], clf, cache_dir=None)
    b = evaluate(setup["gen_folder"], setup["ref_folder"], clf, cache_dir=None)
    for key in ("fd", "sfd", "is", "precision", "recall", "class_consistency", "reference_class_consistency"):
        assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    assert a["class_consistency"] is not None and 0 <= a["class_consistency"] <= 1
    # consistency is the classifier's accuracy on the intended labels
    feats = clf(np.load(setup["gen"])["arr_0"])["logits"].argmax(1).numpy()
    assert a["class_consistency"] == pytest.approx(float((feats == np.load(setup["gen"])["arr_1"]).mean()))


def test_no_labels_no_consistency(setup):
    root = setup["root"]
    images, _ = _images([0, 1], 3, seed=5)
    folder, npz = _write(root / "nolabels", images, None, "g")
    for src in (folder, npz):
        m = evaluate(src, setup["ref"], setup["clf"], cache_dir=None)
        assert m["class_consistency"] is None and m["reference_class_consistency"] is not None


def test_reference_cache_written_and_reused(setup, tmp_path):
    clf = ClassifierFeatures(setup["root"] / "clf")
    first = evaluate(setup["gen"], setup["ref"], clf, cache_dir=tmp_path)
    assert first["reference_cached"] is False and clf.images_seen == 24 + 32
    assert len(list(tmp_path.glob("classifier-*/meta.json"))) == 1
    second = evaluate(setup["gen"], setup["ref"], clf, cache_dir=tmp_path)
    assert second["reference_cached"] is True and clf.images_seen == 2 * 24 + 32  # only generated re-run
    for key in ("fd", "sfd", "precision", "recall", "reference_is", "reference_class_consistency"):
        assert first[key] == pytest.approx(second[key], rel=1e-9), key
    # another budget, or a changed reference file, is a different cache entry
    third = evaluate(setup["gen"], setup["ref"], clf, cache_dir=tmp_path, reference_budget=24)
    assert third["reference_cached"] is False
    st = os.stat(setup["ref"])
    os.utime(setup["ref"], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert evaluate(setup["gen"], setup["ref"], clf, cache_dir=tmp_path)["reference_cached"] is False


def test_streaming_sources_and_shape_batches(setup):
    src = NpzSource(setup["ref"], chunk=5)  # reads arr_0 from the zip five images at a time
    got = [im for im, _ in src]
    np.testing.assert_array_equal(np.stack(got), np.load(setup["ref"])["arr_0"])
    assert [y for _, y in src] == list(np.load(setup["ref"])["arr_1"])
    held, emitted = [0], []

    def stream():
        rng = np.random.default_rng(0)
        for i in range(60):
            held[0] += 1
            yield np.zeros((8 + int(rng.integers(0, 6)), 8, 3), np.uint8), i

    max_held = 0
    for batch, ys in shape_batches(stream(), batch_size=4, max_pending=6):
        max_held = max(max_held, held[0] - len(emitted))
        assert len({im.shape for im in batch}) == 1 and len(batch) == len(ys) <= 4
        emitted.extend(ys)
    assert sorted(emitted) == list(range(60)) and max_held <= 7


def test_jsonl_reference_split_and_budget(setup, tmp_path):
    make_class_folder(tmp_path / "data", classes=2, per_class=6)
    rows = [
        {"path": f"data/class_{c}/img_{i:03d}.png", "label": c, "split": "test" if i % 2 else "train"}
        for c in range(2)
        for i in range(6)
    ]
    (tmp_path / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    src = open_source(tmp_path / "metadata.jsonl", split="test", budget=20)
    images = [im for im, _ in src]
    assert len(images) == 6 and all(im.shape[0] * im.shape[1] <= 400 for im in images)
    assert len({im.shape for im in images}) > 1  # aspect ratios kept, so sizes differ
    native = [im.shape for im, _ in open_source(tmp_path / "metadata.jsonl", split="test")]
    assert (48, 32, 3) in native or (32, 48, 3) in native
    m = evaluate(setup["gen"], tmp_path / "metadata.jsonl", setup["clf"], split="test", cache_dir=None)
    assert m["num_reference"] == 6 and np.isfinite(m["fd"])
    with pytest.raises(ValueError, match="--split applies"):
        open_source(setup["ref"], split="test")
    with pytest.raises(FileNotFoundError):
        open_source(tmp_path / "missing.npz")


@pytest.mark.slow
def test_inception_features_run(setup, tmp_path, monkeypatch):
    monkeypatch.setattr(inception_module, "INPUT_SIZE", 75)  # the smallest input it takes; 299² is slow on a CPU
    model = FIDInceptionV3()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_var.uniform_(0.5, 1.5)
    torch.save(model.state_dict(), tmp_path / "pt_inception-random.pth")
    inception = InceptionFeatures(tmp_path / "pt_inception-random.pth")
    images, labels = _images([0, 1], 3, size=(24, 40))
    _, gen = _write(tmp_path, images, labels, "g")
    _, ref = _write(tmp_path, *_images([2, 3], 3, size=(32, 32), seed=3), "r")
    m = evaluate(gen, ref, inception, batch_size=6, cache_dir=tmp_path / "cache")
    assert m["features"] == "inception" and "fd" not in m
    for key in ("fid", "sfid", "is", "precision", "recall"):
        assert np.isfinite(m[key]), key
    assert m["class_consistency"] is None  # Inception's 1008 classes are not the dataset's

    # An ADM reference batch: its stored mu/sigma (and mu_s/sigma_s) are used, or alone without images.
    feats = extract(open_source(ref), inception, batch_size=6)
    stats = dict(mu=feats.pool.mean, sigma=feats.pool.cov, mu_s=feats.spatial.mean, sigma_s=feats.spatial.cov)
    with np.load(ref) as f:
        ref_images = f["arr_0"]
    np.savez(tmp_path / "adm.npz", arr_0=ref_images, **stats)
    adm = evaluate(gen, tmp_path / "adm.npz", inception, batch_size=6, cache_dir=None)
    assert adm["reference_statistics"].startswith("stored") and m["reference_statistics"].startswith("computed")
    assert adm["fid"] == pytest.approx(m["fid"], rel=1e-6) and adm["sfid"] == pytest.approx(m["sfid"], rel=1e-6)
    shifted = {**stats, "mu": stats["mu"] + 1.0}
    np.savez(tmp_path / "adm_shifted.npz", arr_0=ref_images, **shifted)
    moved = evaluate(gen, tmp_path / "adm_shifted.npz", inception, batch_size=6, cache_dir=None)
    assert moved["fid"] > m["fid"] + 1  # the stored statistics are what it compared with
    assert moved["precision"] == adm["precision"]  # precision/recall still from the images
    np.savez(tmp_path / "stats_only.npz", **stats)
    only = evaluate(gen, tmp_path / "stats_only.npz", inception, batch_size=6, cache_dir=None)
    assert only["fid"] == pytest.approx(m["fid"], rel=1e-6) and only["precision"] is None
    assert only["num_reference"] is None and "statistics only" in only["reference"]
    assert "statistics" in format_table(only)


def test_adm_statistics_need_inception_features(setup, tmp_path):
    """A classifier's features cannot be compared with stored Inception statistics."""
    with np.load(setup["ref"]) as f:
        images, labels = f["arr_0"], f["arr_1"]
    np.savez(tmp_path / "adm.npz", arr_0=images, arr_1=labels, mu=np.zeros(2048), sigma=np.eye(2048))
    m = evaluate(setup["gen"], tmp_path / "adm.npz", setup["clf"], cache_dir=None)
    assert m["reference_statistics"] == "computed from the reference images"
    np.savez(tmp_path / "only.npz", mu=np.zeros(2048), sigma=np.eye(2048))
    with pytest.raises(ValueError, match="--features inception"):
        evaluate(setup["gen"], tmp_path / "only.npz", setup["clf"], cache_dir=None)


def _cli(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    return dispatch(args)


def test_commands(setup, tmp_path, capsys):
    out = tmp_path / "clf"
    assert (
        _cli(
            [
                "train-classifier",
                str(setup["root"] / "train"),
                "--out",
                str(out),
                "--epochs",
                "1",
                "--batch-size",
                "8",
                "--budget",
                "24",
                "--quiet",
            ]
        )
        == 0
    )
    assert "test accuracy" in capsys.readouterr().out
    assert (
        _cli(
            [
                "evaluate",
                str(setup["gen"]),
                "--reference",
                str(setup["ref"]),
                "--classifier",
                str(out),
                "--cache-dir",
                str(tmp_path / "cache"),
                "--quiet",
            ]
        )
        == 0
    )
    saved = json.loads(default_json_path(setup["gen"]).read_text())
    assert default_json_path(setup["gen"]).name == "gen_metrics.json" and saved["num_generated"] == 24
    assert default_json_path(setup["gen_folder"]) == setup["gen_folder"] / "metrics.json"
    assert "FD" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError, match="reference not found"):
        _cli(["evaluate", str(setup["gen"]), "--reference", str(tmp_path / "nope")])
    with pytest.raises(FileNotFoundError, match="--inception PATH"):
        _cli(["evaluate", str(setup["gen"]), "--reference", str(setup["ref"]), "--features", "inception"])
    with pytest.raises(FileNotFoundError, match="train-classifier"):
        _cli(["evaluate", str(setup["gen"]), "--reference", str(setup["ref"]), "--classifier", str(tmp_path)])
