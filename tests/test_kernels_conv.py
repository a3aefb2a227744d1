import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from gradcheck import assert_close, both_paths, check_directional, t64, weighted_sum
from spark_nn import kernels as K

# (N, C, H, W, OC, kernel, stride, padding)
SHAPES = [
    (1, 1, 5, 5, 1, 3, 1, 0),             # batch 1, one channel
    (2, 3, 7, 9, 4, 3, 1, 1),             # non-square
    (3, 2, 8, 6, 5, (5, 3), 2, 2),        # 5x3 kernel, stride 2, padding 2
    (1, 4, 13, 11, 3, 2, 2, 0),           # even kernel, stride 2, odd sizes
    (2, 3, 6, 6, 7, 1, 1, 0),             # 1x1
    (2, 2, 9, 10, 3, 3, (2, 1), (1, 2)),  # mixed stride and padding
    (37, 8, 16, 16, 5, 3, 1, 1),          # several chunks, uneven last one
    (3, 1, 20, 20, 6, 3, 1, 1),           # im2col, >= 256 outputs per image: one GEMM per image
    (2, 3, 40, 36, 4, 3, 2, 1),           # the same with stride 2
    (4, 1, 3, 3, 2, 3, 1, 2),             # padding larger than half the kernel
    # stride 1 with >= 32 column rows: the direct (no im2col) forward and backward
    (1, 4, 5, 7, 9, 3, 1, 0),             # batch 1, no padding, odd sizes
    (3, 5, 6, 9, 17, (3, 5), 1, (1, 2)),  # rectangular kernel, OC not a multiple of 16
    (2, 16, 4, 4, 33, 3, 1, 2),           # padding K - 1 (dx's own padding 0)
    (2, 8, 5, 5, 6, 3, 1, 3),             # padding past K - 1: direct forward, im2col backward
    (2, 4, 9, 9, 8, 5, 1, 2),             # 5x5
    (17, 32, 5, 6, 40, 1, 1, 0),          # 1x1, direct: images read in place, several per chunk
    # other strides with >= 32 column rows: direct forward and dw, dx from a chunk's columns + col2im
    (3, 8, 9, 11, 6, 3, 2, 1),            # stride 2
    (17, 4, 10, 9, 7, (3, 5), (2, 3), (1, 2)),  # mixed strides, several images per chunk
    (2, 8, 5, 5, 6, 3, 2, 3),             # padding past K - 1
    (3, 32, 7, 7, 5, 1, 2, 0),            # 1x1 stride 2: read in place
    # dw in chunks of >= 1024 positions shared by the threads, split by blocks of 224 rows of dw^T
    (130, 32, 4, 4, 20, 3, 1, 1),         # three chunks, the last shorter; two row blocks
    (65, 16, 7, 7, 24, 3, 2, 1),          # strided
    (1, 64, 3, 3, 8, 3, 1, 1),            # batch 1: one chunk, three row blocks
    # the direct forward skips the taps that read padding (classes of positions, k runs)
    (2, 16, 3, 3, 5, 3, 1, 3),            # padding past the kernel: outputs with no tap at all
    (3, 40, 6, 5, 7, 3, 1, 1),            # channels not a multiple of the block of 32
    (5, 24, 9, 9, 6, 3, 2, 1),            # stride 2
    (9, 32, 4, 4, 16, 3, 1, 1),           # 4x4: corner classes merged into their rows
    # 3x3 stride 1, >= 48 channels both ways, >= 1024 output positions a call: Winograd F(4x4, 3x3)
    # forward and dx (conv_winograd.c)
    (2, 48, 30, 35, 50, 3, 1, 1),         # partial tiles both ways, channels not a multiple of 16
    (4, 64, 26, 26, 56, 3, 1, 0),         # no padding (dx's own padding 2)
    (1, 48, 50, 46, 48, 3, 1, 2),         # batch 1, padding 2 (dx's own padding 0)
    (16, 64, 8, 8, 48, 3, 1, 1),          # 8x8 planes: 2x2 tiles, several images to a chunk
]
WINOGRAD = SHAPES[-4:]


