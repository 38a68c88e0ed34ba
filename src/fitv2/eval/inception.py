"""The FID Inception-v3 network (TF "inception-2015-12-05" graph), written without torchvision.

This is the network behind FID, sFID, Inception Score and improved precision/recall as computed
by the ADM evaluator (openai/guided-diffusion ``evaluations/evaluator.py``), which runs the TF
graph ``classify_image_graph_def.pb``. Parameter names follow the PyTorch port shipped by
pytorch-fid (``pt_inception-2015-12-05-6726825d.pth``), so those weights load with a strict key
check. The structure differs from torchvision's ImageNet Inception-v3 in a few places:
1008-way classifier, average pools that ignore padding (``count_include_pad=False``) in the
A/C/E_1 blocks, and a max pool in the last E block.

Mapping of the TF graph's scope names to module names: ``mixed`` = Mixed_5b, ``mixed_1`` =
Mixed_5c, ``mixed_2`` = Mixed_5d, ``mixed_3`` = Mixed_6a, ``mixed_4..7`` = Mixed_6b..6e,
``mixed_8`` = Mixed_7a, ``mixed_9/10`` = Mixed_7b/7c; ``<scope>/conv`` is the first (1x1) branch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import load_weights, read_state_dict

FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + FID_WEIGHTS_NAME
INPUT_SIZE = 299
SPATIAL_CHANNELS = 7  # ADM keeps mixed_6/conv[..., :7]: 7 * 17 * 17 = 2023 features

__all__ = [
    "FID_WEIGHTS_NAME",
    "FID_WEIGHTS_URL",
    "FIDInceptionV3",
    "load_inception",
]


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3) + ReLU, the TF graph's ``conv`` unit."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_same(x: torch.Tensor) -> torch.Tensor:
    # TF's SAME average pool divides by the number of valid (unpadded) inputs.
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/5c/5d)."""

    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(_avg_pool_same(x))
        return torch.cat([b1, b5, b3, bp], 1)


