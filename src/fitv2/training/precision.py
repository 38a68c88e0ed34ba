"""Which precision a run trains in: ``--precision auto`` measures a training step both ways on this machine.

bf16 autocast is 2-7× faster than fp32 where the hardware has bf16 matrix units (GPUs since Ampere,
CPUs with AMX or AVX-512-BF16) and many times slower where bf16 is emulated, so the choice is measured,
not assumed: a forward and backward pass of the run's own model on a batch of the dataset's largest
images, fp32 against bf16 in alternating rounds after a warm-up, the median ratio.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from ..config import Runtime
from ..flow import flow_loss
from ..model.fit import FiT
from ..text import TextFeatures
from ..tokens import image_layout


def bf16_matmul_speedup(size: int = 768, repeats: int = 3) -> float:
    """fp32 time / bf16 time of a square matmul on this CPU, in this thread count (about 0.1 s): > 1 where
    the CPU has bf16 matrix units (AMX, AVX-512-BF16), far below 1 where bf16 is emulated."""
    a = torch.randn(size, size)

    def best(x: torch.Tensor) -> float:
        x @ x  # warm-up: the first call picks the kernel
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            x @ x
            times.append(time.perf_counter() - start)
        return min(times)

    return best(a) / best(a.bfloat16())


def bf16_step_speedup(
    model: FiT, batch_size: int, tokens: int, device: torch.device, rounds: int = 7, seconds: float = 2.0
) -> float:
    """fp32 time / bf16 time of a training step's forward and backward pass of ``model`` on ``batch_size``
    random images of about ``tokens`` tokens (square): the median over alternating rounds (one fp32 step,
    then one bf16 step, after a warm-up of each), at least three and up to ``rounds``, within about
    ``seconds``, so that a burst of load on a shared machine tips no single comparison. The gradients it
    leaves are cleared; no parameter changes."""
    cfg = model.config
    side = max(1, math.isqrt(tokens))
    layout = image_layout(batch_size, side, side, cfg.text_len).to(device)
    x1 = torch.randn(batch_size, layout.length, cfg.token_dim, device=device)
    condition: torch.Tensor | TextFeatures
    if cfg.text_conditional:
        mask = torch.ones(batch_size, cfg.text_len, dtype=torch.bool, device=device)
        condition = TextFeatures(torch.randn(batch_size, cfg.text_len, cfg.text_dim, device=device), mask)
    else:
        condition = torch.zeros(batch_size, dtype=torch.long, device=device)
    t = torch.full((batch_size,), 0.5, device=device)
    keep = torch.zeros(batch_size, dtype=torch.bool, device=device)

    def step(precision: str) -> float:
        start = time.perf_counter()
        with Runtime(precision=precision).autocast(device):
            loss = flow_loss(model, x1, condition, layout, t=t, x0=torch.zeros_like(x1), label_drop=keep).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    step("fp32"), step("bf16")  # warm-up: the first call of each picks its kernels
    ratios: list[float] = []
    began = time.perf_counter()
    while len(ratios) < 3 or (len(ratios) < rounds and time.perf_counter() - began < seconds):
        ratios.append(step("fp32") / step("bf16"))
    return statistics.median(ratios)


def choose_precision(requested: str, speedup: Callable[[], float]) -> tuple[str, float | None]:
    """``requested`` ('auto', 'fp32' or 'bf16') as the precision to train in, and the measured bf16
    speed-up when 'auto' measured it: bf16 where a step is faster in bf16, else fp32."""
    if requested != "auto":
        return requested, None
    ratio = speedup()
    return ("bf16" if ratio > 1.0 else "fp32"), ratio


__all__ = ["bf16_matmul_speedup", "bf16_step_speedup", "choose_precision"]
