"""Autoencoders between images and the space the model works in.

``pixel`` (the offline default) is the identity: the model sees RGB in [−1, 1], 3 channels,
no down-sampling. ``sd-vae`` loads a diffusers ``AutoencoderKL`` (e.g. a local copy of
stabilityai/sd-vae-ft-ema) from a directory. Its latents follow the diffusers convention,
``(z − shift) · scale``, with the scaling and shift factors and the down-sampling factor read
from the VAE's own config (SD: 0.18215, no shift, ×8; SDXL: 0.13025; FLUX/SD3 also shift);
each can be overridden. A dataset records them in its autoencoder spec, and a model trained on
it keeps them: they define the latent space it learned.
Images are float tensors (B, 3, H, W) in [−1, 1].
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Protocol

import torch
from torch import Tensor

from ..errors import ConfigError, MissingFileError, UnknownNameError, UserError


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


# The latent space of the released FiT / FiTv2 ImageNet checkpoints and latents: SD-VAE ft-EMA
# (stabilityai/sd-vae-ft-ema), 4 channels, ×8, latents scaled by 0.18215 (SPEC §4.7, §5.8).
SD_VAE_FT_EMA: dict = {
    "name": "sd-vae",
    "model": "stabilityai/sd-vae-ft-ema",  # what the released latents were encoded with
    "scaling_factor": 0.18215,
    "shift_factor": 0.0,
    "downsample": 8,
}

NO_DECODER = (
    "this model's {channels}-channel latents need their autoencoder to become images, and none is at hand: "
    "pass autoencoder=DIR to FiTv2Pipeline.from_pretrained (fitv2 sample --autoencoder DIR), a local "
    "diffusers AutoencoderKL folder such as sd-vae-ft-ema; latents (output_type='latent') need none"
)


class LatentSpace:
    """A latent space known by its channels, down-sampling and scaling, with no decoder at hand (released
    weights without a VAE folder, a dataset of released latents): sampling to latents works; decoding is
    an error that says how to name the autoencoder."""

    name = "latent"

    def __init__(self, channels: int, spec: dict):
        self.channels = channels
        self.downsample = int(spec.get("downsample") or SD_VAE_FT_EMA["downsample"])
        self._spec = dict(spec)

    def encode(self, images: Tensor) -> Tensor:
        raise UserError(NO_DECODER.format(channels=self.channels))

    def decode(self, latents: Tensor) -> Tensor:
        raise UserError(NO_DECODER.format(channels=self.channels))

    def spec(self) -> dict:
        return dict(self._spec)


def check_vae_folder(path: Path) -> dict:
    """The config of a diffusers AutoencoderKL folder; looked at before diffusers is imported so
    that a wrong path is reported as such, whether or not diffusers is installed."""
    if not path.exists():
        raise MissingFileError(f"VAE folder not found: {path} (a diffusers AutoencoderKL folder)")
    if not path.is_dir():
        raise MissingFileError(
            f"VAE folder {path} is a file; pass the diffusers AutoencoderKL folder that holds "
            "config.json and the weights"
        )
    config_file = path / "config.json"
    if not config_file.is_file():
        hint = f"; did you mean {path / 'vae'}?" if (path / "vae" / "config.json").is_file() else ""
        raise UserError(f"{path} is not a diffusers VAE folder (no config.json){hint}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{config_file} is not a readable JSON config: {err}") from None
    if not isinstance(config, dict):
        raise UserError(f"{config_file} is not a diffusers config (not a JSON object)")
    kind = config.get("_class_name")
    if kind is not None and kind != "AutoencoderKL":
        raise UserError(f"{path} holds a diffusers {kind}, not an AutoencoderKL")
    return config


def _positive(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ConfigError(f"the VAE {what} must be a positive number; got {value!r}")
    return float(value)


def _finite(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"the VAE {what} must be a number; got {value!r}")
    return float(value)


def _factor(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"the VAE {what} must be a positive integer; got {value!r}")
    return value


class DiffusersVAE:
    """diffusers AutoencoderKL from a local directory (no download).

    scaling_factor, shift_factor, downsample: overrides of what the VAE's config says. Every
    encode and decode checks the latent grid against ``downsample``, so a wrong factor stops
    the run instead of mis-sizing every token sequence.
    """

    name = "sd-vae"

    def __init__(
        self,
        path: str | Path,
        *,
        scaling_factor: float | None = None,
        shift_factor: float | None = None,
        downsample: int | None = None,
        sample: bool = True,
        device: str | torch.device = "cpu",
    ):
        path = Path(path)
        check_vae_folder(path)
        try:
            from diffusers import AutoencoderKL
            from diffusers.utils import logging as diffusers_logging
        except ImportError as err:
            raise UserError("the sd-vae autoencoder needs diffusers: pip install 'fitv2[vae]'") from err
        diffusers_logging.set_verbosity_error()  # no install-accelerate advice on every load
        try:
            vae = AutoencoderKL.from_pretrained(str(path), local_files_only=True)
        except (OSError, ValueError) as err:  # missing or unreadable weights, or a config AutoencoderKL rejects
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UserError(f"cannot load the VAE in {path}: {first}") from err
        self.path = path
        self.vae = vae.to(device).eval()
        cfg = self.vae.config
        self.channels = int(cfg.latent_channels)
        self.scaling_factor = _positive(
            cfg.scaling_factor if scaling_factor is None else scaling_factor, "scaling factor"
        )
        shift = getattr(cfg, "shift_factor", None) if shift_factor is None else shift_factor
        self.shift_factor = 0.0 if shift is None else _finite(shift, "shift factor")
        self.config_downsample = 2 ** (len(cfg.block_out_channels) - 1)
        self.downsample = self.config_downsample if downsample is None else _factor(downsample, "down-sampling")
        self.sample = sample  # encode a posterior sample (as DiT features) rather than the mean
        self.device = device

    @property
    def scaling(self) -> float:  # the name older code used
        return self.scaling_factor

    def _mismatch(self, pixels: tuple[int, int], latents: tuple[int, int]) -> UserError:
        (H, W), (h, w) = pixels, latents
        real = f"×{H / h:g}" if h and w and H / h == W / w else f"×{H / max(h, 1):g} by ×{W / max(w, 1):g}"
        if self.downsample != self.config_downsample:
            where, fix = "the --downsample override", f"drop it, the VAE's config says ×{self.config_downsample}"
        else:
            where, fix = "its config", "pass --downsample with its real factor"
        return UserError(
            f"the VAE in {self.path} maps {H}x{W} pixels to {h}x{w} latents, a {real} down-sampling, "
            f"but ×{self.downsample} was expected (from {where}); {fix}"
        )

    @torch.no_grad()
    def encode(self, images: Tensor, generators: list[torch.Generator] | None = None) -> Tensor:
        """Latents of (B, 3, H, W) images; ``generators``: one per image for its posterior sample, so
        that an image's latents do not depend on the images encoded with it (else the global RNG)."""
        dist = self.vae.encode(images.to(self.device)).latent_dist
        if self.sample and generators is not None:
            if len(generators) != len(images):
                raise ValueError(f"{len(generators)} generators for {len(images)} images")
            noise = torch.stack([torch.randn(dist.mean.shape[1:], generator=g) for g in generators])
            z = dist.mean + dist.std * noise.to(dist.mean)
        else:
            z = dist.sample() if self.sample else dist.mean
        (H, W), (h, w), f = images.shape[-2:], z.shape[-2:], self.downsample
        if abs(h * f - H) >= f or abs(w * f - W) >= f:  # floor or ceil of H/f are both a ×f grid
            raise self._mismatch((H, W), (h, w))
        return (z - self.shift_factor) * self.scaling_factor

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        images = self.vae.decode(latents.to(self.device) / self.scaling_factor + self.shift_factor).sample
        (h, w), (H, W) = latents.shape[-2:], images.shape[-2:]
        if (H, W) != (h * self.downsample, w * self.downsample):
            raise self._mismatch((H, W), (h, w))
        return images.clamp(-1, 1)

    def spec(self) -> dict:
        return {
            "name": self.name,
            "path": str(self.path),
            "scaling_factor": self.scaling_factor,
            "shift_factor": self.shift_factor,
            "downsample": self.downsample,
        }


