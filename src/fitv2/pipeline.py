"""``FiTv2Pipeline``: a model, its autoencoder and its condition in one object, diffusers-style.

    pipe = FiTv2Pipeline.from_pretrained("runs/demo/run")
    images = pipe(labels=[3, 7], height=32, width=64, num_inference_steps=40, guidance_scale=3.0)
    pipe.save_pretrained("my-fitv2")          # config.json, model.safetensors, README.md (model card)

``from_pretrained`` takes a folder written by ``save_pretrained``, one of this package's
checkpoint folders, or a released weights file with ``preset=``. A saved folder is itself a
checkpoint folder: ``fitv2 sample`` and ``fitv2 train --init-from`` read it too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .checkpoint import save_json, save_tensors
from .config import Runtime
from .sampling import Sampler
from .sampling.defaults import CACHE_THRESHOLD
from .text import describe

FORMAT = "fitv2-pipeline"
OUTPUT_TYPES = ("pil", "np", "latent")


class FiTv2Pipeline:
    """Sample a FiTv2 model in one call; see the module docstring."""

    def __init__(self, sampler: Sampler):
        self.sampler = sampler

    @property
    def model(self):
        return self.sampler.model

    @property
    def config(self):
        return self.sampler.model.config

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        preset: str | None = None,
        weights: str = "ema",
        autoencoder: str | None = None,
        text_encoder: str | None = None,
        device: str = "cpu",
        runtime: Runtime = Runtime(),
    ) -> FiTv2Pipeline:
        """A saved pipeline folder, a checkpoint folder (EMA weights by default), or a released
        weights file with ``preset``; ``autoencoder`` / ``text_encoder`` replace the recorded ones."""
        sampler = Sampler.load(
            path,
            preset=preset,
            weights=weights,
            autoencoder=autoencoder,
            device=device,
            runtime=runtime,
            text_encoder=text_encoder,
        )
        return cls(sampler)

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json`` (the architecture, the autoencoder and text-encoder references, the class
        names, the training RoPE and what training recorded), ``model.safetensors`` (the weights this
        pipeline samples with: EMA unless loaded otherwise) and a ``README.md`` model card."""
        out = Path(path)
        out.mkdir(parents=True, exist_ok=True)
        record = self.sampler.record
        dataset = dict(record.get("dataset") or {})
        dataset.update(
            autoencoder=self.sampler.autoencoder.spec(),
            class_names=self.sampler.class_names,
            text_encoder=self.sampler.text_encoder,
        )
        train = dict(record.get("train") or {})
        train["rope"] = self.sampler.training_rope
        state = {k: v.detach().cpu().contiguous() for k, v in self.model.state_dict().items()}
        save_tensors(state, out / "model.safetensors")
        config = {
            "format": FORMAT,
            "model": self.config.to_dict(),
            "dataset": dataset,
            "train": train,
            "step": record.get("step"),
        }
        save_json(config, out / "config.json")
        (out / "README.md").write_text(model_card(self, config, out))
        return out

    @torch.no_grad()
    def __call__(
        self,
        labels: list[int] | torch.Tensor | None = None,
        prompts: list[str] | None = None,
        height: int | None = None,
        width: int | None = None,
        sizes: list[tuple[int, int]] | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        solver: str | None = None,
        rope: str | None = None,
        time_shift: float | str | None = None,
        cache: str = "none",
        cache_threshold: float = CACHE_THRESHOLD,
        seed: int = 0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        output_type: str = "pil",
        batch_size: int = 64,
        progress: bool = False,
        pack: bool = False,
    ) -> list[Image.Image] | np.ndarray | torch.Tensor | list[np.ndarray] | list[torch.Tensor]:
        """Images of ``height`` × ``width`` pixels, one per label or prompt: PIL images (``output_type="pil"``),
        uint8 (N, H, W, 3) (``"np"``) or the latents (``"latent"``, which need no autoencoder).

        ``sizes``: one (height, width) per label or prompt instead, all sampled in one padded batch (packed
        rows with ``pack=True``) of up to ``batch_size`` images; the result is then a list (PIL images, uint8
        arrays or latents) with each image equal to sampling its size alone.

        Unset settings take the checkpoint's defaults (:attr:`Sampler.defaults`, shared with ``fitv2 sample``
        and the page): the training size, ``solver`` euler with 50 steps (a FiT v1 model: ddpm, 250 steps),
        ``guidance_scale`` 4.0, ``rope`` and ``time_shift`` ``"auto"``: within the training tokens no
        extrapolation and no shift; beyond them VisionNTK + attention scale (FiTv2 weights trained with plain
        RoPE; others keep their own method) and SD3's shift max(1, sqrt(tokens / training tokens)), per
        image. :meth:`auto_choices` says what they pick for a size. ``cache="first-block"``: skip the blocks
        after the first at steps where its residual changed by less than ``cache_threshold`` (relative).

        Noise: by default image i's noise comes from its own generator seeded by (``seed``, its size, i), so
        it is the same image whatever the batch. ``generator`` follows diffusers: one ``torch.Generator``
        draws the noise of every batch from its stream in turn (images then depend on the batch and its
        order), or a list of one generator per image gives image i its own draws (initial noise, then an
        SDE's or DDPM's step noise)."""
        if output_type not in OUTPUT_TYPES:
            raise ValueError(f"output_type must be one of {OUTPUT_TYPES}; got {output_type!r}")
        if (labels is None) == (prompts is None):
            raise ValueError("give labels (a class-conditional model) or prompts (a text-to-image model)")
        if sizes is not None and (height is not None or width is not None):
            raise ValueError("give sizes=[(h, w), ...] or height and width, not both")
        defaults = self.sampler.defaults
        height, width = height or defaults.height, width or defaults.width
        condition: Any
        if prompts is not None:
            condition = self.sampler.encode_prompts(list(prompts))
        else:
            condition = self.sampler.labels(labels=[int(y) for y in torch.as_tensor(labels).reshape(-1)])
        settings = self.sampler.settings(
            solver=solver,
            steps=num_inference_steps,
            guidance_scale=guidance_scale,
            rope=rope,
            time_shift=time_shift,
            cache=cache,
            cache_threshold=cache_threshold,
        )
        options: dict[str, Any] = dict(
            solver=settings.solver,
            guidance=settings.guidance,
            rope=settings.rope,
            cache=settings.cache,
            seed=seed,
            batch_size=batch_size,
            progress=progress,
            generator=generator,
        )
        if sizes is not None:
            sizes = [(int(h), int(w)) for h, w in sizes]
            if len(sizes) != len(condition):
                raise ValueError(f"{len(sizes)} sizes for {len(condition)} labels or prompts")
            out = self.sampler.generate_mixed(sizes, condition, **options, pack=pack, decode=output_type != "latent")
            return [Image.fromarray(im) for im in out] if output_type == "pil" else out
        if output_type == "latent":
            return self.sampler.generate_latents(height, width, condition, **options)
        images = self.sampler.generate(height, width, condition, **options)
        return images if output_type == "np" else [Image.fromarray(im) for im in images]

    def auto_choices(self, height: int, width: int) -> dict[str, str]:
        """What ``rope="auto"`` and ``time_shift="auto"`` pick for an image of height × width pixels."""
        return self.sampler.auto_choices(height, width)


