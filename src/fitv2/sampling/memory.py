"""Peak memory of sampling, estimated before any work and compared with what the device has free.

The estimate (:func:`estimate_memory`) counts the model's activations for a batch's tokens (doubled
by guidance), the solver's copies of the state, decoding one image and the finished images; the free
memory (:func:`available_memory`) is MemAvailable and any cgroup limit on the CPU, the free device
memory on CUDA. :func:`check_memory` refuses a size that would not fit, with the estimate and advice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..data.autoencoder import Autoencoder
from ..errors import UserError
from ..model.fit import FiT
from ..model.flops import inference_activation_bytes
from .guidance import Guidance
from .solvers import SolverConfig

MiB = 2**20


# Values (B, N, token features) a solver keeps besides the model's own: state, velocities, stages.
_SOLVER_COPIES = {"euler": 6, "heun": 8, "sde": 10, "ddpm": 8}


_ADAPTIVE_COPIES = 16


# Allocator slack and kernel workspaces, seen as a constant in measured peaks.
_SLACK = 32 * 2**20


def _bytes(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / MiB:.0f} MiB"


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak memory of sampling one batch at one size, beyond the loaded weights (bytes)."""

    height: int
    width: int
    batch_size: int
    model: int  # activations of one model call (on a doubled batch with guidance)
    solver: int  # solver state and guidance combination
    decode: int  # decoding one image
    images: int  # the uint8 images of the size, kept and then concatenated
    rows: int  # rows of a model call: batch_size, doubled with guidance

    @property
    def total(self) -> int:
        # The model's activations are freed before decoding starts.
        return max(self.model + self.solver, self.decode) + self.images + _SLACK

    @property
    def per_image(self) -> int:
        """What each image of the batch adds to the sampling peak."""
        return -(-(self.model + self.solver) // self.batch_size)

    def describe(self) -> str:
        rows = f"a batch of {self.batch_size}" + (", doubled by guidance" if self.rows > self.batch_size else "")
        return (
            f"{_bytes(self.total)} (model activations {_bytes(self.model)} for {rows}, solver "
            f"{_bytes(self.solver)}, decoding one image {_bytes(self.decode)}, images {_bytes(self.images)})"
        )


def decode_bytes(autoencoder: Autoencoder, height: int, width: int) -> int:
    """Peak memory of decoding one image of height × width pixels."""
    pixels = height * width
    vae = getattr(autoencoder, "vae", None)
    if vae is None:  # pixel space: a clamp and the uint8 conversion
        return 48 * pixels
    # A diffusers decoder peaks in its full-resolution block: the up-sampled input of the second
    # level's channels, its norm and activation (measured: ~4 KB per pixel for SD-VAE, 256 channels).
    channels = list(vae.config.block_out_channels)
    return 16 * (channels[1] if len(channels) > 1 else channels[0]) * pixels


def estimate_memory(
    model: FiT,
    autoencoder: Autoencoder,
    height: int,
    width: int,
    batch_size: int,
    solver: SolverConfig = SolverConfig(),
    guidance: Guidance = Guidance(),
    num_images: int | None = None,
    masked: bool = False,
) -> MemoryEstimate:
    """The peak memory of :meth:`Sampler.generate` for one batch at height × width pixels, from the
    model's activations for the batch's tokens (doubled by guidance; rows of one size are never
    padded, so attention needs no N × N scores; ``masked``: a mixed-size batch, whose padded or packed
    rows of at most this size's tokens may), the solver state, decoding one image and the
    ``num_images`` (default ``batch_size``) uint8 results."""
    cfg = model.config
    unit = cfg.patch_size * autoencoder.downsample
    tokens = (height // unit) * (width // unit) + cfg.text_len  # a text model's caption slots too
    rows = batch_size * (2 if guidance.doubles_batch else 1)
    value_bytes = next(model.parameters()).element_size()
    activations = inference_activation_bytes(cfg, rows, tokens, masked=masked, value_bytes=value_bytes)
    copies = _SOLVER_COPIES.get(solver.solver, _ADAPTIVE_COPIES)
    solver_bytes = copies * rows * tokens * cfg.token_dim * 4
    images = 2 * (num_images or batch_size) * height * width * 3
    return MemoryEstimate(
        height, width, batch_size, activations, solver_bytes, decode_bytes(autoencoder, height, width), images, rows
    )


def _cgroup_free() -> int | None:
    """Room left under a cgroup v2 memory limit (page cache that can be dropped counts as free)."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        used = int((root / "memory.current").read_text())
        stat = dict(line.split() for line in (root / "memory.stat").read_text().splitlines())
        return int(limit) - used + int(stat.get("inactive_file", 0))
    except (OSError, ValueError):
        return None


def available_memory(device: torch.device | str) -> int | None:
    """Bytes free for new tensors on ``device``, or None where that is unknown. CPU: MemAvailable
    (and a cgroup limit, if lower); CUDA: free device memory plus what torch holds cached."""
    device = torch.device(device)
    if device.type == "cuda":
        cuda_free, _ = torch.cuda.mem_get_info(device)
        return cuda_free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    free: int | None = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                free = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        free = None
    limited = _cgroup_free()
    if limited is not None:
        free = limited if free is None else min(free, limited)
    return free


class SampleMemoryError(UserError):
    """Sampling a size would need more memory than the device has free."""


def check_memory(
    estimate: MemoryEstimate, device: torch.device | str, force: bool = False, free: int | None = None
) -> None:
    """Raise a UserError when ``estimate`` exceeds the free memory of ``device`` (``free``: that
    amount, if already known); nothing when ``force``, or when the free memory is unknown."""
    if force:
        return
    free = available_memory(device) if free is None else free
    if free is None or estimate.total <= free:
        return
    room = free - estimate.images - _SLACK
    if estimate.decode > room:
        advice = f"decoding one image alone needs {_bytes(estimate.decode)}: choose a smaller size"
    elif room >= estimate.per_image:
        advice = f"a batch size of at most {room // estimate.per_image} fits"
    else:
        advice = "not even a batch of one fits: choose a smaller size"
    raise SampleMemoryError(
        f"sampling {estimate.height}x{estimate.width} needs about {estimate.describe()}, but "
        f"only {_bytes(free)} is free on {torch.device(device)}; {advice}, or force it (--force)"
    )
