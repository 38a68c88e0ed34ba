"""The FiT / FiTv2 backbone: a transformer over a variable-length sequence of patch tokens.

An image of h × w tokens is a sequence of N = h·w tokens in row-major order; a batch pads
sequences to its longest one (or packs several images into one sequence). Position enters
only through 2D RoPE, so one set of weights serves every height, width and aspect ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..config import ModelConfig, Runtime
from ..text import TextFeatures
from ..tokens import TokenLayout
from .attention import choose_attention, contiguous_runs
from .layers import (
    CaptionEmbedder,
    Conditioning,
    FinalLayer,
    FiTBlock,
    LabelEmbedder,
    LayoutPlan,
    PatchEmbedder,
    TimestepEmbedder,
)
from .rope import RopeScaling, rope_tables


def _linear(module: nn.Module) -> nn.Linear:
    """``module``, which the architecture makes an nn.Linear (checked, for the weight initialisation)."""
    if not isinstance(module, nn.Linear):
        raise TypeError(f"expected an nn.Linear, got {type(module).__name__}")
    return module


@dataclass(frozen=True)
class Plan:
    """What a forward pass derives from a batch's layout, built by :meth:`FiT.plan` and passed in place of
    the layout: a caller that runs one layout many times (a sampler's steps) builds it once. The model
    itself caches nothing.

    ``blocks`` is what every block sees (RoPE tables, attention kernel) for the rows as they run: one row
    of the real tokens when ``unpad`` is set, so padding costs no compute, else the rows as given."""

    layout: TokenLayout  # the caller's rows
    rope: RopeScaling
    blocks: LayoutPlan
    unpad: Tensor | None = None  # (V,) the real tokens' places in the flattened (B·N) rows
    text_valid: Tensor | None = None  # (B, N) text models: the slots in context (image tokens, caption tokens)
    grad_checkpointing: bool = False


class BlockCache(Protocol):
    """Runs the blocks in a sampler's place: ``cache(x, first_block, other_blocks, plan, depth)`` returns
    what all blocks would (or its cached estimate); see :mod:`fitv2.sampling.cache`."""

    def __call__(
        self,
        x: Tensor,
        first_block: Callable[[Tensor], Tensor],
        other_blocks: Callable[[Tensor], Tensor],
        plan: LayoutPlan,
        depth: int,
    ) -> Tensor: ...


def unpadded_layout(layout: TokenLayout) -> tuple[Tensor, TokenLayout] | None:
    """(index of the real tokens in the flattened rows, the layout of one row holding them image after
    image) for a padded batch of one image per row; None when there is nothing to gain."""
    if layout.packed or layout.text is not None or layout.batch_size < 2 or bool(layout.mask.all()):
        return None
    real = layout.mask.reshape(-1) > 0
    index = real.nonzero().squeeze(1)
    counts = layout.mask.sum(1).long()
    B = layout.batch_size
    grid = layout.grid.transpose(0, 1).reshape(2, -1)[:, index][None]  # (1, 2, V)
    segment = torch.repeat_interleave(torch.arange(1, B + 1, device=layout.device), counts)[None]
    flat = TokenLayout(grid, torch.ones_like(segment, dtype=layout.mask.dtype), layout.size.reshape(1, B, 2), segment)
    return index, flat


class FiT(nn.Module):
    """FiTv2 (adaln='lora', QK-Norm, SwiGLU 8d/3) or FiT v1 (adaln='full', SwiGLU 4d) backbone.

    ``runtime`` (attention kernel, unpadding, activation checkpointing) says how it runs by default, not
    what it computes; it is not saved with the config, and a call (or a :class:`Plan`) can pass another.
    The model keeps no state between calls."""

    def __init__(self, config: ModelConfig, runtime: Runtime = Runtime()):
        super().__init__()
        self.config = config
        d = config.hidden_size
        self.x_embedder = PatchEmbedder(config.token_dim, d)
        self.t_embedder = TimestepEmbedder(d)
        # The condition: a class label, or a caption's tokens (text-to-image, FiTv2 §III-E).
        self.y_embedder: LabelEmbedder | None = None
        self.caption_embedder: CaptionEmbedder | None = None
        if config.text_conditional:
            self.caption_embedder = CaptionEmbedder(config.text_dim, config.text_len, d, config.class_dropout_prob)
        else:
            self.y_embedder = LabelEmbedder(config.num_classes, d, config.class_dropout_prob)
        self.global_adaLN_modulation: nn.Sequential | None
        if config.adaln == "lora":
            self.global_adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d, bias=config.adaln_bias))
        else:
            self.global_adaLN_modulation = None
        self.blocks = nn.ModuleList(FiTBlock(config) for _ in range(config.depth))
        self.final_layer = FinalLayer(d, config.patch_size, config.out_channels, config.adaln_bias)
        self._runtime = runtime
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Reference initialisation: the untrained network outputs exactly zero."""

        def basic(module: nn.Module) -> None:
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

        self.apply(basic)
        if self.y_embedder is not None:
            nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(_linear(self.t_embedder.mlp[0]).weight, std=0.02)
        nn.init.normal_(_linear(self.t_embedder.mlp[2]).weight, std=0.02)
        zero = [_linear(block.adaLN_modulation[-1]) for block in self._blocks()]
        zero += [_linear(self.final_layer.adaLN_modulation[-1]), self.final_layer.linear]
        if self.global_adaLN_modulation is not None:
            zero.append(_linear(self.global_adaLN_modulation[-1]))
        for layer in zero:
            nn.init.zeros_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def _blocks(self) -> list[FiTBlock]:
        """The transformer blocks, as the type they are."""
        blocks = [block for block in self.blocks if isinstance(block, FiTBlock)]
        if len(blocks) != len(self.blocks):
            raise TypeError("FiT.blocks holds a module that is not a FiTBlock")
        return blocks

    def embed_time(self, t: Tensor) -> Tensor:
        if self.config.continuous_time:
            s = self.config.time_shifting
            t = torch.clamp(s * t / (1 + (s - 1) * t), max=1.0)
        return self.t_embedder(t.float())

    def conditioning(self, t: Tensor, y: Tensor, label_drop: Tensor | None = None) -> Tensor:
        """c = t_emb + y_emb per image: (B, n, D). t and y are (B,) or (B, n)."""
        if t.dim() == 1:
            t = t[:, None]
        if y.dim() == 1:
            y = y[:, None]
            label_drop = label_drop[:, None] if label_drop is not None else None
        t = t.expand(y.shape) if t.shape[1] < y.shape[1] else t
        if self.y_embedder is None:
            raise TypeError("a text-to-image model is conditioned on TextFeatures, not class labels")
        return self.embed_time(t) + self.y_embedder(y, self.training, label_drop)

    def text_conditioning(
        self, t: Tensor, text: TextFeatures, layout: TokenLayout, label_drop: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """c = t_emb + the mean of the caption's tokens (B, n, D); the text tokens placed in their slots
        (B, N, D); and the captions' token masks after label dropout (B, n, M). ``text`` holds (B, M, Dt) or
        (B, n, M, Dt)."""
        if self.caption_embedder is None:
            raise TypeError("a class-conditional model takes class labels, not TextFeatures")
        if layout.text is None:
            raise ValueError("a text-to-image model needs a layout with text slots (text_len > 0)")
        features, mask = text.features, text.mask
        if features.dim() == 3:  # one image per row
            features, mask = features[:, None], mask[:, None]
            label_drop = label_drop[:, None] if label_drop is not None and label_drop.dim() == 1 else label_drop
        tokens, pooled, mask = self.caption_embedder(features, mask, self.training, label_drop)
        t = t[:, None] if t.dim() == 1 else t
        t = t.expand(mask.shape[:2]) if t.shape[1] < mask.shape[1] else t
        return self.embed_time(t) + pooled, layout.place_text(tokens), mask

    @property
    def runtime(self) -> Runtime:
        """How the model runs by default (chosen at construction; a call can pass another)."""
        return self._runtime

    def forward(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | TextFeatures,
        layout: TokenLayout | Plan,
        rope: RopeScaling | None = None,
        label_drop: Tensor | None = None,
        runtime: Runtime | None = None,
        cache: BlockCache | None = None,
    ) -> Tensor:
        """Velocity (or epsilon and variance for v1) per token.

        x: (B, N, p²·C) tokens, (c, p1, p2) order.   t: (B,) or (B, n) time.
        y: (B,) or (B, n) labels (num_classes = null), or a caption's :class:`TextFeatures` for a
        text-to-image model.
        layout: where each token sits (:class:`TokenLayout`), or the :class:`Plan` that :meth:`plan` built
        for it: a caller that runs one layout many times (a sampler's steps) builds the plan once.
        rope: extrapolation method (default: none, the training tables); part of a given plan.
        label_drop: which labels (captions) to replace by the null class (the empty caption); in
        training, default random.   runtime: how to run (default: the model's); part of a given plan.
        cache: a sampler's feature cache for this plan's rows (it runs the blocks: :class:`BlockCache`).
        Returns (B, N, p²·C_out) with exact zeros at padding.
        """
        if isinstance(layout, Plan):
            if (rope is not None and rope != layout.rope) or runtime is not None:
                raise ValueError("a Plan carries its RoPE and runtime: build another plan to change them")
            plan: Plan | TokenLayout = layout
        elif isinstance(y, Tensor):
            plan = self.plan(layout, rope, runtime=runtime)
        else:  # a text model's plan depends on the captions that label dropout keeps: built once they are known
            plan = layout
        if not isinstance(plan, Plan) or plan.unpad is None:
            return self._run(x, t, y, plan, label_drop, rope, runtime, cache)
        # The real tokens as one row, then back to the rows (padding outputs zeros).
        B, N = plan.layout.mask.shape
        drop = None if label_drop is None else label_drop.reshape(1, -1)
        assert isinstance(y, Tensor)  # plan() unpads class-conditional batches only
        rows = x.reshape(B * N, -1)[plan.unpad][None]
        out = self._run(rows, t.reshape(1, -1), y.reshape(1, -1), plan, drop, cache=cache)
        return out.new_zeros(B * N, out.shape[-1]).index_copy(0, plan.unpad, out[0]).view(B, N, -1)

    def _run(
        self,
        x: Tensor,
        t: Tensor,
        y: Tensor | TextFeatures,
        plan: Plan | TokenLayout,
        label_drop: Tensor | None,
        rope: RopeScaling | None = None,
        runtime: Runtime | None = None,
        cache: BlockCache | None = None,
    ) -> Tensor:
        """The blocks on the rows as ``plan.blocks`` lays them out (a text model's plan is built here from a
        layout, once its captions' token masks after label dropout are known)."""
        layout = plan.blocks.layout if isinstance(plan, Plan) else plan
        x = self.x_embedder(x)  # (B, N, D)
        if isinstance(y, TextFeatures):
            c, text_tokens, text_mask = self.text_conditioning(t, y, layout, label_drop)
            if not isinstance(plan, Plan):
                plan = self.plan(layout, rope, runtime=runtime, text_mask=text_mask)
            elif plan.text_valid is None or not torch.equal(layout.place_text(text_mask), plan.text_valid):
                raise ValueError("this plan was built for other captions (their token masks differ)")
            assert layout.text is not None  # checked by text_conditioning
            x = torch.where(layout.text[..., None], text_tokens.to(x.dtype), x)  # text tokens in their slots
        else:
            c = self.conditioning(t, y, label_drop)  # (B, n, D)
        assert isinstance(plan, Plan)
        cond = Conditioning(c, self.global_adaLN_modulation(c) if self.global_adaLN_modulation is not None else 0.0)
        blocks = plan.blocks

        def run_blocks(x: Tensor, first: int = 0, last: int | None = None) -> Tensor:
            for block in self.blocks[first:last]:
                if plan.grad_checkpointing and self.training:
                    x = checkpoint(block, x, cond, blocks, use_reentrant=False)
                else:
                    x = block(x, cond, blocks)
            return x

        if cache is None:
            x = run_blocks(x)
        else:
            x = cache(x, lambda h: run_blocks(h, 0, 1), lambda h: run_blocks(h, 1), blocks, len(self.blocks))
        x = self.final_layer(x, cond, blocks)  # (B, N, p²·C_out)
        return x * layout.mask[..., None].to(x.dtype)

    def plan(
        self,
        layout: TokenLayout,
        rope: RopeScaling | None = None,
        *,
        runtime: Runtime | None = None,
        text_mask: Tensor | None = None,
    ) -> Plan:
        """What a forward pass derives from ``layout``: whether the rows run unpadded, the RoPE tables and
        the attention kernel. Build it once per layout and pass it as the layout of every call.
        ``text_mask``: a text-to-image model's caption token masks, (B, M) or (B, n, M) (they decide which
        text slots are in context)."""
        cfg, runtime = self.config, runtime or self.runtime
        rope = rope or RopeScaling()
        unpad, rows = None, layout
        if runtime.unpad and text_mask is None:
            unpadded = unpadded_layout(layout)
            if unpadded is not None:
                unpad, rows = unpadded
        text_valid = None
        if text_mask is not None:
            text_valid = layout.place_text(text_mask if text_mask.dim() == 3 else text_mask[:, None])  # (B, N)
        cos, sin = rope_tables(rows, cfg.head_dim, cfg.rope_theta, rope, cfg.rope_train_len)
        segment = rows.attention_segment(text_valid)
        runs = contiguous_runs(segment) if segment is not None else None  # once, for attention and adaLN
        attention = choose_attention(runtime.attention, segment, runs)
        # A text layout's attention segment leaves out empty text slots; adaLN takes the images' runs.
        blocks = LayoutPlan.build(rows, cos, sin, attention, text_valid, runs if segment is rows.segment else None)
        return Plan(layout, rope, blocks, unpad, text_valid, runtime.grad_checkpointing)

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)


def build_model(config: ModelConfig, device: str | torch.device | None = None, runtime: Runtime = Runtime()) -> FiT:
    """Construct the backbone; on device 'meta' nothing is allocated (for counting)."""
    if device is not None and torch.device(device).type == "meta":
        with torch.device("meta"):
            return FiT(config, runtime)
    model = FiT(config, runtime)
    return model.to(device) if device is not None else model
