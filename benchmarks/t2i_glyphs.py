"""Text-to-image FiTv2 scored attribute by attribute on the embedded glyphs (CPU).

A FiTv2 text-to-image model (MiniLM caption tokens in context, pooled into the conditioning, diagonal text
RoPE; FiTv2 §III-E) is trained on the glyph captions ("bold italic serif capital G, red on white"), never
told the class. Its samples, drawn from captions it never saw, are scored on every attribute the caption
names:

  character    the glyph classifier that ships with the data (data/glyphs/classifier)
  fg, bg       the colours, read from the pixels: each pixel to the nearest of the 12 palette colours; the
               background is the commonest colour on the border, the foreground the commonest other one
               among the pixels farthest from it
  weight+slant regular/bold x upright/italic, a classifier trained here on the train split
  family       serif/sans/mono/script/display, a classifier trained here on the train split

Three prompt sets: test captions (fonts never seen in training; each attribute value seen), and the two
kinds of combination held out of training (the `combo` split): a character never seen in that foreground
colour, a character never seen in that weight and slant. Every scorer is also run on the real images of the
same captions (its ceiling) and on the samples against a shuffled caption (chance).

    python benchmarks/t2i_glyphs.py            # full run (39 min on one thread of a busy 2-core machine)
    python benchmarks/t2i_glyphs.py --quick    # minutes; numbers are only a smoke test
"""

from __future__ import annotations

import argparse
import functools
import json
import random
import sys
import time
from pathlib import Path

import numpy as np
import torch
from common import cpu_name, train_for_tokens

from fitv2.data.images import load_rgb, resize_to_budget
from fitv2.data.prepare import prepare
from fitv2.eval.classifier import load_classifier, train_classifier
from fitv2.sampling import Guidance, Sampler, SolverConfig
from fitv2.sampling.writers import prompt_grid

ROOT = Path(__file__).resolve().parents[1]
GLYPHS = ROOT / "data" / "glyphs"
DATA = GLYPHS / "metadata.jsonl"
BUDGET = 24  # pixels, as the demo: at most 36 tokens
SHAPE = (24, 20)  # the glyphs' most common token grid at that budget (6 x 5 tokens), where samples are drawn
CFG_SCALES = [3.0, 6.0]
ATTRIBUTES = ["character", "fg", "bg", "style", "family"]

SETTINGS = {
    "full": dict(
        width=128,
        heads=2,
        depth=5,
        batch=32,
        lr=2e-3,
        tokens=2.5e6,
        solver="dpm++2m",
        steps=16,
        test_per_class=8,
        combo_per_pair=10,
        classifier_epochs=12,
        classifier_minutes=4,
    ),
    "quick": dict(
        width=64,
        heads=2,
        depth=2,
        batch=32,
        lr=2e-3,
        tokens=1e5,
        solver="dpm++2m",
        steps=4,
        test_per_class=1,
        combo_per_pair=1,
        classifier_epochs=1,
        classifier_minutes=0.5,
    ),
}


@functools.cache
def records() -> tuple[dict, ...]:
    """Every row of the glyphs' metadata (read once)."""
    return tuple(map(json.loads, DATA.read_text().splitlines()))


def rows(split: str) -> list[dict]:
    return [r for r in records() if r["split"] == split]


def style_of(r: dict) -> str:
    return f"{r['weight']} {r['slant']}"


def prompt_sets(s: dict, seed: int) -> dict[str, list[dict]]:
    """test: `test_per_class` test captions per character; combo-fg / combo-style: `combo_per_pair` captions of
    every held-out (character, colour) and (character, weight and slant) pair."""
    rng = random.Random(seed)
    by_class: dict[int, list[dict]] = {}
    for r in rows("test"):
        by_class.setdefault(r["label"], []).append(r)
    test = [r for c in sorted(by_class) for r in rng.sample(by_class[c], s["test_per_class"])]
    pairs: dict[tuple, list[dict]] = {}
    for r in rows("combo"):
        pairs.setdefault(
            (r["held_out"], r["char"], r[r["held_out"]] if r["held_out"] == "fg" else style_of(r)), []
        ).append(r)
    combo = {
        kind: [r for key in sorted(pairs) if key[0] == kind for r in pairs[key][: s["combo_per_pair"]]]
        for kind in ("fg", "style")
    }
    return {
        "test (unseen fonts)": test,
        "held out: character x colour": combo["fg"],
        "held out: character x weight and slant": combo["style"],
    }


def attribute_classifier(attribute: str, work: Path, s: dict, seed: int) -> Path:
    """A classifier of one attribute (style = weight and slant, or family), trained on the train split's images
    with the glyph classifier's recipe (no flips); tested on the test split's unseen fonts."""
    out = work / f"classifier_{attribute}"
    if (out / "classifier.json").is_file():
        return out
    labelled = rows("train") + rows("test")
    value = style_of if attribute == "style" else (lambda r: r[attribute])
    names = sorted({value(r) for r in labelled})
    lines = [
        json.dumps(
            {
                "path": str(GLYPHS / r["path"]),
                "label": names.index(value(r)),
                "class_name": value(r),
                "split": r["split"],
            }
        )
        for r in labelled
    ]
    table = work / f"{attribute}.jsonl"
    table.write_text("\n".join(lines) + "\n")
    train_classifier(
        table,
        out,
        epochs=s["classifier_epochs"],
        max_minutes=s["classifier_minutes"],
        budget=BUDGET,
        hflip=False,
        seed=seed,
    )
    return out


