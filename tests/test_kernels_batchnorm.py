"""BatchNorm kernels (csrc/batchnorm.c) against PyTorch in float64: forward in training (batch
statistics, running-stat update) and eval (running statistics), backward through the batch
statistics and with them frozen, finite differences, optional outputs, odd layouts, thread
counts and the scalar reference path."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF

from gradcheck import assert_close, both_paths, check_directional, t64, weighted_sum
from spark_nn import _kernels
from spark_nn import kernels as K

# odd shapes: one channel, three channels, 7x5 images, a batch of one with S > 1, (N, C) inputs,
# and the kernel's layouts: S >= 16 plane by plane (few channels: the unfused split), S < 16 by
# columns (several column tasks when C*S > 256)
SHAPES = [
    (4, 1, 7, 5),
    (5, 3, 7, 5),
    (1, 3, 6, 7),
    (1, 4, 2, 2),
    (9, 3),
    (2, 1),
    (16, 300),
    (3, 70, 3, 3),
    (8, 3, 40, 40),
    (6, 16, 16, 16),
]
PATHS = ["fast", "reference"]


@pytest.fixture(params=PATHS)
def path(request):
    _kernels.set_reference(request.param == "reference")
    yield request.param
    _kernels.set_reference(False)


def _data(rng, shape, offset=0.0):
    c = shape[1]
    x = (rng.standard_normal(shape) * 1.7 + offset).astype(np.float32)
    gamma = rng.uniform(0.5, 1.5, c).astype(np.float32)
    beta = rng.standard_normal(c).astype(np.float32)
    rm = rng.standard_normal(c).astype(np.float32)
    rv = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return x, gamma, beta, rm, rv


def _axes(x):
    return (0,) + tuple(range(2, x.ndim))


def _torch_forward(x, gamma, beta, rm, rv, training, momentum=0.1, eps=1e-5):
    """torch float64: (leaf tensors, y, running mean, running var after the call)."""
    xt, gt, bt = t64(x), t64(gamma), t64(beta)
    rmt, rvt = torch.tensor(rm, dtype=torch.float64), torch.tensor(rv, dtype=torch.float64)
    yt = TF.batch_norm(xt, rmt, rvt, gt, bt, training, momentum, eps)
    return (xt, gt, bt), yt, rmt.numpy(), rvt.numpy()


@pytest.mark.parametrize("shape", SHAPES)
def test_training_forward_and_backward_match_torch(rng, shape, path):
    x, gamma, beta, rm, rv = _data(rng, shape)
    (xt, gt, bt), yt, rm_t, rv_t = _torch_forward(x, gamma, beta, rm.copy(), rv.copy(), True, 0.3, 1e-3)
    y, mean, invstd = K.batchnorm_forward(x, gamma, beta, rm, rv, True, momentum=0.3, eps=1e-3)
    assert_close("y", y, yt.detach().numpy())
    x64 = x.astype(np.float64)
    assert_close("mean", mean, x64.mean(_axes(x)))
    assert_close("invstd", invstd, 1 / np.sqrt(x64.var(_axes(x)) + 1e-3))
    if x.size // x.shape[1] > 1:
        assert_close("running_mean", rm, rm_t)
        assert_close("running_var", rv, rv_t)
    dy = rng.standard_normal(shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    dx, dgamma, dbeta = K.batchnorm_backward(x, gamma, mean, invstd, dy, True)
    # dx sums to ~0 per channel: scale its tolerance by dy's, not by its own (tiny) magnitude
    assert_close("dx", dx, xt.grad.numpy(), atol_scale=1e-5 * max(1.0, np.abs(dy).max() / np.abs(dx).max()))
    assert_close("dgamma", dgamma, gt.grad.numpy())
    assert_close("dbeta", dbeta, bt.grad.numpy())


@pytest.mark.parametrize("shape", SHAPES)
def test_eval_forward_and_frozen_backward_match_torch(rng, shape, path):
    x, gamma, beta, rm, rv = _data(rng, shape)
    rm0, rv0 = rm.copy(), rv.copy()
    (xt, gt, bt), yt, _, _ = _torch_forward(x, gamma, beta, rm, rv, False)
    y, mean, invstd = K.batchnorm_forward(x, gamma, beta, rm, rv, False)
    assert_close("y", y, yt.detach().numpy())
    np.testing.assert_array_equal(rm, rm0)  # only read
    np.testing.assert_array_equal(rv, rv0)
    np.testing.assert_array_equal(mean, rm0)
    assert_close("invstd", invstd, 1 / np.sqrt(rv0.astype(np.float64) + 1e-5))
    dy = rng.standard_normal(shape).astype(np.float32)
    yt.backward(torch.from_numpy(dy.astype(np.float64)))
    dx, dgamma, dbeta = K.batchnorm_backward(x, gamma, mean, invstd, dy, False)
    assert_close("dx", dx, xt.grad.numpy())
    assert_close("dgamma", dgamma, gt.grad.numpy())
    assert_close("dbeta", dbeta, bt.grad.numpy())


def test_running_stats_over_several_steps_match_torch(rng):
    """Views into one flat state vector, updated in place step after step as torch's module."""
    c = 5
    bn = torch.nn.BatchNorm2d(c, momentum=0.2).double()
    state = np.zeros(3 * c, np.float32)
    rm, rv = state[c:2 * c], state[2 * c:]
    rv[:] = 1.0
    gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
    for _ in range(4):
        x = (rng.standard_normal((3, c, 4, 5)) * 3 + 2).astype(np.float32)
        K.batchnorm_forward(x, gamma, beta, rm, rv, True, momentum=0.2)
        bn(torch.from_numpy(x.astype(np.float64)))
    assert_close("running_mean", rm, bn.running_mean.numpy())
    assert_close("running_var", rv, bn.running_var.numpy())
    assert not state[:c].any()  # the rest of the vector untouched


