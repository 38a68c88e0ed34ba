"""Sampling: from noise to images at any size.

Integration runs from t = 0 (Gaussian noise) to t = 1 (data) in float32.

  solvers.py   ``euler`` and ``heun`` (fixed steps on a uniform grid), any torchdiffeq method such as
               ``dopri5`` (adaptive; the paper's choice), and ``sde`` (Euler–Maruyama with the
               reference's diffusion forms and last step)
  multistep.py ``dpm++2m`` (DPM-Solver++(2M)) and ``unipc`` (UniPC, bh2): one model call per step, as
               diffusers' multistep schedulers run them with flow sigmas
  schedule.py  time grids and SD3's resolution-aware time shift (``time_grid``, ``shift_times``,
               ``auto_shift``)
  ddpm.py      FiT v1 models, trained as discrete DDPM models: ancestral steps on a respaced schedule
  guidance.py  classifier-free guidance (all channels or the reference's three), schedules, intervals
  field.py     the velocity field of a model for fixed conditions, layout, guidance and RoPE
  sample.py    ``sample_tokens``: one size; mixed.py ``sample_mixed``: many sizes in one batch
  defaults.py  the settings a checkpoint is sampled with when the caller names none
  sampler.py   ``Sampler``: a checkpoint with its autoencoder, generating images (memory.py checks the
               memory first); writers.py PNGs, ADM ``.npz`` files and grids; npz.py evaluation files
               over torchrun ranks

Random draws (the initial noise, SDE and DDPM step noise) come from one generator for the batch, or
from one generator per sample (a sequence), so that a sample's draws do not depend on which other
samples share its batch.

Modules are imported on first use (the torch-free ``defaults`` serve ``fitv2 --help``).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .ddpm import Diffusion, ddpm_sample
    from .defaults import SamplingDefaults, sampling_defaults
    from .field import VelocityField
    from .guidance import Guidance, apply_guidance
    from .memory import MemoryEstimate, available_memory, check_memory, estimate_memory
    from .mixed import MixedBatch, sample_mixed
    from .sample import sample_tokens
    from .sampler import Sampler, SizeError, check_size
    from .solvers import SolverConfig, integrate
    from .writers import write_samples

_WHERE = {
    "Diffusion": "ddpm",
    "ddpm_sample": "ddpm",
    "SamplingDefaults": "defaults",
    "sampling_defaults": "defaults",
    "VelocityField": "field",
    "Guidance": "guidance",
    "apply_guidance": "guidance",
    "MemoryEstimate": "memory",
    "available_memory": "memory",
    "check_memory": "memory",
    "estimate_memory": "memory",
    "MixedBatch": "mixed",
    "sample_mixed": "mixed",
    "sample_tokens": "sample",
    "Sampler": "sampler",
    "SizeError": "sampler",
    "check_size": "sampler",
    "SolverConfig": "solvers",
    "integrate": "solvers",
    "write_samples": "writers",
}
__all__ = [
    "Diffusion",
    "Guidance",
    "MemoryEstimate",
    "MixedBatch",
    "Sampler",
    "SamplingDefaults",
    "SizeError",
    "SolverConfig",
    "VelocityField",
    "apply_guidance",
    "available_memory",
    "check_memory",
    "check_size",
    "ddpm_sample",
    "estimate_memory",
    "integrate",
    "sample_mixed",
    "sample_tokens",
    "sampling_defaults",
    "write_samples",
]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
