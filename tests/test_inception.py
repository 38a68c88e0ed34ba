"""Tests for fitv2.eval.inception: layout, strict loading and output shapes (random weights)."""

from __future__ import annotations

import pytest
import torch

from fitv2.checkpoint import CheckpointError
from fitv2.eval.inception import (
    FIDInceptionV3,
    load_inception,
    resize_bilinear_tf1,
)

# torchvision documents 27,161,264 parameters for inception_v3 (1000 classes, with the
# auxiliary classifier). The FID network drops the aux head and has a 1008-way fc:
_AUX = (768 * 128 + 2 * 128) + (128 * 768 * 25 + 2 * 768) + (768 * 1000 + 1000)
FID_INCEPTION_PARAMS = 27_161_264 - _AUX + 8 * (2048 + 1)  # = 23,850,960


def _random_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    model = FIDInceptionV3()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            # non-trivial running stats so loading is observable
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    return model.state_dict()


@pytest.fixture(scope="module")
def weights_path(tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / "pt_inception-random.pth"
    torch.save(_random_state_dict(), path)
    return path


def test_parameter_count_and_key_names():
    model = FIDInceptionV3()
    assert FID_INCEPTION_PARAMS == 23_850_960
    assert sum(p.numel() for p in model.parameters()) == FID_INCEPTION_PARAMS
    keys = set(model.state_dict())
    for name in [
        "Conv2d_1a_3x3.conv.weight",
        "Conv2d_1a_3x3.bn.weight",
        "Conv2d_1a_3x3.bn.bias",
        "Conv2d_1a_3x3.bn.running_mean",
        "Conv2d_1a_3x3.bn.running_var",
        "Conv2d_4a_3x3.conv.weight",
        "Mixed_5b.branch5x5_2.conv.weight",
        "Mixed_5b.branch3x3dbl_3.bn.running_var",
        "Mixed_6a.branch3x3.conv.weight",
        "Mixed_6b.branch7x7dbl_5.conv.weight",
        "Mixed_7a.branch7x7x3_4.conv.weight",
        "Mixed_7b.branch3x3_2a.conv.weight",
        "Mixed_7b.branch3x3dbl_3b.conv.weight",
        "Mixed_7c.branch_pool.conv.weight",
        "fc.weight",
        "fc.bias",
    ]:
        assert name in keys, name
    # no torchvision-only modules (aux classifier) and no conv biases
    assert not any(k.startswith("AuxLogits") for k in keys)
    assert not any(k.endswith("conv.bias") for k in keys)
    sd = model.state_dict()
    assert tuple(sd["Mixed_6b.branch7x7_2.conv.weight"].shape) == (128, 128, 1, 7)
    assert tuple(sd["Mixed_6e.branch7x7dbl_2.conv.weight"].shape) == (192, 192, 7, 1)
    assert tuple(sd["Mixed_5d.branch_pool.conv.weight"].shape) == (64, 288, 1, 1)
    assert tuple(sd["fc.weight"].shape) == (1008, 2048)


def test_load_and_forward_shapes(weights_path):
    model = load_inception(weights_path)
    assert not model.training
    assert all(not p.requires_grad for p in model.parameters())
    ref = _random_state_dict()
    assert torch.equal(
        model.state_dict()["Mixed_6d.branch1x1.bn.running_var"],
        ref["Mixed_6d.branch1x1.bn.running_var"],
    )

    captured = []
    model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: captured.append(o))
    torch.manual_seed(1)
    a = torch.randint(0, 256, (2, 3, 64, 96), dtype=torch.uint8)
    b = torch.randint(0, 256, (1, 3, 40, 40)).float()  # 0..255 float, range inferred
    with torch.no_grad():
        outs = [model(a), model(b)]
    for out, bsz in zip(outs, (2, 1)):
        assert out["pool"].shape == (bsz, 2048)
        assert out["spatial"].shape == (bsz, 2023)
        assert out["logits"].shape == (bsz, 1008)
        assert all(torch.isfinite(v).all() for v in out.values())
    out = outs[0]
    # sFID features: Mixed_6d.branch1x1 (TF mixed_6/conv), first 7 channels, NHWC flatten order
    fmap = captured[0]
    assert fmap.shape == (2, 192, 17, 17)
    torch.testing.assert_close(out["spatial"], fmap[:, :7].permute(0, 2, 3, 1).reshape(2, -1))
    # the ADM-style logits omit the bias; the full classifier output adds it back
    torch.testing.assert_close(out["logits_biased"], out["logits"] + model.fc.bias)
    torch.testing.assert_close(out["logits_biased"], model.fc(out["pool"]))
    # uint8 and the same pixels as [0, 1] floats preprocess identically
    torch.testing.assert_close(model.preprocess(a.float() / 255.0, input_max=1.0), model.preprocess(a))


def test_tf_compat_resize():
    x = torch.tensor([[[[0.0, 4.0]]]])
    # TF1 asymmetric mapping: src = dst * in / out, clamped at the border
    assert resize_bilinear_tf1(x, (1, 4)).flatten().tolist() == [0.0, 2.0, 4.0, 4.0]
    y = torch.arange(6.0).view(1, 1, 1, 6)
    assert resize_bilinear_tf1(y, (1, 4)).flatten().tolist() == [0.0, 1.5, 3.0, 4.5]
    z = torch.rand(1, 3, 5, 7)
    torch.testing.assert_close(resize_bilinear_tf1(z, (5, 7)), z)
    model = FIDInceptionV3(tf_compat=True)
    pre = model.preprocess(torch.full((1, 3, 8, 8), 128, dtype=torch.uint8))
    assert pre.shape == (1, 3, 299, 299) and torch.all(pre == 0)


def test_num_batches_tracked_tolerated(tmp_path):
    sd = _random_state_dict()
    sd = {k: v for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "no_counters.pth"
    torch.save(sd, path)
    load_inception(path)

    sd_st = {k: v.contiguous() for k, v in _random_state_dict().items()}
    from safetensors.torch import save_file

    st_path = tmp_path / "w.safetensors"
    save_file(sd_st, str(st_path))
    load_inception(st_path)


def test_readable_errors(tmp_path):
    sd = _random_state_dict()
    del sd["Mixed_7c.branch_pool.conv.weight"]
    sd["fc.weight"] = torch.zeros(1000, 2048)
    sd["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    path = tmp_path / "bad.pth"
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as info:
        load_inception(path)
    msg = str(info.value)
    assert "missing keys (1): Mixed_7c.branch_pool.conv.weight" in msg
    assert "unexpected keys (1): AuxLogits.fc.weight" in msg
    assert "fc.weight (1000, 2048) vs model (1008, 2048)" in msg

    with pytest.raises(FileNotFoundError, match=r"pt_inception-2015-12-05-6726825d\.pth"):
        load_inception(tmp_path / "does_not_exist.pth")
