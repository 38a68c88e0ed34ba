"""Mixed sizes in one batch against one batch per size: the same images, timed.

    python benchmarks/mixed_sizes.py --preset FiTv2-B/2 --sizes 16x16,8x32,32x8,12x20 --per-size 2

Sizes are token grids (h x w). Every image gets its own generator, so the three ways give the same
images (checked); the times are min / median / max of alternated rounds.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from fitv2.config import model_config
from fitv2.model.fit import FiT
from fitv2.sampling import Guidance, SolverConfig, sample_mixed, sample_tokens
from fitv2.seeds import generator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="FiTv2-B/2")
    ap.add_argument("--sizes", default="16x16,8x32,32x8,12x20", help="token grids h x w")
    ap.add_argument("--per-size", type=int, default=2, help="images of each size")
    ap.add_argument("--steps", type=int, default=10, help="Euler steps")
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    grids = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
    model = FiT(model_config(args.preset)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    solver, guidance = SolverConfig("euler", steps=args.steps), Guidance(scale=args.cfg_scale)
    k = args.per_size
    labels = torch.arange(k * len(grids)) % model.config.num_classes

    def per_size():
        out = []
        for s, (h, w) in enumerate(grids):
            gens = [generator(0, h, w, i) for i in range(k)]
            tokens = sample_tokens(
                model, h, w, labels[s * k : (s + 1) * k], solver=solver, guidance=guidance, generator=gens
            )
            out.extend(tokens)
        return out

    def mixed(pack):
        every = [g for g in grids for _ in range(k)]
        gens = [generator(0, h, w, i % k) for i, (h, w) in enumerate(every)]
        return lambda: sample_mixed(model, every, labels, gens, solver=solver, guidance=guidance, pack=pack)

    ways = {"per-size loop": per_size, "one padded batch": mixed(False), "one packed batch": mixed(True)}
    reference = per_size()
    for name, fn in ways.items():
        worst = max(float((a - b).abs().max()) for a, b in zip(fn(), reference))
        print(f"{name}: max |difference| from the per-size loop {worst:.2e}")
    times: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(args.rounds):
        for name, fn in ways.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    tokens = sum(h * w for h, w in grids) * k
    print(
        f"\n{args.preset}, {len(grids)} sizes x {k} images ({tokens} tokens), {args.steps} Euler steps, "
        f"CFG {args.cfg_scale}, {args.threads} threads, {args.rounds} rounds"
    )
    base = statistics.median(times["per-size loop"])
    print("| way | min s | median s | max s | speed-up |\n|---|---|---|---|---|")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"| {name} | {min(ts):.2f} | {med:.2f} | {max(ts):.2f} | {base / med:.2f}x |")


if __name__ == "__main__":
    main()