def test_single_value_per_channel_keeps_running_var(rng, path):
    """N*S == 1 (torch raises): y = beta, running_mean moves towards x, running_var stays."""
    x, gamma, beta, rm, rv = _data(rng, (1, 4))
    rm0, rv0 = rm.copy(), rv.copy()
    y, mean, invstd = K.batchnorm_forward(x, gamma, beta, rm, rv, True, momentum=0.25)
    np.testing.assert_allclose(y, np.broadcast_to(beta, y.shape), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(mean, x[0])
    assert_close("running_mean", rm, 0.75 * rm0.astype(np.float64) + 0.25 * x[0])
    np.testing.assert_array_equal(rv, rv0)
    dx, dgamma, dbeta = K.batchnorm_backward(x, gamma, mean, invstd, np.ones_like(x), True)
    np.testing.assert_array_equal(dx, 0)
    np.testing.assert_array_equal(dgamma, 0)
    np.testing.assert_array_equal(dbeta, 1)


def test_large_offset_keeps_the_variance(rng, path):
    """Values 1e5 from zero with spread 0.02 (mean^2 / var ~ 1e13): the sums are centered, so the
    variance is the data's (uncentered sums in double would be off by ~1e-3 of it)."""
    x, gamma, beta, rm, rv = _data(rng, (6, 3, 9, 9))
    x = (1e5 + 0.02 * rng.standard_normal(x.shape)).astype(np.float32)
    rv0 = rv.astype(np.float64)
    _, mean, invstd = K.batchnorm_forward(x, gamma, beta, rm, rv, True, eps=0.0)
    x64 = x.astype(np.float64)
    assert_close("invstd", invstd, 1 / np.sqrt(x64.var(_axes(x))))
    assert_close("running_var", rv, 0.9 * rv0 + 0.1 * x64.var(_axes(x), ddof=1))
    x2 = np.ascontiguousarray(x.transpose(0, 2, 3, 1).reshape(-1, 3))  # the (N, C) layout, same offset
    _, _, invstd2 = K.batchnorm_forward(x2, gamma, beta, None, None, True, eps=0.0)
    assert_close("invstd (N, C)", invstd2, 1 / np.sqrt(x2.astype(np.float64).var(0)))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(3, 2, 5, 4), (7, 3), (2, 3, 4, 5)])
def test_finite_differences(rng, shape, training):
    x, gamma, beta, rm, rv = _data(rng, shape)
    r = rng.standard_normal(shape)

    def loss():
        y = K.batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), training)[0]
        return weighted_sum(y, r)

    _, mean, invstd = K.batchnorm_forward(x, gamma, beta, rm.copy(), rv.copy(), training)
    dx, dgamma, dbeta = K.batchnorm_backward(x, gamma, mean, invstd, r.astype(np.float32), training)
    check_directional(loss, {"x": x, "gamma": gamma, "beta": beta}, {"x": dx, "gamma": dgamma, "beta": dbeta},
                      rng, eps=1e-2)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (5, 6), (2, 5, 16, 17)])
