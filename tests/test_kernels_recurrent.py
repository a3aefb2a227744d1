import numpy as np
import pytest
import torch

from gradcheck import assert_close, check_directional, t64, weighted_sum
from spark_nn import kernels as K

# (N, T, D, H): batch 1, sequence length 1, hidden sizes not multiples of 8
SHAPES = [(1, 1, 1, 1), (3, 5, 4, 7), (2, 9, 3, 13), (8, 3, 10, 5), (5, 1, 6, 3), (17, 12, 8, 33)]
TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def _weights(rng, kind, d, h, act="tanh"):
    kw = {"nonlinearity": act} if kind == "rnn" else {}
    mod = TORCH[kind](d, h, batch_first=True, **kw).double()
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.6, 0.6, p.shape)))
    return mod, [p.detach().numpy().astype(np.float32) for p in mod.parameters()]


def _forward(kind, x, w, h0, c0, act="tanh"):
    """(hs, saved) from our kernels."""
    if kind == "rnn":
        hs = K.rnn_forward(x, *w, h0=h0, activation=act)
        return hs, ()
    if kind == "lstm":
        hs, cs, g = K.lstm_forward(x, *w, h0=h0, c0=c0)
        return hs, (cs, g)
    hs, g, hn = K.gru_forward(x, *w, h0=h0)
    return hs, (g, hn)


def _backward(kind, x, w, h0, c0, hs, saved, dhs, act="tanh", dcT=None):
    if kind == "rnn":
        return K.rnn_backward(x, w[0], w[1], hs, dhs, h0=h0, activation=act)
    if kind == "lstm":
        return K.lstm_backward(x, w[0], w[1], hs, saved[0], saved[1], dhs, h0=h0, c0=c0, dcT=dcT)
    return K.gru_backward(x, w[0], w[1], hs, saved[0], saved[1], dhs, h0=h0)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("with_h0", [False, True])
def test_recurrent_matches_torch(rng, kind, shape, with_h0):
    n, t, d, h = shape
    mod, w = _weights(rng, kind, d, h)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    h0 = rng.standard_normal((n, h)).astype(np.float32) if with_h0 else None
    c0 = rng.standard_normal((n, h)).astype(np.float32) if with_h0 and kind == "lstm" else None
    hs, saved = _forward(kind, x, w, h0, c0)
    xt = t64(x)
    h0t = t64(h0[None] if with_h0 else np.zeros((1, n, h)))
    c0t = t64(c0[None] if c0 is not None else np.zeros((1, n, h)))
    if kind == "lstm":
        out, (_, cn) = mod(xt, (h0t, c0t))
    else:
        out, _ = mod(xt, h0t)
    assert_close("hs", hs, out.detach().numpy())
    dhs = rng.standard_normal(hs.shape).astype(np.float32)
    dcT = rng.standard_normal((n, h)).astype(np.float32) if kind == "lstm" else None
    loss = (out * torch.from_numpy(dhs.astype(np.float64))).sum()
    if kind == "lstm":
        loss = loss + (cn[0] * torch.from_numpy(dcT.astype(np.float64))).sum()
    loss.backward()
    g = _backward(kind, x, w, h0, c0, hs, saved, dhs, dcT=dcT)
    assert_close("dx", g["dx"], xt.grad.numpy())
    assert_close("dh0", g["dh0"], h0t.grad.numpy()[0])
    if kind == "lstm":
        assert_close("dc0", g["dc0"], c0t.grad.numpy()[0])
    for name, p in zip(["dw_ih", "dw_hh", "db_ih", "db_hh"], mod.parameters()):
        assert_close(name, g[name], p.grad.numpy())


@pytest.mark.parametrize("act", ["tanh", "relu", "sigmoid"])
def test_rnn_activations(rng, act):
    n, t, d, h = 4, 6, 3, 5
    _, w = _weights(rng, "rnn", d, h)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    h0 = rng.standard_normal((n, h)).astype(np.float32)
    hs = K.rnn_forward(x, *w, h0=h0, activation=act)
    # float64 numpy recurrence as the reference (torch has no sigmoid RNN)
    f = {"tanh": np.tanh, "relu": lambda v: np.maximum(v, 0), "sigmoid": lambda v: 1 / (1 + np.exp(-v))}[act]
    w64 = [a.astype(np.float64) for a in w]
    hp, ref = h0.astype(np.float64), []
    for s in range(t):
        hp = f(x[:, s].astype(np.float64) @ w64[0].T + w64[2] + hp @ w64[1].T + w64[3])
        ref.append(hp)
    assert_close("hs", hs, np.stack(ref, 1))
    r = rng.standard_normal(hs.shape)
    g = K.rnn_backward(x, w[0], w[1], hs, r.astype(np.float32), h0=h0, activation=act)
    arrays = {"x": x, "h0": h0, "dw_ih": w[0], "dw_hh": w[1], "db_ih": w[2], "db_hh": w[3]}
    grads = {"x": g["dx"], "h0": g["dh0"], **{k: g[k] for k in ("dw_ih", "dw_hh", "db_ih", "db_hh")}}
    eps = 1e-3 if act == "relu" else 1e-2
    check_directional(lambda: weighted_sum(K.rnn_forward(x, *w, h0=h0, activation=act), r),
                      arrays, grads, rng, eps=eps)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_gated_finite_differences(rng, kind):
    n, t, d, h = 3, 7, 4, 6
    _, w = _weights(rng, kind, d, h)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    h0 = rng.standard_normal((n, h)).astype(np.float32)
    c0 = rng.standard_normal((n, h)).astype(np.float32) if kind == "lstm" else None
    hs, saved = _forward(kind, x, w, h0, c0)
    r = rng.standard_normal(hs.shape)
    g = _backward(kind, x, w, h0, c0, hs, saved, r.astype(np.float32))
    arrays = {"x": x, "h0": h0, "dw_ih": w[0], "dw_hh": w[1], "db_ih": w[2], "db_hh": w[3]}
    grads = {"x": g["dx"], "h0": g["dh0"], **{k: g[k] for k in ("dw_ih", "dw_hh", "db_ih", "db_hh")}}
    if kind == "lstm":
        arrays["c0"], grads["c0"] = c0, g["dc0"]
    check_directional(lambda: weighted_sum(_forward(kind, x, w, h0, c0)[0], r), arrays, grads, rng)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_fast_path_matches_scalar_path(rng, kind, reference_mode):
    from spark_nn import _kernels

    n, t, d, h = 6, 4, 5, 9
    _, w = _weights(rng, kind, d, h)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    dhs = rng.standard_normal((n, t, h)).astype(np.float32)
    slow_hs, slow_saved = _forward(kind, x, w, None, None)
    slow = _backward(kind, x, w, None, None, slow_hs, slow_saved, dhs)
    _kernels.set_reference(False)
    hs, saved = _forward(kind, x, w, None, None)
    fast = _backward(kind, x, w, None, None, hs, saved, dhs)
    assert_close("hs", hs, slow_hs)
    for k in ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert_close(k, fast[k], slow[k])


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_results_do_not_depend_on_thread_count(rng, kind, threads):
    n, t, d, h = 13, 5, 4, 11
    _, w = _weights(rng, kind, d, h)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    dhs = rng.standard_normal((n, t, h)).astype(np.float32)
    runs = []
    for nt in (1, 2, 3):
        threads(nt)
        hs, saved = _forward(kind, x, w, None, None)
        g = _backward(kind, x, w, None, None, hs, saved, dhs)
        runs.append([hs] + [g[k] for k in ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh")])
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)
