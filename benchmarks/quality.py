"""Small-scale reproduction of FiTv2's claims on the embedded clipart data (pixel space, CPU).

Three arms, each with the same width, the paper's depth ratio (FiTv2-B/2 15 layers : 12),
and the same number of real training tokens:

  fitv2   FiTv2 block (QK-Norm, AdaLN-LoRA + global, SwiGLU 8d/3), mixed data, logit-normal time
  fitv1   FiT v1 block in rectified flow (full adaLN, SwiGLU 4d, no QK-Norm), flexible data,
          uniform time — Table II "Config A"
  fixed   fixed-resolution baseline, the SiT/DiT recipe: square crops only (no padding),
          DiT block (full adaLN, GELU MLP 4d, no QK-Norm), uniform time; RoPE as position code

Each arm is evaluated on the held-out test split with the locally trained classifier's
features (Fréchet distance, precision, recall, class accuracy of conditional samples) at
in-distribution sizes (budget square, 1:2, 1:3) and beyond the token budget (~1.5× and ~2×,
square and 1:2) with none / PI / NTK / VisionNTK / VisionNTK + attention scale.

    python benchmarks/quality.py            # full run (~2 h on 2 CPU cores)
    python benchmarks/quality.py --quick    # minutes; numbers are only a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import torch
from common import cpu_name, train_for_tokens

from fitv2.data.prepare import prepare
from fitv2.eval.classifier import load_classifier, train_classifier
from fitv2.eval.evaluate import ClassifierFeatures, evaluate
from fitv2.model.rope import rope_scaling
from fitv2.plot import image_grid
from fitv2.sampling import Guidance, Sampler, SolverConfig, write_samples

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "clipart" / "metadata.jsonl"
BUDGET = 32  # pixels: 8 x 8 = 64 tokens of 4 x 4 pixels

ARMS = {
    "fitv2": dict(
        model=dict(adaln="lora", mlp="swiglu", qk_norm="layernorm"),
        depth_ratio=15,
        data_mode="mixed",
        time_sampling="logit-normal",
    ),
    "fitv1": dict(
        model=dict(adaln="full", mlp="swiglu-large", qk_norm=None),
        depth_ratio=12,
        data_mode="flexible",
        time_sampling="uniform",
    ),
    "fixed": dict(
        model=dict(adaln="full", mlp="gelu", qk_norm=None), depth_ratio=12, data_mode="fixed", time_sampling="uniform"
    ),
}
IN_DISTRIBUTION = [(32, 32, "1:1"), (20, 40, "1:2"), (16, 48, "1:3")]
BEYOND = [(40, 40, "1:1, 1.6x"), (28, 56, "1:2, 1.5x"), (44, 44, "1:1, 1.9x"), (32, 64, "1:2, 2.0x")]
METHODS = ["none", "pi", "ntk", "vision-ntk", "vision-ntk+attn-scale"]

SETTINGS = {
    "full": dict(
        width=128,
        heads=2,
        base_depth=4,
        batch=64,
        lr=1e-3,
        tokens=4e6,
        per_class=8,
        steps=20,
        classifier_epochs=20,
        classifier_minutes=5,
    ),
    "quick": dict(
        width=64,
        heads=2,
        base_depth=2,
        batch=32,
        lr=2e-3,
        tokens=2e5,
        per_class=2,
        steps=6,
        classifier_epochs=1,
        classifier_minutes=1,
    ),
}


def arm_depth(arm: str, base_depth: int) -> int:
    """FiTv2 gets 15/12 of the others' depth, as FiTv2-B/2 (15 layers) against FiT-B/2 (12)."""
    return base_depth if ARMS[arm]["depth_ratio"] == 12 else round(base_depth * 15 / 12)


def train_arm(arm: str, tokens: Path, work: Path, s: dict, seed: int) -> tuple[Path, dict]:
    spec = ARMS[arm]
    model = dict(
        spec["model"],
        hidden_size=s["width"],
        num_heads=s["heads"],
        depth=arm_depth(arm, s["base_depth"]),
        adaln_lora_dim=s["width"] // 4,
    )
    return train_for_tokens(
        tokens, work / arm, model, s, seed, data_mode=spec["data_mode"], time_sampling=spec["time_sampling"]
    )


