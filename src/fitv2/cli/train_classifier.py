"""``fitv2 train-classifier``: the small feature network `fitv2 evaluate` uses by default."""

from __future__ import annotations

import argparse
import time

from .flags import given
from .options import ClassifierOptions


def run(args: argparse.Namespace) -> int:
    opts = ClassifierOptions.from_dict(given(args, ClassifierOptions))
    opts.check_environment()
    from ..eval.classifier import ClassifierConfig, train_classifier

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
        hflip=opts.hflip,
        config=ClassifierConfig(num_classes=0, widths=opts.width_list),
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