def test_optional_outputs(rng, shape, training):
    """dx, dgamma, dbeta each optional; given buffers (views into a flat gradient) are written,
    not accumulated, and nothing else in the flat vector changes."""
    x, gamma, beta, rm, rv = _data(rng, shape)
    c = shape[1]
    _, mean, invstd = K.batchnorm_forward(x, gamma, beta, rm, rv, training)
    dy = rng.standard_normal(shape).astype(np.float32)
    dx_all, dg_all, db_all = K.batchnorm_backward(x, gamma, mean, invstd, dy, training)
    for need_dx in (True, False):
        for need_dparams in (True, False):
            flat = np.full(2 * c + 2, 7.0, np.float32)
            dg, db = flat[1:1 + c], flat[1 + c:1 + 2 * c]
            dx, dgo, dbo = K.batchnorm_backward(x, gamma, mean, invstd, dy, training, need_dx=need_dx,
                                                dgamma=dg, dbeta=db, need_dparams=need_dparams)
            if need_dx:
                np.testing.assert_array_equal(dx, dx_all)
            else:
                assert dx is None
            assert flat[0] == 7.0 and flat[-1] == 7.0
            if need_dparams:
                assert dgo is dg and dbo is db
                np.testing.assert_array_equal(dg, dg_all)
                np.testing.assert_array_equal(db, db_all)
            else:
                assert dgo is None and dbo is None
                assert (flat == 7.0).all()
    # without buffers: fresh arrays
    _, dg2, db2 = K.batchnorm_backward(x, gamma, mean, invstd, dy, training, need_dx=False)
    np.testing.assert_array_equal(dg2, dg_all)
    np.testing.assert_array_equal(db2, db_all)


def test_non_contiguous_inputs(rng):
    base = rng.standard_normal((6, 10, 8, 4)).astype(np.float32)
    x = base.transpose(0, 1, 3, 2)[:, ::2]  # (6, 5, 4, 8), strided
    c = x.shape[1]
    params = rng.standard_normal((4, 2 * c)).astype(np.float32)
    gamma, beta = params[0, ::2], params[1, ::2]
    state = np.stack([np.zeros(c), np.ones(c)], axis=1).astype(np.float32)
    rm, rv = state[:, 0], state[:, 1]  # strided views: updated through a copy
    assert not rm.flags.c_contiguous and not x.flags.c_contiguous and not gamma.flags.c_contiguous
    xc, gc, bc = np.ascontiguousarray(x), gamma.copy(), beta.copy()
    rmc, rvc = np.zeros(c, np.float32), np.ones(c, np.float32)
    ref = K.batchnorm_forward(xc, gc, bc, rmc, rvc, True)
    out = K.batchnorm_forward(x, gamma, beta, rm, rv, True)
    for a, b in zip(out, ref):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(state[:, 0], rmc)
    np.testing.assert_array_equal(state[:, 1], rvc)
    dy = rng.standard_normal(x.shape[::-1]).astype(np.float32).T  # Fortran order
    mean, invstd = np.repeat(out[1], 2)[::2], np.repeat(out[2], 2)[::2]
    got = K.batchnorm_backward(x, gamma, mean, invstd, dy, True)
    want = K.batchnorm_backward(xc, gc, out[1], out[2], np.ascontiguousarray(dy), True)
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)


# big enough for several threads (over 32768 values), in each layout: plane by plane with
# channels fused, few channels split over planes, columns in several tasks
THREAD_SHAPES = [(16, 64, 8, 8), (8, 3, 40, 40), (9, 5, 33, 31), (300, 64, 3, 3), (512, 700)]


@pytest.mark.parametrize("shape", THREAD_SHAPES)
def test_same_bits_for_any_thread_count(rng, shape, threads):
    x, gamma, beta, rm, rv = _data(rng, shape, offset=0.5)
    dy = rng.standard_normal(shape).astype(np.float32)
    results = []
    for nt in (1, 2, 3, 4):
        threads(nt)
        rmi, rvi = rm.copy(), rv.copy()
        y, mean, invstd = K.batchnorm_forward(x, gamma, beta, rmi, rvi, True)
        grads = K.batchnorm_backward(x, gamma, mean, invstd, dy, True)
        ye = K.batchnorm_forward(x, gamma, beta, rm, rv, False)[0]
        grads_e = K.batchnorm_backward(x, gamma, rm, invstd, dy, False)
        results.append((y, mean, invstd, rmi, rvi, ye) + grads + grads_e)
    for nt, res in zip((2, 3, 4), results[1:]):
        for i, (a, b) in enumerate(zip(res, results[0])):
            np.testing.assert_array_equal(a, b, err_msg=f"output {i} at {nt} threads")