def _recorded_latent_space(spec: dict) -> dict:
    """scaling_factor / shift_factor / downsample of a recorded sd-vae spec (None: not recorded).

    Specs written before the factors were read from the VAE hold only ``scaling``; the latents
    they describe were never shifted."""
    if "scaling" in spec and "scaling_factor" not in spec:
        return {
            "scaling_factor": spec["scaling"],
            "shift_factor": spec.get("shift_factor", 0.0),
            "downsample": spec.get("downsample"),
        }
    return {k: spec.get(k) for k in ("scaling_factor", "shift_factor", "downsample")}


def _from_recorded(path: str | Path, recorded: dict, device, overrides: dict) -> DiffusersVAE:
    """The VAE in ``path`` in the latent space ``recorded`` describes, unless overridden."""
    learned = _recorded_latent_space(recorded)
    ae = DiffusersVAE(path, device=device, **{k: learned[k] if v is None else v for k, v in overrides.items()})
    # Caught here rather than after a whole sampling run: the folder holds another VAE than the one
    # the latents came from (an AutoencoderKL's config gives its factor exactly).
    if overrides["downsample"] is None and ae.downsample != ae.config_downsample:
        raise UserError(
            f"the VAE in {path} down-samples ×{ae.config_downsample} but the latents were made "
            f"×{ae.downsample} (by {recorded.get('path')}); pass the VAE they were made with"
        )
    return ae


