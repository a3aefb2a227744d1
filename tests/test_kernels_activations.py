"""The activations after relu (csrc/activation.c): relu6, leaky_relu, silu, gelu (erf form),
gelu_tanh, forward and backward against PyTorch in float64, at special values (around 0, -0.0,
large |x|, NaN, inf) as PyTorch gives them, by finite differences, and the argument rules
(silu and the gelus need x in the backward pass)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from gradcheck import assert_close, check_directional, weighted_sum
from spark_nn import kernels as K

TORCH = {
    "relu6": TF.relu6,
    "leaky_relu": lambda t: TF.leaky_relu(t, 0.01),
    "silu": TF.silu,
    "gelu": TF.gelu,
    "gelu_tanh": lambda t: TF.gelu(t, approximate="tanh"),
}
NEW = sorted(TORCH)
# float32 results within 1e-6 of float64 PyTorch, relative or absolute (measured: <= 2e-7)
TOL = dict(rtol=1e-6, atol=1e-6)


def _torch(name, x, dy=None, alpha=None):
    xt = torch.tensor(np.asarray(x, np.float64), requires_grad=True)
    fn = (lambda t: TF.leaky_relu(t, alpha)) if alpha is not None else TORCH[name]
    yt = fn(xt)
    yt.backward(torch.from_numpy(np.ones(np.shape(x)) if dy is None else np.asarray(dy, np.float64)))
    return yt.detach().numpy(), xt.grad.numpy()


def _ours(name, x, dy, alpha=None):
    y = K.activation_forward(x, name, alpha=alpha)
    return y, K.activation_backward(y, dy, name, x=x, alpha=alpha)


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("shape", [(1,), (7, 3), (5, 1, 7), (40000,)])
def test_activations_match_torch(rng, name, shape):
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    y, dx = _ours(name, x, dy)
    y_ref, dx_ref = _torch(name, x, dy)
    assert y.shape == dx.shape == shape
    assert_close("y", y, y_ref)
    assert_close("dx", dx, dx_ref)
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(dx, dx_ref, **TOL)


@pytest.mark.parametrize("name", NEW)
def test_activations_over_a_dense_grid(name):
    """Every float32 step of a fine grid over [-30, 30] (the polynomial approximations' whole
    working range, where relative errors would show first) and the large-|x| tails."""
    x = np.concatenate([np.linspace(-30, 30, 600001), np.geomspace(1e-8, 1e38, 2001),
                        -np.geomspace(1e-8, 1e38, 2001)]).astype(np.float32)
    y, dx = _ours(name, x, np.ones_like(x))
    y_ref, dx_ref = _torch(name, x)
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(dx, dx_ref, **TOL)


SPECIAL = np.array([0.0, -0.0, 1e-30, -1e-30, 1e-7, -1e-7, 6.0, -6.0, 5.9999995, 87.5, -87.5, 88.5, -88.5,
                    100.0, -100.0, 1e30, -1e30, 3e38, -3e38, np.nan, np.inf, -np.inf], np.float32)


@pytest.mark.parametrize("name", NEW)
def test_special_values_as_torch(name):
    """Near 0, -0.0 (the sign kept), large |x|, NaN and inf: PyTorch's float64 results, rounded
    to float32 (NaN where PyTorch gives NaN, e.g. silu(-inf) = -inf * 0)."""
    x = SPECIAL
    y, dx = _ours(name, x, np.ones_like(x))
    y_ref, dx_ref = _torch(name, x)
    np.testing.assert_allclose(y, y_ref.astype(np.float32), equal_nan=True, **TOL)
    if name == "relu6":
        # PyTorch's own relu6 gradient at NaN is 0 in its vectorized loop and dy in its scalar
        # tail; ours is 0 (NaN is not inside (0, 6))
        assert dx[np.isnan(x)] == 0
        dx, dx_ref = dx[~np.isnan(x)], dx_ref[~np.isnan(x)]
    np.testing.assert_allclose(dx, dx_ref.astype(np.float32), equal_nan=True, **TOL)
    zero = y_ref == 0
    np.testing.assert_array_equal(np.signbit(y[zero]), np.signbit(y_ref[zero].astype(np.float32)),
                                  err_msg=f"signs of zeros at x = {x[zero]}")
    assert np.signbit(y[1]) and y[1] == 0  # f(-0.0) = -0.0 for all five


def test_leaky_relu_slopes(rng):
    x = rng.standard_normal(1000).astype(np.float32)
    x[:3] = [0.0, -0.0, np.nan]
    dy = rng.standard_normal(1000).astype(np.float32)
    for alpha in (0.01, 0.2, 0.0, 1.5):
        y, dx = _ours("leaky_relu", x, dy, alpha)
        y_ref, dx_ref = _torch("leaky_relu", x, dy, alpha)
        np.testing.assert_allclose(y, y_ref, equal_nan=True, **TOL)
        np.testing.assert_allclose(dx, dx_ref, **TOL)
        # from y alone (alpha >= 0: y has x's sign) the same gradient, but where y is NaN
        from_y = K.activation_backward(y, dy, "leaky_relu", alpha=alpha)
        np.testing.assert_array_equal(from_y[3:], dx[3:])
    # a negative slope flips the sign: only x can tell the side
    y, dx = _ours("leaky_relu", x, dy, -0.5)
    y_ref, dx_ref = _torch("leaky_relu", x, dy, -0.5)
    np.testing.assert_allclose(y, y_ref, equal_nan=True, **TOL)
    np.testing.assert_allclose(dx, dx_ref, **TOL)
    with pytest.raises(ValueError, match="needs the forward input x"):
        K.activation_backward(y, dy, "leaky_relu", alpha=-0.5)
    # the default slope is torch's 0.01
    np.testing.assert_array_equal(K.activation_forward(x, "leaky_relu"), K.activation_forward(x, "leaky_relu", 0.01))


def test_relu6_backward_from_y_at_the_kinks():
    x = np.array([-1.0, -0.0, 0.0, 1e-30, 3.0, 5.9999995, 6.0, 7.0, np.nan], np.float32)
    y, dx = _ours("relu6", x, np.ones_like(x))
    dx_ref = np.array([0, 0, 0, 1, 1, 1, 0, 0, 0], np.float32)  # PyTorch's (its vectorized loop at NaN)
    np.testing.assert_array_equal(dx[:-1], _torch("relu6", x[:-1])[1])
    np.testing.assert_array_equal(dx, dx_ref)
    np.testing.assert_array_equal(K.activation_backward(y, np.ones_like(x), "relu6"), dx_ref)


@pytest.mark.parametrize("name", NEW)
def test_finite_differences(rng, name):
    x = (2 * rng.standard_normal((6, 5))).astype(np.float32)
    r = rng.standard_normal(x.shape)
    y = K.activation_forward(x, name)
    dx = K.activation_backward(y, r.astype(np.float32), name, x=x)
    check_directional(lambda: weighted_sum(K.activation_forward(x, name), r), {"x": x}, {"x": dx}, rng)


@pytest.mark.parametrize("name", ["silu", "gelu", "gelu_tanh"])
def test_backward_needs_x(name):
    x = np.linspace(-2, 2, 9, dtype=np.float32)
    y = K.activation_forward(x, name)
    with pytest.raises(ValueError, match=f"activation_backward for '{name}' needs the forward input x"):
        K.activation_backward(y, np.ones_like(y), name)
    # y is not needed then
    np.testing.assert_array_equal(K.activation_backward(None, np.ones_like(y), name, x=x),
                                  K.activation_backward(y, np.ones_like(y), name, x=x))
    with pytest.raises(ValueError, match=r"dy must have shape \(9\)"):
        K.activation_backward(None, np.ones(8, np.float32), name, x=x)


def test_argument_errors():
    x = np.zeros(4, np.float32)
    with pytest.raises(ValueError, match="alpha is leaky_relu's negative slope"):
        K.activation_forward(x, "relu", alpha=0.1)
    with pytest.raises(ValueError, match="alpha must be finite"):
        K.activation_forward(x, "leaky_relu", alpha=float("nan"))
    with pytest.raises(ValueError, match=r"activation must be one of .*'gelu'.*got 'swish'"):
        K.activation_forward(x, "swish")
    with pytest.raises(ValueError, match="needs the forward output y"):
        K.activation_backward(None, x, "relu6")
    # the recurrent kernels keep their four kinds
    w = np.zeros((3, 2), np.float32)
    with pytest.raises(ValueError, match="activation must be one of"):
        K.rnn_forward(np.zeros((1, 2, 2), np.float32), w, np.zeros((3, 3), np.float32), np.zeros(3, np.float32),
                      np.zeros(3, np.float32), activation="gelu")


def test_existing_kinds_unchanged(rng):
    """The first four kinds go through their old loops: the same bits as before this change
    (relu and identity exactly as numpy computes them) and they ignore x."""
    x = (3 * rng.standard_normal(1000)).astype(np.float32)
    x[:2] = [np.nan, -0.0]
    dy = rng.standard_normal(1000).astype(np.float32)
    relu = K.activation_forward(x, "relu")
    np.testing.assert_array_equal(relu, np.where(x > 0, x, np.float32(0)))
    np.testing.assert_array_equal(K.activation_backward(relu, dy, "relu", x=x), np.where(relu > 0, dy, 0))
    np.testing.assert_array_equal(K.activation_forward(x, "linear"), x)
    for name in ("sigmoid", "tanh"):
        y = K.activation_forward(x, name)
        np.testing.assert_array_equal(K.activation_backward(y, dy, name, x=x), K.activation_backward(y, dy, name))


@pytest.mark.parametrize("name", NEW)
def test_large_inputs_without_denormal_flushing(name):
    """With FTZ/DAZ off (SPARK_NN_DENORMALS=keep), where nn_expf's clamp leaves ~1e-38 instead
    of an underflow to 0, large |x| still gives PyTorch's results (no 1e-38 * 1e30 terms)."""
    from spark_nn.threads import flush_denormals

    x = np.concatenate([np.geomspace(10, 3e38, 3001), -np.geomspace(10, 3e38, 3001)]).astype(np.float32)
    try:
        flush_denormals(False)
        y, dx = _ours(name, x, np.ones_like(x))
    finally:
        flush_denormals(True)
    y_ref, dx_ref = _torch(name, x)
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(dx, dx_ref, **TOL)