def evaluate_arm(arm: str, checkpoint: Path, work: Path, classifier: Path, s: dict, seed: int) -> tuple[list, dict]:
    sampler = Sampler.load(checkpoint)
    k = sampler.model.config.num_classes
    labels = torch.arange(k).repeat_interleave(s["per_class"])
    extractor = ClassifierFeatures(classifier)
    solver, guidance = SolverConfig("euler", steps=s["steps"]), Guidance(scale=1.5)
    rows, grids = [], {}
    settings = [(h, w, note, "none") for h, w, note in IN_DISTRIBUTION]
    settings += [(h, w, note, m) for h, w, note in BEYOND for m in METHODS]
    for h, w, note, method in settings:
        images = sampler.generate(h, w, labels, solver, guidance, rope_scaling(method), seed=seed, progress=False)
        folder = work / "samples" / arm / f"{h}x{w}_{method}"
        shutil.rmtree(folder, ignore_errors=True)
        write_samples(folder, {(h, w): images}, labels, sampler.class_names)
        side = 4 * round(math.sqrt(h * w) / 4)  # reference images at the same pixel count
        metrics = evaluate(
            folder / f"{h}x{w}.npz", DATA, extractor, split="test", reference_budget=side, cache_dir=work / "eval_cache"
        )
        rows.append(
            dict(
                arm=arm,
                size=f"{h}x{w}",
                tokens=(h // 4) * (w // 4),
                note=note,
                method=method,
                fd=metrics["fd"],
                precision=metrics["precision"],
                recall=metrics["recall"],
                accuracy=metrics["class_consistency"],
            )
        )
        grids[f"{h}x{w} {method}"] = images[:: s["per_class"]]
        print(
            f"  {arm:6s} {h}x{w:<3d} {method:22s} FD {metrics['fd']:8.2f}  P {metrics['precision']:.3f}  "
            f"R {metrics['recall']:.3f}  acc {metrics['class_consistency']:.3f}",
            flush=True,
        )
    grid = image_grid(
        [list(v) for v in grids.values()],
        list(grids),
        sampler.class_names,
        min_cell=1,
        title=f"{arm}: one sample per class (columns) per size and RoPE method (rows)",
    )
    return rows, {"grid": grid, "params": sum(p.numel() for p in sampler.model.parameters())}


def grid_name(arm: str, mode: str) -> str:
    return f"quality_{arm}.jpg" if mode == "full" else f"quality_quick_{arm}.jpg"  # noisy samples: JPEG is 10x smaller


def write_report(
    path: Path, rows: list[dict], infos: dict, s: dict, mode: str, wall: float, classifier_acc: float, command: str
) -> None:
    lines = [
        f"# Quality benchmark ({mode})",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall / 60:.1f} min on {cpu_name()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}.",
        "",
        f"Data: embedded clipart, train split, pixel space, patch 4, budget {BUDGET}x{BUDGET} px "
        f"({(BUDGET // 4) ** 2} tokens). Evaluation: {s['per_class']} samples per class against the test split "
        f"(reference images resized to the same pixel count), Euler {s['steps']} steps, CFG 1.5. Features: the "
        f"locally trained classifier (test accuracy {classifier_acc:.1%}); FD = Fréchet distance on its pooled "
        "features, precision/recall k=3, accuracy = how often a sample is classified as its class.",
        "",
        "| arm | params | depth | steps | training tokens | images | final loss | train time | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm, info in infos.items():
        lines.append(
            f"| {arm} | {info['params'] / 1e6:.2f}M | {arm_depth(arm, s['base_depth'])} | {info['steps']} | "
            f"{info['tokens']:,.0f} | {info['images']:,.0f} | {info['loss']:.4f} | "
            f"{info['seconds'] / 60:.1f} min | {info['tokens_per_s']:,.0f} |"
        )
    lines += [
        "",
        "| arm | size | tokens | setting | RoPE | FD ↓ | precision ↑ | recall ↑ | class acc ↑ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['size']} | {r['tokens']} | {r['note']} | {r['method']} | {r['fd']:.2f} | "
            f"{r['precision']:.3f} | {r['recall']:.3f} | {r['accuracy']:.3f} |"
        )
    lines += ["", *[f"![{arm}]({grid_name(arm, mode)})" for arm in infos]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of the whole pipeline")
    parser.add_argument("--work", default="runs/quality", help="working folder (tokens, checkpoints, samples)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where quality.md goes")
    parser.add_argument("--arms", default="fitv2,fitv1,fixed")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    work = Path(args.work) / mode
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    tokens = work / "tokens"
    if not (tokens / "index.json").is_file():
        prepare(DATA, tokens, patch_size=4, budget=BUDGET, split="train")
    classifier = work / "classifier"
    if not (classifier / "classifier.json").is_file():
        train_classifier(
            DATA, classifier, epochs=s["classifier_epochs"], max_minutes=s["classifier_minutes"], seed=args.seed
        )
    classifier_acc = load_classifier(classifier).meta.get("test_accuracy", float("nan"))

    rows, infos = [], {}
    for arm in args.arms.split(","):
        print(f"== {arm}: training", flush=True)
        checkpoint, info = train_arm(arm, tokens, work, s, args.seed)
        print(
            f"== {arm}: {info['steps']} steps, {info['tokens']:,.0f} tokens, {info['seconds'] / 60:.1f} min", flush=True
        )
        arm_rows, extra = evaluate_arm(arm, checkpoint, work, classifier, s, args.seed)
        info["params"] = extra["params"]
        extra["grid"].save(results / grid_name(arm, mode), quality=92)
        rows += arm_rows
        infos[arm] = info
    name = "quality.md" if mode == "full" else "quality_quick.md"
    command = "python benchmarks/quality.py" + (" --quick" if args.quick else "")
    write_report(results / name, rows, infos, s, mode, time.perf_counter() - start, classifier_acc, command)
    (results / name.replace(".md", ".json")).write_text(json.dumps({"rows": rows, "arms": infos}, indent=1) + "\n")
    print(f"wrote {results / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
