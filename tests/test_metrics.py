"""Tests for fitv2.eval.metrics: closed-form and self-consistency checks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fitv2.eval.metrics import (
    FeatureStats,
    ManifoldEstimator,
    class_consistency,
    compute_radii,
    frechet_distance,
    inception_score,
    load_reference_stats,
    precision_recall,
)


def _random_rotation(d: int, rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((d, d)))
    return q * np.sign(np.diag(r))


def _closed_form_fd(mu1, a, mu2, b) -> float:
    # For commuting covariances with eigenvalues a, b: Tr(S1 + S2 - 2 sqrt(S1 S2)) = sum (√a - √b)²
    return float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))


def test_frechet_distance_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 32
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(_closed_form_fd(mu1, a, mu2, b), rel=1e-6)


def test_frechet_distance_commuting_closed_form():
    rng = np.random.default_rng(1)
    d = 24
    q = _random_rotation(d, rng)
    a, b = rng.uniform(0.05, 5.0, d), rng.uniform(0.05, 5.0, d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    got = frechet_distance(mu1, s1, mu2, s2)
    assert got == pytest.approx(_closed_form_fd(mu1, a, mu2, b), rel=1e-6)
    # symmetric in its arguments, and accepts torch tensors
    back = frechet_distance(torch.tensor(mu2), torch.tensor(s2), torch.tensor(mu1), torch.tensor(s1))
    assert back == pytest.approx(got, rel=1e-6)


def test_frechet_distance_singular_and_shape_errors():
    d = 8
    s = np.zeros((d, d))
    s[0, 0] = 1.0  # rank 1: the product is singular, result must stay finite
    assert np.isfinite(frechet_distance(np.zeros(d), s, np.zeros(d), s))
    with pytest.raises(ValueError):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_frechet_distance_matches_the_matrix_square_root_formula():
    """The eigenvalue trace equals Tr sqrtm(S1 S2) of the ADM evaluator on general covariances."""
    from scipy import linalg

    rng = np.random.default_rng(0)
    a, b = FeatureStats(), FeatureStats()
    a.update(rng.standard_normal((200, 24)) @ rng.standard_normal((24, 24)))
    b.update(rng.standard_normal((150, 24)) * 1.3 + 0.2)
    diff = a.mean - b.mean
    expected = diff @ diff + np.trace(a.cov + b.cov - 2 * linalg.sqrtm(a.cov @ b.cov).real)
    assert frechet_distance(a.mean, a.cov, b.mean, b.cov) == pytest.approx(expected, rel=1e-9)
    assert abs(frechet_distance(a.mean, a.cov, a.mean, a.cov)) < 1e-9


def test_feature_stats_streaming_matches_numpy(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.standard_normal((1000, 20)) * rng.uniform(0.1, 3, 20) + 50.0
    stats = FeatureStats()
    for chunk in np.array_split(x, [1, 7, 300, 301, 640]):  # includes a 1-row batch
        stats.update(torch.from_numpy(chunk) if len(chunk) == 6 else chunk)
    assert stats.n == 1000
    np.testing.assert_allclose(stats.mean, x.mean(0), rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(stats.cov, np.cov(x, rowvar=False), rtol=1e-10, atol=1e-10)

    path = tmp_path / "stats.npz"
    stats.save(path)
    loaded = FeatureStats.load(path)
    assert loaded.n == stats.n
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    mu, sigma = load_reference_stats(path)
    np.testing.assert_array_equal(mu, stats.mean)
    np.testing.assert_array_equal(sigma, stats.cov)


def test_feature_stats_merge_and_memory_bound():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((500, 6))
    a, b = FeatureStats(), FeatureStats()
    a.update(x[:123])
    b.update(x[123:])
    a.merge(b)
    np.testing.assert_allclose(a.cov, np.cov(x, rowvar=False), rtol=1e-12, atol=1e-12)
    # state is (D,) + (D, D) regardless of how many rows went in
    assert a._mean.shape == (6,) and a._m2.shape == (6, 6)
    with pytest.raises(ValueError):
        a.update(np.zeros((2, 7)))


def test_fd_self_zero_and_monotone_in_noise():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3000, 16)) @ rng.standard_normal((16, 16))
    base = FeatureStats()
    base.update(x)
    assert abs(frechet_distance(base.mean, base.cov, base.mean, base.cov)) < 1e-8
    fds = []
    for sigma in [0.05, 0.2, 0.5, 1.0, 2.0]:
        noisy = FeatureStats()
        noisy.update(x + sigma * rng.standard_normal(x.shape))
        fds.append(frechet_distance(base.mean, base.cov, noisy.mean, noisy.cov))
    assert all(f2 > f1 for f1, f2 in itertools.pairwise(fds)), fds


def test_compute_radii_matches_brute_force():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((150, 10)).astype(np.float64)
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    expected = np.sort(d, axis=1)[:, 3]  # column 0 is the point itself
    got = compute_radii(x, k=3, batch=32, dtype=torch.float64).numpy()  # forces block merging
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-10)


def test_precision_recall_self_and_far():
    rng = np.random.default_rng(6)
    real = rng.standard_normal((400, 32)).astype(np.float32)
    p, r = precision_recall(real, real.copy(), k=3, batch=128)
    assert (p, r) == (1.0, 1.0)
    p, r = precision_recall(real, real + 100.0, k=3, batch=128)
    assert (p, r) == (0.0, 0.0)


def test_precision_recall_asymmetric():
    # fakes collapsed onto a small part of the real distribution: high precision, low recall
    rng = np.random.default_rng(7)
    real = rng.standard_normal((600, 4))
    fake = 0.1 * rng.standard_normal((600, 4))
    p, r = precision_recall(torch.from_numpy(real), torch.from_numpy(fake), k=3, batch=256)
    assert p > 0.9 and r < 0.3
    est = ManifoldEstimator(real, k=3, batch=256)
    assert float(est.contains(fake).double().mean()) == pytest.approx(p)


def test_inception_score_uniform_confident_and_identical():
    k, per_class = 10, 50
    labels = np.repeat(np.arange(k), per_class)
    logits = np.full((k * per_class, k), -30.0)
    logits[np.arange(len(labels)), labels] = 30.0
    mean, std = inception_score(logits)
    assert mean == pytest.approx(k, rel=1e-3) and std == 0.0
    # probabilities (one-hot, exact zeros) give the same answer
    mean_p, _ = inception_score(np.eye(k)[labels])
    assert mean_p == pytest.approx(k, rel=1e-9)
    # identical predictions: p(y|x) == p(y) so KL = 0 and IS = 1
    same = np.tile(np.random.default_rng(8).standard_normal(k), (100, 1))
    assert inception_score(same)[0] == pytest.approx(1.0, abs=1e-9)


def test_inception_score_splits():
    rng = np.random.default_rng(9)
    k = 10
    labels = rng.permutation(np.repeat(np.arange(k), 40))
    logits = 40.0 * np.eye(k)[labels]
    mean, std = inception_score(torch.from_numpy(logits), splits=4)
    assert 1.0 < mean <= k + 1e-6 and std >= 0.0
    m_size, _ = inception_score(logits, split_size=100)
    assert m_size == pytest.approx(mean, rel=1e-12)  # 4 splits of 100 == split_size 100
    with pytest.raises(ValueError):
        inception_score(logits, splits=0)


def test_class_consistency():
    logits = torch.tensor([[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 1.0]])
    assert class_consistency(logits, [0, 1, 2, 0]) == 1.0
    assert class_consistency(logits.numpy(), np.array([0, 1, 2, 2])) == 0.75
    with pytest.raises(ValueError):
        class_consistency(logits, [0, 1])
