"""Rectified flow: the linear path, time sampling and the masked, per-image loss.

t = 0 is noise and t = 1 is data: x_t = t·x1 + (1 − t)·x0, target velocity u = x1 − x0.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .text import TextFeatures
from .tokens import TokenLayout

TIME_SAMPLINGS = ("uniform", "logit-normal")


@dataclass(frozen=True)
class TimeSampler:
    """t ~ U(0, 1) or logit-normal: t = sigmoid(m + s·u), u ~ N(0, 1) (FiTv2: m = 0, s = 1)."""

    kind: str = "logit-normal"
    mean: float = 0.0
    std: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TIME_SAMPLINGS:
            raise ValueError(f"unknown time sampling {self.kind!r}; choose one of {TIME_SAMPLINGS}")

    def __call__(
        self, shape: tuple[int, ...], generator: torch.Generator | None = None, device: torch.device | str = "cpu"
    ) -> Tensor:
        if self.kind == "uniform":
            return torch.rand(shape, generator=generator).to(device)
        u = torch.randn(shape, generator=generator).to(device)
        return self.from_normal(u)

    def from_normal(self, u: Tensor) -> Tensor:
        """Logit-normal time from a standard-normal draw (the reference's form)."""
        return 1 / (1 + torch.exp(-(self.mean + self.std * u)))


def interpolate(x0: Tensor, x1: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """x_t and the target velocity; t broadcast from (B,), (B, 1, 1) or per token (B, N, 1)."""
    if t.dim() == 1:
        t = t.view(-1, *([1] * (x1.dim() - 1)))
    return t * x1 + (1 - t) * x0, x1 - x0


def per_image_mse(pred: Tensor, target: Tensor, layout: TokenLayout) -> Tensor:
    """Mean squared error over each image's own tokens and channels.

    Padding never counts, and every image weighs the same whatever its token count. Unpacked
    rows give (B,) — the reference's mean(((pred − u)·mask)²)·N/n_valid; packed rows give
    (B, n) with the images of each row in order (zeros for empty slots).
    """
    mask, segment = layout.mask, layout.segment
    err = ((pred - target) * mask[..., None]).float().pow(2)  # (B, N, C)
    if segment is None:
        return err.mean(dim=(1, 2)) * (mask.shape[1] / mask.float().sum(dim=1))
    n_slots = int(segment.max())
    per_token = err.sum(-1)  # (B, N)
    sums = torch.zeros(segment.shape[0], n_slots + 1, device=err.device).scatter_add_(1, segment, per_token)
    counts = torch.zeros_like(sums).scatter_add_(1, segment, mask.float())
    return (sums / (counts * err.shape[-1]).clamp(min=1))[:, 1:]


@dataclass
class FlowLoss:
    """Loss terms of one training step."""

    loss: Tensor  # scalar: mean over images
    per_image: Tensor  # (B,) or (B, n)
    t: Tensor


def flow_loss(
    model,
    x1: Tensor,
    y: Tensor | TextFeatures,
    layout: TokenLayout,
    *,
    time_sampler: TimeSampler = TimeSampler(),
    t: Tensor | None = None,
    x0: Tensor | None = None,
    generator: torch.Generator | None = None,
    **model_kwargs,
) -> FlowLoss:
    """Rectified-flow loss of ``model`` on clean tokens x1 (B, N, C) laid out as ``layout``.

    y: class labels, or caption features for a text-to-image model (loss on image tokens only:
    ``layout.mask`` holds no text slot).
    t: per image, (B,) or (B, n) for packed rows; drawn from ``time_sampler`` if not given.
    x0: the noise; drawn if not given (padding gets noise too, as in the reference).
    """
    if x0 is None:
        x0 = torch.randn(x1.shape, generator=generator).to(x1.device, x1.dtype)
    if t is None:
        shape = (x1.shape[0],) if not layout.packed else (x1.shape[0], layout.images_per_row)
        t = time_sampler(shape, generator=generator, device=x1.device)
    t_tokens = t[:, None, None] if t.dim() == 1 else layout.spread(t)[..., None]  # broadcasts over (B, N, C)
    xt, ut = interpolate(x0, x1, t_tokens)
    pred = model(xt, t, y, layout, **model_kwargs)
    per_image = per_image_mse(pred, ut, layout)
    loss = per_image.mean() if not layout.packed else per_image[layout.real_images()].mean()
    return FlowLoss(loss, per_image, t)
