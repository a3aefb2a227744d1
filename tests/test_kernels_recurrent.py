import numpy as np
import pytest
import torch

from gradcheck import assert_close, check_directional, t64, weighted_sum
from spark_nn import kernels as K

# (N, T, D, H): batch 1, sequence length 1, hidden sizes not multiples of 8
SHAPES = [(1, 1, 1, 1), (3, 5, 4, 7), (2, 9, 3, 13), (8, 3, 10, 5), (5, 1, 6, 3), (17, 12, 8, 33), (40, 6, 17, 32)]
TORCH = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


def _weights(rng, kind, d, h, act="tanh"):
    kw = {"nonlinearity": act} if kind == "rnn" else {}
    mod = TORCH[kind](d, h, batch_first=True, **kw).double()
    with torch.no_grad():
        for p in mod.parameters():
            p.copy_(torch.from_numpy(rng.uniform(-0.6, 0.6, p.shape)))
    return mod, [p.detach().numpy().astype(np.float32) for p in mod.parameters()]


def _forward(kind, x, w, h0, c0, act="tanh", spans=None):
    """(hs, saved) from our kernels."""
    if kind == "rnn":
        hs = K.rnn_forward(x, *w, h0=h0, activation=act, spans=spans)
        return hs, ()
    if kind == "lstm":
        hs, cs, g = K.lstm_forward(x, *w, h0=h0, c0=c0, spans=spans)
        return hs, (cs, g)
    hs, g, hn = K.gru_forward(x, *w, h0=h0, spans=spans)
    return hs, (g, hn)


def _backward(kind, x, w, h0, c0, hs, saved, dhs, act="tanh", dcT=None, spans=None):
    if kind == "rnn":
        return K.rnn_backward(x, w[0], w[1], hs, dhs, h0=h0, activation=act, spans=spans)
    if kind == "lstm":
        return K.lstm_backward(x, w[0], w[1], hs, saved[0], saved[1], dhs, h0=h0, c0=c0, dcT=dcT,
                               spans=spans)
    return K.gru_backward(x, w[0], w[1], hs, saved[0], saved[1], dhs, h0=h0, spans=spans)


def _assert_torch_grads(kind, g, dx_ref, h0t, c0t, mod):
    """Our backward's dict against torch's gradients (x's given as dx_ref, already laid out)."""
    assert_close("dx", g["dx"], dx_ref)
    assert_close("dh0", g["dh0"], h0t.grad.numpy()[0])
    if kind == "lstm":
        assert_close("dc0", g["dc0"], c0t.grad.numpy()[0])
    for name, p in zip(["dw_ih", "dw_hh", "db_ih", "db_hh"], mod.parameters()):
        assert_close(name, g[name], p.grad.numpy())


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
    _assert_torch_grads(kind, g, xt.grad.numpy(), h0t, c0t, mod)


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
@pytest.mark.parametrize("padded", [False, True])
def test_recurrent_fast_path_matches_scalar_path(rng, kind, padded, reference_mode):
    from spark_nn import _kernels

    n, t, d, h = 6, 4, 5, 9
    _, w = _weights(rng, kind, d, h)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    dhs = rng.standard_normal((n, t, h)).astype(np.float32)
    spans = _random_spans(rng, n, t, "both") if padded else None
    slow_hs, slow_saved = _forward(kind, x, w, None, None, spans=spans)
    slow = _backward(kind, x, w, None, None, slow_hs, slow_saved, dhs, spans=spans)
    _kernels.set_reference(False)
    hs, saved = _forward(kind, x, w, None, None, spans=spans)
    fast = _backward(kind, x, w, None, None, hs, saved, dhs, spans=spans)
    assert_close("hs", hs, slow_hs)
    for k in ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert_close(k, fast[k], slow[k])


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_results_do_not_depend_on_thread_count(rng, kind, threads):
    n, t, d, h = 70, 5, 4, 19  # three blocks of rows (32, 32, 6)
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


# ---------------------------------------------------------------- padding (spans)

def _random_spans(rng, n, t, side):
    """Data steps per row: 'pre' ends at t, 'post' starts at 0, 'both' anywhere; length >= 1,
    with a full row and a length-1 row whenever there are enough rows."""
    lens = rng.integers(1, t + 1, n)
    lens[0] = t
    if n > 1:
        lens[1] = 1
    if side == "pre":
        begin = t - lens
    elif side == "post":
        begin = np.zeros(n, np.int64)
    else:
        begin = rng.integers(0, t - lens + 1)
    return np.stack([begin, begin + lens], 1).astype(np.int32)


