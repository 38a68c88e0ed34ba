"""Small-scale reproduction of FiTv2's claims on the embedded clipart or glyph data (pixel space, CPU).

Three arms, each with the same width, the paper's depth ratio (FiTv2-B/2 15 layers : 12),
and the same number of real training tokens:

  fitv2   FiTv2 block (QK-Norm, AdaLN-LoRA + global, SwiGLU 8d/3), mixed data, logit-normal time
  fitv1   FiT v1 block in rectified flow (full adaLN, SwiGLU 4d, no QK-Norm), flexible data,
          uniform time — Table II "Config A"
  fixed   fixed-resolution baseline, the SiT/DiT recipe: square crops only (no padding),
          DiT block (full adaLN, GELU MLP 4d, no QK-Norm), uniform time; RoPE as position code

Each arm is evaluated on the held-out test split with a classifier's features (Fréchet
distance, precision, recall, class accuracy of conditional samples) at in-distribution sizes
and beyond the token budget (1.5-2x the tokens) with every extrapolation method. Clipart: a
classifier trained here, square 1:1, 1:2, 1:3. Glyphs: the classifier that ships with them,
the glyphs' training shape, 1:1, 2:1, 3:1 (glyphs stand upright), no flips. With several
seeds, every (arm, seed) is its own job; the report gives mean ± std and judges the paper's
orderings (Tables II, III, V) against that spread.

    python benchmarks/quality.py                               # clipart, one seed (~80 min, 1 thread)
    python benchmarks/quality.py --data glyphs --seeds 0,1,2 --shard 0/2 &   # glyphs, 3 seeds,
    python benchmarks/quality.py --data glyphs --seeds 0,1,2 --shard 1/2     # one process a core
    python benchmarks/quality.py --quick                       # minutes; only a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_name, train_for_tokens

from fitv2.data.prepare import prepare
from fitv2.eval.classifier import load_classifier, train_classifier
from fitv2.eval.evaluate import ClassifierFeatures, evaluate
from fitv2.model.rope import rope_scaling
from fitv2.plot import image_grid
from fitv2.sampling import Guidance, Sampler, SolverConfig, write_samples

ROOT = Path(__file__).resolve().parents[1]
# Each dataset: its metadata, the token budget (pixels per side), where the evaluation classifier comes
# from (trained here, or the one that ships with the data), whether training flips images, the sizes
# evaluated in distribution and beyond the budget (height, width, note), and the RoPE methods tried beyond.
DATASETS = {
    "clipart": dict(
        data=ROOT / "data" / "clipart" / "metadata.jsonl",
        budget=32,  # 8 x 8 = 64 tokens of 4 x 4 pixels
        classifier=None,
        hflip=True,
        in_distribution=[(32, 32, "1:1"), (20, 40, "1:2"), (16, 48, "1:3")],
        beyond=[(40, 40, "1:1, 1.6x"), (28, 56, "1:2, 1.5x"), (44, 44, "1:1, 1.9x"), (32, 64, "1:2, 2.0x")],
        methods=["none", "pi", "ntk", "vision-ntk", "vision-ntk+attn-scale"],
    ),
    "glyphs": dict(
        data=ROOT / "data" / "glyphs" / "metadata.jsonl",
        budget=24,  # at most 36 tokens; the most common glyph grid is 6 x 5 tokens (24 x 20 px)
        classifier=ROOT / "data" / "glyphs" / "classifier",
        hflip=False,  # a mirrored b is a d
        # Glyphs stand upright: their long side is the height.
        in_distribution=[(24, 20, "training shape"), (24, 24, "1:1"), (32, 16, "2:1"), (36, 12, "3:1")],
        beyond=[(32, 28, "7:8, 1.6x"), (36, 32, "9:8, 2.0x"), (48, 24, "2:1, 2.0x")],
        methods=["none", "pi", "ntk", "yarn", "vision-ntk", "vision-yarn", "vision-ntk+attn-scale"],
    ),
}

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
_CLIPART_FULL = dict(
    width=128,
    heads=2,
    base_depth=4,
    batch=64,
    lr=1e-3,
    tokens=4e6,
    per_class=8,
    solver="euler",
    steps=20,
    cfg=1.5,
    classifier_epochs=20,
    classifier_minutes=5,
)
_QUICK = dict(
    width=64,
    heads=2,
    base_depth=2,
    batch=32,
    lr=2e-3,
    tokens=2e5,
    per_class=2,
    solver="euler",
    steps=6,
    cfg=1.5,
    classifier_epochs=1,
    classifier_minutes=1,
)
SETTINGS = {
    ("clipart", "full"): _CLIPART_FULL,
    ("clipart", "quick"): _QUICK,
    # The demo's width, batch and learning rate; DPM-Solver++(2M) from 8 steps equals dopri5 on a glyph model
    # within the seed spread (benchmarks/results/sampling.md). Guidance 1.5, as in the paper's tables.
    ("glyphs", "full"): dict(
        width=128,
        heads=2,
        base_depth=4,
        batch=32,
        lr=2e-3,
        tokens=2e6,
        per_class=2,
        solver="dpm++2m",
        steps=10,
        cfg=1.5,
    ),
    ("glyphs", "quick"): dict(_QUICK, solver="dpm++2m"),
}


def arm_depth(arm: str, base_depth: int) -> int:
    """FiTv2 gets 15/12 of the others' depth, as FiTv2-B/2 (15 layers) against FiT-B/2 (12)."""
    return base_depth if ARMS[arm]["depth_ratio"] == 12 else round(base_depth * 15 / 12)


