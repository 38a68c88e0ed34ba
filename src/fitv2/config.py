"""Typed model configuration and the named presets (FiTv2-B/2, XL/2, 3B/2, FiT-B/2, FiT-XL/2).

A preset is one line: the values that differ from the FiTv2 defaults. The FiT v1 presets
use the v1 block (full adaLN, SwiGLU 4d, no QK-Norm, learned sigma); the Table II
ablation rows of the paper are expressed as model overrides plus training settings in
``ABLATIONS``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError, UnknownNameError
from .names import ATTENTION_NAMES
from .schema import check_fields, refuse_unknown

MLP_KINDS = ("swiglu", "swiglu-large", "gelu")
ADALN_KINDS = ("lora", "full")
QK_NORM_KINDS = (None, "layernorm", "rmsnorm")


@dataclass
class ModelConfig:
    """Everything needed to build a FiT/FiTv2 backbone; saved beside every checkpoint."""

    name: str = "custom"
    """Preset name this config came from (informational)."""
    patch_size: int = 2
    """Side of a patch in latent pixels; a token carries patch_size² · in_channels values."""
    in_channels: int = 4
    """Channels of the (latent) image: 4 for SD-VAE latents, 3 in pixel space."""
    hidden_size: int = 1152
    """Transformer width d."""
    depth: int = 36
    """Number of blocks."""
    num_heads: int = 16
    """Attention heads; head_dim = hidden_size / num_heads must be divisible by 4 (2D RoPE)."""
    mlp_ratio: float = 4.0
    """FFN width multiplier before the SwiGLU 2/3 reduction."""
    mlp: str = "swiglu"
    """'swiglu' (hidden ⌊8d/3⌋, FiTv2), 'swiglu-large' (hidden 4d, FiT v1) or 'gelu' (DiT MLP)."""
    num_classes: int = 1000
    """Class labels; the embedding table has one extra row, the null class = num_classes."""
    class_dropout_prob: float = 0.1
    """Probability of replacing a label by the null class (a caption by the empty one) in training, for CFG."""
    learn_sigma: bool = False
    """FiT v1: output 2·C channels (epsilon and variance interpolation)."""
    qk_norm: str | None = "layernorm"
    """Normalisation of q and k per head before RoPE: None, 'layernorm' or 'rmsnorm'."""
    qk_norm_weight: bool = False
    """Give the QK norm a learnable weight (reference 'w_layernorm')."""
    adaln: str = "lora"
    """'lora' (per-block d→r→6d plus one global d→6d, FiTv2) or 'full' (per-block d→6d, FiT v1)."""
    adaln_lora_dim: int | None = None
    """LoRA rank r of the per-block modulation; None means hidden_size // 4."""
    qkv_bias: bool = True
    """Bias in the qkv projection."""
    ffn_bias: bool = True
    """Biases in the FFN."""
    adaln_bias: bool = True
    """Biases in the modulation linears."""
    rope_theta: float = 10000.0
    """RoPE base θ."""
    rope_on_v: bool = False
    """Also rotate the values (reference add_rel_pe_to_v; off in every released model)."""
    rope_train_len: int = 16
    """Side length in tokens the model was trained at (L_train); the extrapolation methods scale from it."""
    continuous_time: bool = True
    """t ∈ [0, 1] (rectified flow, clamped after time shifting); False passes DDPM steps as they are."""
    time_shifting: float = 1.0
    """Warp of the time fed to the embedder, t → s·t / (1 + (s−1)·t) (reference knob, 1 = off)."""
    text_dim: int = 0
    """Features per token of the text encoder; 0 = class-conditional. A text-to-image model (FiTv2
    §III-E) projects the caption's tokens into the sequence and pools them in place of the class."""
    text_len: int = 0
    """Text slots per image M (77 for CLIP-L): slot m at RoPE position (m, m), image token (i, j) at
    (M + i, M + j)."""

    def __post_init__(self) -> None:
        # Types first: a JSON or KEY=VALUE 'abc' for an int field is an error, not a crash later.
        check_fields(self, label=lambda name: f"model {name}")
        for name, kinds in (("mlp", MLP_KINDS), ("adaln", ADALN_KINDS), ("qk_norm", QK_NORM_KINDS)):
            if getattr(self, name) not in kinds:
                raise ConfigError(f"model {name} must be one of {kinds}; got {getattr(self, name)!r}")
        positive = ("patch_size", "in_channels", "hidden_size", "depth", "num_heads", "num_classes", "rope_train_len")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"model {name} must be at least 1; got {getattr(self, name)}")
        for name in ("mlp_ratio", "rope_theta", "time_shifting"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"model {name} must be positive; got {getattr(self, name)}")
        if not 0 <= self.class_dropout_prob < 1:
            raise ConfigError(f"model class_dropout_prob must be in [0, 1); got {self.class_dropout_prob}")
        if self.text_dim < 0 or self.text_len < 0 or (self.text_dim > 0) != (self.text_len > 0):
            raise ConfigError(
                f"model text_dim and text_len must both be 0 (class labels) or both positive; "
                f"got {self.text_dim} and {self.text_len}"
            )
        if self.adaln_lora_dim is not None and self.adaln_lora_dim < 1:
            raise ConfigError(f"model adaln_lora_dim must be at least 1; got {self.adaln_lora_dim}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        if self.head_dim % 4:
            raise ConfigError(f"head_dim {self.head_dim} (hidden_size / num_heads) must be divisible by 4 for 2D RoPE")

    @property
    def text_conditional(self) -> bool:
        return self.text_dim > 0

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels

    @property
    def token_dim(self) -> int:
        """Values per input token: patch_size² · in_channels."""
        return self.patch_size**2 * self.in_channels

    @property
    def lora_rank(self) -> int:
        return self.adaln_lora_dim if self.adaln_lora_dim is not None else self.hidden_size // 4

    @property
    def mlp_hidden(self) -> int:
        hidden = int(self.hidden_size * self.mlp_ratio)
        return (hidden * 2) // 3 if self.mlp == "swiglu" else hidden

    def replace(self, **overrides: Any) -> ModelConfig:
        check_known_fields(overrides)
        return dataclasses.replace(self, **overrides)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """A config from a saved dict; keys that used to be model fields but now are runtime options
        (``grad_checkpointing``) are dropped, so older checkpoints load."""
        data = {k: v for k, v in data.items() if k not in RUNTIME_FIELDS}
        check_known_fields(data)
        return cls(**data)


PRECISIONS = ("fp32", "bf16")


@dataclass(frozen=True)
class Runtime:
    """How a model runs, apart from what it computes: none of these change the weights, and the
    result only by rounding. Chosen per run (``train`` / ``sample`` options), never saved with the
    architecture."""

    attention: str = "auto"
    """Attention kernel (:data:`fitv2.names.ATTENTION_NAMES`); 'auto' picks per batch."""
    grad_checkpointing: bool = False
    """Recompute block activations in the backward pass to save memory."""
    compile: bool = False
    """torch.compile each transformer block (dynamic shapes: sequence lengths vary)."""
    precision: str = "fp32"
    """'bf16': autocast for matmuls; parameters, norms, RoPE, the loss and the solver stay fp32."""
    unpad: bool = True
    """Run a padded batch as one row of its real tokens (per-image attention), so padding costs no
    compute; the result is the padded computation's up to float rounding. False keeps the padded rows
    (the published code's order of operations, bit for bit)."""

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_NAMES:
            raise ConfigError(f"attention must be one of {ATTENTION_NAMES}, got {self.attention!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")

    def autocast(self, device):
        """The autocast context of this precision on ``device`` (a no-op for fp32)."""
        import torch  # here, so that the CLI's --help imports no torch

        device = torch.device(device)
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=self.precision == "bf16")


