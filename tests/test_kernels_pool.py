import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from gradcheck import assert_close, both_paths, check_directional, t64, weighted_sum
from spark_nn import kernels as K

# (N, C, H, W, kernel, stride, padding)
SHAPES = [
    (1, 1, 4, 4, 2, 2, 0),
    (2, 3, 7, 5, 2, 2, 0),          # odd sizes: floor drops the last row/column
    (3, 2, 9, 8, 3, 2, 1),          # overlapping windows with padding
    (1, 4, 6, 11, (3, 2), (1, 2), (1, 1)),
    (64, 32, 28, 28, 2, 2, 0),      # the benchmark shape
    # the 2x2/2 path's block layouts: groups of whole planes (a partial last group; 1x1
    # outputs, 1024 planes a group) and runs of output rows of one plane (over 1024 outputs)
    (3, 5, 4, 5, 2, 2, 0),
    (2, 700, 3, 2, 2, 2, 0),
    (1, 2, 71, 66, 2, 2, 0),
]


@pytest.mark.parametrize("shape", SHAPES)
def test_maxpool_matches_torch(rng, shape):
    n, c, h, w, k, s, p = shape
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    y, idx = K.maxpool2d_forward(x, k, s, p)
    xt = t64(x)
    yt, it = TF.max_pool2d(xt, k, s, p, return_indices=True)
    np.testing.assert_array_equal(y, yt.detach().numpy().astype(np.float32))
    np.testing.assert_array_equal(idx, it.numpy())
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    assert_close("dx", K.maxpool2d_backward(dy, idx, x.shape, k, s, p), xt.grad.numpy())


@pytest.mark.parametrize("shape", [(2, 3, 8, 8), (1, 3, 9, 7), (4, 300, 2, 3), (1, 1, 90, 64)])
def test_maxpool_2x2_path_ties_and_nans_equal_the_reference(rng, shape):
    """Ties (small integers) and NaNs anywhere in a window: the vectorized 2x2/2 path takes the
    same value and index as the general loop (first maximum row-major; the first NaN wins)."""
    x = rng.integers(0, 3, shape).astype(np.float32)
    x[rng.random(shape) < 0.05] = np.nan
    (y, idx), (y_ref, idx_ref) = both_paths(lambda: K.maxpool2d_forward(x, 2))
    assert np.isnan(y).any() and (y == 2).any()
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    it = TF.max_pool2d(torch.from_numpy(x), 2, return_indices=True)[1].numpy()
    no_nan = ~np.isnan(y)  # torch's index for a NaN window may name another NaN of it
    np.testing.assert_array_equal(idx[no_nan], it[no_nan])


def test_maxpool_ties_pick_first_like_torch():
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)
    x[0, 0, 1, 1] = x[0, 0, 0, 1] = 1.0
    y, idx = K.maxpool2d_forward(x, 2)
    _, it = TF.max_pool2d(torch.from_numpy(x), 2, return_indices=True)
    np.testing.assert_array_equal(idx, it.numpy())
    assert idx[0, 0, 0, 0] == 1


def test_maxpool_finite_differences(rng):
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    y, idx = K.maxpool2d_forward(x, 3, 2, 1)
    r = rng.standard_normal(y.shape)
    dx = K.maxpool2d_backward(r.astype(np.float32), idx, x.shape, 3, 2, 1)
    check_directional(lambda: weighted_sum(K.maxpool2d_forward(x, 3, 2, 1)[0], r), {"x": x}, {"x": dx},
                      rng, eps=1e-4)


def test_maxpool_backward_rejects_corrupt_argmax(rng):
    x = rng.standard_normal((1, 1, 4, 4)).astype(np.float32)
    y, idx = K.maxpool2d_forward(x, 2)
    idx[0, 0, 0, 0] = 99
    with pytest.raises(ValueError, match="bad argument"):
        K.maxpool2d_backward(y, idx, x.shape, 2)
