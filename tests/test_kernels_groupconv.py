"""Grouped and depthwise convolution (conv2d_* with groups), against torch's F.conv2d in float64,
the direct reference, finite differences and the scalar reference path."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from gradcheck import assert_close, both_paths, check_directional, t64, weighted_sum
from spark_nn import _kernels
from spark_nn import kernels as K

# (N, C, H, W, OC, kernel, stride, padding, groups)
GROUPED = [
    (2, 4, 7, 5, 6, 3, 1, 1, 2),            # G=2, odd sizes (im2col: C/G * 9 < 32)
    (1, 6, 7, 5, 9, 3, 2, 1, 3),            # G=3, stride 2, N=1
    (2, 6, 9, 8, 3, 5, 1, 2, 3),            # 5x5, one output channel per group
    (2, 8, 6, 6, 4, 1, 1, 0, 2),            # 1x1
    (3, 64, 6, 7, 16, 3, 1, 1, 2),          # the direct (no im2col) forward and backward per group
    (2, 64, 5, 7, 32, 1, 1, 0, 2),          # 1x1 direct: the image read in place
    (16, 64, 5, 7, 64, 1, 1, 0, 2),         # the same backward too, two images per chunk
    (2, 64, 9, 9, 8, 3, 2, 1, 2),           # stride 2, 32 channels per group
    (37, 4, 16, 16, 8, 3, 1, 1, 2),         # several chunks, uneven last one
    (3, 4, 20, 20, 4, 3, 1, 1, 2),          # one GEMM per image (>= 256 outputs)
]
# depthwise: groups == C, OC = C * multiplier
DEPTHWISE = [
    (2, 3, 7, 5, 3, 3, 1, 1, 3),            # multiplier 1, C=3, odd sizes
    (1, 3, 7, 5, 6, 3, 2, 1, 3),            # multiplier 2, stride 2, N=1
    (2, 8, 9, 9, 8, 5, 1, 2, 8),            # 5x5
    (2, 8, 9, 10, 16, 5, 2, 2, 8),          # 5x5, stride 2, multiplier 2
    (2, 4, 6, 6, 4, 1, 1, 0, 4),            # 1x1
    (3, 5, 16, 16, 5, 3, 2, 1, 5),          # MobileNetV2's stride-2 block
    (2, 4, 16, 16, 4, 3, 1, 1, 4),          # its stride-1 block
    (2, 4, 8, 7, 4, 3, 3, 0, 4),            # stride 3, no padding
    (1, 2, 5, 6, 2, (3, 5), (1, 2), (1, 2), 2),  # rectangular kernel, mixed stride and padding
    (2, 3, 7, 5, 3, 3, 1, 0, 3),            # no padding
    (2, 4, 4, 4, 8, 3, 1, 2, 4),            # padding K - 1
    (5, 6, 3, 3, 6, 3, 2, 1, 6),            # 2x2 outputs
]
ALL = GROUPED + DEPTHWISE


def _case(rng, shape):
    n, c, h, w, oc, k, s, p, g = shape
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((oc, c // g, kh, kw)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    return x, wt, b, s, p, g


def _all(x, w, b, dy, s, p, g):
    return (K.conv2d_forward(x, w, b, s, p, groups=g),) + K.conv2d_backward(x, w, dy, s, p, groups=g)


def _dy(rng, x, w, s, p, g):
    return rng.standard_normal(K.conv2d_output_shape(x.shape, w.shape[0], w.shape[2:], s, p)).astype(np.float32)


@pytest.mark.parametrize("shape", ALL)
def test_grouped_conv_matches_torch(rng, shape):
    x, w, b, s, p, g = _case(rng, shape)
    y = K.conv2d_forward(x, w, b, s, p, groups=g)
    xt, wt, bt = t64(x), t64(w), t64(b)
    yt = TF.conv2d(xt, wt, bt, stride=s, padding=p, groups=g)
    assert_close("y", y, yt.detach().numpy())
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    dx, dw, db = K.conv2d_backward(x, w, dy, s, p, groups=g)
    assert_close("dx", dx, xt.grad.numpy())
    assert_close("dw", dw, wt.grad.numpy())
    assert_close("db", db, bt.grad.numpy())


@pytest.mark.parametrize("shape", ALL)
def test_grouped_conv_matches_direct_reference(rng, shape):
    x, w, b, s, p, g = _case(rng, shape)
    assert_close("y", K.conv2d_forward(x, w, b, s, p, groups=g),
                 K.conv2d_forward_reference(x, w, b, s, p, groups=g))


@pytest.mark.parametrize("shape", ALL)
def test_grouped_conv_fast_path_matches_scalar_path(rng, shape):
    """The vectorized depthwise kernel (and the groups' GEMM paths) against the scalar
    reference path: the direct loop for depthwise, im2col + scalar GEMM otherwise."""
    x, w, b, s, p, g = _case(rng, shape)
    dy = _dy(rng, x, w, s, p, g)
    fast, slow = both_paths(lambda: _all(x, w, b, dy, s, p, g))
    for name, a, r in zip(["y", "dx", "dw", "db"], fast, slow):
        assert_close(name, a, r)


@pytest.mark.parametrize("shape", [GROUPED[0], GROUPED[4], DEPTHWISE[1], DEPTHWISE[3], DEPTHWISE[8]])
def test_grouped_conv_finite_differences(rng, shape):
    x, w, b, s, p, g = _case(rng, shape)
    r = rng.standard_normal(K.conv2d_forward(x, w, b, s, p, groups=g).shape)
    dx, dw, db = K.conv2d_backward(x, w, r.astype(np.float32), s, p, groups=g)
    check_directional(lambda: weighted_sum(K.conv2d_forward(x, w, b, s, p, groups=g), r),
                      {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db}, rng)


@pytest.mark.parametrize("shape", GROUPED)
def test_grouped_conv_is_each_group_on_its_own(rng, shape):
    """A grouped convolution runs the G=1 code on each group's channels: the same bits as G
    separate convolutions of the channel slices."""
    x, w, b, s, p, g = _case(rng, shape)
    dy = _dy(rng, x, w, s, p, g)
    got = _all(x, w, b, dy, s, p, g)
    cg, og = x.shape[1] // g, w.shape[0] // g
    parts = [_all(np.ascontiguousarray(x[:, i * cg:(i + 1) * cg]), w[i * og:(i + 1) * og], b[i * og:(i + 1) * og],
                  np.ascontiguousarray(dy[:, i * og:(i + 1) * og]), s, p, 1) for i in range(g)]
    for k, name in enumerate(["y", "dx", "dw", "db"]):
        np.testing.assert_array_equal(got[k], np.concatenate([q[k] for q in parts], axis=1 if k < 2 else 0),
                                      err_msg=name)


@pytest.mark.parametrize("shape", [GROUPED[0], GROUPED[4], DEPTHWISE[0], DEPTHWISE[3]])
def test_grouped_conv_without_bias_and_input_gradient(rng, shape):
    x, w, b, s, p, g = _case(rng, shape)
    y = K.conv2d_forward(x, w, None, s, p, groups=g)
    assert_close("y", y + b[None, :, None, None], K.conv2d_forward(x, w, b, s, p, groups=g))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = K.conv2d_backward(x, w, dy, s, p, need_dx=False, has_bias=False, groups=g)
    assert dx is None and db is None
    np.testing.assert_array_equal(dw, K.conv2d_backward(x, w, dy, s, p, groups=g)[1])


@pytest.mark.parametrize("shape", [GROUPED[1], DEPTHWISE[3]])
def test_grouped_conv_writes_into_given_gradient_buffers(rng, shape):
    x, w, b, s, p, g = _case(rng, shape)
    dy = _dy(rng, x, w, s, p, g)
    flat = np.full(w.size + b.size, np.nan, dtype=np.float32)
    dw, db = flat[:w.size].reshape(w.shape), flat[w.size:]
    K.conv2d_backward(x, w, dy, s, p, dw=dw, db=db, groups=g)
    _, rdw, rdb = K.conv2d_backward(x, w, dy, s, p, groups=g)
    np.testing.assert_array_equal(flat, np.concatenate([rdw.ravel(), rdb]))


@pytest.mark.parametrize("shape", [GROUPED[2], DEPTHWISE[1]])
def test_grouped_conv_accepts_non_contiguous_inputs(rng, shape):
    x, w, b, s, p, g = _case(rng, shape)
    dy = _dy(rng, x, w, s, p, g)
    want = _all(x, w, b, dy, s, p, g)
    xn = np.asfortranarray(x)                                  # another memory order
    wn = np.repeat(w, 2, axis=3)[..., ::2]                     # a strided view
    bn = np.repeat(b, 2)[::2]
    dyn = np.swapaxes(np.swapaxes(dy, 2, 3).copy(), 2, 3)      # transposed storage
    assert not (xn.flags.c_contiguous or wn.flags.c_contiguous or bn.flags.c_contiguous
                or dyn.flags.c_contiguous)
    for name, a, r in zip(["y", "dx", "dw", "db"], _all(xn, wn, bn, dyn, s, p, g), want):
        np.testing.assert_array_equal(a, r, err_msg=name)


def test_grouped_conv_results_do_not_depend_on_thread_count(rng, threads):
    for shape in (GROUPED[8], (9, 12, 10, 11, 24, 3, 1, 1, 12), (9, 12, 10, 11, 12, 5, 2, 2, 12)):
        x, w, b, s, p, g = _case(rng, shape)
        dy = _dy(rng, x, w, s, p, g)
        results = []
        for n in (1, 2, 3):
            threads(n)
            results.append(_all(x, w, b, dy, s, p, g))
        for other in results[1:]:
            for name, a, r in zip(["y", "dx", "dw", "db"], results[0], other):
                np.testing.assert_array_equal(a, r, err_msg=f"{name} of {shape}")


@pytest.mark.parametrize("groups, wshape, match", [
    (0, (6, 6, 3, 3), "groups must be an integer >= 1"),
    (-2, (6, 3, 3, 3), "groups must be an integer >= 1"),
    (1.5, (6, 4, 3, 3), "groups must be an integer >= 1"),
    (True, (6, 6, 3, 3), "groups must be an integer >= 1"),
    (4, (8, 2, 3, 3), r"groups=4 must divide the input channels: x has shape \(2, 6, 5, 5\)"),
    (3, (4, 2, 3, 3), r"groups=3 must divide the output channels: w has shape \(4, 2, 3, 3\)"),
    (2, (6, 2, 3, 3), r"x must have shape \(N, 4, H, W\), got \(2, 6, 5, 5\)"),  # C/G from w: 2 * 2 != 6
])
def test_bad_group_counts_raise_clear_errors(rng, groups, wshape, match):
    x = rng.standard_normal((2, 6, 5, 5)).astype(np.float32)
    w = rng.standard_normal(wshape).astype(np.float32)
    dy = np.zeros((2, wshape[0], 5, 5), np.float32)
    with pytest.raises(ValueError, match=match):
        K.conv2d_forward(x, w, None, 1, 1, groups=groups)
    with pytest.raises(ValueError, match=match):
        K.conv2d_backward(x, w, dy, 1, 1, groups=groups)
    with pytest.raises(ValueError, match=match):
        K.conv2d_forward_reference(x, w, None, 1, 1, groups=groups)


def test_kernel_rejects_groups_that_do_not_divide_the_channels():
    """The C entry points check G themselves (NN_EBADSHAPE), whatever the caller checked."""
    for dims in ((2, 6, 5, 5, 6, 3, 3, 1, 1, 1, 1, 4), (2, 6, 5, 5, 4, 3, 3, 1, 1, 1, 1, 3),
                 (2, 6, 5, 5, 6, 3, 3, 1, 1, 1, 1, 0)):
        with pytest.raises(ValueError, match="conv2d: bad shape"):
            _kernels.conv2d_out_shape(dims)