def _case(rng, shape):
    n, c, h, w, oc, k, s, p = shape
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((oc, c, kh, kw)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    return x, wt, b, s, p


@pytest.mark.parametrize("shape", SHAPES)
def test_conv2d_matches_torch(rng, shape):
    x, w, b, s, p = _case(rng, shape)
    y = K.conv2d_forward(x, w, b, s, p)
    xt, wt, bt = t64(x), t64(w), t64(b)
    yt = TF.conv2d(xt, wt, bt, stride=s, padding=p)
    assert_close("y", y, yt.detach().numpy())
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    dx, dw, db = K.conv2d_backward(x, w, dy, s, p)
    assert_close("dx", dx, xt.grad.numpy())
    assert_close("dw", dw, wt.grad.numpy())
    assert_close("db", db, bt.grad.numpy())


@pytest.mark.parametrize("shape", SHAPES)
def test_conv2d_matches_direct_reference(rng, shape):
    x, w, b, s, p = _case(rng, shape)
    assert_close("y", K.conv2d_forward(x, w, b, s, p), K.conv2d_forward_reference(x, w, b, s, p))


@pytest.mark.parametrize("shape", SHAPES[:4])
def test_conv2d_fast_path_matches_scalar_path(rng, shape):
    x, w, b, s, p = _case(rng, shape)
    dy = rng.standard_normal(K.conv2d_output_shape(x.shape, w.shape[0], w.shape[2:], s, p)).astype(np.float32)
    fast, slow = both_paths(lambda: (K.conv2d_forward(x, w, b, s, p),) + K.conv2d_backward(x, w, dy, s, p))
    for name, a, r in zip(["y", "dx", "dw", "db"], fast, slow):
        assert_close(name, a, r)


@pytest.mark.parametrize("shape", [SHAPES[1], SHAPES[2], SHAPES[5]])
def test_conv2d_finite_differences(rng, shape):
    x, w, b, s, p = _case(rng, shape)
    r = rng.standard_normal(K.conv2d_forward(x, w, b, s, p).shape)
    dx, dw, db = K.conv2d_backward(x, w, r.astype(np.float32), s, p)
    check_directional(lambda: weighted_sum(K.conv2d_forward(x, w, b, s, p), r),
                      {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db}, rng)


def test_conv2d_without_bias_and_input_gradient(rng):
    x, w, b, s, p = _case(rng, SHAPES[1])
    y = K.conv2d_forward(x, w, None, s, p)
    assert_close("y", y + b[None, :, None, None], K.conv2d_forward(x, w, b, s, p))
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = K.conv2d_backward(x, w, dy, s, p, need_dx=False, has_bias=False)
    assert dx is None and db is None
    assert_close("dw", dw, K.conv2d_backward(x, w, dy, s, p)[1])


def test_conv2d_writes_into_given_gradient_buffers(rng):
    x, w, b, s, p = _case(rng, SHAPES[6])
    dy = rng.standard_normal(K.conv2d_forward(x, w, b, s, p).shape).astype(np.float32)
    flat = np.full(w.size + b.size, np.nan, dtype=np.float32)
    dw, db = flat[:w.size].reshape(w.shape), flat[w.size:]
    K.conv2d_backward(x, w, dy, s, p, dw=dw, db=db)
    _, rdw, rdb = K.conv2d_backward(x, w, dy, s, p)
    np.testing.assert_array_equal(flat, np.concatenate([rdw.ravel(), rdb]))


@pytest.mark.parametrize("shape", WINOGRAD)
def test_winograd_is_taken_and_agrees_with_the_direct_convolution(rng, shape, monkeypatch):
    """y and dx come from the transform domain (other roundings than the direct convolution's,
    so not the same bits: the path is taken), dw from the direct path either way."""
    x, w, b, s, p = _case(rng, shape)
    dy = rng.standard_normal(K.conv2d_forward(x, w, b, s, p).shape).astype(np.float32)
    wino = (K.conv2d_forward(x, w, b, s, p),) + K.conv2d_backward(x, w, dy, s, p)
    monkeypatch.setenv("SPARK_NN_WINOGRAD", "0")
    direct = (K.conv2d_forward(x, w, b, s, p),) + K.conv2d_backward(x, w, dy, s, p)
    for name, a, r in zip(["y", "dx", "dw", "db"], wino, direct):
        assert_close(name, a, r)
    assert not np.array_equal(wino[0], direct[0]) and not np.array_equal(wino[1], direct[1])
    np.testing.assert_array_equal(wino[2], direct[2])


@pytest.mark.parametrize("shape", [SHAPES[6], SHAPES[17], SHAPES[20], SHAPES[21], WINOGRAD[0]])
def test_conv2d_results_do_not_depend_on_thread_count(rng, threads, shape):
    x, w, b, s, p = _case(rng, shape)
    dy = rng.standard_normal(K.conv2d_forward(x, w, b, s, p).shape).astype(np.float32)
    results = []
    for n in (1, 2, 3):
        threads(n)
        results.append((K.conv2d_forward(x, w, b, s, p),) + K.conv2d_backward(x, w, dy, s, p))
    for other in results[1:]:
        for a, r in zip(results[0], other):
            np.testing.assert_array_equal(a, r)