@functools.cache
def palette() -> tuple[list[str], np.ndarray]:
    colours = json.loads((GLYPHS / "build_stats.json").read_text())["colours"]
    return list(colours), np.array([c["rgb"] for c in colours.values()], dtype=np.float32)


def read_colours(images: np.ndarray) -> tuple[list[str], list[str]]:
    """(foreground, background) colour names of uint8 (N, H, W, 3) images: every pixel to the nearest palette
    colour; background = the commonest on the border; foreground = the commonest other colour among the pixels
    farthest from the background (at least 70% of the largest distance: anti-aliased edges, blends of the two
    colours, often lie nearer a third palette colour)."""
    names, rgb = palette()
    fg, bg = [], []
    for image in images:
        pixels = image.reshape(-1, 3).astype(np.float32)
        nearest = ((pixels[:, None, :] - rgb) ** 2).sum(-1).argmin(-1)
        grid = nearest.reshape(image.shape[:2])
        border = np.concatenate([grid[0], grid[-1], grid[:, 0], grid[:, -1]])
        b = int(np.bincount(border, minlength=len(names)).argmax())
        distance = np.linalg.norm(pixels - rgb[b], axis=1)
        counts = np.bincount(nearest[distance >= 0.7 * distance.max()], minlength=len(names))
        counts[b] = -1
        fg.append(names[int(counts.argmax())])
        bg.append(names[b])
    return fg, bg


class Scorer:
    """Reads every attribute off uint8 images."""

    def __init__(self, classifiers: dict[str, Path]) -> None:
        self.models = {a: load_classifier(p) for a, p in classifiers.items()}

    def read(self, images: np.ndarray) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for attribute, model in self.models.items():
            with torch.no_grad():
                logits = torch.cat([model.embed(images[i : i + 256])["logits"] for i in range(0, len(images), 256)])
            out[attribute] = [model.class_names[i] for i in logits.argmax(1).tolist()]
        out["fg"], out["bg"] = read_colours(images)
        return out


def truth(r: dict) -> dict[str, str]:
    return {"character": r["char"], "fg": r["fg"], "bg": r["bg"], "style": style_of(r), "family": r["family"]}


def accuracy(read: dict[str, list[str]], prompts: list[dict]) -> dict[str, float]:
    wanted = [truth(r) for r in prompts]
    acc = {a: float(np.mean([read[a][i] == w[a] for i, w in enumerate(wanted)])) for a in ATTRIBUTES}
    # every attribute at once, and the pair a held-out prompt combines (the character and its held-out attribute)
    acc["all"] = float(np.mean([all(read[a][i] == w[a] for a in ATTRIBUTES) for i, w in enumerate(wanted)]))
    held = [r.get("held_out") for r in prompts]
    if held[0] is not None:
        key = held[0]  # "fg" or "style", an attribute's own name
        acc["pair"] = float(
            np.mean([read["character"][i] == w["character"] and read[key][i] == w[key] for i, w in enumerate(wanted)])
        )
    return acc


def real_images(prompts: list[dict]) -> list[np.ndarray]:
    """The prompts' own images within the samples' budget, at their native aspect ratios (the scorers' ceiling)."""
    return [np.asarray(resize_to_budget(load_rgb(GLYPHS / r["path"]), BUDGET, 1)) for r in prompts]


