"""Training and sampling throughput of FiTv2: padded vs packed batches, fp32 vs bf16.

A job is (preset, length distributions, images per step, timed steps). For every
distribution and dtype, one seeded set of images is trained on padded (one row per image,
padded to the longest), packed (first-fit rows of L = K × budget tokens, block-diagonal
attention) and flat (the whole batch in one row exactly as long as its tokens: no padding).
A step is forward + flow loss + backward + AdamW; bf16 means autocast around forward and
loss with fp32 parameters. The modes' timed steps alternate in one process, so
changes in machine load hit them alike; on CPU each mode's peak RSS comes from a fresh process.

Model FLOPs per step = 3 · 2 · (linear MACs of the valid tokens + attention MACs). "MFU"
counts the attention the kernel computes (SDPA: full rows, N² per padded row and L² per
packed row; block-sparse kernels (flex, flash-varlen): n² per segment, the padding segment
included); "useful MFU" counts only each image's own n². The peak is a dense square matmul
timed in the same process, dtype and device.

    python benchmarks/throughput.py --device cpu --dtypes fp32,bf16 \
        --job FiTv2-B/2:imagenet-256:8:3 --job FiTv2-Tiny/4:clipart,imagenet-256:32:8 \
        --out benchmarks/results/throughput.md
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import platform
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
from PIL import Image

from fitv2.config import ModelConfig, Runtime, model_config
from fitv2.data.images import SkipImage, resize_to_budget
from fitv2.flow import flow_loss
from fitv2.model.attention import choose_attention
from fitv2.model.fit import build_model
from fitv2.model.flops import attention_macs, linear_macs
from fitv2.names import ATTENTION_NAMES
from fitv2.sampling import Guidance, SolverConfig, sample_tokens
from fitv2.tokens import first_fit_rows, pack_sequences, pad_sequences

ROOT = Path(__file__).resolve().parents[1]
CLIPART = ROOT / "data" / "clipart" / "metadata.jsonl"

# Assumed shares of common ImageNet sizes (w, h): 85% large photos, a 15% tail of small ones.
IMAGENET_SIZES = [
    ((500, 375), 0.35),
    ((375, 500), 0.15),
    ((500, 333), 0.15),
    ((500, 500), 0.10),
    ((640, 480), 0.10),
    ((200, 150), 0.04),
    ((150, 200), 0.03),
    ((120, 120), 0.02),
    ((250, 180), 0.03),
    ((300, 225), 0.03),
]
GPU_COMMAND = (
    "python benchmarks/throughput.py --device cuda --dtypes bf16 "
    "--job FiTv2-B/2:imagenet-256,imagenet-1024:64:10 --job FiTv2-XL/2:imagenet-256,imagenet-1024:16:10 "
    "--modes padded,packed,packed2,flat --sample FiTv2-B/2:8:50 --sample FiTv2-XL/2:8:50 "
    "--out benchmarks/results/throughput_gpu.md --json benchmarks/results/throughput_gpu.json"
)
# name -> (budget side S in pixels, unit = patch × autoencoder down-sampling)
DISTS = {"clipart": (64, 4), "clipart-32": (32, 4), "imagenet-256": (256, 16), "imagenet-1024": (512, 16)}


def length_distribution(name: str) -> list[tuple[tuple[int, int], bool, float, tuple[int, int]]]:
    """((h, w) tokens after the resize rule, crop-eligible, weight, source (w, h)) per source image
    size; sizes below budget/16 tokens are dropped, as ``fitv2 prepare`` does by default."""
    side, unit = DISTS[name]
    if name.startswith("clipart"):
        rows = [json.loads(line) for line in CLIPART.read_text().splitlines() if line.strip()]
        sizes = [((r["width"], r["height"]), 1.0) for r in rows if r.get("split") == "train"]
    else:
        sizes = IMAGENET_SIZES
    out = []
    for (w, h), weight in sizes:
        try:
            rw, rh = resize_to_budget(Image.new("L", (w, h)), side, unit).size  # only the size matters
        except SkipImage:
            continue
        if (rh // unit) * (rw // unit) >= max(1, (side // unit) ** 2 // 16):
            out.append(((rh // unit, rw // unit), w > side and h > side, weight, (w, h)))
    return out


def sample_shapes(name: str, n: int, seed: int) -> list[tuple[int, int]]:
    """n images' (h, w) in tokens, mixed mode: eligible images become the S × S crop with p = ½."""
    dist = length_distribution(name)
    side, unit = DISTS[name]
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(torch.tensor([d[2] for d in dist]), n, replacement=True, generator=g).tolist()
    coins = (torch.rand(n, generator=g) < 0.5).tolist()
    return [(side // unit, side // unit) if dist[i][1] and c else dist[i][0] for i, c in zip(idx, coins)]


def make_batch(
    shapes: list[tuple[int, int]], packed: bool, length: int, cfg: ModelConfig, seed: int, device: torch.device
) -> tuple[dict, list[list[int]]]:
    """flow_loss inputs (random token values: the numbers are about speed) and the rows."""
    g = torch.Generator().manual_seed(seed)
    items = [(torch.randn(h * w, cfg.token_dim, generator=g), h, w) for h, w in shapes]
    labels = torch.randint(cfg.num_classes, (len(items),), generator=g)
    if packed:
        # length 0: the whole batch in one row with no padding (`--batching flat`)
        rows = first_fit_rows([h * w for h, w in shapes], length) if length else [list(range(len(items)))]
        tb = pack_sequences(items, rows, length=length or None)
        y = torch.zeros(len(rows), tb.layout.images_per_row, dtype=torch.long)
        for r, row in enumerate(rows):
            y[r, : len(row)] = labels[row]
    else:
        rows = [[i] for i in range(len(items))]
        tb, y = pad_sequences(items), labels
    t = torch.rand(y.shape, generator=g)
    x0 = torch.randn(tb.x.shape, generator=g)
    tb = tb.to(device)
    inputs = dict(x1=tb.x, y=y.to(device), layout=tb.layout, t=t.to(device), x0=x0.to(device))
    return inputs, rows


def step_macs(cfg: ModelConfig, n: list[int], rows: list[list[int]], row_len: int, backend: str) -> tuple[int, int]:
    """(kernel, useful) forward MACs of one step: linear of valid tokens + attention as ``backend``
    computes it (sdpa: whole rows; flex: per segment, padding included; varlen kernels: per image)."""
    sparse = backend != "sdpa"
    pad_weight = 1 if backend == "flex" else 0
    model = build_model(cfg, device="meta")
    per_image = linear_macs(model, 0)
    linear = (linear_macs(model, 1) - per_image) * sum(n) + per_image * len(n)
    useful = sum(attention_macs(cfg, k) for k in n)
    if sparse:
        kernel = sum(
            sum(attention_macs(cfg, n[i]) for i in row)
            + pad_weight * attention_macs(cfg, row_len - sum(n[i] for i in row))
            for row in rows
        )
    else:
        kernel = len(rows) * attention_macs(cfg, row_len)
    return linear + kernel, linear + useful


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(spec: dict, device: torch.device, min_time: float = 0.3) -> float:
    """Dense-matmul FLOP/s in the spec's dtype, best over its sizes and several runs (at least 3 and
    ``min_time`` s each): the MFU denominator."""
    dtype = torch.bfloat16 if spec["dtype"] == "bf16" else torch.float32
    rate = 0.0
    for n in spec["matmul_n"]:
        a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
        torch.mm(a, b)  # warm-up: allocation, kernel selection
        best, spent, reps = math.inf, 0.0, 0
        while reps < 3 or (spent < min_time and reps < 50):
            sync(device)
            start = time.perf_counter()
            torch.mm(a, b)
            sync(device)
            took = time.perf_counter() - start
            best, spent, reps = min(best, took), spent + took, reps + 1
        rate = max(rate, 2 * n**3 / best)
    return rate


def _setup(spec: dict) -> tuple[torch.device, ModelConfig, torch.nn.Module, torch.autocast]:
    """Device, config, model (seeded) and the autocast context of the spec's dtype."""
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    cfg = model_config(spec["preset"])
    # unpad=False: the padded rows as they are (by default the model runs a padded batch unpadded).
    model = build_model(cfg, device, Runtime(attention=spec["attention"], unpad=False))
    return device, cfg, model, torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["dtype"] == "bf16")


def _trainer(spec: dict) -> tuple[torch.device, ModelConfig, dict, dict]:
    """Model, AdamW (state already allocated, so every step has the steady-state footprint) and
    one step function and batch per mode, all on the same seeded images."""
    device, cfg, model, autocast = _setup(spec)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    side, unit = DISTS[spec["dist"]]
    shapes = sample_shapes(spec["dist"], spec["batch"], spec["seed"])
    batches, steps = {}, {}
    for mode in spec["modes"]:
        packed = mode.startswith("packed") or mode == "flat"  # "packedK": rows of K × budget tokens
        length = int(mode[len("packed") :] or 1) * (side // unit) ** 2 if mode.startswith("packed") else 0
        inputs, rows = make_batch(shapes, packed, length, cfg, spec["seed"], device)
        kernel = choose_attention(spec["attention"], inputs["layout"].attention_segment()).name  # what the model runs
        batches[mode] = (shapes, rows, inputs["x1"].shape[1], kernel)

        def step(inputs: dict = inputs) -> None:
            with autocast:
                loss = flow_loss(model, **inputs).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        steps[mode] = step
    return device, cfg, batches, steps


def run_memory(spec: dict) -> float:
    """CPU peak memory of one mode (MiB): max RSS growth over the RSS before the model was built
    (weights, AdamW state, grads, activations, batch); run it in a fresh process."""
    with open("/proc/self/statm") as f:
        start = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    _, _, _, steps = _trainer(spec)
    steps[spec["modes"][0]]()
    return max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - start)


def run_train(spec: dict) -> list[dict]:
    """Warm-up, then timed steps of every mode interleaved step by step (so a change in machine
    load hits all modes alike); one result per mode."""
    device, cfg, batches, steps = _trainer(spec)
    peak = matmul_peak(spec, device)
    load = os.getloadavg()[0]  # other processes on the machine skew CPU timings
    memory = {}
    for mode, step in steps.items():
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(spec["warmup"]):
            step()
        memory[mode] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else math.nan
    times: dict[str, list[float]] = {mode: [] for mode in steps}
    for _ in range(spec["steps"]):
        for mode, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[mode].append(time.perf_counter() - start)
    peak = max(peak, matmul_peak(spec, device))  # the better of before and after the steps
    results = []
    for mode, (shapes, rows, row_len, backend) in batches.items():
        n = [h * w for h, w in shapes]
        kernel, useful = step_macs(cfg, n, rows, row_len, backend)
        sec = statistics.median(times[mode])
        results.append(
            dict(
                spec,
                mode=mode,
                images=len(n),
                rows=len(rows),
                row_len=row_len,
                valid=sum(n),
                computed=len(rows) * row_len,
                pad=1 - sum(n) / (len(rows) * row_len),
                step_s=sec,
                tok_s=sum(n) / sec,
                img_s=len(n) / sec,
                mfu=6 * kernel / sec / peak,
                useful_mfu=6 * useful / sec / peak,
                peak_tflops=peak / 1e12,
                mem_mib=memory[mode],
                backend=backend,
                times=times[mode],
                load=load,
            )
        )
    return results


def run_sampling(spec: dict) -> dict:
    """Images/s of Euler sampling with CFG (doubled batch) at h × w tokens."""
    device, cfg, model, autocast = _setup(spec)
    peak = matmul_peak(spec, device)
    model.eval()
    labels = torch.arange(spec["batch"]) % cfg.num_classes
    h = w = spec["side"]

    def sample(steps: int) -> None:
        with autocast:
            sample_tokens(
                model,
                h,
                w,
                labels,
                solver=SolverConfig("euler", steps=steps),
                guidance=Guidance(scale=1.5),
                generator=torch.Generator().manual_seed(0),
            )

    sample(2)  # warm-up
    sync(device)
    start = time.perf_counter()
    sample(spec["steps"])
    sync(device)
    sec = time.perf_counter() - start
    peak = max(peak, matmul_peak(spec, device))
    per_image = linear_macs(build_model(cfg, device="meta"), h * w) + attention_macs(cfg, h * w)
    flops = 2 * per_image * 2 * spec["batch"] * spec["steps"]  # 2 FLOPs/MAC, CFG doubles the batch
    # Euler steps cost the same, so a shorter timed run gives the 50-step rate too.
    return dict(
        spec,
        sec=sec,
        img_s=spec["batch"] / sec,
        img_s50=spec["batch"] * spec["steps"] / (50 * sec),
        eval_ms=1e3 * sec / spec["steps"],
        mfu=flops / sec / peak,
        peak_tflops=peak / 1e12,
    )


def execute(fn, spec: dict, isolate: bool) -> dict:
    """Run in a fresh process (own peak RSS, no allocator state carried over) or in this one."""
    if not isolate:
        return fn(spec)
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, spec).result()