def load_autoencoder(
    spec: dict | str | None,
    device: str | torch.device = "cpu",
    *,
    scaling_factor: float | None = None,
    shift_factor: float | None = None,
    downsample: int | None = None,
    recorded: dict | None = None,
) -> Autoencoder:
    """An autoencoder from its spec ({'name': 'pixel'} or {'name': 'sd-vae', 'path': ...}), a VAE
    folder or 'pixel'. The keyword factors override the spec's and the VAE config's.

    recorded: the spec a dataset (and so a model) recorded, for when the user may name the VAE
    folder anew: spec None loads it; a folder gets its latent space (scaling, shift and
    down-sampling), so that a moved copy of the VAE decodes what the model learned.
    """
    overrides = {"scaling_factor": scaling_factor, "shift_factor": shift_factor, "downsample": downsample}
    if spec is None:
        spec = recorded
    if spec is None or spec == "pixel":
        return PixelSpace()
    if isinstance(spec, str | Path):
        if isinstance(recorded, dict) and recorded.get("name") == "sd-vae":
            return _from_recorded(spec, recorded, device, overrides)
        return DiffusersVAE(
            spec, device=device, scaling_factor=scaling_factor, shift_factor=shift_factor, downsample=downsample
        )
    if not isinstance(spec, dict):
        raise TypeError(f"an autoencoder spec is a dict, a path or None; got {type(spec).__name__}")
    if spec.get("name") == "pixel":
        return PixelSpace()
    if spec.get("name") == "sd-vae":
        if not spec.get("path"):
            raise UserError(f"the sd-vae autoencoder spec {spec!r} names no VAE folder; pass --autoencoder DIR")
        return _from_recorded(spec["path"], spec, device, overrides)
    raise UnknownNameError(f"unknown autoencoder {spec.get('name')!r} in {spec!r}; known: pixel, sd-vae")


def to_uint8(images: Tensor) -> Tensor:
    """[−1, 1] float (B, 3, H, W) -> uint8 (B, H, W, 3), the DiT/ADM convention."""
    return torch.clamp(127.5 * images + 128.0, 0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu()