@pytest.mark.parametrize("shape", SHAPES + THREAD_SHAPES)
def test_vectorized_path_agrees_with_reference(rng, shape):
    x, gamma, beta, rm, rv = _data(rng, shape, offset=2.0)
    dy = rng.standard_normal(shape).astype(np.float32)

    def run():
        rmi, rvi = rm.copy(), rv.copy()
        y, mean, invstd = K.batchnorm_forward(x, gamma, beta, rmi, rvi, True)
        ye = K.batchnorm_forward(x, gamma, beta, rm, rv, False)
        return (y, mean, invstd, rmi, rvi) + K.batchnorm_backward(x, gamma, mean, invstd, dy, True) + ye + \
            K.batchnorm_backward(x, gamma, ye[1], ye[2], dy, False)

    fast, slow = both_paths(run)
    names = ["y", "mean", "invstd", "running_mean", "running_var", "dx", "dgamma", "dbeta", "y eval",
             "mean eval", "invstd eval", "dx eval", "dgamma eval", "dbeta eval"]
    for name, a, b in zip(names, fast, slow):
        scale = 1e-5 * (np.abs(dy).max() / max(np.abs(b).max(), 1e-30)) if name == "dx" else 1e-5
        assert_close(name, a, b, atol_scale=max(scale, 1e-5))


def test_affine_none_is_gamma_one_beta_zero(rng):
    x, gamma, beta, rm, rv = _data(rng, (4, 3, 5, 5))
    ones, zeros = np.ones(3, np.float32), np.zeros(3, np.float32)
    for a, b in zip(K.batchnorm_forward(x, None, None, rm.copy(), rv.copy(), True),
                    K.batchnorm_forward(x, ones, zeros, rm.copy(), rv.copy(), True)):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments(rng):
    x, gamma, beta, rm, rv = _data(rng, (2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"x must have dtype float32, got float64"):
        K.batchnorm_forward(x.astype(np.float64), gamma, beta, rm, rv, True)
    with pytest.raises(ValueError, match=r"x must have shape \(N, C\) or \(N, C, H, W\), got \(2, 3, 16\)"):
        K.batchnorm_forward(x.reshape(2, 3, 16), gamma, beta, rm, rv, True)
    with pytest.raises(ValueError, match=r"gamma must have shape \(3\), got \(4\)"):
        K.batchnorm_forward(x, np.ones(4, np.float32), beta, rm, rv, True)
    with pytest.raises(ValueError, match=r"running_var must be a float32 array of shape \(3\)"):
        K.batchnorm_forward(x, gamma, beta, rm, rv.astype(np.float64), True)
    ro = rm.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="running_mean must be writable"):
        K.batchnorm_forward(x, gamma, beta, ro, rv, True)
    K.batchnorm_forward(x, gamma, beta, ro, rv, False)  # eval only reads it
    with pytest.raises(ValueError, match="eval mode needs running_mean and running_var"):
        K.batchnorm_forward(x, gamma, beta, None, rv, False)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        K.batchnorm_forward(x, gamma, beta, rm, rv, True, eps=-1.0)
    with pytest.raises(ValueError, match="x must not be empty"):
        K.batchnorm_forward(np.zeros((0, 3), np.float32), gamma, beta, rm, rv, True)
    _, mean, invstd = K.batchnorm_forward(x, gamma, beta, rm, rv, True)
    with pytest.raises(ValueError, match=r"dy must have shape \(2, 3, 4, 4\), got \(2, 3, 4, 5\)"):
        K.batchnorm_backward(x, gamma, mean, invstd, np.zeros((2, 3, 4, 5), np.float32), True)
    with pytest.raises(ValueError, match=r"invstd must have shape \(3\)"):
        K.batchnorm_backward(x, gamma, mean, invstd[:2], x, True)
    with pytest.raises(ValueError, match=r"dgamma must be a writable C-contiguous float32 array of shape \(3\)"):
        K.batchnorm_backward(x, gamma, mean, invstd, x, True, dgamma=np.zeros(6, np.float32)[::2])
