"""Rectified flow: time sampling and the masked, per-image loss."""

import pytest
import torch
from conftest import randomize, tiny_config

from fitv2.flow import TimeSampler, flow_loss, interpolate, per_image_mse
from fitv2.model import FiT
from fitv2.tokens import pack_sequences, pad_sequences


def test_logit_normal_median_and_logit_std():
    g = torch.Generator().manual_seed(1)
    t = TimeSampler("logit-normal")((200_000,), generator=g)
    assert float(t.median()) == pytest.approx(0.5, abs=0.01)
    assert float(torch.logit(t).std()) == pytest.approx(1.0, abs=0.01)
    u = TimeSampler("uniform")((200_000,), generator=g)
    assert float(u.mean()) == pytest.approx(0.5, abs=0.01) and 0 <= float(u.min()) and float(u.max()) <= 1


def test_path_endpoints():
    x0, x1 = torch.randn(2, 5, 3), torch.randn(2, 5, 3)
    xt, ut = interpolate(x0, x1, torch.tensor([0.0, 1.0]))
    torch.testing.assert_close(xt[0], x0[0])
    torch.testing.assert_close(xt[1], x1[1])
    torch.testing.assert_close(ut, x1 - x0)


def test_loss_unchanged_when_padding_is_appended():
    cfg = tiny_config()
    model = randomize(FiT(cfg)).eval()
    items = [(torch.randn(h * w, cfg.token_dim), h, w) for h, w in [(3, 5), (2, 2)]]
    t, y = torch.tensor([0.3, 0.8]), torch.tensor([1, 2])
    losses = []
    for length in (15, 40):
        batch = pad_sequences(items, length=length)
        x0 = torch.zeros_like(batch.x)
        x0[:, :15] = torch.randn(2, 15, cfg.token_dim, generator=torch.Generator().manual_seed(0))
        losses.append(flow_loss(model, batch.x, y, batch.layout, t=t, x0=x0))
    torch.testing.assert_close(losses[0].per_image, losses[1].per_image)
    torch.testing.assert_close(losses[0].loss, losses[1].loss)


def test_per_image_mse_is_mean_over_valid_tokens_only():
    pred, target = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]]).float()
    loss = per_image_mse(pred, target, pad_sequences([(torch.zeros(n, 4), 1, n) for n in (3, 6)]).layout)
    assert torch.equal(pad_sequences([(torch.zeros(n, 4), 1, n) for n in (3, 6)]).layout.mask, mask)
    torch.testing.assert_close(loss[0], (pred[0, :3] - target[0, :3]).pow(2).mean())
    torch.testing.assert_close(loss[1], (pred[1] - target[1]).pow(2).mean())


def test_packed_loss_equals_unpacked_per_image():
    cfg = tiny_config()
    model = randomize(FiT(cfg)).eval()
    sizes = [(3, 5), (2, 4), (4, 4)]
    items = [(torch.randn(h * w, cfg.token_dim), h, w) for h, w in sizes]
    t, y = torch.tensor([0.2, 0.5, 0.9]), torch.tensor([1, 2, 3])
    noise = [torch.randn(h * w, cfg.token_dim) for h, w in sizes]
    packed = pack_sequences(items, rows=[[0, 1], [2]])
    x0 = pack_sequences([(n, h, w) for n, (h, w) in zip(noise, sizes)], rows=[[0, 1], [2]]).x
    tp, yp = torch.tensor([[0.2, 0.5], [0.9, 0.0]]), torch.tensor([[1, 2], [3, 10]])
    out = flow_loss(model, packed.x, yp, packed.layout, t=tp, x0=x0)
    singles = []
    for i, (tokens, h, w) in enumerate(items):
        b = pad_sequences([(tokens, h, w)])
        singles.append(flow_loss(model, b.x, y[i : i + 1], b.layout, t=t[i : i + 1], x0=noise[i][None]).per_image[0])
    torch.testing.assert_close(out.per_image[0], torch.stack(singles[:2]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.per_image[1, 0], singles[2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.loss, torch.stack(singles).mean(), atol=1e-5, rtol=1e-5)