CITATION = """@article{wang2024fitv2,
  title   = {FiTv2: Scalable and Improved Flexible Vision Transformer for Diffusion Model},
  author  = {Wang, ZiDong and Lu, Zeyu and Huang, Di and Zhou, Cai and Ouyang, Wanli and Bai, Lei},
  journal = {arXiv preprint arXiv:2410.13925},
  year    = {2024}
}
@article{lu2024fit,
  title   = {FiT: Flexible Vision Transformer for Diffusion Model},
  author  = {Lu, Zeyu and Wang, ZiDong and Huang, Di and Wu, Chengyue and Liu, Xihui and Ouyang, Wanli and Bai, Lei},
  journal = {arXiv preprint arXiv:2402.12376},
  year    = {2024}
}"""


def model_card(pipe: FiTv2Pipeline, config: dict[str, Any], out: Path) -> str:
    """README.md of a saved pipeline: what the model is, how it was trained, how to sample it."""
    cfg = pipe.config
    params = sum(p.numel() for p in pipe.model.parameters())
    dataset, train = config["dataset"], config["train"]
    unit = pipe.sampler.unit
    side = cfg.rope_train_len * unit
    if cfg.text_conditional:
        condition = (
            f"text-to-image: captions encoded by `{describe(pipe.sampler.text_encoder or {})}`, "
            f"{cfg.text_len} text tokens in context (FiTv2 §III-E)"
        )
        call = 'pipe(prompts=["a red apple"], height=H, width=W, guidance_scale=4.0)'
        cli = f'fitv2 sample {out} --prompt "a red apple" --sizes {side}x{side},{side}x{2 * side}'
    else:
        names = ", ".join(pipe.sampler.class_names[:12]) + (" ..." if cfg.num_classes > 12 else "")
        condition = f"class-conditional, {cfg.num_classes} classes ({names})"
        call = "pipe(labels=[0, 1], height=H, width=W, guidance_scale=1.5)"
        cli = f"fitv2 sample {out} --per-class 1 --sizes {side}x{side},{side}x{2 * side}"
    trained = []
    if dataset.get("budget"):
        trained.append(
            f"images resized to area ≤ {dataset['budget']}² pixels keeping their aspect ratio "
            f"(≤ {dataset.get('max_tokens', '?')} tokens of {unit}×{unit} pixels)"
        )
    if train.get("data"):
        trained.append(f"dataset `{train['data']}`")
    if config.get("step") is not None:
        trained.append(f"{config['step']} steps of batch {train.get('batch_size', '?')} at lr {train.get('lr', '?')}")
    if train.get("data_mode"):
        trained.append(f"{train['data_mode']} data, {train.get('time_sampling', '?')} time sampling")
    lines = [
        "---",
        "library_name: fitv2",
        "license: mit",
        "tags: [diffusion, flexible-resolution, fitv2]",
        "---",
        "",
        f"# {cfg.name}",
        "",
        f"A FiTv2 diffusion transformer (rectified flow) that generates images at any height and width: {condition}.",
        "",
        "## Architecture",
        "",
        f"- {params:,} parameters; width {cfg.hidden_size}, {cfg.depth} blocks, {cfg.num_heads} heads, "
        f"patch {cfg.patch_size}, {cfg.in_channels} input channels",
        f"- block: adaLN {cfg.adaln}, MLP {cfg.mlp}, QK-Norm {cfg.qk_norm}; 2D RoPE θ {cfg.rope_theta:g}, "
        f"trained at {cfg.rope_train_len}×{cfg.rope_train_len} tokens (RoPE `{pipe.sampler.training_rope}`)",
        f"- autoencoder: `{json.dumps(dataset.get('autoencoder'))}`",
        "",
        "## Training",
        "",
        *([f"- {t}" for t in trained] or ["- not recorded (converted from released weights)"]),
        "",
        "## Sampling",
        "",
        "```python",
        "from fitv2 import FiTv2Pipeline",
        "",
        f'pipe = FiTv2Pipeline.from_pretrained("{out}")',
        f"H, W = {side}, {2 * side}  # any multiple of {unit} pixels",
        f"images = {call}",
        "```",
        "",
        "```bash",
        cli,
        "```",
        "",
        'Beyond the training size, name an extrapolation method: `rope="vision-ntk"` '
        '(or `"vision-ntk+attn-scale"`, `"vision-yarn"`, `"pi"`, ...).',
        "",
        "## Licence",
        "",
        "The fitv2 code is MIT-licensed; the weights follow the terms of the data they were trained on.",
        "",
        "## Citation",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)
