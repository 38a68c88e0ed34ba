"""CLI wiring for ``fitv2 evaluate`` and ``fitv2 train-classifier``; ``cli.py`` calls :func:`register`."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

DEFAULT_CLASSIFIER = "runs/classifier"


def make_extractor(kind: str, *, classifier: str | os.PathLike | None = None,
                   inception: str | os.PathLike | None = None, device: str = "cpu", tf_compat: bool = False):
    """The feature network of ``--features``: 'classifier' (a classifier folder) or 'inception' (FID weights)."""
    from .evaluate import ClassifierFeatures, InceptionFeatures
    from .inception import FID_WEIGHTS_NAME, FID_WEIGHTS_URL

    if kind == "classifier":
        if classifier is None:
            raise ValueError("--features classifier needs --classifier DIR (see `fitv2 train-classifier`)")
        return ClassifierFeatures(classifier, device)
    if kind == "inception":
        if inception is None:
            raise FileNotFoundError(f"--features inception needs --inception PATH to {FID_WEIGHTS_NAME} "
                                    f"(download {FID_WEIGHTS_URL} on a machine with internet access)")
        return InceptionFeatures(inception, device, tf_compat)
    raise ValueError(f"unknown feature network {kind!r} (use classifier or inception)")


def format_table(m: dict[str, Any]) -> str:
    """A compact, aligned text table of the metrics."""
    fd = "fid" if m["features"] == "inception" else "fd"
    shapes = ", ".join(f"{k}: {v}" for k, v in sorted(m["generated_shapes"].items(), key=lambda kv: -kv[1])[:4])
    rows = [("features", f"{m['features']} ({m['weights']})"),
            ("generated", f"{m['num_generated']} images [{shapes}] {m['generated']}"),
            ("reference", f"{m['num_reference']} images {m['reference']}" + (" [cached]" if m["reference_cached"]
                                                                                 else ""))]
    for key, name in ((fd, fd.upper()), ("s" + fd, "s" + fd.upper()), ("is", "IS"), ("precision", "precision"),
                      ("recall", "recall"), ("class_consistency", "class consistency"),
                      ("reference_is", "IS (reference)"),
                      ("reference_class_consistency", "class consistency (reference)")):
        if m.get(key) is not None:
            value = f"{m[key]:.4f}" if key in ("precision", "recall") or "consistency" in key else f"{m[key]:.3f}"
            rows.append((name, value + (f" ± {m['is_std']:.3f}" if key == "is" and m["is_std"] else "")))
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{name.ljust(width)}  {value}" for name, value in rows)


def default_json_path(generated: str | os.PathLike) -> Path:
    """``<folder>/metrics.json`` for a folder, ``<name>_metrics.json`` next to a file."""
    path = Path(generated)
    return path / "metrics.json" if path.is_dir() else path.with_name(path.stem + "_metrics.json")


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ..checkpoint import save_json
    from .evaluate import evaluate, open_source

    for path, what in ((args.generated, "generated images"), (args.reference, "reference")):
        if not Path(path).exists():
            raise FileNotFoundError(f"{what} not found: {path}")
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be positive, got {args.batch_size}")
    if args.reference_budget is not None and args.reference_budget < 1:
        raise ValueError(f"--reference-budget must be positive, got {args.reference_budget}")
    generated = open_source(args.generated)
    reference = open_source(args.reference, args.split, args.reference_budget)
    extractor = make_extractor(args.features, classifier=args.classifier, inception=args.inception,
                               device=args.device, tf_compat=args.tf_compat)
    metrics = evaluate(generated, reference, extractor, batch_size=args.batch_size,
                       cache_dir=None if args.no_cache else (args.cache_dir or "default"), progress=not args.quiet)
    print(format_table(metrics))
    out = Path(args.json) if args.json else default_json_path(args.generated)
    save_json(metrics, out)
    print(f"metrics written to {out}")
    return 0


def cmd_train_classifier(args: argparse.Namespace) -> int:
    from .classifier import train_classifier

    if not Path(args.data).exists():
        raise FileNotFoundError(f"no such image folder or JSONL file: {args.data}")
    for name in ("epochs", "batch_size", "budget"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.budget < 16:
        raise ValueError(f"--budget must be at least 16 px, got {args.budget}")
    start = time.perf_counter()
    meta = train_classifier(args.data, args.out, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                            budget=args.budget, seed=args.seed, max_minutes=args.max_minutes,
                            progress=not args.quiet)
    acc = meta["test_accuracy"]
    by_side = ", ".join(f"{s}²: {a:.3f}" for s, a in meta["test_accuracy_by_side"].items())
    print(f"classifier ({meta['parameters']:,} parameters, {len(meta['class_names'])} classes) trained on "
          f"{meta['num_train']} images for {meta['train']['epochs_run']} epochs in "
          f"{time.perf_counter() - start:.0f}s; saved to {args.out}")
    print(f"test accuracy on {meta['num_test']} images: " + (f"{acc:.3f} (by input area: {by_side})"
                                                              if acc is not None else "n/a (no test images)"))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``evaluate`` and ``train-classifier`` subcommands to the main parser."""
    p = sub.add_parser("evaluate", help="FD/sFD, IS, precision/recall, class consistency of generated images")
    p.add_argument("generated", help="folder of PNG/JPG samples (labels from '_<int>' name suffixes) or an "
                                     "ADM-style .npz (arr_0 uint8 NHWC, arr_1 labels)")
    p.add_argument("--reference", required=True, help="reference images: a dataset .jsonl, a folder or an .npz")
    p.add_argument("--split", help="with a .jsonl reference: only rows of this split (e.g. test)")
    p.add_argument("--features", default="classifier", choices=["classifier", "inception"],
                   help="feature network (default classifier: trained offline with `fitv2 train-classifier`)")
    p.add_argument("--classifier", default=DEFAULT_CLASSIFIER,
                   help=f"classifier folder (default {DEFAULT_CLASSIFIER})")
    p.add_argument("--inception", help="FID Inception weights (pt_inception-2015-12-05-6726825d.pth)")
    p.add_argument("--tf-compat", action="store_true", help="Inception: TF1 resize as the ADM evaluator")
    p.add_argument("--reference-budget", type=int, metavar="S",
                   help="resize reference images to area <= S² keeping the aspect ratio")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--cache-dir", help="reference feature cache (default ~/.cache/fitv2/eval)")
    p.add_argument("--no-cache", action="store_true", help="neither read nor write the reference cache")
    p.add_argument("--json", help="metrics file (default <folder>/metrics.json or <file>_metrics.json)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train-classifier", help="train the small feature network used by `fitv2 evaluate`")
    p.add_argument("data", help="dataset .jsonl with train/test splits, or a folder with one sub-folder per class")
    p.add_argument("--out", required=True, help="output folder (classifier.safetensors + classifier.json)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--budget", type=int, default=32,
                   help="input side S: trains on areas (S/2)²..(4S/3)², evaluates at S² (default 32, the "
                        "pixel-space budget of `fitv2 prepare`)")
    p.add_argument("--max-minutes", type=float, help="stop after this long (the schedule adapts)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_train_classifier)