# Runtime options older checkpoints saved among the model fields.
RUNTIME_FIELDS = ("grad_checkpointing",)


def check_known_fields(values: dict[str, Any]) -> None:
    """Refuse keys that are not ModelConfig fields, naming the known ones."""
    refuse_unknown(ModelConfig, values, "model config field(s)", list_known=True)


_V1 = dict(adaln="full", mlp="swiglu-large", qk_norm=None, learn_sigma=True, continuous_time=False)

PRESETS: dict[str, dict[str, Any]] = {
    # name             width  depth heads  LoRA rank        (everything else: FiTv2 defaults)
    "FiTv2-B/2": dict(hidden_size=768, depth=15, num_heads=12, adaln_lora_dim=192),
    "FiTv2-XL/2": dict(hidden_size=1152, depth=36, num_heads=16, adaln_lora_dim=288),
    "FiTv2-3B/2": dict(hidden_size=2304, depth=40, num_heads=24, adaln_lora_dim=576),
    "FiT-B/2": dict(hidden_size=768, depth=12, num_heads=12, **_V1),
    "FiT-XL/2": dict(hidden_size=1152, depth=28, num_heads=16, **_V1),
    # Small models for CPU work (not from the paper): pixel space, 3 channels.
    "FiTv2-Tiny/4": dict(
        hidden_size=192, depth=6, num_heads=3, patch_size=4, in_channels=3, num_classes=20, rope_train_len=8
    ),
    "FiTv2-Mini/4": dict(
        hidden_size=128, depth=6, num_heads=2, patch_size=4, in_channels=3, num_classes=20, rope_train_len=8
    ),
    "FiTv2-Micro/4": dict(
        hidden_size=64, depth=2, num_heads=2, patch_size=4, in_channels=3, num_classes=10, rope_train_len=8
    ),
}

