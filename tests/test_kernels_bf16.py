"""bf16 GEMM with fp32 sums (csrc/gemm_bf16.c, issue 31): against float64 products of the
bf16-rounded operands (each bf16 product is exact in fp32, so the only error is fp32 summation:
a tight bound), odd shapes, B transposed, accumulation, the scalar reference path, thread
counts, and a clear error where the CPU (or SPARK_NN_ISA) leaves AVX512_BF16 out. Skipped, with
the reason, on CPUs without the instruction."""
import os
import subprocess
import sys

import numpy as np
import pytest

from gradcheck import both_paths
from spark_nn import kernels as K

needs_bf16 = pytest.mark.skipif(not K.bf16_available(),
                                reason="this CPU lacks AVX512_BF16 (or SPARK_NN_ISA caps it): no bf16 kernels to test")

SHAPES = [(1, 1, 1), (1, 17, 3), (7, 5, 2), (9, 33, 31), (13, 16, 64), (64, 48, 288), (130, 70, 257)]


def _reference(a, b):
    return K.round_bf16(a).astype(np.float64) @ K.round_bf16(b).astype(np.float64)


def _bound(a, b):
    """fp32 summation of K exact products: |error| <= K u sum |a_k b_k| (u = 2^-24), per element."""
    k = a.shape[1]
    return k * 2.0 ** -24 * (np.abs(K.round_bf16(a)).astype(np.float64) @ np.abs(K.round_bf16(b)).astype(np.float64))


def test_round_bf16_is_round_to_nearest_even():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -9, -2.5, 1.0 + 2 ** -7 + 2 ** -9, np.inf, -0.0],
                 np.float32)
    # bf16 keeps 7 fraction bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7, ties go to the even
    # mantissa (1); 1 + 3 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6; below
    # halfway rounds down
    expected = [1.0, 1.0, 1.0 + 2 ** -6, 1.0, -2.5, 1.0 + 2 ** -7, np.inf, -0.0]
    np.testing.assert_array_equal(K.round_bf16(x), np.array(expected, np.float32))
    assert np.isnan(K.round_bf16(np.array([np.nan], np.float32)))[0]


@needs_bf16
@pytest.mark.parametrize("m, n, k", SHAPES)
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_bf16_matches_exact_products_with_fp32_sums(rng, m, n, k, trans_b):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    given = np.ascontiguousarray(b.T) if trans_b else b

    def run():
        return K.gemm_bf16(a, given, trans_b=trans_b)

    fast, reference = both_paths(run)
    for got in (fast, reference):
        assert got.dtype == np.float32 and got.shape == (m, n)
        assert (np.abs(got - _reference(a, b)) <= _bound(a, b) + 1e-30).all()
    # far from the fp32 product: bf16 keeps 8 bits (so the test would see an fp32 fallback)
    if k >= 31:
        assert np.abs(fast - a.astype(np.float64) @ b.astype(np.float64)).max() > 1e-3


@needs_bf16
def test_gemm_bf16_accumulates_and_writes_only_its_output(rng):
    a = rng.standard_normal((11, 21)).astype(np.float32)
    b = rng.standard_normal((21, 19)).astype(np.float32)
    c = rng.standard_normal((11, 19)).astype(np.float32)
    got = K.gemm_bf16(a, b, out=c.copy(), accumulate=True)
    assert (np.abs(got - (c + _reference(a, b))) <= _bound(a, b) + 4e-7 * np.abs(c)).all()
    with pytest.raises(ValueError, match="a has 21 columns but b has 20 rows"):
        K.gemm_bf16(a, b[:20])
    with pytest.raises(ValueError, match="out must have shape"):
        K.gemm_bf16(a, b, out=np.zeros((11, 18), np.float32))


@needs_bf16
def test_gemm_bf16_does_not_depend_on_the_thread_count(rng, threads):
    a = rng.standard_normal((300, 130)).astype(np.float32)
    b = rng.standard_normal((130, 50)).astype(np.float32)
    threads(1)
    one = K.gemm_bf16(a, b)
    threads(2)
    assert K.gemm_bf16(a, b).tobytes() == one.tobytes()


