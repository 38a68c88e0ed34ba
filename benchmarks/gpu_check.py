"""The GPU checks of benchmarks/gpu_check.sh: attention backends as the model uses them, and a DDP step on nccl.

    python benchmarks/gpu_check.py attention   # every available backend against SDPA, forward and backward
    python benchmarks/gpu_check.py ddp         # one DDP step on nccl equals the same step without DDP

Each prints one line per check and exits 1 if any check fails.
"""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as tdist

from fitv2.config import Runtime, model_config
from fitv2.flow import flow_loss
from fitv2.model.attention import attention_unavailable
from fitv2.model.fit import build_model
from fitv2.names import ATTENTION_NAMES
from fitv2.tokens import first_fit_rows, pack_sequences

# FITV2_CHECK_DEVICE=cpu runs the checks on the CPU, to try the script where no GPU is (autocast and kernels differ).
DEVICE = torch.device(os.environ.get("FITV2_CHECK_DEVICE", "cuda"))


def packed_batch(cfg, seed: int = 0) -> dict:
    """Eight images of ImageNet-like token counts, packed first-fit into rows of 256 tokens."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(16, 16), (12, 20), (7, 7), (13, 18), (16, 12), (9, 14), (5, 20), (15, 15)]
    items = [(torch.randn(h * w, cfg.token_dim, generator=g), h, w) for h, w in shapes]
    rows = first_fit_rows([h * w for h, w in shapes], 256)
    tb = pack_sequences(items, rows, length=256)
    y = torch.zeros(len(rows), tb.layout.images_per_row, dtype=torch.long)
    t = torch.rand(y.shape, generator=g)
    return dict(
        x1=tb.x.to(DEVICE),
        y=y.to(DEVICE),
        layout=tb.layout.to(DEVICE),
        t=t.to(DEVICE),
        x0=torch.randn(tb.x.shape, generator=g).to(DEVICE),
    )


def loss_and_grads(model, batch, dtype, runtime: Runtime) -> tuple[float, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        loss = flow_loss(model, **batch, runtime=runtime).loss
    loss.backward()
    return float(loss), [p.grad.float().clone() for p in model.parameters() if p.grad is not None]


def check_attention() -> bool:
    """Each backend (FlexAttention compiled as the model compiles it) against SDPA over whole rows."""
    ok = True
    cfg = model_config("FiTv2-B/2", depth=2, class_dropout_prob=0.0)
    model = build_model(cfg, DEVICE).train()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    batch = packed_batch(cfg)
    for dtype, loss_tol, grad_tol in (("fp32", 1e-5, 1e-4), ("bf16", 5e-3, 5e-2)):
        ref_loss, ref_grads = loss_and_grads(model, batch, dtype, Runtime(attention="sdpa"))
        for name in ATTENTION_NAMES:
            why = attention_unavailable(name, DEVICE.type)
            if why:
                print(f"SKIP {name:13s} {dtype}: {why}")
                continue
            loss, grads = loss_and_grads(model, batch, dtype, Runtime(attention=name))
            worst = max(float((a - b).abs().max() / (b.abs().max() + 1e-12)) for a, b in zip(grads, ref_grads))
            good = abs(loss - ref_loss) <= loss_tol * abs(ref_loss) and worst <= grad_tol
            ok &= good
            print(
                f"{'PASS' if good else 'FAIL'} {name:13s} {dtype}: loss {loss:.6f} vs {ref_loss:.6f}, "
                f"worst relative gradient difference {worst:.2e}"
            )
    return ok


def check_ddp() -> bool:
    """One step of DDP on nccl (a one-process group on this GPU) against the same step without it."""
    from torch.nn.parallel import DistributedDataParallel

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    backend = "nccl" if DEVICE.type == "cuda" else "gloo"
    tdist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        cfg = model_config("FiTv2-B/2", depth=2, class_dropout_prob=0.0)
        batch = packed_batch(cfg)
        results = []
        for wrap in (False, True):
            torch.manual_seed(0)
            model = build_model(cfg, DEVICE).train()
            with torch.no_grad():
                for p in model.parameters():
                    p.normal_(0, 0.02)
            ids = [DEVICE.index or 0] if DEVICE.type == "cuda" else None
            step_model = DistributedDataParallel(model, device_ids=ids) if wrap else model
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
            loss = flow_loss(step_model, **batch).loss
            loss.backward()
            optimizer.step()
            results.append([p.detach().clone() for p in model.parameters()])
        worst = max(float((a - b).abs().max()) for a, b in zip(*results))
        good = worst <= 1e-5
        print(f"{'PASS' if good else 'FAIL'} DDP on {backend}: parameters after one step differ by {worst:.2e}")
        return good
    finally:
        tdist.destroy_process_group()


if __name__ == "__main__":
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        sys.exit("error: no CUDA device")
    os.environ.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    checks = {"attention": check_attention, "ddp": check_ddp}
    names = sys.argv[1:] or list(checks)
    sys.exit(0 if all([checks[n]() for n in names]) else 1)