# Table II of the FiTv2 paper: model overrides on top of the B/2 width, and the training
# settings (data mode, time sampling) each row changes. "v2" = the FiTv2 block.
_A = dict(adaln="full", mlp="swiglu-large", qk_norm=None, depth=12)
ABLATIONS: dict[str, dict[str, dict[str, Any]]] = {
    "A": {"model": _A, "train": dict(data_mode="flexible", time_sampling="uniform")},
    "B": {"model": {**_A, "qk_norm": "layernorm"}, "train": dict(data_mode="flexible", time_sampling="uniform")},
    "C": {"model": {}, "train": dict(data_mode="flexible", time_sampling="uniform")},
    "D": {"model": _A, "train": dict(data_mode="mixed", time_sampling="uniform")},
    "E": {"model": {**_A, "qk_norm": "layernorm"}, "train": dict(data_mode="mixed", time_sampling="uniform")},
    "F": {"model": {**_A, "qk_norm": "layernorm"}, "train": dict(data_mode="mixed", time_sampling="logit-normal")},
}


def model_config(name: str, **overrides: Any) -> ModelConfig:
    """The config of a named preset, with field overrides applied."""
    if name not in PRESETS:
        raise UnknownNameError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    check_known_fields(overrides)
    return ModelConfig(name=name, **{**PRESETS[name], **overrides})


def ablation_config(row: str, base: str = "FiTv2-B/2", **overrides: Any) -> tuple[ModelConfig, dict[str, Any]]:
    """Model config and training settings of a Table II row ('A'..'F') on a base preset's width."""
    if row not in ABLATIONS:
        raise UnknownNameError(f"unknown ablation row {row!r}; choose one of: {', '.join(ABLATIONS)}")
    spec = ABLATIONS[row]
    cfg = model_config(base, **{**spec["model"], **overrides})
    return cfg, dict(spec["train"])


__all__ = ["ABLATIONS", "PRESETS", "ModelConfig", "Runtime", "ablation_config", "model_config"]