def _run_capped(code):
    """Runs code in a new interpreter under SPARK_NN_ISA='avx512' (AVX-512F, no bf16): it must exit 0."""
    env = dict(os.environ, SPARK_NN_ISA="avx512")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_bf16_is_a_clear_error_where_the_isa_is_capped():
    """SPARK_NN_ISA='avx512' caps at AVX-512F: no bf16, and asking for it names the instruction;
    the scalar reference path still runs (tests on any CPU)."""
    code = ("import numpy as np\nfrom spark_nn import kernels as K, _kernels\n"
            "assert not K.bf16_available()\n"
            "try:\n    K.gemm_bf16(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))\n"
            "except RuntimeError as e:\n    assert 'AVX512_BF16' in str(e) and 'avx512' in str(e), e\n"
            "else:\n    raise SystemExit('no error')\n"
            "_kernels.set_reference(True)\n"
            "ones = np.ones((2, 3), np.float32)\n"
            "assert K.gemm_bf16(ones, ones.T.copy()).tolist() == [[3, 3], [3, 3]]\n")
    _run_capped(code)


# ---------------------------------------------------------------- convolution and dense in bf16
# (n, c, h, w, oc, kernel, stride, padding, groups): batch 1, odd widths (the weight gradient's
# position pairs on an even grid), 1x1, a 5x3 kernel, strides 2 (the weight and input gradients
# by im2col), padding beyond K - 1 (likewise), grouped, a chunk of several images, strided with
# chunks of several images (19 = 6 x 3 + 1: the im2col path's partials summed over 7 chunks)
CONV_SHAPES = [(1, 32, 5, 7, 4, 3, 1, 1, 1), (3, 16, 9, 11, 6, 3, 1, 1, 1), (2, 40, 6, 6, 33, 1, 1, 0, 1),
               (4, 12, 10, 9, 8, (5, 3), 1, (2, 1), 1), (3, 16, 11, 9, 5, 3, 2, 1, 1), (2, 8, 7, 8, 4, 3, 1, 3, 1),
               (3, 64, 8, 7, 32, 3, 1, 1, 2), (33, 32, 14, 14, 64, 3, 1, 1, 1), (19, 8, 9, 9, 12, 3, 2, 1, 1)]


def _torch_conv(x, w, b, dy, stride, padding, groups):
    """y, dx, dw of float64 torch on the given arrays."""
    torch = pytest.importorskip("torch")
    xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    wt = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    y = torch.nn.functional.conv2d(xt, wt, None if b is None else torch.tensor(b, dtype=torch.float64),
                                   stride=stride, padding=padding, groups=groups)
    y.backward(torch.tensor(dy, dtype=torch.float64))
    return y.detach().numpy(), xt.grad.numpy(), wt.grad.numpy()


