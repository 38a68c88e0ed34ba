"""``fitv2 evaluate``: FD, sFD, IS, precision/recall and class consistency of generated images, as a table
and ``metrics.json``."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from ..errors import UserError
from .flags import given
from .options import EvaluateOptions


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


def run(args: argparse.Namespace) -> int:
    """Print the metrics table and write metrics.json."""
    opts = EvaluateOptions.from_dict(given(args, EvaluateOptions))
    opts.check_environment()
    from ..checkpoint import save_json
    from ..eval.evaluate import JsonlSource, evaluate, make_extractor, open_source

    generated = open_source(opts.generated)
    reference = open_source(opts.reference, opts.split, opts.reference_budget)
    clip = None
    if opts.clip is not None:
        if generated.prompts is None:
            raise UserError(
                f"--clip scores images against their prompts, and {opts.generated} records none "
                "(an .npz with 'prompts', or a folder with prompts.txt, as `fitv2 sample --prompt` writes)"
            )
        from ..eval.clip_score import ClipScorer

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
