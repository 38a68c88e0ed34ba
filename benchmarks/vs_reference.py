"""fitv2 against the published FiT/FiTv2 implementation, side by side, on the same weights and batches.

    pip install einops     # the published code imports it (timm and triton get stand-ins below)
    python benchmarks/vs_reference.py --reference ~/src/FiT --out benchmarks/results/vs_reference.md

``--reference`` is a checkout of the published code (github.com/whlzy/FiT; nothing is fetched or
vendored here). Its FiTv2 model is built with the preset's width (``--depth`` blocks), given random
weights, and the same weights are loaded into fitv2's model; the benchmark first checks that both
compute the same function (fp32, padded batch: max |difference| of the outputs).

Training step (forward + rectified-flow loss + backward + AdamW) on seeded ImageNet-like token
batches: at the 256-token budget (B = 8) and the 1024-token budget (B = 2); the reference takes the
batch padded (its only layout), fitv2 padded and flat (``--batching flat``: the batch in one row, no
padding). fp32 and bf16 autocast. Sampling: 50 Euler steps with classifier-free guidance (the
reference's ``forward_with_cfg`` in an Euler loop, fitv2's ``sample_tokens``), images/s at 256 tokens.

Every measurement alternates the implementations round by round in one process and one thread
(``--threads``); a round's ratio is reference time / fitv2 time, and the table gives the min, median
and max over rounds, so a change of machine load hits both alike. ``--profile`` prints the top ops
by self time of one step of each.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import os
import platform
import statistics
import sys
import time
import types
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
from throughput import make_batch, sample_shapes

from fitv2.checkpoint import load_weights
from fitv2.config import ModelConfig, Runtime, model_config
from fitv2.flow import flow_loss
from fitv2.model.fit import build_model
from fitv2.parity import EXACT
from fitv2.sampling import Guidance, SolverConfig, sample_tokens
from fitv2.tokens import pad_sequences
from fitv2.training.loop import make_optimizer

BUDGETS = {"256": ("imagenet-256", 8), "1024": ("imagenet-1024", 2)}


# ----------------------------------------------------------------------------- the published code


class _Mlp(nn.Module):
    """Stand-in for timm's Mlp (fc1 -> act -> fc2), with timm's parameter names."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, bias=True, **_):
        super().__init__()
        hidden, out = hidden_features or in_features, out_features or in_features
        self.fc1, self.act, self.fc2 = (
            nn.Linear(in_features, hidden, bias=bias),
            act_layer(),
            nn.Linear(hidden, out, bias=bias),
        )

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _SwiGLU(nn.Module):
    """Stand-in for timm's SwiGLU: fc2(act(fc1_g x) * fc1_x x), with timm's parameter names."""

    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.SiLU, bias=True, **_):
        super().__init__()
        hidden, out = hidden_features or in_features, out_features or in_features
        self.fc1_g, self.fc1_x = nn.Linear(in_features, hidden, bias=bias), nn.Linear(in_features, hidden, bias=bias)
        self.act, self.fc2 = act_layer(), nn.Linear(hidden, out, bias=bias)

    def forward(self, x):
        return self.fc2(self.act(self.fc1_g(x)) * self.fc1_x(x))


def _stand_in(name: str, **attributes) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attributes, __fitv2_stand_in__=True)
    sys.modules[name] = module


