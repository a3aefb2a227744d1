"""Property-based checks (hypothesis): on random shapes, the fast kernels (BLAS, vectorized
loops, OpenMP) agree with the scalar reference path, and pooling/activation invariants hold.
Odd and degenerate shapes are in the search space: batch 1, one channel, 1x1 images, kernels as
large as the padded input, sequence length 1, hidden sizes that are not multiples of 8."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gradcheck import assert_close, both_paths
from spark_nn import kernels as K

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _flatten(result):
    if isinstance(result, dict):
        return [(k, v) for k, v in sorted(result.items()) if v is not None]
    if isinstance(result, tuple):
        return [(str(i), v) for i, v in enumerate(result) if v is not None]
    return [("out", result)]


def assert_paths_agree(fn):
    fast, slow = both_paths(fn)
    for (name, a), (_, b) in zip(_flatten(fast), _flatten(slow)):
        assert a.shape == b.shape
        assert_close(name, a, b)


@st.composite
def conv_cases(draw):
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 5))
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h = draw(st.integers(max(1, kh - 2 * ph), 12))
    w = draw(st.integers(max(1, kw - 2 * pw), 12))
    seed = draw(st.integers(0, 2 ** 31))
    return n, c, o, h, w, (kh, kw), (sh, sw), (ph, pw), seed


@SETTINGS
@given(conv_cases())
def test_conv2d_fast_equals_reference(case):
    n, c, o, h, w, k, s, p, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = rng.standard_normal((o, c) + k).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    y_shape = K.conv2d_output_shape(x.shape, o, k, s, p)
    dy = rng.standard_normal(y_shape).astype(np.float32)
    assert_paths_agree(lambda: (K.conv2d_forward(x, wt, b, s, p),) + K.conv2d_backward(x, wt, dy, s, p))
    assert_close("direct", K.conv2d_forward(x, wt, b, s, p), K.conv2d_forward_reference(x, wt, b, s, p))


@st.composite
def pool_cases(draw):
    k = draw(st.integers(1, 4))
    s = draw(st.integers(1, 3))
    p = draw(st.integers(0, k // 2))
    h, w = draw(st.integers(k, 11)), draw(st.integers(k, 11))
    return draw(st.integers(1, 3)), draw(st.integers(1, 4)), h, w, k, s, p, draw(st.integers(0, 2 ** 31))


@SETTINGS
@given(pool_cases())
def test_maxpool_fast_equals_reference_and_routes_gradient(case):
    n, c, h, w, k, s, p, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    (y, idx), (y_ref, idx_ref) = both_paths(lambda: K.maxpool2d_forward(x, k, s, p))
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(idx, idx_ref)
    # every output is the input value at its argmax, and the gradient lands exactly there
    flat = x.reshape(n, c, -1)
    np.testing.assert_array_equal(np.take_along_axis(flat, idx.reshape(n, c, -1), axis=2).reshape(y.shape), y)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx = K.maxpool2d_backward(dy, idx, x.shape, k, s, p)
    assert np.isclose(dx.sum(), dy.sum(), rtol=1e-4, atol=1e-4)
    assert_paths_agree(lambda: K.maxpool2d_backward(dy, idx, x.shape, k, s, p))


@SETTINGS
@given(pool_cases(), st.booleans())
def test_avgpool_fast_equals_reference_and_conserves_gradient(case, inc):
    n, c, h, w, k, s, p, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    y, y_ref = both_paths(lambda: K.avgpool2d_forward(x, k, s, p, inc))
    np.testing.assert_array_equal(y, y_ref)  # the same sums in the same order (pool.c)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    assert_paths_agree(lambda: K.avgpool2d_backward(dy, x.shape, k, s, p, inc))
    # without padding in the divisor each output spreads exactly its dy over its window
    if not inc:
        dx = K.avgpool2d_backward(dy, x.shape, k, s, p, inc)
        assert np.isclose(dx.sum(dtype=np.float64), dy.sum(dtype=np.float64), rtol=1e-4, atol=1e-4)
    g = rng.standard_normal((n, c)).astype(np.float32)
    assert_paths_agree(lambda: (K.global_avgpool_forward(x), K.global_avgpool_backward(g, x.shape)))


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 40), st.integers(1, 23), st.sampled_from(["relu", "tanh", "sigmoid"]),
       st.integers(0, 2 ** 31))
def test_dense_and_activations_fast_equal_reference(n, d, units, act, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w = rng.standard_normal((units, d)).astype(np.float32)
    b = rng.standard_normal(units).astype(np.float32)
    dy = rng.standard_normal((n, units)).astype(np.float32)
    assert_paths_agree(lambda: (K.dense_forward(x, w, b),) + K.dense_backward(x, w, dy))
    y = K.activation_forward(K.dense_forward(x, w, b), act)
    assert_paths_agree(lambda: (K.activation_forward(K.dense_forward(x, w, b), act),
                                K.activation_backward(y, dy, act)))


@st.composite
def seq_cases(draw):
    return (draw(st.integers(1, 5)), draw(st.integers(1, 7)), draw(st.integers(1, 9)), draw(st.integers(1, 19)),
            draw(st.integers(0, 2 ** 31)))


def _weights(rng, gates, d, h):
    return [rng.uniform(-0.5, 0.5, s).astype(np.float32) for s in ((gates * h, d), (gates * h, h), (gates * h,),
                                                                   (gates * h,))]


@SETTINGS
@given(seq_cases(), st.sampled_from(["tanh", "relu", "sigmoid"]))
def test_rnn_fast_equals_reference(case, act):
    n, t, d, h, seed = case
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    w_ih, w_hh, b_ih, b_hh = _weights(rng, 1, d, h)
    h0 = rng.standard_normal((n, h)).astype(np.float32)
    dhs = rng.standard_normal((n, t, h)).astype(np.float32)
    hs = K.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, act)
    assert_paths_agree(lambda: (K.rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0, act),))
    assert_paths_agree(lambda: K.rnn_backward(x, w_ih, w_hh, hs, dhs, h0, act))


GATED = {
    "lstm": (4, K.lstm_forward, lambda x, w, fwd, dhs: K.lstm_backward(x, w[0], w[1], *fwd, dhs)),
    "gru": (3, K.gru_forward, lambda x, w, fwd, dhs: K.gru_backward(x, w[0], w[1], *fwd, dhs)),
}


@SETTINGS
@given(seq_cases(), st.sampled_from(sorted(GATED)))
def test_gated_cells_fast_equal_reference(case, cell):
    n, t, d, h, seed = case
    gates, forward, backward = GATED[cell]
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    w = _weights(rng, gates, d, h)
    dhs = rng.standard_normal((n, t, h)).astype(np.float32)
    fwd = forward(x, *w)
    assert_paths_agree(lambda: forward(x, *w))
    assert_paths_agree(lambda: backward(x, w, fwd, dhs))


@SETTINGS
@given(st.integers(1, 17), st.integers(2, 13), st.floats(-80, 80), st.integers(0, 2 ** 31))
def test_softmax_cross_entropy_properties(n, k, shift, seed):
    rng = np.random.default_rng(seed)
    logits = (rng.standard_normal((n, k)) * 5).astype(np.float32)
    labels = rng.integers(0, k, n)
    loss, probs, dlogits = K.softmax_cross_entropy(logits, labels)
    np.testing.assert_allclose(probs.sum(axis=1), 1, rtol=1e-5)
    np.testing.assert_allclose(dlogits.sum(axis=1), 0, atol=1e-5)
    # invariant to adding a constant to every logit of a row
    loss2, _, _ = K.softmax_cross_entropy(logits + np.float32(shift), labels)
    np.testing.assert_allclose(loss, loss2, rtol=1e-4, atol=1e-3)
