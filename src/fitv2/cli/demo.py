"""``fitv2 demo``: prepare embedded data, train a small FiTv2 in pixel space on the CPU within a time
budget, and sample every class at several sizes and aspect ratios.

The default data are the embedded glyphs (``data/glyphs``: 62 characters in many fonts, styles and
colours at their native aspect ratios): the demo reports how often the glyph classifier that ships with
them (``data/glyphs/classifier``, 98% on test glyphs of unseen fonts) recognises the samples as their
character, beside how often it recognises real test glyphs (``Recognised:`` in OUT/report.md).
``--data clipart`` runs on the embedded clipart instead.

Writes OUT/report.md, OUT/samples.png (rows = sizes, columns = classes),
OUT/samples_per_class.png (several samples per class at the training shape), OUT/loss.png, the checkpoint and the
token dataset.
Rerunning the same command continues where a killed run stopped.

``fitv2 demo --text`` does the same for the text-to-image model: the clipart captions encoded
by MiniLM, and a fixed list of test-split captions (one per class) sampled at the five sizes
(OUT/samples.png: one row per prompt); the report lists, for every prompt, the training image
nearest to its sample and that image's class.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..data.dataset import TokenDataset
from ..data.images import center_crop, load_rgb
from ..data.prepare import prepare
from ..eval.classifier import load_classifier
from ..eval.evaluate import open_source
from ..model.rope import rope_scaling
from ..plot import image_grid, loss_curve
from ..sampling import Guidance, Sampler, SolverConfig, write_samples
from ..training import TrainConfig, train
from .flags import given
from .options import DemoOptions

DATA = Path(__file__).resolve().parents[3] / "data"
EMBEDDED = DATA / "clipart"
GLYPHS = DATA / "glyphs"


@dataclass
class DemoConfig:
    out: str = "runs/demo"
    data: str = str(GLYPHS)
    minutes: float = 10.0
    preset: str = "FiTv2-Mini/4"
    # 24 px: 36 tokens at most; the glyph classifier recognises 97% of real test glyphs at this size (98% at 32)
    # and a training step costs two thirds of one at 32 px, so the demo's minutes buy more steps.
    budget: int = 24
    batch_size: int = 32
    lr: float = 2e-3
    model: dict = field(default_factory=dict)
    cfg_scale: float = 6.0  # glyph samples: 16% recognised at 3, 23% at 6 (the same model, 6,000 steps)
    # DPM-Solver++(2M) in 16 steps: at the glyph model's training size its FD and class accuracy equal those of
    # dopri5 and of 250 Euler steps within the seed spread (benchmarks/results/sampling.md), at a tenth of the time.
    solver: str = "dpm++2m"
    steps: int = 16
    seed: int = 0
    text: bool = False  # the text-to-image model, conditioned on the captions
    # Glyphs' mirror images are other classes (b and d): no flips; and resized images only, since a centre
    # crop of a wide glyph (W, M) cuts its strokes.
    hflip: bool = False
    data_mode: Literal["mixed", "flexible", "fixed"] = "flexible"
    classifier: str | None = str(GLYPHS / "classifier")  # judges the samples (None: no recognition rates)
    recognise_per_class: int = 10  # at the training size
    recognise_per_class_elsewhere: int = 4  # at the other sizes
    # Glyphs are taller than wide (most are 6x5 or 7x4 tokens at a 24-pixel budget, 9x6 at 32): the training size
    # they are sampled and judged at is the prepared data's most common token grid, not the square.
    native_shape: bool = True

    def sampling(self) -> tuple[SolverConfig, Guidance]:
        """The solver and guidance every demo sample is drawn with."""
        return SolverConfig(self.solver, steps=self.steps), Guidance(scale=self.cfg_scale)

    @classmethod
    def for_data(cls, name: str, **options) -> DemoConfig:
        """The demo on ``glyphs`` (the default), ``clipart`` or a folder with metadata.jsonl (natural images:
        FiTv2's mixed data with flips; recognition rates only with a classifier)."""
        if name == "glyphs":
            return cls(**options)
        natural = dict(hflip=True, data_mode="mixed", classifier=None, native_shape=False, budget=32, cfg_scale=3.0)
        return cls(data=str(EMBEDDED if name == "clipart" else name), **{**natural, **options})


# (height, width, RoPE extrapolation, what it shows) at a 32-pixel budget side (8×8 = 64 tokens).
SIZES = [
    (32, 32, "none", "square"),
    (20, 40, "none", "1:2"),
    (40, 20, "none", "2:1"),
    (16, 48, "none", "1:3"),
    (48, 48, "vision-ntk+attn-scale", "beyond the budget"),
]


def demo_sizes(budget: int, native: tuple[int, int] | None = None) -> list[tuple[int, int, str, str]]:
    """The demo sizes scaled to another budget side (multiples of 4 pixels), each with a note of what it
    shows and its tokens; ``native`` (h, w) in tokens replaces the square by the data's own training shape."""
    scale, budget_tokens = budget / 32, (budget // 4) ** 2
    sizes = []
    for h, w, rope, what in SIZES:
        h, w = max(4, round(h * scale / 4) * 4), max(4, round(w * scale / 4) * 4)
        tokens = (h // 4) * (w // 4)
        note = f"{what}, {tokens} tokens"
        if tokens > budget_tokens:
            note += f" ({tokens / budget_tokens:.2f}x the budget's {budget_tokens}), VisionNTK + attention scale"
        sizes.append((h, w, rope, note))
    if native is not None:
        h, w = native
        sizes[0] = (4 * h, 4 * w, "none", f"the most common training shape, {h * w} tokens")
    return sizes


def training_shape(tokens: Path) -> tuple[int, int]:
    """The most common token grid (h, w) of the images of a prepared dataset (their resize variants)."""
    records = TokenDataset(tokens).records
    firsts = records[records["variant"] == 0]
    shapes, counts = np.unique(np.stack([firsts["h"], firsts["w"]], axis=1), axis=0, return_counts=True)
    h, w = shapes[int(counts.argmax())]
    return int(h), int(w)


def run_demo(cfg: DemoConfig) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    metadata = Path(cfg.data) / "metadata.jsonl"
    if not metadata.is_file():
        raise FileNotFoundError(f"embedded dataset not found at {metadata}")
    timings = {}

    t0 = time.perf_counter()
    tokens = out / "tokens"
    if not (tokens / "index.json").is_file():
        encoder = "minilm" if cfg.text else None
        report = prepare(metadata, tokens, patch_size=4, budget=cfg.budget, split="train", text_encoder=encoder)
        print(f"prepared {report.images} images ({report.tokens:,} tokens), skipped {sum(report.skipped.values())}")
    timings["prepare"] = time.perf_counter() - t0
    # (the text demo keeps the square: it compares its samples with centre-cropped training images)
    sizes = demo_sizes(cfg.budget, training_shape(tokens) if cfg.native_shape and not cfg.text else None)

    t0 = time.perf_counter()
    result = train(
        TrainConfig(
            data=str(tokens),
            out=str(out / "run"),
            preset=cfg.preset,
            model=cfg.model,
            batch_size=cfg.batch_size,
            lr=cfg.lr,
            warmup_steps=100,
            ema_decay=0.999,
            ema_warmup=True,
            steps=1_000_000,
            max_minutes=cfg.minutes,
            ckpt_every=1000,
            log_every=10,
            seed=cfg.seed,
            bucket=4,
            hflip=cfg.hflip,
            data_mode=cfg.data_mode,
            resume="latest",
        )
    )
    timings["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    if result.checkpoint is None:  # training always saves at its end
        raise RuntimeError(f"training in {cfg.out} wrote no checkpoint")
    sampler = Sampler.load(result.checkpoint)
    if cfg.text:
        _sample_prompts(out, cfg, sampler, metadata, sizes)
        timings["sample"] = time.perf_counter() - t0
        log = _log(out)
        loss_curve([r["step"] for r in log], [r["loss"] for r in log], title="demo training loss").save(
            out / "loss.png"
        )
        _report(out, cfg, result, timings, log, sampler, sizes)
        return out
    k = sampler.model.config.num_classes
    labels = torch.arange(k)
    solver, guidance = cfg.sampling()
    results = {}
    for height, width, rope, _ in sizes:
        results[(height, width)] = sampler.generate(
            height, width, labels, solver, guidance, rope_scaling(rope), seed=cfg.seed, progress=False
        )
    write_samples(out / "samples", results, labels, sampler.class_names, grid_columns=k)
    # Many classes (62 glyphs) wrap: each size takes as many rows as chunks of at most 31 classes.
    width = k if k <= 31 else -(-k // -(-k // 31))
    rows, names = [], []
    for (h, w), images in results.items():
        for start in range(0, k, width):
            rows.append(list(images[start : start + width]))
            names.append(f"{h}x{w}" + (f" ({sampler.class_names[start]}-)" if width < k else ""))
    grid = image_grid(
        rows,
        names,
        sampler.class_names[:width] if width == k else None,
        scale=2,
        title="one sample per class at each size (rows), all enlarged 2x"
        + (f"; classes in order, {width} a row" if width < k else ""),
    )
    grid.save(out / "samples.png")
    per_class = 6
    first_h, first_w = sizes[0][:2]
    many = sampler.generate(
        first_h,
        first_w,
        torch.arange(k).repeat_interleave(per_class),
        solver,
        guidance,
        seed=cfg.seed + 1,
        progress=False,
    )
    rows = [list(many[c * per_class : (c + 1) * per_class]) for c in range(k)]
    image_grid(
        rows, sampler.class_names, min_cell=48, title=f"{per_class} samples per class at {first_h}x{first_w}"
    ).save(out / "samples_per_class.png")
    timings["sample"] = time.perf_counter() - t0

    recognition = None
    if cfg.classifier is not None:
        t0 = time.perf_counter()
        recognition = recognise(sampler, Path(cfg.classifier), cfg, metadata, sizes)
        timings["recognise"] = time.perf_counter() - t0
    log = _log(out)
    loss_curve([r["step"] for r in log], [r["loss"] for r in log], title="demo training loss").save(out / "loss.png")
    _report(out, cfg, result, timings, log, sampler, sizes, recognition)
    return out


def recognise(
    sampler: Sampler, classifier: Path, cfg: DemoConfig, metadata: Path, sizes: list[tuple[int, int, str, str]]
) -> dict[str, float]:
    """How often samples at each demo size are recognised as their class by the classifier
    (``recognise_per_class`` of every class at the training size, the first of ``sizes``, and
    ``recognise_per_class_elsewhere`` at the others; new noise), and how often the real test images are
    (resized to the budget's area, aspect kept)."""
    model = load_classifier(classifier)
    k = sampler.model.config.num_classes
    solver, guidance = cfg.sampling()

    def rate(images, ys) -> float:
        groups: dict[tuple, list[int]] = {}
        for i, im in enumerate(images):
            groups.setdefault(im.shape, []).append(i)
        right = 0
        for idx in groups.values():
            logits = model.embed(np.stack([images[i] for i in idx]), side=cfg.budget)["logits"]
            right += int((logits.argmax(1) == torch.as_tensor([ys[i] for i in idx])).sum())
        return right / max(1, len(images))

    rates = {}
    for i, (height, width, rope, _) in enumerate(sizes):
        labels = torch.arange(k).repeat_interleave(cfg.recognise_per_class_elsewhere if i else cfg.recognise_per_class)
        images = sampler.generate(
            height, width, labels, solver, guidance, rope_scaling(rope), seed=cfg.seed + 2, progress=False
        )
        rates[f"{height}x{width}"] = rate(list(images), labels.tolist())
    real = [(np.asarray(im), y) for im, y in open_source(metadata, "test", cfg.budget)]
    rates["real test"] = rate([im for im, _ in real], [y for _, y in real])
    return rates


def _log(out: Path) -> list[dict]:
    log_file = out / "run" / "log.jsonl"
    return [json.loads(line) for line in log_file.read_text().splitlines() if line] if log_file.is_file() else []


def demo_prompts(metadata: Path) -> list[tuple[str, str]]:
    """(caption, class name) of the first test-split image of every class, in class order."""
    rows = [json.loads(line) for line in metadata.read_text().splitlines() if line.strip()]
    first: dict[int, tuple[str, str]] = {}
    for r in rows:
        if r.get("split") == "test":
            first.setdefault(r["label"], (r["caption"], r["class_name"]))
    return [first[k] for k in sorted(first)]


def nearest_training_images(samples: np.ndarray, metadata: Path, side: int) -> list[dict]:
    """For each uint8 sample (side × side), the training image (centre-cropped to side²) nearest in
    pixel space: its caption and class."""
    rows = [json.loads(line) for line in metadata.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") == "train"]
    train = np.stack([np.asarray(center_crop(load_rgb(metadata.parent / r["path"]), side)) for r in rows])
    a = torch.from_numpy(samples.reshape(len(samples), -1)).float()
    b = torch.from_numpy(train.reshape(len(train), -1)).float()
    nearest = torch.cdist(a, b).argmin(1).tolist()
    return [{"caption": rows[i]["caption"], "class_name": rows[i]["class_name"]} for i in nearest]


def _sample_prompts(
    out: Path, cfg: DemoConfig, sampler: Sampler, metadata: Path, sizes: list[tuple[int, int, str, str]]
) -> None:
    prompts = demo_prompts(metadata)
    text = sampler.encode_prompts([p for p, _ in prompts])
    solver, guidance = cfg.sampling()
    results = {}
    for height, width, rope, _ in sizes:
        results[(height, width)] = sampler.generate(
            height, width, text, solver, guidance, rope_scaling(rope), seed=cfg.seed, progress=False
        )
    write_samples(out / "samples", results, None, sampler.class_names, prompts=[p for p, _ in prompts])
    rows = [[images[i] for images in results.values()] for i in range(len(prompts))]
    image_grid(
        rows,
        [f"{p[:40]} ({c})" for p, c in prompts],
        [f"{h}x{w}" for h, w in results],
        scale=2,
        title="one sample per test-split caption (rows) at each size (columns), all enlarged 2x",
    ).save(out / "samples.png")
    square = results[(cfg.budget, cfg.budget)]
    near = nearest_training_images(square, metadata, cfg.budget)
    agree = sum(n["class_name"] == c for n, (_, c) in zip(near, prompts))
    lines = [
        f"Of the {len(prompts)} prompts (one test caption per class), {agree} give a {cfg.budget}x{cfg.budget} "
        f"sample whose nearest training image (pixels) is of the caption's class; chance is about "
        f"{1 / len(prompts):.0%} per prompt.",
        "",
        "| prompt | its class | nearest training image | its class |",
        "|---|---|---|---|",
        *[
            f"| {p} | {c} | {n['caption']} | {n['class_name']}{' ✓' if n['class_name'] == c else ''} |"
            for (p, c), n in zip(prompts, near)
        ],
    ]
    (out / "prompts.md").write_text("\n".join(lines) + "\n")


def _loss_summary(log: list[dict]) -> str:
    """The loss at the start and at the end of training, from however many log rows there are."""
    if not log:
        return "Loss: not logged (the run ended before its first log row)."
    if len(log) == 1:
        return f"Loss: {log[0]['loss']:.4f} (the only log row, step {log[0]['step']})."
    head, tail = max(1, min(5, len(log) // 2)), max(1, min(20, len(log) // 2))
    first = np.mean([r["loss"] for r in log[:head]])
    final = np.mean([r["loss"] for r in log[-tail:]])
    return (
        f"Loss: {first:.4f} (mean of the first {head} log rows) -> {final:.4f} (mean of the last {tail}), "
        f"{len(log)} rows."
    )


def recognised_line(recognition: dict[str, float], size: str, per_class: int, classes: int) -> str:
    """The report's one ``Recognised:`` line: samples and real test images at the training size (``HxW``)."""
    sample, real = recognition[size], recognition["real test"]
    return (
        f"Recognised: {sample:.1%} of the samples at {size} ({per_class} of each of {classes} classes) and "
        f"{real:.1%} of the real test images (unseen fonts), a ratio of {sample / max(real, 1e-9):.2f}."
    )


def _report(
    out: Path,
    cfg: DemoConfig,
    result,
    timings: dict[str, float],
    log: list[dict],
    sampler,
    sizes: list[tuple[int, int, str, str]],
    recognition: dict[str, float] | None = None,
) -> None:
    params = sum(p.numel() for p in sampler.model.parameters())
    if log:
        last = log[-1]
        progress = (
            f"{last['images']:,.0f} images, {last['tokens']:,.0f} tokens, "
            f"{result.tokens_per_s:,.0f} valid tokens/s on average, padding {last['padding']:.1%} of "
            "computed tokens."
        )
    else:
        progress = f"{result.tokens_per_s:,.0f} valid tokens/s on average."
    lines = [
        "# fitv2 demo report",
        "",
        f"Machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}.",
        "",
        f"Model: {cfg.preset} in pixel space (patch 4, {params / 1e6:.2f}M parameters), "
        + (
            f"text-to-image (MiniLM captions, {sampler.model.config.text_len} text tokens in context)"
            if cfg.text
            else f"{sampler.model.config.num_classes} classes"
        )
        + f", token budget {cfg.budget}x{cfg.budget} px "
        f"= {(cfg.budget // 4) ** 2} tokens; {cfg.data_mode} data{'' if cfg.hflip else ' without flips'}, "
        f"logit-normal time, batch {cfg.batch_size}, lr {cfg.lr}.",
        "",
        "| stage | wall time |",
        "|---|---|",
        *[f"| {k} | {v / 60:.1f} min ({v:.0f} s) |" for k, v in timings.items()],
        f"| total | {sum(timings.values()) / 60:.1f} min |",
        "",
        f"Training: {result.step} step{'s' if result.step != 1 else ''}, {progress}",
        _loss_summary(log),
        "",
        f"Sampling: {cfg.solver}, {cfg.steps} steps, classifier-free guidance {cfg.cfg_scale}.",
        "",
        *_recognition_lines(recognition, cfg, sampler, sizes),
        "| size (px) | tokens | RoPE | note |",
        "|---|---|---|---|",
        *[f"| {h}x{w} | {(h // 4) * (w // 4)} | {rope} | {note} |" for h, w, rope, note in sizes],
        "",
        "![samples](samples.png)",
        "",
        *([(out / "prompts.md").read_text(), ""] if cfg.text else ["![samples per class](samples_per_class.png)", ""]),
        "![loss](loss.png)",
        "",
        f"Checkpoint: `{result.checkpoint}`. Sample more with `fitv2 sample {result.checkpoint} "
        f"--sizes {','.join(f'{h}x{w}' for h, w, _, _ in sizes[:2])} --solver {cfg.solver} --steps {cfg.steps} "
        + (
            f'--prompt "a red apple" --prompt "a car" --cfg-scale {cfg.cfg_scale}`.'
            if cfg.text
            else f"--per-class 2 --cfg-scale {cfg.cfg_scale}`."
        ),
    ]
    (out / "report.md").write_text("\n".join(lines) + "\n")


def _recognition_lines(
    recognition: dict[str, float] | None, cfg: DemoConfig, sampler, sizes: list[tuple[int, int, str, str]]
) -> list[str]:
    if recognition is None:
        return []
    k = sampler.model.config.num_classes
    return [
        recognised_line(recognition, f"{sizes[0][0]}x{sizes[0][1]}", cfg.recognise_per_class, k),
        "",
        f"By the classifier `{cfg.classifier}` (trained on the training split), at every size "
        f"({cfg.recognise_per_class} samples of each class at the training size, "
        f"{cfg.recognise_per_class_elsewhere} at the others):",
        "",
        "| images | recognised as their class |",
        "|---|---|",
        *[f"| {name} | {value:.1%} |" for name, value in recognition.items()],
        "",
    ]


def run(args: argparse.Namespace) -> int:
    opts = DemoOptions.from_dict(given(args, DemoOptions))
    opts.check_environment()
    from .demo import DemoConfig, run_demo

    cfg = DemoConfig.for_data(opts.data, out=opts.output, minutes=opts.minutes, preset=opts.preset, seed=opts.seed)
    cfg.text = opts.text
    if opts.classifier is not None:
        cfg.classifier = opts.classifier
    out = run_demo(cfg)
    print(f"demo finished: see {out / 'report.md'} and {out / 'samples.png'}")
    return 0
