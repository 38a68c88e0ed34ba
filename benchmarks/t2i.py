"""Text-to-image FiTv2 against the class-conditional model on the embedded clipart data (CPU).

Two arms with the same backbone (FiTv2 block, mixed data, logit-normal time) and the same
number of real training image tokens:

  class   conditioned on the clipart class (17 classes), the class embedding
  text    conditioned on the image's caption (MiniLM tokens in context, pooled into the
          conditioning, diagonal text RoPE; FiTv2 §III-E), never told the class

Both are sampled for every image of the held-out test split, the class arm from the image's
class and the text arm from its caption, at 32x32 pixels with Euler steps, for a sweep of
classifier-free guidance scales. The locally trained clipart classifier then says how often
a sample is of the caption's (or label's) class, against chance and against the class arm,
and gives the Fréchet distance of its features to the test images.

    python benchmarks/t2i.py            # full run (about 45 min on 2 CPU cores)
    python benchmarks/t2i.py --quick    # minutes; numbers are only a smoke test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from common import cpu_name, train_for_tokens

from fitv2.data.prepare import prepare
from fitv2.eval.classifier import train_classifier
from fitv2.eval.evaluate import ClassifierFeatures, evaluate
from fitv2.sampling import Guidance, Sampler, SolverConfig
from fitv2.sampling.writers import prompt_grid

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "clipart" / "metadata.jsonl"
BUDGET = 32  # pixels: 8 x 8 = 64 tokens of 4 x 4 pixels
CFG_SCALES = [1.0, 2.0, 3.0, 4.0, 5.0]

SETTINGS = {
    "full": dict(
        width=128, heads=2, depth=5, batch=64, lr=1e-3, tokens=4e6, steps=20, classifier_epochs=20, classifier_minutes=5
    ),
    "quick": dict(
        width=64, heads=2, depth=2, batch=32, lr=2e-3, tokens=1e5, steps=4, classifier_epochs=1, classifier_minutes=1
    ),
}


def test_split() -> tuple[list[str], list[int], list[str]]:
    rows = [json.loads(line) for line in DATA.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("split") == "test"]
    names = {r["label"]: r["class_name"] for r in rows}
    return [r["caption"] for r in rows], [r["label"] for r in rows], [names[i] for i in sorted(names)]


def train_arm(arm: str, tokens: Path, work: Path, s: dict, seed: int) -> tuple[Path, dict]:
    model = dict(hidden_size=s["width"], num_heads=s["heads"], depth=s["depth"], adaln_lora_dim=s["width"] // 4)
    return train_for_tokens(tokens, work / arm, model, s, seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke test in minutes")
    parser.add_argument("--work", default="runs/bench_t2i", help="working folder (datasets, runs, samples)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where t2i_clipart.md/json go")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full"
    s = SETTINGS[mode]
    work, results_dir = Path(args.work), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    results_dir.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    datasets = {"class": work / "tokens_class", "text": work / "tokens_text"}
    for arm, folder in datasets.items():
        if not (folder / "index.json").is_file():
            prepare(
                DATA,
                folder,
                patch_size=4,
                budget=BUDGET,
                split="train",
                text_encoder="minilm" if arm == "text" else None,
            )
    classifier = work / "classifier"
    if not (classifier / "classifier.safetensors").is_file():
        train_classifier(DATA, classifier, epochs=s["classifier_epochs"], max_minutes=s["classifier_minutes"])
    classifier_meta = json.loads((classifier / "classifier.json").read_text())

    checkpoints, training = {}, {}
    for arm in ("class", "text"):
        print(f"training {arm} ...", flush=True)
        checkpoints[arm], training[arm] = train_arm(arm, datasets[arm], work, s, args.seed)

    captions, labels, class_names = test_split()
    labels_t = torch.tensor(labels)
    extractor = ClassifierFeatures(classifier)
    solver = SolverConfig("euler", steps=s["steps"])
    rows, grids = [], {}
    for arm in ("class", "text"):
        sampler = Sampler.load(checkpoints[arm])
        condition = labels_t if arm == "class" else sampler.encode_prompts(captions)
        for scale in CFG_SCALES:
            images = sampler.generate(BUDGET, BUDGET, condition, solver, Guidance(scale=scale), seed=args.seed)
            npz = work / "samples" / f"{arm}_cfg{scale:g}.npz"
            npz.parent.mkdir(parents=True, exist_ok=True)
            np.savez(npz, arr_0=images, arr_1=np.array(labels))
            metrics = evaluate(npz, DATA, extractor, split="test", reference_budget=BUDGET, cache_dir=work / "cache")
            rows.append(dict(arm=arm, cfg=scale, fd=metrics["fd"], consistency=metrics["class_consistency"]))
            print(f"  {arm:5s} cfg {scale:g}: FD {metrics['fd']:.2f}, consistency {metrics['class_consistency']:.3f}")
            if arm == "text" and scale == 4.0:
                grids["text"] = (images, sampler)
    # A picture: the first test caption of every class, at the paper's cfg 4.
    images, sampler = grids["text"]
    first = [labels.index(c) for c in sorted(set(labels))]
    picks = {(BUDGET, BUDGET): images[first]}
    named = [f"{captions[i]} ({class_names[labels[i]]})" for i in first]
    picture = results_dir / f"t2i_clipart_samples{'' if mode == 'full' else '_quick'}.png"
    prompt_grid(picks, named).save(picture)

    counts = Counter(labels)
    chance = sum((n / len(labels)) ** 2 for n in counts.values())  # agreement of a label-blind guess by frequency
    majority = max(counts.values()) / len(labels)
    minutes = (time.perf_counter() - t_start) / 60
    report = dict(
        mode=mode,
        settings=s,
        training=training,
        rows=rows,
        chance=chance,
        majority=majority,
        classifier_accuracy=classifier_meta["test_accuracy"],
        minutes=minutes,
    )
    suffix = "" if mode == "full" else "_quick"
    (results_dir / f"t2i_clipart{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    write_report(results_dir / f"t2i_clipart{suffix}.md", report, len(labels))
    print(f"done in {minutes:.1f} min: {results_dir / f't2i_clipart{suffix}.md'}")
    return 0


def write_report(path: Path, r: dict, n_test: int) -> None:
    s = r["settings"]
    lines = [
        f"# Text-to-image against class-conditional FiTv2 ({r['mode']})",
        "",
        f"Command: `python benchmarks/t2i.py{' --quick' if r['mode'] == 'quick' else ''}`  ",
        f"Wall time: {r['minutes']:.1f} min on {cpu_name()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}.",
        "",
        f"Data: embedded clipart train split, pixel space, patch 4, budget {BUDGET}x{BUDGET} px (64 tokens); "
        f"the text arm's captions encoded by MiniLM. Model: FiTv2 block, width {s['width']}, depth {s['depth']}, "
        f"batch {s['batch']}, lr {s['lr']}, {s['tokens']:,.0f} training image tokens each.",
        f"Evaluation: one sample per test image ({n_test}) at {BUDGET}x{BUDGET}, Euler {s['steps']} steps; class "
        "arm from the image's class, text arm from its caption. Consistency = share of samples the clipart "
        f"classifier (test accuracy {r['classifier_accuracy']:.1%} on real images) assigns to that class; "
        "FD = Fréchet distance of its pooled features to the test images.",
        "",
        "| arm | steps | training tokens | images | final loss | train time |",
        "|---|---|---|---|---|---|",
    ]
    for arm, t in r["training"].items():
        lines.append(
            f"| {arm} | {t['steps']} | {t['tokens']:,.0f} | {t['images']:,.0f} | {t['loss']:.4f} | "
            f"{t['seconds'] / 60:.1f} min |"
        )
    lines += [
        "",
        f"Chance consistency: {r['chance']:.3f} (a class guessed by frequency); always the largest class: "
        f"{r['majority']:.3f}.",
        "",
        "| cfg | class arm: consistency ↑ | text arm: consistency ↑ | class arm: FD ↓ | text arm: FD ↓ |",
        "|---|---|---|---|---|",
    ]
    by = {(row["arm"], row["cfg"]): row for row in r["rows"]}
    for scale in CFG_SCALES:
        c, t = by[("class", scale)], by[("text", scale)]
        lines.append(f"| {scale:g} | {c['consistency']:.3f} | {t['consistency']:.3f} | {c['fd']:.2f} | {t['fd']:.2f} |")
    picture = "t2i_clipart_samples.png" if r["mode"] == "full" else "t2i_clipart_samples_quick.png"
    lines += ["", f"![text arm, cfg 4: the first test caption of each class]({picture})", ""]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