def load_reference(path: str):
    """The published FiT class from a checkout at ``path``. timm (whose wheel pulls a CUDA torch) and
    triton (imported but unused by the model) get stand-ins when they are not installed."""
    root = Path(path).expanduser()
    if not (root / "fit" / "model" / "fit_model.py").is_file():
        sys.exit(f"error: {root} is not a checkout of the published code (no fit/model/fit_model.py)")
    try:
        importlib.import_module("timm.layers.mlp")
    except ImportError:
        _stand_in("timm")
        _stand_in("timm.layers")
        _stand_in("timm.layers.mlp", Mlp=_Mlp, SwiGLU=_SwiGLU)
    try:
        importlib.import_module("triton.language")
    except ImportError:
        _stand_in("triton", jit=lambda f=None, **_: f)
        _stand_in("triton.language", constexpr=int)
    sys.path.insert(0, str(root))
    try:
        return importlib.import_module("fit.model.fit_model").FiT
    except ImportError as err:
        sys.exit(f"error: cannot import the published model ({err}); pip install einops")
    finally:  # torch.compile looks for the real triton: the stand-in only serves the import above
        for name in ("triton.language", "triton"):
            if getattr(sys.modules.get(name), "__fitv2_stand_in__", False):
                del sys.modules[name]


def reference_kwargs(cfg: ModelConfig) -> dict:
    """The published constructor's arguments for a FiTv2 config (the inverse of fitv2.parity's mapping)."""
    return dict(
        context_size=cfg.rope_train_len**2,
        patch_size=cfg.patch_size,
        in_channels=cfg.in_channels,
        hidden_size=cfg.hidden_size,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        class_dropout_prob=cfg.class_dropout_prob,
        num_classes=cfg.num_classes,
        learn_sigma=cfg.learn_sigma,
        use_sit=True,  # tokens last, as fitv2
        use_swiglu=cfg.mlp != "gelu",
        use_swiglu_large=cfg.mlp == "swiglu-large",
        rel_pos_embed="rope",
        q_norm=cfg.qk_norm,
        k_norm=cfg.qk_norm,
        qk_norm_weight=cfg.qk_norm_weight,
        adaln_type="lora" if cfg.adaln == "lora" else "normal",
        adaln_lora_dim=cfg.adaln_lora_dim,
        rope_theta=cfg.rope_theta,
    )


def build_pair(ref_cls, preset: str, depth: int, seed: int):
    """(reference model, fitv2 model) with the same random weights."""
    cfg = model_config(preset, depth=depth)
    torch.manual_seed(seed)
    ref = ref_cls(**reference_kwargs(cfg))
    with torch.no_grad():  # the zero init would make every output 0
        for p in ref.parameters():
            p.normal_(0, 0.02)
    ours = build_model(cfg)
    load_weights(ours, ref.state_dict(), source="the reference model")
    return ref, ours, cfg


# ----------------------------------------------------------------------------- steps


def reference_inputs(inputs: dict) -> dict:
    layout = inputs["layout"]
    return dict(x1=inputs["x1"], x0=inputs["x0"], t=inputs["t"], y=inputs["y"], grid=layout.grid, mask=layout.mask)


def reference_loss(model, x1, x0, t, y, grid, mask):
    """The rectified-flow loss as the published transport computes it for the linear path: velocity
    target x1 − x0 at x_t = t·x1 + (1 − t)·x0, squared error averaged over the real tokens."""
    tt = t[:, None, None]
    xt, ut = tt * x1 + (1 - tt) * x0, x1 - x0
    out = model(xt, t, y, grid, mask)
    return (((out - ut) ** 2).mean(-1) * mask).sum() / mask.sum()


def trainer(model, loss_fn, inputs: dict, dtype: str, fitv2: bool):
    """One training step as each implementation runs it: fitv2 with the optimizer ``fitv2 train`` builds
    (fused AdamW), the reference with the plain torch AdamW its training script builds."""
    params = list(model.parameters())
    optimizer = make_optimizer(params, lr=1e-4) if fitv2 else torch.optim.AdamW(params, lr=1e-4)
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()  # state allocated: every timed step is a steady-state step
    model.train()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            loss = loss_fn(model, **inputs)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def check_same_function(ref, ours, shapes, cfg) -> tuple[float, float]:
    """max |reference − fitv2| of the outputs on one padded batch, fp32, eval mode: with the published
    order of operations (fitv2.parity.EXACT) and with fitv2's default runtime (unpadded, per image)."""
    inputs, _ = make_batch(shapes, False, 0, cfg, 0, torch.device("cpu"))
    ref.eval(), ours.eval()
    diffs = []
    with torch.no_grad():
        a = ref(inputs["x1"], inputs["t"], inputs["y"], inputs["layout"].grid, inputs["layout"].mask)
        for runtime in (EXACT, Runtime()):
            b = ours(inputs["x1"], inputs["t"], inputs["y"], inputs["layout"], runtime=runtime)
            diffs.append(float((a - b).abs().max()))
    return diffs[0], diffs[1]