def read_each(scorer: Scorer, images: list[np.ndarray]) -> dict[str, list[str]]:
    """Score images of different shapes (real glyphs keep their native aspect ratio), a batch per shape."""
    by_shape: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        by_shape.setdefault(im.shape, []).append(i)
    out: dict[str, list[str]] = {}
    for indices in by_shape.values():
        read = scorer.read(np.stack([images[i] for i in indices]))
        for key, values in read.items():
            out.setdefault(key, [""] * len(images))
            for i, v in zip(indices, values):
                out[key][i] = v
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test in minutes")
    parser.add_argument("--work", default="runs/bench_t2i_glyphs", help="working folder (datasets, runs, samples)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where t2i.md/json go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    work, results_dir = Path(args.work) / mode, Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    tokens = work / "tokens_text"
    if not (tokens / "index.json").is_file():
        prepare(DATA, tokens, patch_size=4, budget=BUDGET, split="train", text_encoder="minilm")
    classifiers = {"character": GLYPHS / "classifier"}
    for attribute in ("style", "family"):
        classifiers[attribute] = attribute_classifier(attribute, work, s, args.seed)
    scorer = Scorer(classifiers)
    classifier_acc = {a: load_classifier(p).meta.get("test_accuracy", float("nan")) for a, p in classifiers.items()}

    print("training the text-to-image model ...", flush=True)
    model = dict(hidden_size=s["width"], num_heads=s["heads"], depth=s["depth"], adaln_lora_dim=s["width"] // 4)
    checkpoint, training = train_for_tokens(
        tokens, work / "text", model, s, args.seed, hflip=False, data_mode="flexible"
    )
    sampler = Sampler.load(checkpoint)

    sets = prompt_sets(s, args.seed)
    table, pictures = [], {}
    perm = np.random.default_rng(args.seed)
    for name, prompts in sets.items():
        real = accuracy(read_each(scorer, real_images(prompts)), prompts)
        table.append(dict(prompts=name, n=len(prompts), source="real images (ceiling)", cfg=None, **real))
        features = sampler.encode_prompts([r["caption"] for r in prompts])
        for scale in CFG_SCALES:
            images = sampler.generate(
                *SHAPE,
                features,
                SolverConfig(s["solver"], steps=s["steps"]),
                Guidance(scale=scale),
                seed=args.seed,
                progress=False,
            )
            read = scorer.read(np.asarray(images))
            table.append(dict(prompts=name, n=len(prompts), source="samples", cfg=scale, **accuracy(read, prompts)))
            shuffled = [prompts[i] for i in perm.permutation(len(prompts))]
            chance = accuracy(read, shuffled)
            chance.pop("pair", None)
            table.append(
                dict(prompts=name, n=len(prompts), source="samples vs a shuffled caption (chance)", cfg=scale, **chance)
            )
            print(
                f"  {name}, cfg {scale:g}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in table[-2].items() if isinstance(v, float)),
                flush=True,
            )
            if scale == max(CFG_SCALES):
                pictures[name] = (images, prompts)

    # A picture: for each prompt set, the first caption of eight characters, sampled at the largest guidance.
    picks, labels = [], []
    for images, prompts in pictures.values():
        step = max(1, len(prompts) // 8)
        for i in range(0, min(len(prompts), 8 * step), step):
            picks.append(images[i])
            labels.append(prompts[i]["caption"])
    suffix = "" if mode == "full" else "_quick"
    picture = f"t2i_samples{suffix}.png"
    prompt_grid({SHAPE: np.stack(picks)}, labels, max_label=60).save(results_dir / picture)

    minutes = (time.perf_counter() - t_start) / 60
    report = dict(
        mode=mode,
        settings=s,
        training=training,
        rows=table,
        classifiers=classifier_acc,
        minutes=minutes,
        seed=args.seed,
    )
    (results_dir / f"t2i{suffix}.json").write_text(json.dumps(report, indent=1) + "\n")
    write_report(results_dir / f"t2i{suffix}.md", report, picture)
    print(f"done in {minutes:.1f} min: {results_dir / f't2i{suffix}.md'}")
    return 0


def write_report(path: Path, r: dict, picture: str) -> None:
    s, t = r["settings"], r["training"]
    c = r["classifiers"]
    lines = [
        f"# Text-to-image on the glyphs, scored attribute by attribute ({r['mode']})",
        "",
        f"Command: `python benchmarks/t2i_glyphs.py{' --quick' if r['mode'] == 'quick' else ''}`  ",
        f"Wall time: {r['minutes']:.1f} min on {cpu_name()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}. (The clipart text-to-image benchmark: [t2i_clipart.md](t2i_clipart.md).)",
        "",
        f"Model: FiTv2 block, text-conditional (MiniLM caption tokens in context), width {s['width']}, depth "
        f"{s['depth']}, batch {s['batch']}, lr {s['lr']}, trained on the glyph train split's captions in pixel space "
        f"at a {BUDGET}-px budget (patch 4, no flips): {t['steps']} steps, {t['tokens']:,.0f} image tokens, "
        f"{t['seconds'] / 60:.1f} min, final loss {t['loss']:.4f}. Samples at {SHAPE[0]}x{SHAPE[1]}, "
        f"{s['solver']} {s['steps']} steps, seed {r['seed']}.",
        "",
        "Scorers, and their accuracy on the real test glyphs (fonts never seen in training): character = the "
        f"shipped glyph classifier ({c['character']:.1%}); style = weight and slant, 4 values, a classifier "
        f"trained here ({c['style']:.1%}); family = serif/sans/mono/script/display, trained here "
        f"({c['family']:.1%}); fg/bg = the colours read from the pixels (nearest of the 12 palette colours; "
        'border = background). "all" = every attribute right at once; "pair" = the character and the '
        "attribute held out with it both right.",
        "",
        "| prompts | n | images | cfg | character | fg | bg | style | family | all | pair |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        cells = [f"{row[a]:.3f}" for a in [*ATTRIBUTES, "all"]] + [f"{row['pair']:.3f}" if "pair" in row else "–"]
        cfg = "–" if row["cfg"] is None else f"{row['cfg']:g}"
        lines.append(f"| {row['prompts']} | {row['n']} | {row['source']} | {cfg} | " + " | ".join(cells) + " |")
    lines += ["", f"![samples from held-out captions]({picture})", ""]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
