"""Attention kernels: one small class each, one interface, chosen once per forward pass.

A token sees only the tokens of its own image. ``segment`` (B, N) gives each token's image
(0 = padding, k = k-th image of a packed row; None = nothing padded or packed): tokens with
equal ids see each other. Padding attends to padding, so no softmax row is empty, and a
valid token's output never depends on padding or on other images of its row.

Every backend takes q, k, v as (B, heads, N, head_dim) and returns the same shape; the
model builds one per forward pass (:func:`choose_attention`) and every block calls it.

  ``sdpa``          scaled_dot_product_attention over whole rows; no mask when nothing is
                    padded, else a boolean block mask (B, 1, N, N).
  ``sdpa-varlen``   SDPA per image on the valid tokens only, images of equal length batched
                    together: no work on padding or across images.
  ``flex``          compiled FlexAttention with a document mask, where it works on this
                    device and torch (:func:`flex_supported`).
  ``flash-varlen``  flash-attention's variable-length kernel (CUDA, fp16/bf16, the
                    ``flash_attn`` package).
  ``torch-varlen``  PyTorch's own variable-length kernel, ``torch.nn.attention.varlen``
                    (CUDA, fp16/bf16, torch versions that have it).
  ``auto``          flex on CUDA; on the CPU sdpa-varlen when the block mask would do over
                    1.5× the work of per-image attention (long packed rows, heavy padding),
                    else sdpa.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from types import EllipsisType
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import ConfigError
from ..names import ATTENTION_NAMES

VarlenKernel = Callable[..., Tensor]  # (q, k, v, cu_q, cu_k, max_q, max_k) -> out, tokens as (T, H, D)


class AttentionBackend:
    """One kernel for one forward pass; its mask or index is built once, for all blocks."""

    name: ClassVar[str]

    def __init__(self, segment: Tensor | None):
        self.segment = segment

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        """Why this kernel cannot run on ``device`` here (None: it can)."""
        return None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        raise NotImplementedError


class SDPA(AttentionBackend):
    """scaled_dot_product_attention over whole rows with a boolean same-image mask (none if unmasked)."""

    name = "sdpa"

    def __init__(self, segment: Tensor | None):
        super().__init__(segment)
        self.mask = None if segment is None else segment[:, None, :, None] == segment[:, None, None, :]  # (B,1,N,N)

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=self.mask)


class _Varlen(AttentionBackend):
    """Attention on the valid tokens only, as one run per image (the flash_attn varlen contract)."""

    def __init__(self, segment: Tensor, kernel: VarlenKernel | None = None):
        super().__init__(segment)
        # Valid tokens in row-major order form contiguous runs, one per image.
        flat = segment.reshape(-1)
        row = torch.arange(segment.shape[0], device=segment.device).repeat_interleave(segment.shape[1])
        self.valid = (flat > 0).nonzero().squeeze(1)  # (T,) flat token index
        key = row[self.valid] * (int(flat.max()) + 1) + flat[self.valid]
        _, counts = torch.unique_consecutive(key, return_counts=True)
        self.cu_seqlens = F.pad(counts.cumsum(0), (1, 0)).to(torch.int32)  # (images + 1,)
        self.max_seqlen = int(counts.max())
        self.kernel = kernel or self.default_kernel()

    def default_kernel(self) -> VarlenKernel:
        raise NotImplementedError

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        B, H, N, D = q.shape

        def tokens(x: Tensor) -> Tensor:
            return x.transpose(1, 2).reshape(B * N, H, D)[self.valid]  # (T, H, D)

        out = self.kernel(
            tokens(q), tokens(k), tokens(v), self.cu_seqlens, self.cu_seqlens, self.max_seqlen, self.max_seqlen
        )
        full = q.new_zeros(B * N, H, D)
        full[self.valid] = out.to(q.dtype)
        return full.reshape(B, N, H, D).transpose(1, 2)  # (B, H, N, D)


def _sdpa4(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """SDPA of one image's (H, n, D) tokens as a 4-D call: 3-D inputs take the unfused math path on the
    CPU (bmm and softmax: 2.6× slower forward and backward for a 961-token image)."""
    return F.scaled_dot_product_attention(q[None], k[None], v[None])[0]


Runs = list[tuple[list[int], list[int]]]  # per row: run lengths and their image ids (0: padding)


def contiguous_runs(segment: Tensor) -> Runs | None:
    """Per row, the lengths of its runs of equal segment ids and each run's id (0: padding), when every
    image is one run (as packing and padding lay them out); None otherwise."""
    rows = []
    for row in segment.cpu():
        ids, counts = torch.unique_consecutive(row, return_counts=True)
        real = ids > 0
        if int(real.sum()) != len(torch.unique(ids[real])):
            return None  # an image in several runs (e.g. empty text slots inside it)
        rows.append((counts.tolist(), ids.tolist()))
    return rows


class PerImageSDPA(_Varlen):
    """SDPA per image on its valid tokens. Where every image is one contiguous run of its row, the runs
    are views of q, k and v (split, whose backward is one concatenation); otherwise the valid tokens
    are gathered and images of equal length go through one call."""

    name = "sdpa-varlen"

    def __init__(self, segment: Tensor, runs: Runs | EllipsisType | None = ...):
        """``runs``: ``contiguous_runs(segment)`` when the caller has it already (``...``: not yet computed)."""
        self.runs = contiguous_runs(segment) if runs is ... else runs
        if self.runs is not None:  # no token index needed
            self.segment = segment
            self.kernel = self._per_image
            return
        super().__init__(segment)
        lengths = self.cu_seqlens.diff()
        starts = self.cu_seqlens[:-1].long()
        # Token indices (within the valid tokens) of the images of each length: (k, L) each.
        self.groups = [
            starts[lengths == n][:, None] + torch.arange(int(n), device=segment.device)
            for n in torch.unique(lengths).tolist()
        ]

    def default_kernel(self) -> VarlenKernel:
        return self._per_image

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if self.runs is None:
            return super().__call__(q, k, v)
        rows = []
        for (lengths, ids), qb, kb, vb in zip(self.runs, q.unbind(0), k.unbind(0), v.unbind(0)):
            runs = zip(qb.split(lengths, dim=1), kb.split(lengths, dim=1), vb.split(lengths, dim=1), ids)
            parts = [_sdpa4(qi, ki, vi) if i else torch.zeros_like(qi) for qi, ki, vi, i in runs]
            rows.append(torch.cat(parts, dim=1) if len(parts) > 1 else parts[0])
        return torch.stack(rows)  # (B, H, N, D)

    def _per_image(self, q: Tensor, k: Tensor, v: Tensor, *_) -> Tensor:
        out = torch.empty_like(q)
        for idx in self.groups:
            qi, ki, vi = (x[idx].transpose(1, 2) for x in (q, k, v))  # (k, H, L, D)
            out[idx] = F.scaled_dot_product_attention(qi, ki, vi).transpose(1, 2)
        return out


class FlashVarlen(_Varlen):
    """flash_attn.flash_attn_varlen_func."""

    name = "flash-varlen"

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "needs the flash_attn package (pip install flash-attn)"
        return None if device.type == "cuda" else "runs on CUDA only"

    def default_kernel(self) -> VarlenKernel:
        from flash_attn import flash_attn_varlen_func

        return flash_attn_varlen_func


class TorchVarlen(_Varlen):
    """torch.nn.attention.varlen.varlen_attn."""

    name = "torch-varlen"

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        try:
            from torch.nn.attention.varlen import varlen_attn  # noqa: F401
        except ImportError:
            return f"needs torch.nn.attention.varlen, which torch {torch.__version__} does not have"
        return None if device.type == "cuda" else "runs on CUDA only"

    def default_kernel(self) -> VarlenKernel:
        from torch.nn.attention.varlen import varlen_attn

        def kernel(q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, max_q: int, max_k: int) -> Tensor:
            out = varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k)
            return out[0] if isinstance(out, tuple) else out  # a tuple only with return_aux, not passed here

        return kernel


_compiled_flex = None
# (device, grad) -> whether compiled FlexAttention runs there; probed once per process.
_flex_support: dict[tuple[str, bool], bool] = {}


def _flex_attention():
    global _compiled_flex
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
    return _compiled_flex


def document_block_mask(segment: Tensor):
    """FlexAttention block mask letting a token see only the tokens of its own segment."""
    from torch.nn.attention.flex_attention import create_block_mask

    def same_segment(b, h, q, k):
        return segment[b, q] == segment[b, k]

    B, N = segment.shape
    return create_block_mask(same_segment, B, None, N, N, device=segment.device)


class FlexAttention(AttentionBackend):
    """Compiled FlexAttention with a document mask."""

    name = "flex"

    def __init__(self, segment: Tensor):
        super().__init__(segment)
        self.block_mask = document_block_mask(segment)

    @classmethod
    def unavailable(cls, device: torch.device) -> str | None:
        try:  # the submodule is an attribute of torch.nn.attention only once something imported it
            import torch.nn.attention.flex_attention
        except ImportError:
            return f"torch {torch.__version__} has no FlexAttention"
        return None

    def __call__(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        return _flex_attention()(q, k, v, block_mask=self.block_mask)


@torch.compiler.disable
def flex_supported(device: torch.device | str, grad: bool = False) -> bool:
    """Whether compiled FlexAttention runs correctly on ``device`` (forward, and backward if ``grad``).

    Decided once per (device, grad) by comparing the compiled kernel with masked SDPA on small padded
    batches: Inductor's CPU template fails to build for dynamic shapes in some torch versions (2.13),
    and CPU FlexAttention has no backward. Warns once where it does not work, as attention then falls
    back to SDPA."""
    device = torch.device(device)
    key = (str(device), bool(grad))
    if key in _flex_support:
        return _flex_support[key]
    try:
        ok, why = _probe_flex(device, grad), "its output differs from SDPA"
    except Exception as err:  # failing to import, compile or run all mean: not here
        lines = str(err).strip().splitlines()
        ok, why = False, f"{type(err).__name__}: {lines[0][:160]}" if lines else type(err).__name__
    if not ok:
        warnings.warn(
            f"compiled FlexAttention does not work on {device} with torch {torch.__version__} ({why}); "
            "attention uses SDPA there instead",
            RuntimeWarning,
            stacklevel=3,
        )
    _flex_support[key] = ok
    return ok


def _probe_flex(device: torch.device, grad: bool) -> bool:
    generator = torch.Generator().manual_seed(0)
    # Batch, heads and length all different and no length a multiple of the kernel's block: shapes that
    # share a size, or fit the block, take paths of the dynamic-shape kernel that a real batch may not.
    for B, H, N in ((3, 2, 40), (2, 3, 56)):
        segment = torch.ones(B, N, dtype=torch.long)
        segment[1, N // 2 :] = 0
        segment = segment.to(device)
        q, k, v = (torch.randn(B, H, N, 16, generator=generator).to(device).requires_grad_(grad) for _ in range(3))
        with torch.set_grad_enabled(grad):
            out = _flex_attention()(q, k, v, block_mask=document_block_mask(segment))
            if grad:
                out.sum().backward()
        mask = segment[:, None, :, None] == segment[:, None, None, :]
        ref = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), attn_mask=mask)
        if not torch.allclose(out.detach(), ref, atol=1e-4, rtol=1e-4):
            return False
    return True


BACKENDS: dict[str, type[AttentionBackend]] = {
    cls.name: cls for cls in (SDPA, PerImageSDPA, FlexAttention, FlashVarlen, TorchVarlen)
}
if set(BACKENDS) != set(ATTENTION_NAMES) - {"auto"}:  # the names --attention offers are these kernels
    raise ImportError(f"fitv2.names.ATTENTION_NAMES {ATTENTION_NAMES} do not name the kernels {tuple(BACKENDS)}")


def attention_unavailable(name: str, device: torch.device | str) -> str | None:
    """Why the backend ``name`` cannot run on ``device`` (None: it can, or ``auto``)."""
    if name == "auto":
        return None
    if name not in BACKENDS:
        return f"unknown attention backend {name!r}; choose one of {', '.join(ATTENTION_NAMES)}"
    return BACKENDS[name].unavailable(torch.device(device))


def _cpu_choice(segment: Tensor, runs: Runs | None) -> type[AttentionBackend]:
    """Per image when the masked whole rows would do more work: any more where every image is one run
    of its row (``runs``: views, nothing copied), over 1.5× more where its tokens would have to be gathered."""
    counts = torch.stack([torch.bincount(row, minlength=int(segment.max()) + 1)[1:] for row in segment])
    per_image = float(counts.double().pow(2).sum())
    whole_rows = float(segment.shape[0] * segment.shape[1] ** 2)
    margin = 1.0 if runs is not None else 1.5
    return PerImageSDPA if whole_rows > margin * per_image else SDPA


def choose_attention(name: str, segment: Tensor | None, runs: Runs | EllipsisType | None = ...) -> AttentionBackend:
    """The backend ``name`` (or the ``auto`` choice) for a batch whose tokens see each other by ``segment``
    (``runs``: its :func:`contiguous_runs`, if already computed).

    With nothing padded or packed (segment None) every backend computes plain attention, so unmasked
    SDPA runs. Compiled FlexAttention falls back to the CPU choice where it does not work."""
    if segment is None:
        return SDPA(None)
    if runs is ...:
        runs = contiguous_runs(segment)
    if name == "auto":
        use_flex = segment.is_cuda and FlexAttention.unavailable(segment.device) is None
        name = "flex" if use_flex else _cpu_choice(segment, runs).name
    if name not in BACKENDS:
        raise ConfigError(f"unknown attention backend {name!r}; choose one of {', '.join(ATTENTION_NAMES)}")
    if name == "flex" and not flex_supported(segment.device, torch.is_grad_enabled()):
        name = _cpu_choice(segment, runs).name
    cls = BACKENDS[name]
    why = cls.unavailable(segment.device)
    if why is not None:
        raise ConfigError(f"attention backend {name!r} {why}")
    return PerImageSDPA(segment, runs) if cls is PerImageSDPA else cls(segment)
