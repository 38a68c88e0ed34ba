#!/usr/bin/env python3
"""Measure how separable the classes of ``data/glyphs/`` are on fonts never seen in training.

Trains a small CNN on the ``train`` split and evaluates it on the ``test`` split (unseen font
families) and on the ``combo`` split (training fonts, held-out combinations), then writes the
accuracy, per-class accuracy, the most frequent confusions and the accuracy within groups of
look-alike characters (``I l 1``, ``O 0 o``, ...) to ``data/glyphs/ambiguity.json``.
``scripts/build_glyph_dataset.py`` copies that file into ``build_stats.json`` and the data card.

Input: each image (palette PNG -> RGB) is resized to a height of ``HEIGHT`` px keeping its aspect
ratio and centred on a ``HEIGHT`` x ``WIDTH`` canvas filled with its own corner (background)
colour, so the vertical position of the glyph in the font's body (``o`` vs ``O``) and its width
(``O`` vs ``0``) survive.  Augmentation: random shifts of up to 2 px; with ``--flip`` also random
horizontal flips (what ``fitv2``'s token loader and evaluation classifier do), to show what flips
cost on glyphs.

Deterministic for a given torch build and thread count (seeded; ``--threads`` defaults to 2).

Usage (from the repository root; needs torch, numpy, Pillow)::

    python scripts/measure_glyph_ambiguity.py            # writes data/glyphs/ambiguity.json
    python scripts/measure_glyph_ambiguity.py --flip --name with-flips --append
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEIGHT, WIDTH = 32, 40
LOOK_ALIKE_GROUPS = ("Il1", "O0o", "Cc", "Ss5", "Vv", "Ww", "Xx", "Zz2", "Pp", "Uu", "Kk", "bdpq", "gq9", "B8", "Jj")


def load_split(root: str, records: list[dict], split: str) -> tuple[torch.Tensor, torch.Tensor, list[dict]]:
    rows = [r for r in records if r["split"] == split]
    out = np.zeros((len(rows), 3, HEIGHT, WIDTH), np.uint8)
    for i, r in enumerate(rows):
        im = Image.open(os.path.join(root, r["path"])).convert("RGB")
        w = max(1, min(WIDTH, round(im.width * HEIGHT / im.height)))
        im = im.resize((w, HEIGHT), Image.Resampling.BILINEAR)
        canvas = Image.new("RGB", (WIDTH, HEIGHT), im.getpixel((0, 0)))
        canvas.paste(im, ((WIDTH - w) // 2, 0))
        out[i] = np.asarray(canvas).transpose(2, 0, 1)
    labels = torch.tensor([r["label"] for r in rows])
    return torch.from_numpy(out), labels, rows


class SmallCNN(nn.Module):
    def __init__(self, num_classes: int, widths=(32, 64, 128)):
        super().__init__()
        layers, c_in = [], 3
        for w in widths:
            layers += [
                nn.Conv2d(c_in, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.Conv2d(w, w, 3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            c_in = w
        self.features = nn.Sequential(*layers)
        # flatten (not global pooling): the position of the glyph in the body matters
        n = c_in * (HEIGHT // 8) * (WIDTH // 8)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Dropout(0.3), nn.Linear(n, 256), nn.ReLU(), nn.Linear(256, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float() / 127.5 - 1.0


def augment(x: torch.Tensor, gen: torch.Generator, flip: bool) -> torch.Tensor:
    """Random shift of up to 2 px (edge padding), optional random horizontal flip."""
    n = x.shape[0]
    padded = F.pad(x, (2, 2, 2, 2), mode="replicate")
    dx = torch.randint(0, 5, (n,), generator=gen)
    dy = torch.randint(0, 5, (n,), generator=gen)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + HEIGHT, dx[i] : dx[i] + WIDTH] for i in range(n)])
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.eval()
    return torch.cat([model(to_float(x[i : i + 512])).argmax(1) for i in range(0, len(x), 512)])


def report(name, classes, y, pred, rows, split, n_train) -> dict:
    k = len(classes)
    conf = np.zeros((k, k), np.int64)
    for t, p in zip(y.tolist(), pred.tolist()):
        conf[t, p] += 1
    per_class = {classes[i]: float(conf[i, i] / max(1, conf[i].sum())) for i in range(k) if conf[i].sum()}
    confusions = [
        (classes[t], classes[p], int(conf[t, p]), int(conf[t].sum()))
        for t in range(k)
        for p in range(k)
        if t != p and conf[t, p]
    ]
    confusions.sort(key=lambda c: (-c[2], c[0], c[1]))
    index = {c: i for i, c in enumerate(classes)}
    groups = []
    for g in LOOK_ALIKE_GROUPS:
        ids = [index[c] for c in g if c in index]
        if len(ids) < 2:
            continue
        n = int(conf[ids].sum())
        if not n:
            continue
        groups.append(
            {
                "group": " ".join(classes[i] for i in ids),
                "n": n,
                "exact": float(sum(conf[i, i] for i in ids) / n),
                "within": float(conf[np.ix_(ids, ids)].sum() / n),
            }
        )
    by_font = collections.defaultdict(lambda: [0, 0])
    for r, t, p in zip(rows, y.tolist(), pred.tolist()):
        by_font[r["font"]][0] += int(t == p)
        by_font[r["font"]][1] += 1
    fonts = sorted(((f, c / n, n) for f, (c, n) in by_font.items()), key=lambda x: x[1])
    return {
        "name": name,
        "eval_split": split,
        "n_classes": k,
        "n_train": n_train,
        "n_eval": len(y),
        "accuracy": float((pred == y).float().mean()),
        "worst_classes": sorted(((c, round(a, 4)) for c, a in per_class.items()), key=lambda x: (x[1], x[0]))[:12],
        "per_class_accuracy": {c: round(a, 4) for c, a in per_class.items()},
        "top_confusions": confusions[:30],
        "group_accuracy": groups,
        "worst_fonts": [(f, round(a, 4), n) for f, a, n in fonts[:10]],
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=os.path.join(REPO_ROOT, "data", "glyphs"))
    ap.add_argument("--out", help="result JSON (default: DATA/ambiguity.json)")
    ap.add_argument("--name", default="small CNN, no flips")
    ap.add_argument("--append", action="store_true", help="add this run to the runs already in --out")
    ap.add_argument("--flip", action="store_true", help="train with random horizontal flips")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)
    out = args.out or os.path.join(args.data, "ambiguity.json")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)

    meta = os.path.join(args.data, "metadata.jsonl")
    with open(meta, "rb") as fh:
        raw = fh.read()
    sha = hashlib.sha256(raw).hexdigest()
    records = [json.loads(line) for line in raw.decode("utf-8").splitlines() if line.strip()]
    with open(os.path.join(args.data, "classes.json"), encoding="utf-8") as fh:
        classes = json.load(fh)
    t0 = time.time()
    x_train, y_train, _ = load_split(args.data, records, "train")
    evals = {s: load_split(args.data, records, s) for s in ("test", "combo")}
    print(f"loaded {len(x_train)} train images in {time.time() - t0:.1f}s", flush=True)

    model = SmallCNN(len(classes))
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    steps = args.epochs * ((len(x_train) + args.batch_size - 1) // args.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=steps, pct_start=0.15)
    for epoch in range(args.epochs):
        model.train()
        perm = torch.randperm(len(x_train), generator=gen)
        total = 0.0
        for i in range(0, len(perm), args.batch_size):
            idx = perm[i : i + args.batch_size]
            xb = to_float(augment(x_train[idx], gen, args.flip))
            loss = F.cross_entropy(model(xb), y_train[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(idx)
        acc = float((predict(model, evals["test"][0]) == evals["test"][1]).float().mean())
        print(f"epoch {epoch + 1}: loss {total / len(x_train):.4f}, test accuracy {acc:.4f} ({time.time() - t0:.0f}s)")

    runs = []
    for split, (x, y, rows) in evals.items():
        runs.append(report(f"{args.name}", classes, y, predict(model, x), rows, split, len(x_train)))
        print(f"{split}: accuracy {runs[-1]['accuracy']:.4f}; worst {runs[-1]['worst_classes'][:6]}")
        print(f"  confusions {runs[-1]['top_confusions'][:10]}")

    words, skip = [], False  # the command line without --data and --out (local paths)
    for a in sys.argv[1:] if argv is None else argv:
        if skip or a.startswith(("--out", "--data")):
            skip = a in ("--out", "--data")
            continue
        words.append(f'"{a}"' if " " in a else a)
    cmd = " ".join(["python scripts/measure_glyph_ambiguity.py", *words])
    for r in runs:
        r["command"] = cmd
        r["epochs"], r["seed"], r["flip"] = args.epochs, args.seed, args.flip
        r["seconds"] = round(time.time() - t0)
    result = {}
    if args.append and os.path.isfile(out):
        with open(out, encoding="utf-8") as fh:
            result = json.load(fh)
        if result.get("metadata_sha256") != sha:
            sys.exit(f"{out} was measured on another metadata.jsonl; run without --append first")
    result.update(
        {
            "metadata_sha256": sha,
            "command": result.get("command", cmd),
            "method": (
                f"A small CNN (3 stages of two 3x3 convolutions with BatchNorm, widths 32/64/128, then a "
                f"256-unit layer; {sum(p.numel() for p in model.parameters()):,} parameters) trained on the train "
                f"split for {args.epochs} epochs (AdamW, one-cycle learning rate up to {args.lr}, batch "
                f"{args.batch_size}, label smoothing 0.05, random shifts of up to 2 px); every image resized to "
                f"height {HEIGHT} keeping its aspect ratio and centred on a {HEIGHT}x{WIDTH} canvas of its "
                f"background colour; torch {torch.__version__}, {args.threads} CPU threads, seed {args.seed}."
            ),
        }
    )
    result["runs"] = [r for r in result.get("runs", []) if r["name"] != args.name] + runs
    with open(out, "w", encoding="utf-8") as fh:
        json.dump(result, fh, indent=1, ensure_ascii=False)
        fh.write("\n")
    print(f"wrote {out} ({time.time() - t0:.0f}s)")


if __name__ == "__main__":
    main()
