"""One seeding scheme for every random draw that must not depend on how work is split, and the draws.

A draw is keyed by a tuple of integers (the run's seed, then e.g. epoch and batch, or step and
example, or image size and sample index) and its generator is seeded from that key alone, so
the same numbers come out whatever the batch size, the number of ranks, padding or packing,
and a resumed run draws exactly what the uninterrupted one would have.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

# Multipliers of the successive key parts: primes above 10⁶, so keys whose later parts are
# below 10⁶ (epochs, batch indices, steps within a run's first million, image sides) never collide.
_PRIMES = (1_000_003, 1_000_033, 1_000_037, 1_000_039)


def derive_seed(*key: int) -> int:
    """((k0·p0 + k1)·p1 + k2)·p2 + ... modulo 2⁶³."""
    if not key:
        raise ValueError("derive_seed needs at least one integer")
    if len(key) > len(_PRIMES) + 1:
        raise ValueError(f"derive_seed takes at most {len(_PRIMES) + 1} integers, got {len(key)}")
    seed = int(key[0])
    for prime, part in zip(_PRIMES, key[1:]):
        seed = seed * prime + int(part)
    return seed % 2**63


def generator(*key: int) -> torch.Generator:
    """A CPU generator seeded from ``key`` (see :func:`derive_seed`)."""
    return torch.Generator().manual_seed(derive_seed(*key))


# One generator for a batch, or one per sample (along dim 0); None: the global generator.
Generators = torch.Generator | Sequence[torch.Generator] | None


def gaussian(shape: Sequence[int], generator: Generators = None) -> Tensor:
    """Standard normal float32 values on the CPU. With a sequence of generators, row i (along dim 0)
    is drawn from generator i alone, so it is the same whatever the other rows are."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(tuple(shape), generator=generator)
    if len(generator) != shape[0]:
        raise ValueError(f"{len(generator)} generators for {shape[0]} samples")
    return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in generator])