def machine_info(device: torch.device) -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    info = f"CPU {cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if device.type == "cuda":
        info += f", GPU {torch.cuda.get_device_name(device)}"
    return info


def dist_table(names: list[str]) -> list[str]:
    lines = [
        "| distribution | side S / unit | budget tokens | sizes (h×w tokens: share) | mean tokens (mixed) |",
        "|---|---|---|---|---|",
    ]
    for name in names:
        side, unit = DISTS[name]
        dist = length_distribution(name)
        total = sum(d[2] for d in dist)
        shares: dict[int, float] = {}
        for (h, w), elig, weight, _ in dist:  # eligible images take the S × S crop half of the time
            for n, p in [(h * w, 0.5), ((side // unit) ** 2, 0.5)] if elig else [(h * w, 1.0)]:
                shares[n] = shares.get(n, 0.0) + p * weight / total
        mean = sum(k * v for k, v in shares.items())
        if name.startswith("clipart"):
            desc = f"{len(dist)} train images; min {min(shares)}, max {max(shares)} tokens"
        else:
            desc = ", ".join(
                f"{sw}×{sh} px → {h}×{w}: {weight / total:.1%}" + (" (crop-eligible)" if e else "")
                for (h, w), e, weight, (sw, sh) in dist
            )
        lines.append(f"| {name} | {side} / {unit} | {(side // unit) ** 2} | {desc} | {mean:.1f} |")
    return lines


def report(results: list[dict], samples: list[dict], command: str, info: str, load: str, wall: float) -> str:
    lines = [
        "# FiTv2 training and sampling throughput",
        "",
        f"Command (wall time {wall:.0f} s):",
        "",
        f"    {command}",
        "",
        f"Machine: {info}.",
        f"Load average (1/5/15 min) {load}.",
        "",
        "## Length distributions",
        "",
        *dist_table(sorted({r["dist"] for r in results})),
        "",
        "## Training steps",
        "",
        "Step = forward + flow loss + backward + AdamW; median of the timed steps. Valid tok/s counts "
        "real tokens only. MFU: model FLOPs (linear of valid tokens + attention as the kernel computes "
        "it) / dense-matmul peak of the same dtype (best of before and after the steps); useful MFU: "
        "per-image attention only. Memory: CPU, growth of max RSS over the RSS before the model was built, "
        "one fresh process per mode (weights, AdamW state, grads, activations); GPU, max_memory_allocated. "
        "Load: 1-minute load average when the configuration started.",
        "",
        "| preset | dist | dtype | mode | images / rows × length | pad % | step s | valid tok/s | img/s "
        "| MFU % | useful MFU % | peak TFLOP/s | mem MiB | load |",
        "|" + "---|" * 14,
    ]
    for r in results:
        lines.append(
            f"| {r['preset']} | {r['dist']} | {r['dtype']} | {r['mode']} | {r['images']} / {r['rows']} × "
            f"{r['row_len']} | {100 * r['pad']:.1f} | {r['step_s']:.3f} | {r['tok_s']:.0f} | "
            f"{r['img_s']:.2f} | {100 * r['mfu']:.1f} | {100 * r['useful_mfu']:.1f} | "
            f"{r['peak_tflops']:.3f} | {r['mem_mib']:.0f} | {r['load']:.1f} |".replace("| nan |", "| n/a |")
        )
    lines += [
        "",
        "## Packed over padded",
        "",
        "Bound = 1/(1 − padding fraction of the padded batch) (packing without any padding); "
        "fill bound = (1 − packed padding)/(1 − padded padding), what first-fit rows of that length "
        "can reach at the same cost per computed token.",
        "",
        "| preset | dist | dtype | mode | pad % padded | pad % packed | speedup | bound | % of bound "
        "| fill bound | % of fill bound |",
        "|" + "---|" * 11,
    ]
    by_key = {(r["preset"], r["dist"], r["dtype"], r["mode"]): r for r in results}
    for (preset, dist, dtype, mode), pk in by_key.items():
        pd = by_key.get((preset, dist, dtype, "padded"))
        if mode == "padded" or pd is None:
            continue
        speedup, bound = pk["tok_s"] / pd["tok_s"], 1 / (1 - pd["pad"])
        fill = (1 - pk["pad"]) / (1 - pd["pad"])
        lines.append(
            f"| {preset} | {dist} | {dtype} | {mode} | {100 * pd['pad']:.1f} | {100 * pk['pad']:.1f} | "
            f"{speedup:.3f} | {bound:.3f} | {100 * speedup / bound:.0f}% | {fill:.3f} | "
            f"{100 * speedup / fill:.0f}% |"
        )
    if samples:
        lines += [
            "",
            "## Sampling",
            "",
            "Euler, CFG scale 1.5 (doubled batch), no padding.",
            "",
            "| preset | dtype | tokens | batch | steps timed | seconds | img/s (timed run) | img/s at 50 steps "
            "| ms / step | MFU % |",
            "|" + "---|" * 10,
        ]
        for s in samples:
            lines.append(
                f"| {s['preset']} | {s['dtype']} | {s['side']}×{s['side']} | {s['batch']} | {s['steps']} | "
                f"{s['sec']:.1f} | {s['img_s']:.3f} | {s['img_s50']:.3f} | {s['eval_ms']:.0f} | "
                f"{100 * s['mfu']:.1f} |"
            )
    if not any(r["device"].startswith("cuda") for r in results + samples):
        lines += [
            "",
            "## GPU (H100 / H200)",
            "",
            "Not measured: no GPU machine was lent in this session. The script is ready for it "
            "(`--device cuda`: bf16 autocast, FlexAttention through `--attention auto`, "
            "`torch.cuda.synchronize()` around every timing, `max_memory_allocated`, 4096³ matmul peak); "
            "one command measures FiTv2-B/2 and FiTv2-XL/2 in bf16 on both ImageNet distributions:",
            "",
            f"    {GPU_COMMAND}",
        ]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="FiTv2-B/2", help="comma list (used when no --job is given)")
    p.add_argument("--dists", default="imagenet-256", help=f"comma list of {', '.join(DISTS)}")
    p.add_argument("--batch-size", type=int, default=8, help="images per step (the same images padded and packed)")
    p.add_argument("--steps", type=int, default=3, help="timed steps")
    p.add_argument(
        "--job",
        action="append",
        default=[],
        metavar="PRESET:DISTS:BATCH:STEPS[:MODES]",
        help="repeatable; DISTS a comma list, MODES a +-list (default --modes)",
    )
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", default=None, help="comma list of fp32,bf16 (default: fp32,bf16 on CPU, bf16 on CUDA)")
    p.add_argument(
        "--modes",
        default="padded,packed",
        help="padded, packed (L = budget), packedK (L = K·budget), flat (the batch in one row, no padding)",
    )
    p.add_argument("--attention", default="auto", choices=ATTENTION_NAMES, help="attention kernel")
    p.add_argument(
        "--sample",
        action="append",
        default=None,
        metavar="PRESET:BATCH:STEPS",
        help="sampling runs at 16×16 tokens (default: first preset, batch 8, 50 steps; 'none' skips)",
    )
    p.add_argument("--matmul-n", default=None, help="peak matmul sides, best counts (1024,2048 CPU; 4096 GPU)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-isolate", action="store_true", help="no fresh processes (CPU memory not measured)")
    p.add_argument("--smoke", action="store_true", help="seconds-long run of FiTv2-Micro/4 (for tests)")
    p.add_argument("--out", default=None, help="markdown report")
    p.add_argument("--json", default=None, help="raw results as JSON")
    args = p.parse_args(argv)
    if args.smoke:
        args.job, args.sample = ["FiTv2-Micro/4:clipart-32:8:2"], ["FiTv2-Micro/4:2:2"]
        # One thread: OpenMP barriers crawl when other processes hold the cores.
        args.warmup, args.no_isolate, args.threads = 1, True, args.threads or 1
        args.dtypes, args.matmul_n = args.dtypes or "fp32", args.matmul_n or "512"
    cuda = args.device.startswith("cuda")
    args.dtypes = (args.dtypes or ("bf16" if cuda else "fp32,bf16")).split(",")
    args.matmul_n = [int(n) for n in (args.matmul_n or ("4096" if cuda else "1024,2048")).split(",")]
    if not args.job:
        args.job = [f"{p}:{args.dists}:{args.batch_size}:{args.steps}" for p in args.preset.split(",")]
    if args.sample is None:
        args.sample = [f"{args.job[0].split(':')[0]}:8:50"]
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device(args.device)
    isolate = device.type == "cpu" and not args.no_isolate  # CUDA peaks reset in-process
    base = dict(
        device=args.device,
        attention=args.attention,
        warmup=args.warmup,
        seed=args.seed,
        matmul_n=args.matmul_n,
        threads=args.threads,
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    wall = time.perf_counter()
    load0 = os.getloadavg()
    results, samples = [], []
    for job in args.job:
        preset, dists, batch, steps, *modes = job.split(":")
        modes = modes[0].split("+") if modes else args.modes.split(",")
        for dist in dists.split(","):
            if dist not in DISTS:
                raise SystemExit(f"unknown distribution {dist!r}; choose from {', '.join(DISTS)}")
            for dtype in args.dtypes:
                spec = dict(
                    base, preset=preset, dist=dist, dtype=dtype, modes=modes, batch=int(batch), steps=int(steps)
                )
                group = execute(run_train, spec, isolate)
                for r in group:
                    if isolate:  # CPU: each mode's peak RSS in its own fresh process
                        r["mem_mib"] = execute(run_memory, dict(spec, modes=[r["mode"]]), isolate)
                    results.append(r)
                    print(
                        f"{preset} {dist} {dtype} {r['mode']}: {r['images']} img in {r['rows']}×{r['row_len']}, "
                        f"pad {100 * r['pad']:.1f}%, {r['step_s']:.3f} s/step, {r['tok_s']:.0f} valid tok/s, "
                        f"MFU {100 * r['mfu']:.1f}%, mem {r['mem_mib']:.0f} MiB",
                        flush=True,
                    )
    for job in [] if args.sample == ["none"] else args.sample:
        preset, batch, steps = job.split(":")
        for dtype in args.dtypes:
            spec = dict(base, preset=preset, dtype=dtype, batch=int(batch), steps=int(steps), side=16)
            s = execute(run_sampling, spec, isolate)
            samples.append(s)
            print(
                f"sample {preset} {dtype}: {s['img_s50']:.3f} img/s at 50 steps ({s['eval_ms']:.0f} ms/step, "
                f"MFU {100 * s['mfu']:.1f}%)",
                flush=True,
            )
    wall = time.perf_counter() - wall
    load1 = os.getloadavg()
    load = f"at start {' / '.join(f'{x:.2f}' for x in load0)}, at end {' / '.join(f'{x:.2f}' for x in load1)}"
    command = "python benchmarks/throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = report(results, samples, command, machine_info(device), load, wall)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)
    if args.json:
        Path(args.json).write_text(json.dumps(dict(command=command, results=results, samples=samples), indent=1) + "\n")
    if not args.out:
        print(text)


if __name__ == "__main__":
    main()
