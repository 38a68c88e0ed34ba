"""Autoencoders between images and the space the model works in.

``pixel`` (the offline default) is the identity: the model sees RGB in [−1, 1], 3 channels,
no down-sampling. ``sd-vae`` loads a diffusers ``AutoencoderKL`` (e.g. a local copy of
stabilityai/sd-vae-ft-ema) from a directory; latents are scaled by 0.18215 as FiT's are.
Images are float tensors (B, 3, H, W) in [−1, 1].
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor


class Autoencoder(Protocol):
    name: str
    channels: int
    downsample: int

    def encode(self, images: Tensor) -> Tensor: ...

    def decode(self, latents: Tensor) -> Tensor: ...

    def spec(self) -> dict: ...


class PixelSpace:
    """Identity autoencoder: the model works on pixels in [−1, 1]."""

    name = "pixel"
    channels = 3
    downsample = 1

    def encode(self, images: Tensor) -> Tensor:
        return images

    def decode(self, latents: Tensor) -> Tensor:
        return latents.clamp(-1, 1)

    def spec(self) -> dict:
        return {"name": self.name}


class DiffusersVAE:
    """diffusers AutoencoderKL from a local directory (no download)."""

    name = "sd-vae"
    downsample = 8

    def __init__(self, path: str | Path, scaling: float = 0.18215, sample: bool = True,
                 device: str | torch.device = "cpu"):
        try:
            from diffusers import AutoencoderKL
        except ImportError as err:
            raise ValueError("the sd-vae autoencoder needs diffusers: pip install 'fitv2[vae]'") from err
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"VAE directory not found: {path} (a diffusers AutoencoderKL folder)")
        self.path = path
        self.vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True).to(device).eval()
        self.channels = self.vae.config.latent_channels
        self.scaling = scaling
        self.sample = sample  # encode a posterior sample (as DiT features) rather than the mean
        self.device = device

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        dist = self.vae.encode(images.to(self.device)).latent_dist
        return (dist.sample() if self.sample else dist.mean) * self.scaling

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        return self.vae.decode(latents.to(self.device) / self.scaling).sample.clamp(-1, 1)

    def spec(self) -> dict:
        return {"name": self.name, "path": str(self.path), "scaling": self.scaling}


def load_autoencoder(spec: dict | str | None, device: str | torch.device = "cpu") -> Autoencoder:
    """An autoencoder from its spec ({'name': 'pixel'} or {'name': 'sd-vae', 'path': ...}) or a path."""
    if spec is None or spec == "pixel":
        return PixelSpace()
    if isinstance(spec, str):
        return DiffusersVAE(spec, device=device)
    if spec.get("name") == "pixel":
        return PixelSpace()
    if spec.get("name") == "sd-vae":
        return DiffusersVAE(spec["path"], scaling=spec.get("scaling", 0.18215), device=device)
    raise ValueError(f"unknown autoencoder {spec!r}")


def to_uint8(images: Tensor) -> Tensor:
    """[−1, 1] float (B, 3, H, W) -> uint8 (B, H, W, 3), the DiT/ADM convention."""
    return torch.clamp(127.5 * images + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
