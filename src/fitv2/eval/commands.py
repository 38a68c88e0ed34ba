"""``fitv2 evaluate`` and ``fitv2 train-classifier`` once ``cli.py`` has checked their options."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError, MissingFileError, UserError
from ..options import ClassifierOptions, EvaluateOptions


def make_extractor(
    kind: str,
    *,
    classifier: str | os.PathLike | None = None,
    inception: str | os.PathLike | None = None,
    device: str = "cpu",
    tf_compat: bool = False,
):
    """The feature network of ``--features``: 'classifier' (a classifier folder) or 'inception' (FID weights)."""
    from .evaluate import ClassifierFeatures, InceptionFeatures
    from .inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL

    if kind == "classifier":
        if classifier is None:
            raise ConfigError("--features classifier needs --classifier DIR (see `fitv2 train-classifier`)")
        return ClassifierFeatures(classifier, device)
    if kind == "inception":
        if inception is None:
            raise MissingFileError(
                f"--features inception needs --inception PATH to {FID_WEIGHTS_NAME} "
                f"(download {FID_WEIGHTS_URL} on a machine with internet access)"
            )
        return InceptionFeatures(inception, device, tf_compat)
    raise ConfigError(f"unknown feature network {kind!r} (use classifier or inception)")


def format_table(m: dict[str, Any]) -> str:
    """A compact, aligned text table of the metrics."""
    fd = "fid" if m["features"] == "inception" else "fd"
    shapes = ", ".join(f"{k}: {v}" for k, v in sorted(m["generated_shapes"].items(), key=lambda kv: -kv[1])[:4])
    rows = [
        ("features", f"{m['features']} ({m['weights']})"),
        ("generated", f"{m['num_generated']} images [{shapes}] {m['generated']}"),
        (
            "reference",
            (f"{m['num_reference']} images " if m["num_reference"] is not None else "")
            + m["reference"]
            + (" [cached]" if m["reference_cached"] else ""),
        ),
        ("statistics", m["reference_statistics"]),
    ]
    for key, name in (
        (fd, fd.upper()),
        ("s" + fd, "s" + fd.upper()),
        ("is", "IS"),
        ("precision", "precision"),
        ("recall", "recall"),
        ("class_consistency", "class consistency"),
        ("clip_score", "CLIP score"),
        ("reference_is", "IS (reference)"),
        ("reference_class_consistency", "class consistency (reference)"),
    ):
        if m.get(key) is not None:
            four = key in ("precision", "recall", "clip_score") or "consistency" in key
            value = f"{m[key]:.4f}" if four else f"{m[key]:.3f}"
            rows.append((name, value + (f" ± {m['is_std']:.3f}" if key == "is" and m["is_std"] else "")))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def default_json_path(generated: str | os.PathLike) -> Path:
    """``<folder>/metrics.json`` for a folder, ``<name>_metrics.json`` next to a file."""
    path = Path(generated)
    return path / "metrics.json" if path.is_dir() else path.with_name(path.stem + "_metrics.json")


def run_evaluate(opts: EvaluateOptions) -> int:
    """``fitv2 evaluate`` with checked options: print the metrics table and write metrics.json."""
    from ..checkpoint import save_json
    from .evaluate import JsonlSource, evaluate, open_source

    generated = open_source(opts.generated)
    reference = open_source(opts.reference, opts.split, opts.reference_budget)
    clip = None
    if opts.clip is not None:
        if generated.prompts is None:
            raise UserError(
                f"--clip scores images against their prompts, and {opts.generated} records none "
                "(an .npz with 'prompts', or a folder with prompts.txt, as `fitv2 sample --prompt` writes)"
            )
        from .clip_score import ClipScorer

        clip = ClipScorer(opts.clip, opts.device)  # loaded before hours of feature extraction
    if generated.prompts is not None and generated.labels is None and isinstance(reference, JsonlSource):
        generated.labels = reference.labels_of_captions(generated.prompts)
        if generated.labels is not None:
            print(f"labels of the {len(generated.prompts)} prompts: their captions' classes in {opts.reference}")
    extractor = make_extractor(
        opts.features,
        classifier=opts.classifier,
        inception=opts.inception,
        device=opts.device,
        tf_compat=opts.tf_compat,
    )
    metrics = evaluate(
        generated,
        reference,
        extractor,
        batch_size=opts.batch_size,
        cache_dir=None if opts.no_cache else (opts.cache_dir or "default"),
        progress=not opts.quiet,
    )
    if clip is not None and generated.prompts is not None:
        scores = clip.scores((image for image, _ in generated), generated.prompts, opts.batch_size)
        metrics.update(clip_score=float(scores.mean()), clip_score_std=float(scores.std()), clip_model=str(opts.clip))
    print(format_table(metrics))
    out = Path(opts.json) if opts.json else default_json_path(opts.generated)
    save_json(metrics, out)
    print(f"metrics written to {out}")
    return 0


def run_train_classifier(opts: ClassifierOptions) -> int:
    """``fitv2 train-classifier`` with checked options."""
    from .classifier import train_classifier

    start = time.perf_counter()
    meta = train_classifier(
        opts.data,
        opts.out,
        epochs=opts.epochs,
        batch_size=opts.batch_size,
        lr=opts.lr,
        budget=opts.budget,
        seed=opts.seed,
        max_minutes=opts.max_minutes,
        progress=not opts.quiet,
    )
    acc = meta["test_accuracy"]
    by_side = ", ".join(f"{s}²: {a:.3f}" for s, a in meta["test_accuracy_by_side"].items())
    print(
        f"classifier ({meta['parameters']:,} parameters, {len(meta['class_names'])} classes) trained on "
        f"{meta['num_train']} images for {meta['train']['epochs_run']} epochs in "
        f"{time.perf_counter() - start:.0f}s; saved to {opts.out}"
    )
    print(
        f"test accuracy on {meta['num_test']} images: "
        + (f"{acc:.3f} (by input area: {by_side})" if acc is not None else "n/a (no test images)")
    )
    return 0
