import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from gradcheck import assert_close, check_directional, t64, weighted_sum
from spark_nn import kernels as K


@pytest.mark.parametrize("n,fin,fout", [(1, 1, 1), (5, 7, 3), (64, 130, 10), (300, 33, 129)])
def test_dense_matches_torch(rng, n, fin, fout):
    x = rng.standard_normal((n, fin)).astype(np.float32)
    w = rng.standard_normal((fout, fin)).astype(np.float32)
    b = rng.standard_normal(fout).astype(np.float32)
    y = K.dense_forward(x, w, b)
    xt, wt, bt = t64(x), t64(w), t64(b)
    yt = TF.linear(xt, wt, bt)
    assert_close("y", y, yt.detach().numpy())
    dy = rng.standard_normal(y.shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    dx, dw, db = K.dense_backward(x, w, dy)
    assert_close("dx", dx, xt.grad.numpy())
    assert_close("dw", dw, wt.grad.numpy())
    assert_close("db", db, bt.grad.numpy())
    r = dy.astype(np.float64)
    check_directional(lambda: weighted_sum(K.dense_forward(x, w, b), r),
                      {"x": x, "w": w, "b": b}, {"x": dx, "w": dw, "b": db}, rng)


def test_dense_without_bias(rng):
    x = rng.standard_normal((4, 3)).astype(np.float32)
    w = rng.standard_normal((2, 3)).astype(np.float32)
    assert_close("y", K.dense_forward(x, w), x.astype(np.float64) @ w.T.astype(np.float64))
    dx, dw, db = K.dense_backward(x, w, np.ones((4, 2), np.float32), need_dx=False, has_bias=False)
    assert dx is None and db is None
    assert_close("dw", dw, np.ones((2, 4)) @ x.astype(np.float64))


@pytest.mark.parametrize("name,fn", [("sigmoid", torch.sigmoid), ("tanh", torch.tanh),
                                     ("relu", torch.relu), ("identity", lambda t: t * 1.0)])
@pytest.mark.parametrize("shape", [(1,), (7, 3), (40000,)])
def test_activations_match_torch(rng, name, fn, shape):
    x = (3 * rng.standard_normal(shape)).astype(np.float32)
    y = K.activation_forward(x, name)
    xt = t64(x)
    yt = fn(xt)
    assert_close("y", y, yt.detach().numpy())
    dy = rng.standard_normal(shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    assert_close("dx", K.activation_backward(y, dy, name), xt.grad.numpy())


def test_activation_finite_differences(rng):
    x = rng.standard_normal((6, 5)).astype(np.float32)
    r = rng.standard_normal(x.shape)
    for name in ("sigmoid", "tanh"):
        dx = K.activation_backward(K.activation_forward(x, name), r.astype(np.float32), name)
        check_directional(lambda: weighted_sum(K.activation_forward(x, name), r), {"x": x}, {"x": dx}, rng)


@pytest.mark.parametrize("n,c", [(1, 2), (9, 5), (257, 10)])
@pytest.mark.parametrize("weighted", [False, True])
def test_softmax_cross_entropy_matches_torch(rng, n, c, weighted):
    z = (2 * rng.standard_normal((n, c))).astype(np.float32)
    y = rng.integers(0, c, n)
    cw = rng.uniform(0.5, 2.0, c).astype(np.float32) if weighted else None
    loss, probs, dz = K.softmax_cross_entropy(z, y, cw)
    zt = t64(z)
    lt = TF.cross_entropy(zt, torch.from_numpy(y), weight=None if cw is None else t64(cw, False),
                          reduction="none")
    assert_close("loss", loss, lt.detach().numpy())
    assert_close("probs", probs, torch.softmax(zt, 1).detach().numpy())
    assert_close("softmax", K.softmax(z), probs)
    lt.sum().backward()
    assert_close("dlogits", dz, zt.grad.numpy())


def test_softmax_cross_entropy_is_stable_for_huge_logits():
    z = np.array([[1e4, -1e4, 0.0], [-3e4, -3e4, -3e4]], dtype=np.float32)
    loss, probs, dz = K.softmax_cross_entropy(z, np.array([1, 2]))
    assert np.all(np.isfinite(loss)) and np.all(np.isfinite(dz))
    np.testing.assert_allclose(loss, [2e4, np.log(3)], rtol=1e-6)
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-6)


def test_softmax_cross_entropy_rejects_bad_labels():
    z = np.zeros((3, 4), np.float32)
    with pytest.raises(ValueError, match=r"row 2 has label 4"):
        K.softmax_cross_entropy(z, np.array([0, 3, 4]))
    with pytest.raises(ValueError, match="integers"):
        K.softmax_cross_entropy(z, np.array([0.0, 1.0, 2.0]))