def train_arm(arm: str, tokens: Path, out: Path, s: dict, seed: int, hflip: bool) -> tuple[Path, dict]:
    spec = ARMS[arm]
    model = dict(
        spec["model"],
        hidden_size=s["width"],
        num_heads=s["heads"],
        depth=arm_depth(arm, s["base_depth"]),
        adaln_lora_dim=s["width"] // 4,
    )
    return train_for_tokens(
        tokens, out, model, s, seed, data_mode=spec["data_mode"], time_sampling=spec["time_sampling"], hflip=hflip
    )


def evaluate_arm(
    arm: str, checkpoint: Path, work: Path, classifier: Path, s: dict, seed: int, ds: dict
) -> tuple[list, dict]:
    sampler = Sampler.load(checkpoint)
    k = sampler.model.config.num_classes
    labels = torch.arange(k).repeat_interleave(s["per_class"])
    extractor = ClassifierFeatures(classifier)
    solver, guidance = SolverConfig(s["solver"], steps=s["steps"]), Guidance(scale=s["cfg"])
    rows, grids = [], {}
    settings = [(h, w, note, "none") for h, w, note in ds["in_distribution"]]
    settings += [(h, w, note, m) for h, w, note in ds["beyond"] for m in ds["methods"]]
    for h, w, note, method in settings:
        images = sampler.generate(h, w, labels, solver, guidance, rope_scaling(method), seed=seed, progress=False)
        folder = work / "samples" / f"{arm}_s{seed}" / f"{h}x{w}_{method}"
        shutil.rmtree(folder, ignore_errors=True)
        write_samples(folder, {(h, w): images}, labels, sampler.class_names)
        side = 4 * round(math.sqrt(h * w) / 4)  # reference images at the same pixel count
        metrics = evaluate(
            folder / f"{h}x{w}.npz",
            ds["data"],
            extractor,
            split="test",
            reference_budget=side,
            cache_dir=work / "eval_cache",
        )
        rows.append(
            dict(
                arm=arm,
                seed=seed,
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
            f"  {arm:6s} seed {seed} {h}x{w:<3d} {method:22s} FD {metrics['fd']:8.2f}  P {metrics['precision']:.3f}  "
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


def stem(dataset: str, mode: str) -> str:
    """quality (the clipart benchmark's historical name), quality_glyphs, quality_quick, quality_glyphs_quick."""
    return "quality" + ("" if dataset == "clipart" else f"_{dataset}") + ("" if mode == "full" else "_quick")


def grid_name(dataset: str, arm: str, mode: str) -> str:
    return f"{stem(dataset, mode)}_{arm}.jpg"  # noisy samples: JPEG is 10x smaller


def mean_std(values: list[float]) -> tuple[float, float]:
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def summarise(rows: list[dict]) -> list[dict]:
    """One row per (arm, size, method): mean and standard deviation over the seeds of every metric."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["size"], r["method"]), []).append(r)
    out = []
    for (arm, size, method), rs in groups.items():
        row = dict(arm=arm, size=size, method=method, tokens=rs[0]["tokens"], note=rs[0]["note"], seeds=len(rs))
        for key in ("fd", "precision", "recall", "accuracy"):
            row[key], row[key + "_std"] = mean_std([r[key] for r in rs])
        out.append(row)
    return out


def compare(summary: list[dict], a: tuple[str, str], b: tuple[str, str], size: str, key: str) -> str | None:
    """Does (arm, method) ``a`` beat ``b`` at ``size`` on ``key`` (FD: lower) by more than their spreads?"""
    find = {(r["arm"], r["method"], r["size"]): r for r in summary}
    ra, rb = find.get((*a, size)), find.get((*b, size))
    if ra is None or rb is None or ra["seeds"] < 2 or rb["seeds"] < 2:
        return None
    better = (rb[key] - ra[key]) if key == "fd" else (ra[key] - rb[key])
    spread = ra[key + "_std"] + rb[key + "_std"]
    verdict = "holds" if better > spread else "reversed" if -better > spread else "within the spread"
    return f"{verdict} ({ra[key]:.2f} vs {rb[key]:.2f}, spread {spread:.2f})"


def orderings(summary: list[dict], ds: dict) -> list[str]:
    """The paper's orderings (Table II: the FiTv2 recipe over FiT v1's; Table V: FiTv2 with VisionNTK and the
    attention scale over FiT v1 and the fixed-resolution model beyond the budget; Table III: the extrapolation
    methods), each judged at every size on FD and class accuracy."""
    in_sizes = [f"{h}x{w}" for h, w, _ in ds["in_distribution"]]
    out_sizes = [f"{h}x{w}" for h, w, _ in ds["beyond"]]
    best = "vision-ntk+attn-scale"
    claims = [
        ("Table II: FiTv2 better than FiT v1 in distribution", ("fitv2", "none"), ("fitv1", "none"), in_sizes),
        ("Table II/IV: FiT v1 better than the fixed-resolution model", ("fitv1", "none"), ("fixed", "none"), in_sizes),
        (
            "Table V: FiTv2 + VisionNTK + attention scale better than FiT v1 (its best method, VisionNTK)",
            ("fitv2", best),
            ("fitv1", "vision-ntk"),
            out_sizes,
        ),
        (
            "Table V: FiTv2 + VisionNTK + attention scale better than the fixed-resolution model + VisionNTK",
            ("fitv2", best),
            ("fixed", "vision-ntk"),
            out_sizes,
        ),
        ("Table III: VisionNTK better than NTK (FiTv2)", ("fitv2", "vision-ntk"), ("fitv2", "ntk"), out_sizes),
        ("Table III: VisionYaRN better than YaRN (FiTv2)", ("fitv2", "vision-yarn"), ("fitv2", "yarn"), out_sizes),
        ("Table III: NTK better than PI (FiTv2)", ("fitv2", "ntk"), ("fitv2", "pi"), out_sizes),
        (
            "Table III: VisionNTK better than no extrapolation (FiTv2)",
            ("fitv2", "vision-ntk"),
            ("fitv2", "none"),
            out_sizes,
        ),
        (
            "Table III/V: the attention scale improves VisionNTK (FiTv2)",
            ("fitv2", best),
            ("fitv2", "vision-ntk"),
            out_sizes,
        ),
    ]
    lines = ["| claim | size | FD | class accuracy |", "|---|---|---|---|"]
    for claim, a, b, sizes in claims:
        for size in sizes:
            fd, acc = compare(summary, a, b, size, "fd"), compare(summary, a, b, size, "accuracy")
            if fd is not None:
                lines.append(f"| {claim} | {size} | {fd} | {acc} |")
    return lines


def write_report(
    path: Path,
    rows: list[dict],
    infos: dict,
    s: dict,
    dataset: str,
    mode: str,
    wall: float,
    classifier_acc: float,
    command: str,
) -> None:
    ds = DATASETS[dataset]
    budget = ds["budget"]
    seeds = sorted({r["seed"] for r in rows})
    summary = summarise(rows)
    lines = [
        f"# Quality benchmark: {dataset} ({mode})",
        "",
        f"Command: `{command}`  ",
        f"Wall time: {wall / 60:.1f} min on {cpu_name()}, {torch.get_num_threads()} threads per process, "
        f"torch {torch.__version__}.",
        "",
        f"Data: embedded {dataset}, train split, pixel space, patch 4, budget {budget}x{budget} px "
        f"({(budget // 4) ** 2} tokens){'' if ds['hflip'] else ', no flips'}. Evaluation: {s['per_class']} samples "
        f"per class against the test split (reference images resized to the same pixel count), "
        f"{s['solver']} {s['steps']} steps, guidance {s['cfg']}. Features: the classifier "
        f"(test accuracy {classifier_acc:.1%}); FD = Fréchet distance on its pooled features, precision/recall k=3, "
        "accuracy = how often a sample is classified as its class. "
        + (
            f"Seeds {', '.join(map(str, seeds))} (training and sampling): mean ± standard deviation."
            if len(seeds) > 1
            else f"Seed {seeds[0]}."
        ),
        "",
        "| arm | seed | params | depth | steps | training tokens | images | final loss | train time | tokens/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (arm, seed), info in sorted(infos.items()):
        lines.append(
            f"| {arm} | {seed} | {info['params'] / 1e6:.2f}M | {arm_depth(arm, s['base_depth'])} | {info['steps']} | "
            f"{info['tokens']:,.0f} | {info['images']:,.0f} | {info['loss']:.4f} | "
            f"{info['seconds'] / 60:.1f} min | {info['tokens_per_s']:,.0f} |"
        )
    lines += [
        "",
        "| arm | size | tokens | setting | RoPE | FD ↓ | precision ↑ | recall ↑ | class acc ↑ |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cell(r: dict, key: str, digits: int) -> str:
        return f"{r[key]:.{digits}f}" + (f" ± {r[key + '_std']:.{digits}f}" if r["seeds"] > 1 else "")

    for r in summary:
        lines.append(
            f"| {r['arm']} | {r['size']} | {r['tokens']} | {r['note']} | {r['method']} | {cell(r, 'fd', 2)} | "
            f"{cell(r, 'precision', 3)} | {cell(r, 'recall', 3)} | {cell(r, 'accuracy', 3)} |"
        )
    if len(seeds) > 1:
        lines += [
            "",
            "## The paper's orderings, judged",
            "",
            '"holds": the first is better by more than the sum of the two standard deviations; "reversed": worse by '
            "more than that; otherwise within the spread.",
            "",
            *orderings(summary, ds),
        ]
    arms = sorted({arm for arm, _ in infos})
    lines += ["", *[f"![{arm}]({grid_name(dataset, arm, mode)})" for arm in arms]]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", choices=list(DATASETS), default="clipart")
    parser.add_argument("--quick", action="store_true", help="tiny settings: a smoke test of the whole pipeline")
    parser.add_argument("--work", default="runs/quality", help="working folder (tokens, checkpoints, samples)")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"), help="where the report goes")
    parser.add_argument("--arms", default="fitv2,fitv1,fixed")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (training and sampling)")
    parser.add_argument(
        "--shard",
        default="0/1",
        help="I/N: run every N-th (arm, seed) job from the I-th (start N processes to use N cores); every "
        "process writes the report from the jobs finished so far",
    )
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    ds, s = DATASETS[args.data], SETTINGS[(args.data, mode)]
    try:
        index, count = (int(v) for v in args.shard.split("/"))
        seeds = [int(v) for v in args.seeds.split(",")]
    except ValueError:
        parser.error(f"--shard {args.shard!r} / --seeds {args.seeds!r}: expected I/N and comma-separated integers")
    if not 0 <= index < count:
        parser.error(f"--shard {args.shard}: I must be in 0..N-1")
    arms = args.arms.split(",")
    if unknown := [a for a in arms if a not in ARMS]:
        parser.error(f"--arms: unknown {', '.join(unknown)}; choose from {', '.join(ARMS)}")
    work = Path(args.work) / args.data / mode
    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    tokens = work / "tokens"
    if not (tokens / "index.json").is_file():
        prepare(ds["data"], tokens, patch_size=4, budget=ds["budget"], split="train")
    classifier = ds["classifier"] or work / "classifier"
    if not (classifier / "classifier.json").is_file():
        train_classifier(
            ds["data"], classifier, epochs=s["classifier_epochs"], max_minutes=s["classifier_minutes"], seed=seeds[0]
        )
    classifier_acc = load_classifier(classifier).meta.get("test_accuracy", float("nan"))

    jobs = [(arm, seed) for seed in seeds for arm in arms]
    for arm, seed in jobs[index::count]:
        job = work / f"{arm}_s{seed}"
        if (job / "result.json").is_file():
            continue
        print(f"== {arm} seed {seed}: training", flush=True)
        checkpoint, info = train_arm(arm, tokens, job, s, seed, ds["hflip"])
        print(
            f"== {arm} seed {seed}: {info['steps']} steps, {info['tokens']:,.0f} tokens, "
            f"{info['seconds'] / 60:.1f} min",
            flush=True,
        )
        arm_rows, extra = evaluate_arm(arm, checkpoint, work, classifier, s, seed, ds)
        info["params"] = extra["params"]
        if seed == seeds[0]:  # JPEG quality 75: the glyphs' grid (62 classes x 25 rows) stays under 1 MB
            extra["grid"].save(results / grid_name(args.data, arm, mode), quality=75)
        (job / "result.json").write_text(json.dumps({"rows": arm_rows, "info": info}, indent=1) + "\n")

    rows, infos = [], {}
    for arm, seed in jobs:  # every finished job, this process's and the others'
        done = work / f"{arm}_s{seed}" / "result.json"
        if done.is_file():
            result = json.loads(done.read_text())
            rows += result["rows"]
            infos[(arm, seed)] = result["info"]
    name = stem(args.data, mode) + ".md"
    command = f"python benchmarks/quality.py --data {args.data} --seeds {args.seeds}" + (
        " --quick" if args.quick else ""
    )
    if count > 1:
        command += f" --shard I/{count} (I = 0..{count - 1}, one process each)"
    write_report(results / name, rows, infos, s, args.data, mode, time.perf_counter() - start, classifier_acc, command)
    (results / name.replace(".md", ".json")).write_text(
        json.dumps({"rows": rows, "arms": {f"{a}_s{sd}": i for (a, sd), i in infos.items()}}, indent=1) + "\n"
    )
    print(f"wrote {results / name} ({len(infos)} of {len(jobs)} jobs done)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