@pytest.mark.parametrize("kind,act", [("rnn", "tanh"), ("rnn", "relu"), ("lstm", None), ("gru", None)])
@pytest.mark.parametrize("side", ["pre", "post", "both"])
@pytest.mark.parametrize("shape", [(1, 4, 3, 5), (6, 7, 4, 9), (40, 9, 5, 6)])
def test_padded_steps_match_torch_packed_sequences(rng, kind, act, side, shape):
    """Against torch's pack_padded_sequence on each row's data steps (moved to the front):
    outputs and final states, and the gradients of weights, x and h0 (c0), where the loss
    reads every data step's output and the last step's state (and the last cell state)."""
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    n, t, d, h = shape
    act = act or "tanh"
    mod, w = _weights(rng, kind, d, h, act)
    spans = _random_spans(rng, n, t, side)
    lens = spans[:, 1] - spans[:, 0]
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    h0 = rng.standard_normal((n, h)).astype(np.float32)
    c0 = rng.standard_normal((n, h)).astype(np.float32) if kind == "lstm" else None
    hs, saved = _forward(kind, x, w, h0, c0, act, spans)

    data = np.zeros((n, t, d))
    for i, (b, e) in enumerate(spans):
        data[i, :e - b] = x[i, b:e]
    xt, h0t = t64(data), t64(h0[None])
    packed = pack_padded_sequence(xt, torch.from_numpy(lens.astype(np.int64)), batch_first=True,
                                  enforce_sorted=False)
    if kind == "lstm":
        c0t = t64(c0[None])
        out_p, (hn, cn) = mod(packed, (h0t, c0t))
    else:
        out_p, hn = mod(packed, h0t)
    out, _ = pad_packed_sequence(out_p, batch_first=True, total_length=t)
    out_np, hn_np = out.detach().numpy(), hn.detach().numpy()[0]

    for i, (b, e) in enumerate(spans):
        assert_close(f"hs row {i} data steps", hs[i, b:e], out_np[i, :e - b])
        np.testing.assert_array_equal(hs[i, :b], np.broadcast_to(h0[i], (b, h)), f"row {i} before its data: h0")
        np.testing.assert_array_equal(hs[i, e:], np.broadcast_to(hs[i, e - 1], (t - e, h)), f"row {i} carried")
        assert_close(f"hs row {i} last step", hs[i, -1], hn_np[i])
    if kind == "lstm":
        assert_close("last cell state", saved[0][:, -1], cn.detach().numpy()[0])

    dout = rng.standard_normal((n, t, h))
    dlast = rng.standard_normal((n, h))
    dhs = np.zeros((n, t, h), np.float32)
    for i, (b, e) in enumerate(spans):
        dout[i, e - b:] = 0.0
        dhs[i, b:e] = dout[i, :e - b]
    dhs[:, -1] += dlast.astype(np.float32)
    loss = (out * torch.from_numpy(dout)).sum() + (hn[0] * torch.from_numpy(dlast)).sum()
    dcT = None
    if kind == "lstm":
        dcT = rng.standard_normal((n, h)).astype(np.float32)
        loss = loss + (cn[0] * torch.from_numpy(dcT.astype(np.float64))).sum()
    loss.backward()
    g = _backward(kind, x, w, h0, c0, hs, saved, dhs, act, dcT=dcT, spans=spans)
    dx_ref = np.zeros((n, t, d))
    for i, (b, e) in enumerate(spans):
        dx_ref[i, b:e] = xt.grad.numpy()[i, :e - b]
    _assert_torch_grads(kind, g, dx_ref, h0t, c0t if kind == "lstm" else None, mod)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_all_padding_row_keeps_h0_and_passes_its_gradient(rng, kind):
    n, t, d, h = 3, 5, 2, 4
    _, w = _weights(rng, kind, d, h)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    h0 = rng.standard_normal((n, h)).astype(np.float32)
    spans = np.array([[0, 5], [2, 2], [1, 4]], np.int32)
    hs, saved = _forward(kind, x, w, h0, None, spans=spans)
    np.testing.assert_array_equal(hs[1], np.broadcast_to(h0[1], (t, h)))
    dhs = rng.standard_normal((n, t, h)).astype(np.float32)
    g = _backward(kind, x, w, h0, None, hs, saved, dhs, spans=spans)
    np.testing.assert_array_equal(g["dx"][1], 0.0)
    np.testing.assert_allclose(g["dh0"][1], dhs[1].sum(0), rtol=1e-6)
    # the row adds nothing to the weights: same gradients without it
    keep = [0, 2]
    hs2, saved2 = _forward(kind, x[keep], w, h0[keep], None, spans=spans[keep])
    g2 = _backward(kind, x[keep], w, h0[keep], None, hs2, saved2, dhs[keep], spans=spans[keep])
    for name in ("dw_ih", "dw_hh", "db_ih", "db_hh"):
        assert_close(name, g[name], g2[name])


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_full_spans_equal_no_spans_bitwise(rng, kind):
    n, t, d, h = 37, 6, 5, 8
    _, w = _weights(rng, kind, d, h)
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    dhs = rng.standard_normal((n, t, h)).astype(np.float32)
    full = np.tile(np.array([[0, t]], np.int32), (n, 1))
    hs, saved = _forward(kind, x, w, None, None)
    hs_f, saved_f = _forward(kind, x, w, None, None, spans=full)
    np.testing.assert_array_equal(hs, hs_f)
    g = _backward(kind, x, w, None, None, hs, saved, dhs)
    g_f = _backward(kind, x, w, None, None, hs_f, saved_f, dhs, spans=full)
    for k in ("dx", "dh0", "dw_ih", "dw_hh", "db_ih", "db_hh"):
        np.testing.assert_array_equal(g[k], g_f[k], err_msg=k)


@pytest.mark.parametrize("spans,msg", [(np.zeros((2, 2), np.int32), r"shape \(3, 2\)"),
                                       (np.array([[0, 4], [3, 2], [0, 1]]), "row 1"),
                                       (np.array([[0, 5], [0, 2], [0, 1]]), "row 0"),
                                       (np.array([[-1, 2], [0, 2], [0, 1]]), "row 0"),
                                       (np.zeros((3, 2), np.float32), "integer")])
def test_bad_spans_are_refused(rng, spans, msg):
    _, w = _weights(rng, "gru", 2, 3)
    x = np.zeros((3, 4, 2), np.float32)
    with pytest.raises(ValueError, match=msg):
        K.gru_forward(x, *w, spans=spans)