class InceptionB(nn.Module):
    """35x35 -> 17x17 reduction block (Mixed_6a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3(x)
        bd = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, bd, bp], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convolutions (Mixed_6b..6e)."""

    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward_with_first(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return the block output and its first branch (the TF graph's ``mixed_N/conv``)."""
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = self.branch7x7dbl_1(x)
        for layer in (
            self.branch7x7dbl_2,
            self.branch7x7dbl_3,
            self.branch7x7dbl_4,
            self.branch7x7dbl_5,
        ):
            bd = layer(bd)
        bp = self.branch_pool(_avg_pool_same(x))
        return torch.cat([b1, b7, bd, bp], 1), b1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_first(x)[0]


class InceptionD(nn.Module):
    """17x17 -> 8x8 reduction block (Mixed_7a)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        bp = F.max_pool2d(x, kernel_size=3, stride=2)
        return torch.cat([b3, b7, bp], 1)


class InceptionE(nn.Module):
    """8x8 block with expanded filter banks (Mixed_7b: avg pool, Mixed_7c: max pool)."""

    def __init__(self, cin: int, pool: str) -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.pool == "avg":
            pooled = _avg_pool_same(x)
        else:
            # The 2015 TF graph max-pools here (unlike the paper); FID depends on matching it.
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([b1, b3, bd, self.branch_pool(pooled)], 1)


def resize_bilinear_tf1(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize as TF1 ``ResizeBilinear(align_corners=False)``: src = dst * in/out.

    TF1 used this "asymmetric" mapping (no half-pixel offset), unlike PyTorch's
    ``align_corners=False``; the ADM evaluator's graph resizes this way.
    """
    out = x
    for dim, n_out in ((2, size[0]), (3, size[1])):
        n_in = out.shape[dim]
        if n_in == n_out:
            continue
        src = torch.arange(n_out, device=x.device, dtype=torch.float64) * (n_in / n_out)
        i0 = src.floor().long().clamp_max(n_in - 1)
        i1 = (i0 + 1).clamp_max(n_in - 1)
        w = (src - i0.to(torch.float64)).to(out.dtype)
        shape = [1, 1, 1, 1]
        shape[dim] = n_out
        w = w.view(shape)
        out = out.index_select(dim, i0) * (1 - w) + out.index_select(dim, i1) * w
    return out


class FIDInceptionV3(nn.Module):
    """FID Inception-v3. ``forward`` returns a dict of float32 tensors.

    Args:
        tf_compat: if False (default) preprocess as pytorch-fid does: PyTorch bilinear resize to
            299x299 (``align_corners=False``) and map [0, 1] -> [-1, 1] via ``2x - 1``. If True,
            mimic the TF graph used by the ADM evaluator: TF1 asymmetric bilinear resize on
            [0, 255] values, then ``(x - 128) / 128``. Both are "the FID network"; the TF
            variant is closer to ADM's numbers.
    """

    def __init__(self, tf_compat: bool = False) -> None:
        super().__init__()
        self.tf_compat = tf_compat
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = InceptionA(192, pool_features=32)
        self.Mixed_5c = InceptionA(256, pool_features=64)
        self.Mixed_5d = InceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = InceptionC(768, c7=128)
        self.Mixed_6c = InceptionC(768, c7=160)
        self.Mixed_6d = InceptionC(768, c7=160)
        self.Mixed_6e = InceptionC(768, c7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = InceptionE(1280, pool="avg")
        self.Mixed_7c = InceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)

    def preprocess(self, x: torch.Tensor, input_max: float | None = None) -> torch.Tensor:
        """Map (B, 3, H, W) images of any size to the network's 299x299 [-1, 1] input.

        ``input_max`` is the value of white: 255 for uint8-range data, 1 for [0, 1] floats.
        ``None`` infers it: uint8 tensors are 0..255; float tensors whose maximum exceeds 1
        are treated as 0..255, otherwise as [0, 1].
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(x.shape)}")
        if input_max is None:
            input_max = 255.0 if (x.dtype == torch.uint8 or float(x.max()) > 1.0) else 1.0
        x = x.to(torch.float32)
        size = (INPUT_SIZE, INPUT_SIZE)
        if self.tf_compat:
            x = x * (255.0 / input_max)
            x = resize_bilinear_tf1(x, size)
            return (x - 128.0) / 128.0
        x = x / input_max
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0

    def forward(self, x: torch.Tensor, input_max: float | None = None) -> dict[str, torch.Tensor]:
        """Compute the evaluation features.

        Returns a dict with
          * ``pool`` (B, 2048): global average pool after Mixed_7c (TF ``pool_3``), for FID,
            precision/recall.
          * ``spatial`` (B, 2023): the sFID features. ADM uses the TF tensor ``mixed_6/conv:0``,
            i.e. the output (after BN + ReLU) of the first 1x1 branch of the *fourth* 17x17
            block, which in this module naming is ``Mixed_6d.branch1x1`` (192 x 17 x 17), not
            Mixed_6e. ADM keeps channels ``[..., :7]`` of the NHWC map and flattens; we do the
            same in (H, W, C) order so the features line up with ADM reference statistics
            (``mu_s``/``sigma_s``) element for element.
          * ``logits`` (B, 1008): ``pool @ fc.weight.T`` *without* the bias, which is what ADM
            feeds to its softmax for the Inception Score (it taps ``softmax/logits/MatMul``).
          * ``logits_biased`` (B, 1008): the full classifier output ``fc(pool)``.
        """
        x = self.preprocess(x, input_max)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Mixed_5d(self.Mixed_5c(self.Mixed_5b(x)))
        x = self.Mixed_6c(self.Mixed_6b(self.Mixed_6a(x)))
        x, first = self.Mixed_6d.forward_with_first(x)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(self.Mixed_6e(x))))
        pool = x.mean(dim=(2, 3))
        spatial = first[:, :SPATIAL_CHANNELS].permute(0, 2, 3, 1).reshape(first.shape[0], -1)
        logits = pool @ self.fc.weight.t()
        return {
            "pool": pool.float(),
            "spatial": spatial.float(),
            "logits": logits.float(),
            "logits_biased": (logits + self.fc.bias).float(),
        }


def _is_bn_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def load_inception(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    tf_compat: bool = False,
) -> FIDInceptionV3:
    """Build the FID Inception network and load weights from a local ``.pth``/``.safetensors``.

    Keys are checked strictly (except ``num_batches_tracked``); the model is returned in eval
    mode with gradients disabled.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"FID Inception weights not found at '{path}'. This network cannot download them; "
            f"fetch '{FID_WEIGHTS_NAME}' (the pytorch-fid port of TF inception-2015-12-05) from "
            f"{FID_WEIGHTS_URL} on a machine with internet access and pass its local path."
        )
    model = FIDInceptionV3(tf_compat=tf_compat)
    # The original port predates BatchNorm's num_batches_tracked counters; they play no part in eval.
    load_weights(model, read_state_dict(path), source=f"FID Inception weights {path.name}", ignore=_is_bn_counter)
    model.requires_grad_(False)
    return model.eval().to(device)