@needs_bf16
@pytest.mark.parametrize("n, c, h, w, oc, k, s, p, g", CONV_SHAPES)
def test_conv2d_bf16_matches_exact_products_with_fp32_sums(rng, n, c, h, w, oc, k, s, p, g):
    kh, kw = (k, k) if isinstance(k, int) else k
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((oc, c // g, kh, kw)).astype(np.float32)
    b = rng.standard_normal(oc).astype(np.float32)
    oh, ow = K.conv2d_output_shape(x.shape, oc, (kh, kw), s, p)[2:]
    dy = rng.standard_normal((n, oc, oh, ow)).astype(np.float32)

    def run():
        y = K.conv2d_forward(x, wt, b, s, p, groups=g, precision="bf16")
        return (y,) + K.conv2d_backward(x, wt, dy, s, p, groups=g, precision="bf16")

    fast, reference = both_paths(run)
    xr, wr, dyr = K.round_bf16(x), K.round_bf16(wt), K.round_bf16(dy)
    ry, rdx, rdw = _torch_conv(xr, wr, b, dyr, s, p, g)
    ay, adx, adw = _torch_conv(np.abs(xr), np.abs(wr), None, np.abs(dyr), s, p, g)  # sums of |products|
    u = 2.0 ** -24
    for got in (fast, reference):
        y, dx, dw, db = got
        assert (np.abs(y - ry) <= (c // g * kh * kw + 1) * u * (ay + np.abs(b)[:, None, None]) + 1e-30).all()
        assert (np.abs(dx - rdx) <= oc * kh * kw * u * adx + 1e-30).all()
        assert (np.abs(dw - rdw) <= (n * oh * ow + n) * u * adw + 1e-30).all()
        np.testing.assert_allclose(db, dy.astype(np.float64).sum((0, 2, 3)), rtol=1e-5, atol=1e-5)  # fp32 dy
    # far from fp32 (an fp32 fallback would pass the bounds above only by luck, not here)
    assert np.abs(fast[0] - K.conv2d_forward(x, wt, b, s, p, groups=g)).max() > 1e-4


@needs_bf16
def test_conv2d_bf16_does_not_depend_on_the_thread_count(rng, threads):
    x = rng.standard_normal((21, 32, 9, 9)).astype(np.float32)
    w = rng.standard_normal((24, 32, 3, 3)).astype(np.float32)
    dy = rng.standard_normal((21, 24, 9, 9)).astype(np.float32)
    outs = []
    for t in (1, 2):
        threads(t)
        y = K.conv2d_forward(x, w, None, 1, 1, precision="bf16")
        outs.append(b"".join(a.tobytes() for a in (y,) + K.conv2d_backward(x, w, dy, 1, 1, precision="bf16")))
    assert outs[0] == outs[1]


@needs_bf16
def test_conv2d_bf16_leaves_depthwise_and_thin_convolutions_in_fp32(rng):
    """A depthwise convolution (no GEMM) and one of fewer than BF16_MIN_COLUMN_ROWS column rows
    (one input channel, 3x3) compute exactly what fp32 computes."""
    for c, g, oc in ((8, 8, 16), (1, 1, 32)):
        x = rng.standard_normal((3, c, 10, 10)).astype(np.float32)
        w = rng.standard_normal((oc, c // g, 3, 3)).astype(np.float32)
        dy = rng.standard_normal((3, oc, 10, 10)).astype(np.float32)
        for fn, args in ((K.conv2d_forward, (x, w, None, 1, 1)), (K.conv2d_backward, (x, w, dy, 1, 1))):
            a, b = fn(*args, groups=g), fn(*args, groups=g, precision="bf16")
            assert b"".join(np.asarray(v).tobytes() for v in (a if isinstance(a, tuple) else (a,))) == \
                b"".join(np.asarray(v).tobytes() for v in (b if isinstance(b, tuple) else (b,)))


@needs_bf16
@pytest.mark.parametrize("n, i, o", [(1, 1, 1), (7, 33, 5), (64, 3136, 10), (5, 100, 257)])
def test_dense_bf16_matches_exact_products_with_fp32_sums(rng, n, i, o):
    x = rng.standard_normal((n, i)).astype(np.float32)
    w = rng.standard_normal((o, i)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    dy = rng.standard_normal((n, o)).astype(np.float32)

    def run():
        return (K.dense_forward(x, w, b, precision="bf16"),) + K.dense_backward(x, w, dy, precision="bf16")

    fast, reference = both_paths(run)
    xr, wr, dyr = (K.round_bf16(a).astype(np.float64) for a in (x, w, dy))
    u = 2.0 ** -24
    for y, dx, dw, db in (fast, reference):
        assert (np.abs(y - (xr @ wr.T + b)) <= (i + 1) * u * (np.abs(xr) @ np.abs(wr).T + np.abs(b)) + 1e-30).all()
        assert (np.abs(dx - dyr @ wr) <= o * u * (np.abs(dyr) @ np.abs(wr)) + 1e-30).all()
        assert (np.abs(dw - dyr.T @ xr) <= n * u * (np.abs(dyr).T @ np.abs(xr)) + 1e-30).all()
        np.testing.assert_allclose(db, dy.astype(np.float64).sum(0), rtol=1e-5, atol=1e-6)


def test_precision_is_checked():
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\], got 'fp16'"):
        K.dense_forward(np.ones((1, 2), np.float32), np.ones((3, 2), np.float32), precision="fp16")


def test_bf16_layers_are_a_clear_error_where_the_isa_is_capped():
    """Under SPARK_NN_ISA='avx512' a bf16 model says which instruction is missing, before the
    first epoch of a fit and at a prediction; fp32 runs."""
    code = ("import numpy as np\nfrom spark_nn.nn import Sequential, Dense\n"
            "net = Sequential([Dense(3)], (4,))\n"
            "x, y = np.ones((5, 4), np.float32), np.zeros(5, np.int64)\n"
            "for call in (lambda: net.fit(x, y, epochs=1, precision='bf16'),\n"
            "             lambda: net.predict(x, precision='bf16')):\n"
            "    try:\n        call()\n"
            "    except RuntimeError as e:\n"
            "        assert 'AVX512_BF16' in str(e) and \"precision='fp32'\" in str(e), e\n"
            "    else:\n        raise SystemExit('no error')\n"
            "net.precision = 'fp32'\nnet.fit(x, y, epochs=1)\n")
    _run_capped(code)
