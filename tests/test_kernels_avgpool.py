"""Average pooling (csrc/pool.c): avgpool2d with both count_include_pad settings and global
average pooling, against PyTorch in float64, by finite differences, and fast path vs the
scalar reference path (the forward pass gives the same bits; see pool.c)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from gradcheck import assert_close, both_paths, check_directional, t64, weighted_sum
from spark_nn import kernels as K

# (N, C, H, W, kernel, stride, padding); stride None: the kernel
SHAPES = [
    (1, 1, 7, 5, 3, 2, 1),           # N=1, C=1, odd plane, 3x3/2 pad 1
    (2, 3, 7, 5, 2, None, 0),        # 2x2/2: floor drops the last row and column
    (2, 3, 9, 8, 3, 1, 1),           # 3x3/1 pad 1 (same size out)
    (1, 4, 6, 11, (3, 2), (1, 2), (1, 1)),
    (2, 2, 10, 13, (4, 3), 3, (2, 1)),   # stride 3: the loop for any stride
    (1, 1, 3, 3, 3, 1, 1),           # every window clipped but the centre one
    (1, 1, 2, 2, 2, 1, 1),           # no interior column at all
    (3, 5, 1, 1, 1, 1, 0),
    (1, 2, 5, 600, 3, 1, 1),         # rows longer than the backward's 256-output chunks
    (8, 16, 28, 28, 3, 2, 1),        # the benchmark's window, several threads' worth
]


def _torch_pool(x, dy, k, s, p, inc):
    xt = t64(x)
    yt = TF.avg_pool2d(xt, k, s, p, count_include_pad=inc)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    return yt.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("inc", [True, False], ids=["include_pad", "exclude_pad"])
@pytest.mark.parametrize("shape", SHAPES)
def test_avgpool_matches_torch(rng, shape, inc):
    n, c, h, w, k, s, p = shape
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    y = K.avgpool2d_forward(x, k, s, p, count_include_pad=inc)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    y_ref, dx_ref = _torch_pool(x, dy, k, s, p, inc)
    assert_close("y", y, y_ref)
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-6)
    dx = K.avgpool2d_backward(dy, x.shape, k, s, p, count_include_pad=inc)
    assert_close("dx", dx, dx_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("inc", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_avgpool_fast_path_equals_reference(rng, shape, inc):
    n, c, h, w, k, s, p = shape
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    (y, y_ref) = both_paths(lambda: K.avgpool2d_forward(x, k, s, p, inc))
    np.testing.assert_array_equal(y, y_ref)  # same sums in the same order
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dx_ref = both_paths(lambda: K.avgpool2d_backward(dy, x.shape, k, s, p, inc))
    assert_close("dx", dx, dx_ref)
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-6, atol=1e-6)


def test_avgpool_padding_divisor_differs_between_settings():
    """A corner window of ones over 3x3/1 pad 1: 4 inputs of 9 (include) or of 4 (exclude)."""
    x = np.ones((1, 1, 4, 4), np.float32)
    inc = K.avgpool2d_forward(x, 3, 1, 1, count_include_pad=True)
    exc = K.avgpool2d_forward(x, 3, 1, 1, count_include_pad=False)
    assert inc[0, 0, 0, 0] == np.float32(4) / np.float32(9) and inc[0, 0, 1, 1] == 1
    np.testing.assert_array_equal(exc, np.ones_like(exc))
    dx = K.avgpool2d_backward(np.ones_like(exc), x.shape, 3, 1, 1, count_include_pad=False)
    # input (0, 0) lies in the windows of outputs (0,0) (4 inputs), (0,1), (1,0) (6), (1,1) (9)
    assert np.isclose(dx[0, 0, 0, 0], 1 / 4 + 2 / 6 + 1 / 9, rtol=1e-6)


def test_avgpool_non_contiguous_inputs(rng):
    base = rng.standard_normal((3, 2, 9, 7)).astype(np.float32)
    x = base.transpose(1, 0, 2, 3)[:, :, ::-1, :]   # (2, 3, 9, 7), negative strides
    assert not x.flags.c_contiguous
    y = K.avgpool2d_forward(x, 3, 2, 1)
    dy_base = rng.standard_normal((y.shape[3], y.shape[2], y.shape[1], y.shape[0])).astype(np.float32)
    dy = dy_base.transpose(3, 2, 1, 0)
    assert not dy.flags.c_contiguous
    y_ref, dx_ref = _torch_pool(np.ascontiguousarray(x), np.ascontiguousarray(dy), 3, 2, 1, True)
    assert_close("y", y, y_ref)
    assert_close("dx", K.avgpool2d_backward(dy, x.shape, 3, 2, 1), dx_ref)
    xf = np.asfortranarray(rng.standard_normal((2, 3, 5, 6)).astype(np.float32))
    assert_close("y (Fortran)", K.global_avgpool_forward(xf), xf.astype(np.float64).mean(axis=(2, 3)))
    gy = rng.standard_normal((3, 2)).astype(np.float32).T
    assert_close("dx (global)", K.global_avgpool_backward(gy, xf.shape),
                 np.broadcast_to(gy[:, :, None, None] / 30.0, xf.shape))


@pytest.mark.parametrize("inc", [True, False])
@pytest.mark.parametrize("k,s,p", [(3, 2, 1), (2, None, 0), (3, 1, 1), ((2, 3), (2, 1), (1, 1))])
def test_avgpool_finite_differences(rng, k, s, p, inc):
    x = rng.standard_normal((2, 3, 7, 6)).astype(np.float32)
    y = K.avgpool2d_forward(x, k, s, p, inc)
    r = rng.standard_normal(y.shape)
    dx = K.avgpool2d_backward(r.astype(np.float32), x.shape, k, s, p, inc)
    check_directional(lambda: weighted_sum(K.avgpool2d_forward(x, k, s, p, inc), r), {"x": x}, {"x": dx}, rng)


def test_avgpool_nan_and_inf_stay_in_their_windows():
    x = np.zeros((1, 1, 4, 4), np.float32)
    x[0, 0, 0, 0] = np.nan
    x[0, 0, 3, 3] = np.inf
    y = K.avgpool2d_forward(x, 2)
    yt = TF.avg_pool2d(torch.from_numpy(x), 2).numpy()
    np.testing.assert_array_equal(y, yt)
    assert np.isnan(y[0, 0, 0, 0]) and y[0, 0, 1, 1] == np.inf and y[0, 0, 0, 1] == 0


# ---------------------------------------------------------------------------- global average pooling

GLOBAL_SHAPES = [(1, 1, 1, 1), (2, 3, 7, 5), (1, 1, 3, 5), (4, 6, 4, 4), (3, 2, 17, 19), (64, 128, 7, 7),
                 (2, 2, 64, 64)]


@pytest.mark.parametrize("shape", GLOBAL_SHAPES)
def test_global_avgpool_matches_torch(rng, shape):
    x = (rng.standard_normal(shape) + 3).astype(np.float32)  # a mean away from 0: relative errors show
    y = K.global_avgpool_forward(x)
    assert y.shape == shape[:2]
    xt = t64(x)
    yt = TF.adaptive_avg_pool2d(xt, 1).flatten(1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    np.testing.assert_allclose(y, yt.detach().numpy(), rtol=1e-6, atol=1e-6)
    dx = K.global_avgpool_backward(dy, shape)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-6, atol=1e-7)
    y_ref = both_paths(lambda: K.global_avgpool_forward(x))[1]
    np.testing.assert_allclose(y, y_ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(dx, both_paths(lambda: K.global_avgpool_backward(dy, shape))[1])


def test_global_avgpool_is_the_same_for_any_thread_count(rng, threads):
    x = rng.standard_normal((32, 64, 13, 11)).astype(np.float32)
    threads(1)
    one = K.global_avgpool_forward(x)
    threads(2)
    two = K.global_avgpool_forward(x)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(one, K.global_avgpool_forward(x))


def test_global_avgpool_finite_differences(rng):
    x = rng.standard_normal((2, 3, 5, 7)).astype(np.float32)
    r = rng.standard_normal((2, 3))
    dx = K.global_avgpool_backward(r.astype(np.float32), x.shape)
    check_directional(lambda: weighted_sum(K.global_avgpool_forward(x), r), {"x": x}, {"x": dx}, rng)


# ---------------------------------------------------------------------------- argument checks

def test_avgpool_argument_errors():
    x = np.zeros((1, 2, 5, 5), np.float32)
    with pytest.raises(ValueError, match=r"padding must be in \[0, kernel/2\]"):
        K.avgpool2d_forward(x, 3, 1, 2)
    with pytest.raises(ValueError, match="smaller than the pooling window"):
        K.avgpool2d_forward(x, 7)
    with pytest.raises(ValueError, match="x must have shape"):
        K.avgpool2d_forward(np.zeros((2, 5, 5), np.float32))
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 2, 2, 2\)"):
        K.avgpool2d_backward(np.zeros((1, 2, 3, 3), np.float32), x.shape, 2)
    with pytest.raises(ValueError, match="input_shape must be"):
        K.avgpool2d_backward(np.zeros((1, 2, 2, 2), np.float32), (2, 5, 5), 2)
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 2\)"):
        K.global_avgpool_backward(np.zeros((2, 1), np.float32), x.shape)
    with pytest.raises(ValueError, match="input_shape must be"):
        K.global_avgpool_backward(np.zeros((1, 2), np.float32), (1, 2, 0, 5))
    with pytest.raises(ValueError, match="dtype float32"):
        K.global_avgpool_forward(np.zeros((1, 2, 3, 3)))
