"""Pictures the demo and the benchmarks write: grids across sizes and loss curves."""

import numpy as np

from fitv2.plot import _smooth, image_grid, loss_curve


def test_smoothing_is_centred_so_a_falling_loss_does_not_lag():
    line = np.linspace(2.0, 0.0, 101)
    assert np.allclose(_smooth(line, 0.2), line)  # a centred average leaves a straight line where it is
    noisy = 1.0 + np.random.default_rng(0).normal(0, 0.1, 1000)
    assert _smooth(noisy, 0.1).std() < noisy.std() / 5
    assert np.array_equal(_smooth(noisy, 0.0), noisy)


def test_loss_curve_is_an_image_of_the_requested_size():
    assert loss_curve(range(1, 50), np.exp(-np.arange(1, 50) / 10), size=(320, 200)).size == (320, 200)
    assert loss_curve([], []).size == (640, 360)


def test_grid_keeps_columns_aligned_across_aspect_ratios():
    square = [np.full((8, 8, 3), 255, np.uint8)] * 3
    wide = [np.zeros((4, 12, 3), np.uint8)] * 3
    grid = image_grid([square, wide], ["8x8", "4x12"], ["a", "b", "c"], pad=2, scale=1)
    # three columns, each as wide as its widest image (12), plus the row labels on the left
    assert grid.width > 3 * 12 + 4 * 2 and grid.height >= 8 + 4 + 3 * 2
