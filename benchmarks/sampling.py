"""Quality against cost for every sampler setting, on a trained model whose quality can be measured.

    python benchmarks/sampling.py --run runs/demo/run --classifier runs/demo/classifier \
        --reference data/glyphs/metadata.jsonl --out benchmarks/results/sampling.md

For each size (the training size, 1:2, and beyond the training tokens) and seed, every setting samples the
same images (``--per-class`` of every class, the same noise per seed) and is scored with the classifier's
features against the reference split: the Fréchet distance (FD) and how often a sample is recognised as
its class (accuracy); its cost is the number of model evaluations per image batch (NFE) and the wall time.
The baseline is the published setting, dopri5 (atol 1e-6, rtol 1e-3, the paper's ODE sampler); a
setting has "equal quality" when its mean FD and accuracy over the seeds are within the baseline's
seed-to-seed spread (the range over the seeds, at least one standard error of the setting's own mean).
The headline is the fastest setting of equal quality at the training size, and whether it stays equal
at the other sizes.

Settings: euler, heun, dpm++2m and unipc over steps; the time shift none against auto (it matters only
beyond the training tokens); First-Block-Cache at a few thresholds. Every setting runs in this process
one after another on ``--threads`` threads; timings are only comparable within one run.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import cpu_name

from fitv2.eval.evaluate import ClassifierFeatures, evaluate
from fitv2.plot import image_grid, line_plot
from fitv2.sampling import Sampler, write_samples
from fitv2.sampling.cache import CacheStats


@dataclass(frozen=True)
class Setting:
    solver: str
    steps: int
    time_shift: str = "auto"
    cache: float | None = None  # First-Block-Cache threshold

    @property
    def name(self) -> str:
        text = self.solver if self.solver == "dopri5" else f"{self.solver} {self.steps}"
        if self.time_shift != "auto":
            text += f" shift {self.time_shift}"
        if self.cache is not None:
            text += f" cache {self.cache:g}"
        return text


BASELINE = Setting("dopri5", 50, time_shift="none")
QUICK = [Setting("euler", 16), Setting("dpm++2m", 8), Setting("dpm++2m", 8, cache=0.1)]


def settings(quick: bool) -> list[Setting]:
    if quick:
        return [BASELINE, *QUICK]
    out = [BASELINE, Setting("euler", 250, time_shift="none")]
    out += [Setting("euler", n) for n in (8, 16, 32)]
    out += [Setting("heun", n) for n in (4, 8)]
    for solver in ("dpm++2m", "unipc"):
        out += [Setting(solver, n) for n in (4, 6, 8, 12, 16)]
    out += [Setting(s, 8, time_shift="none") for s in ("dpm++2m", "unipc")]
    out += [Setting(s, n, cache=c) for s, n in (("dpm++2m", 16), ("euler", 32)) for c in (0.05, 0.1)]
    return out


def run_setting(sampler: Sampler, setting: Setting, size: tuple[int, int], labels, seed: int, cfg: float):
    """uint8 images, NFE per batch, seconds, cache stats of one setting at one size and seed."""
    calls = []
    hook = sampler.model.register_forward_pre_hook(lambda *_: calls.append(1))
    stats = CacheStats()
    s = sampler.settings(
        solver=setting.solver,
        steps=setting.steps,
        guidance_scale=cfg,
        time_shift=setting.time_shift,
        cache="first-block" if setting.cache is not None else "none",
        cache_threshold=setting.cache or 0.0,
    )
    start = time.perf_counter()
    try:
        images = sampler.generate(
            *size,
            labels,
            s.solver,
            s.guidance,
            s.rope,
            seed=seed,
            batch_size=len(labels),
            progress=False,
            cache=s.cache,
            stats=stats,
        )
    finally:
        hook.remove()
    return images, len(calls), time.perf_counter() - start, stats


def spread(values: list[float]) -> float:
    return max(values) - min(values) if len(values) > 1 else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", required=True, help="checkpoint or run folder")
    p.add_argument("--classifier", required=True, help="feature network (fitv2 train-classifier)")
    p.add_argument("--reference", required=True, help="reference dataset .jsonl")
    p.add_argument("--split", default="test")
    p.add_argument("--sizes", default="", help="HxW,... (not set: training size, 1:2, 1.5x the side)")
    p.add_argument("--per-class", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--cfg-scale", type=float, default=4.0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="four settings, for a smoke test")
    p.add_argument("--out", default="benchmarks/results/sampling.md")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    sampler = Sampler.load(args.run)
    d = sampler.defaults
    side, unit = d.height, sampler.unit
    if args.sizes:
        sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    else:
        wide = (side * 3 // 4 // unit * unit, side * 3 // 2 // unit * unit)  # 1:2 at about the training area
        big = (side * 3 // 2 // unit * unit,) * 2  # 2.25x the training tokens
        sizes = [(side, side), wide, big]
    k = sampler.model.config.num_classes
    labels = torch.arange(k).repeat_interleave(args.per_class)
    extractor = ClassifierFeatures(args.classifier)
    work = Path(tempfile.mkdtemp(prefix="fitv2_sampling_"))
    rows = []
    grids: dict[str, list] = {}
    try:
        for h, w in sizes:
            ref_side = unit * round(math.sqrt(h * w) / unit)
            for setting in settings(args.quick):
                for seed in args.seeds:
                    images, nfe, seconds, stats = run_setting(sampler, setting, (h, w), labels, seed, args.cfg_scale)
                    folder = work / f"{h}x{w}"
                    shutil.rmtree(folder, ignore_errors=True)
                    write_samples(folder, {(h, w): images}, labels, sampler.class_names)
                    m = evaluate(
                        folder / f"{h}x{w}.npz",
                        args.reference,
                        extractor,
                        split=args.split,
                        reference_budget=ref_side,
                        cache_dir=work / "cache",
                    )
                    row = dict(
                        size=f"{h}x{w}",
                        setting=setting.name,
                        solver=setting.solver,
                        steps=setting.steps,
                        time_shift=setting.time_shift,
                        cache=setting.cache,
                        seed=seed,
                        fd=m["fd"],
                        accuracy=m["class_consistency"],
                        nfe=nfe,
                        seconds=seconds,
                        skipped=stats.fraction_skipped,
                    )
                    rows.append(row)
                    if seed == args.seeds[0] and setting in (BASELINE, *QUICK):
                        grids[f"{h}x{w} {setting.name}"] = list(images[:: args.per_class][:16])
                    print(
                        f"{h}x{w} {setting.name:28s} seed {seed}: FD {row['fd']:7.3f} acc {row['accuracy']:.3f} "
                        f"NFE {nfe:4d} {seconds:6.2f}s skipped {stats.fraction_skipped:.0%}",
                        flush=True,
                    )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(rows, indent=1) + "\n")
    write_report(out, rows, sizes, args, sampler)
    image_grid(list(grids.values()), list(grids), min_cell=32, title="first 16 classes, seed 0").save(
        out.with_name(out.stem + "_samples.png")
    )
    return 0


def summarise(rows: list[dict]) -> dict[tuple[str, str], dict]:
    """Mean FD, accuracy, NFE and seconds per (size, setting), with the FD and accuracy spread over seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["size"], r["setting"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        fds, accs = [r["fd"] for r in rs], [r["accuracy"] for r in rs]
        out[key] = dict(
            fd=statistics.mean(fds),
            fd_spread=spread(fds),
            fd_se=statistics.stdev(fds) / math.sqrt(len(fds)) if len(fds) > 1 else 0.0,
            accuracy=statistics.mean(accs),
            accuracy_spread=spread(accs),
            accuracy_se=statistics.stdev(accs) / math.sqrt(len(accs)) if len(accs) > 1 else 0.0,
            nfe=statistics.mean(r["nfe"] for r in rs),
            seconds=statistics.mean(r["seconds"] for r in rs),
            skipped=statistics.mean(r["skipped"] for r in rs),
            first=rs[0],
        )
    return out


def equal_to(s: dict, base: dict) -> bool:
    """Within the baseline's seed-to-seed spread (at least the setting's own standard error) in FD and accuracy."""
    fd_tol = max(base["fd_spread"], s["fd_se"])
    acc_tol = max(base["accuracy_spread"], s["accuracy_se"])
    return s["fd"] <= base["fd"] + fd_tol and s["accuracy"] >= base["accuracy"] - acc_tol


def write_report(out: Path, rows: list[dict], sizes, args, sampler: Sampler) -> None:
    table = summarise(rows)
    names = list(dict.fromkeys(r["setting"] for r in rows))
    lines = [
        "# Sampling: quality against cost",
        "",
        f"`python benchmarks/sampling.py --run {args.run} --classifier {args.classifier} --reference {args.reference}"
        + (f" --sizes {args.sizes}" if args.sizes else "")
        + (f" --per-class {args.per_class}" if args.per_class != 4 else "")
        + (f" --cfg-scale {args.cfg_scale:g}" if args.cfg_scale != 4.0 else "")
        + (f" --seeds {' '.join(map(str, args.seeds))}" if args.seeds != [0, 1] else "")
        + (" --quick" if args.quick else "")
        + f" --out {args.out}`",
        "",
        f"Model: {sampler.model.config.name} ({sum(p.numel() for p in sampler.model.parameters()):,} parameters), "
        f"trained at {sampler.defaults.height}x{sampler.defaults.width} pixels. {len(args.seeds)} seeds × "
        f"{args.per_class} samples of each of {sampler.model.config.num_classes} classes per size, guidance "
        f"{args.cfg_scale}; FD on the classifier's features against the `{args.split}` split, accuracy = "
        f"samples recognised as their class. {cpu_name()}, {args.threads} threads, torch {torch.__version__}.",
        "",
        "Equal quality: mean FD and accuracy within the baseline's seed-to-seed range (at least the setting's "
        f"own standard error). Baseline: `{BASELINE.name}` (atol 1e-6, rtol 1e-3), the published setting.",
        "",
    ]
    headline = None
    for h, w in sizes:
        size = f"{h}x{w}"
        base = table[(size, BASELINE.name)]
        candidates = [(table[(size, n)], n) for n in names if (size, n) in table and n != BASELINE.name]
        equal = [(s, n) for s, n in candidates if equal_to(s, base)]
        best = min(equal, key=lambda sn: sn[0]["seconds"]) if equal else None
        if best is not None and (h, w) == sizes[0]:
            headline = (best[1], base["seconds"] / best[0]["seconds"], base["nfe"] / best[0]["nfe"])
        lines += [
            f"## {size}",
            "",
            "| setting | NFE | seconds | FD | FD range | accuracy | acc. range | blocks skipped | equal quality |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for n in names:
            s = table.get((size, n))
            if s is None:
                continue
            mark = "baseline" if n == BASELINE.name else ("yes" if equal_to(s, base) else "")
            lines.append(
                f"| {n} | {s['nfe']:.0f} | {s['seconds']:.2f} | {s['fd']:.3f} | {s['fd_spread']:.3f} | "
                f"{s['accuracy']:.3f} | {s['accuracy_spread']:.3f} | {s['skipped']:.0%} | {mark} |"
            )
        if best is not None:
            lines += [
                "",
                f"Fastest of equal quality: `{best[1]}`, {base['seconds'] / best[0]['seconds']:.1f}× less wall time "
                f"and {base['nfe'] / best[0]['nfe']:.1f}× fewer model evaluations than `{BASELINE.name}`.",
            ]
        lines.append("")
        series: dict[str, tuple[list[float], list[float]]] = {}
        for n in names:
            s = table.get((size, n))
            if s is None or n == BASELINE.name or s["first"]["cache"] is not None or s["first"]["time_shift"] != "auto":
                continue
            xs, ys = series.setdefault(s["first"]["solver"], ([], []))
            xs.append(s["seconds"])
            ys.append(s["fd"])
        plot = line_plot(
            series,
            "wall time per batch (s)",
            "FD",
            f"{size}: FD against wall time",
            log_x=True,
            marks={BASELINE.name: (base["seconds"], base["fd"])},
        )
        plot.save(out.with_name(f"{out.stem}_{size}.png"))
        lines += [f"![FD against wall time at {size}]({out.stem}_{size}.png)", ""]
    if headline is not None:
        name, speed, nfe = headline
        lines.insert(
            2,
            f"**Headline: equal quality at {speed:.1f}× less wall time than the published setting** "
            f"(`{name}` against `{BASELINE.name}` at the training size; {nfe:.1f}× fewer model evaluations).\n",
        )
    out.write_text("\n".join(lines).rstrip("\n") + "\n")


if __name__ == "__main__":
    sys.exit(main())