def alternate(fns: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each function, one call of each per round, after a warm-up call."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def reference_euler_cfg(model, x, y, grid, mask, size, steps: int, scale: float, null: int):
    """Euler steps from t = 0 to 1 on the published forward_with_cfg (its 3-channel guidance)."""
    x = torch.cat([x, x])
    y = torch.cat([y, torch.full_like(y, null)])
    grid, mask, size = torch.cat([grid, grid]), torch.cat([mask, mask]), torch.cat([size, size])
    ts = torch.linspace(0, 1, steps + 1)
    for t0, t1 in zip(ts[:-1], ts[1:]):
        v = model.forward_with_cfg(x, t0.expand(len(x)), y, grid, mask, size, scale)[..., : x.shape[-1]]
        x = x + (t1 - t0) * v
    return x[: len(x) // 2]


# ----------------------------------------------------------------------------- report


def stats(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}× ({min(values):.2f}–{max(values):.2f})"


def profile(name: str, fn, rows: int = 12) -> str:
    with torch.profiler.profile() as prof:
        fn()
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows)
    return f"#### {name}\n\n```\n{table}\n```\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reference", required=True, help="a checkout of the published code (github.com/whlzy/FiT)")
    ap.add_argument("--preset", default="FiTv2-B/2")
    ap.add_argument("--depth", type=int, default=2, help="blocks (the preset's width; per-block cost is the point)")
    ap.add_argument("--budgets", default="256,1024")
    ap.add_argument("--dtypes", default="fp32,bf16")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sample-images", type=int, default=4, help="images per sampling batch (256 tokens each)")
    ap.add_argument("--sample-steps", type=int, default=50)
    ap.add_argument("--no-sampling", action="store_true")
    ap.add_argument("--profile", action="store_true", help="top ops by self time of one step of each")
    ap.add_argument("--out", help="write the report (markdown) here too")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ref_cls = load_reference(args.reference)
    ref, ours, cfg = build_pair(ref_cls, args.preset, args.depth, seed=0)
    lines = [
        f"# fitv2 against the published implementation: {args.preset} width, {args.depth} blocks",
        "",
        f"`{' '.join(['python', 'benchmarks/vs_reference.py', *sys.argv[1:]])}`",
        "",
        f"{platform.processor() or platform.machine()}, {args.threads} thread(s), torch {torch.__version__}, "
        f"load {os.getloadavg()[0]:.2f} at the start; ratios are reference time / fitv2 time "
        f"(> 1: fitv2 is faster), median (min–max) over {args.rounds} alternated rounds.",
        "",
    ]
    profiles = []
    shapes256 = sample_shapes("imagenet-256", 8, 0)
    exact, default = check_same_function(ref, ours, shapes256, cfg)
    lines += [
        "Same function, same weights: max |reference − fitv2| of the outputs on a padded 256-budget batch "
        f"(fp32) = {exact:.3g} in the published order of operations (`fitv2.parity.EXACT`), {default:.3g} "
        "with fitv2's default runtime (padding removed, attention per image).",
        "",
    ]
    print(lines[-2], flush=True)
    lines += [
        "| budget | dtype | padding | reference s/step | fitv2 padded / reference | fitv2 flat / reference |",
        "|---|---|---|---|---|---|",
    ]
    for budget in filter(None, args.budgets.split(",")):
        dist, batch = BUDGETS[budget]
        shapes = sample_shapes(dist, batch, 0)
        padded, _ = make_batch(shapes, False, 0, cfg, 0, torch.device("cpu"))
        flat, _ = make_batch(shapes, True, 0, cfg, 0, torch.device("cpu"))
        padding = 1 - padded["layout"].valid_tokens() / padded["layout"].mask.numel()
        for dtype in args.dtypes.split(","):
            fns = {
                "reference": trainer(ref, reference_loss, reference_inputs(padded), dtype, fitv2=False),
                "padded": trainer(ours, lambda m, **kw: flow_loss(m, **kw).loss, padded, dtype, fitv2=True),
                "flat": trainer(ours, lambda m, **kw: flow_loss(m, **kw).loss, flat, dtype, fitv2=True),
            }
            times = alternate(fns, args.rounds)
            r = times["reference"]
            padded_ratio, flat_ratio = ([a / b for a, b in zip(r, times[mode])] for mode in ("padded", "flat"))
            row = (
                f"| {budget} tokens, B = {batch} | {dtype} | {padding:.0%} | {statistics.median(r):.2f} | "
                f"{stats(padded_ratio)} | {stats(flat_ratio)} |"
            )
            lines.append(row)
            print(row, flush=True)
            if args.profile:
                for name, fn in fns.items():
                    profiles.append(profile(f"{name}, {budget} tokens, {dtype}", fn))
    if not args.no_sampling:
        lines += [
            "",
            f"Sampling: {args.sample_steps} Euler steps with CFG 1.5 (3-channel guidance, as the "
            f"reference), {args.sample_images} images of 16×16 tokens per batch; `--compile`: fitv2's blocks "
            "under torch.compile (`fitv2 sample --compile`), compiled before the timed rounds.",
            "",
            "| dtype | fitv2 | reference images/s | fitv2 images/s | fitv2 / reference |",
            "|---|---|---|---|---|",
        ]
        n = args.sample_images
        items = [(torch.randn(256, cfg.token_dim), 16, 16) for _ in range(n)]
        tb = pad_sequences(items)
        y = torch.arange(n) % cfg.num_classes
        guidance = Guidance(scale=1.5, channels="reference")
        solver = SolverConfig("euler", steps=args.sample_steps)
        ref.eval(), ours.eval()
        compiled = copy.deepcopy(ours)
        for block in compiled.blocks:
            block.compile()
        for dtype in args.dtypes.split(","):
            auto = torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16")

            def run_ref(auto=auto) -> None:
                with torch.no_grad(), auto:
                    reference_euler_cfg(
                        ref,
                        tb.x,
                        y,
                        tb.layout.grid,
                        tb.layout.mask,
                        tb.layout.size,
                        args.sample_steps,
                        1.5,
                        cfg.num_classes,
                    )

            for name, model in (("eager", ours), ("`--compile`", compiled)):

                def run_ours(auto=auto, model=model) -> None:
                    with auto:
                        sample_tokens(model, 16, 16, y, solver=solver, guidance=guidance, noise=tb.x)

                times = alternate({"reference": run_ref, "fitv2": run_ours}, max(1, args.rounds // 2))
                ratios = [a / b for a, b in zip(times["reference"], times["fitv2"])]
                row = (
                    f"| {dtype} | {name} | {n / statistics.median(times['reference']):.3f} | "
                    f"{n / statistics.median(times['fitv2']):.3f} | {stats(ratios)} |"
                )
                lines.append(row)
                print(row, flush=True)
                if args.profile and name == "eager":
                    profiles += [
                        profile(f"reference sampling, {dtype}", run_ref),
                        profile(f"fitv2 sampling, {dtype}", run_ours),
                    ]
    if profiles:
        lines += ["", "### Profiles (one call each, top ops by self CPU time)", "", *profiles]
    report = "\n".join(lines).rstrip("\n") + "\n"
    if args.out:
        Path(args.out).write_text(report)
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
