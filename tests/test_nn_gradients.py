"""Whole-model gradients: against finite differences of our own forward, and against an
equivalent torch model with copied weights (same logits, same gradients)."""
import numpy as np
import pytest
import torch

from gradcheck import assert_close
from spark_nn.nn import builders
from spark_nn.nn import layers as L
from spark_nn.nn.losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy
from spark_nn.nn.model import Sequential


def _fd_check(model, x, y, rng, eps=1e-2, trials=3, rtol=2e-3):
    """Directional finite differences of the summed loss over the flat parameter vector."""
    loss0, grad, n = model.loss_and_grad(None, x, y)
    theta = model.params.copy()
    for _ in range(trials):
        v = rng.standard_normal(theta.shape)
        v /= np.linalg.norm(v)
        plus, minus = (theta + eps * v).astype(np.float32), (theta - eps * v).astype(np.float32)
        lp = model.loss_and_grad(plus, x, y)[0]
        lm = model.loss_and_grad(minus, x, y)[0]
        analytic = float(np.dot(grad.astype(np.float64), plus.astype(np.float64) - minus.astype(np.float64)))
        assert abs((lp - lm) - analytic) <= rtol * abs(analytic) + 1e-6 * (abs(lp) + abs(lm)), (lp - lm, analytic)
    model.set_params(theta)


def test_cnn_gradient_finite_differences(rng):
    model = Sequential([L.Conv2D(4, 3, padding=1), L.Activation("tanh"), L.MaxPool2D(2),
                        L.Conv2D(5, (3, 2), stride=(1, 2), padding=(1, 0)), L.Activation("sigmoid"),
                        L.Flatten(), L.Dense(7), L.Activation("tanh"), L.Dense(3)], (2, 8, 9), seed=1)
    x = rng.standard_normal((5, 2, 8, 9)).astype(np.float32)
    _fd_check(model, x, rng.integers(0, 3, 5), rng)


@pytest.mark.parametrize("cell", ["SimpleRNN", "LSTM", "GRU"])
def test_recurrent_stack_gradient_finite_differences(rng, cell):
    cls = getattr(L, cell)
    model = Sequential([L.Embedding(11, 4), cls(6, return_sequences=True), cls(5), L.Dense(3)], (7,), seed=2)
    x = rng.integers(0, 11, (4, 7))
    _fd_check(model, x, rng.integers(0, 3, 4), rng)


@pytest.mark.parametrize("loss", [BinaryCrossEntropy(), MeanSquaredError(), SoftmaxCrossEntropy([1.0, 2.0, 0.5])])
def test_losses_gradient_finite_differences(rng, loss):
    model = Sequential([L.Dense(6), L.Activation("tanh"), L.Dense(3)], (4,), loss=loss, seed=3)
    x = rng.standard_normal((8, 4)).astype(np.float32)
    y = rng.integers(0, 3, 8) if isinstance(loss, SoftmaxCrossEntropy) else rng.random((8, 3)).astype(np.float32)
    _fd_check(model, x, y, rng)


def _copy_to_torch(model, tmodules):
    """Copies our weights into torch modules listed in layer order."""
    params = iter(tmodules)
    for i, layer in enumerate(model.layers):
        if not layer.params:
            continue
        mod = next(params)
        with torch.no_grad():
            if isinstance(layer, (L.Conv2D, L.Dense)):
                mod.weight.copy_(torch.from_numpy(layer.params["w"].astype(np.float64)))
                mod.bias.copy_(torch.from_numpy(layer.params["b"].astype(np.float64)))
            else:
                for n in ("w_ih", "w_hh", "b_ih", "b_hh"):
                    getattr(mod, f"{n.replace('w_', 'weight_').replace('b_', 'bias_')}_l0").copy_(
                        torch.from_numpy(layer.params[n].astype(np.float64)))


def _torch_grads(model, tmodules):
    """Torch gradients laid out like our flat vector."""
    out, params = [], iter(tmodules)
    for layer in model.layers:
        if not layer.params:
            continue
        mod = next(params)
        if isinstance(layer, (L.Conv2D, L.Dense)):
            out += [mod.weight.grad, mod.bias.grad]
        else:
            out += [getattr(mod, f"{n}_l0").grad for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    return np.concatenate([g.numpy().ravel() for g in out])


def test_cnn_matches_torch(rng):
    model = builders.cnn([6, 8, 10], 10, (1, 12, 10), seed=4)
    convs = [torch.nn.Conv2d(1, 6, 3, padding=1).double(), torch.nn.Conv2d(6, 8, 3, padding=1).double()]
    fc = torch.nn.Linear(8 * 3 * 2, 10).double()
    _copy_to_torch(model, convs + [fc])
    tnet = torch.nn.Sequential(convs[0], torch.nn.ReLU(), torch.nn.MaxPool2d(2), convs[1], torch.nn.ReLU(),
                               torch.nn.MaxPool2d(2), torch.nn.Flatten(), fc)
    x = rng.standard_normal((6, 1, 12, 10)).astype(np.float32)
    y = rng.integers(0, 10, 6)
    loss, grad, n = model.loss_and_grad(None, x, y)
    logits = tnet(torch.from_numpy(x.astype(np.float64)))
    tl = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="sum")
    tl.backward()
    assert_close("logits", model.predict_output(x), logits.detach().numpy())
    assert abs(loss - tl.item()) <= 1e-5 * abs(tl.item())
    assert_close("grad", grad, _torch_grads(model, convs + [fc]))


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_recurrent_classifier_matches_torch(rng, cell):
    model = builders.rnn([9, 7, 4], 4, (6, 5), cell=cell, seed=5)
    tcls = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[cell]
    r1, r2 = tcls(5, 9, batch_first=True).double(), tcls(9, 7, batch_first=True).double()
    fc = torch.nn.Linear(7, 4).double()
    _copy_to_torch(model, [r1, r2, fc])
    x = rng.standard_normal((3, 6, 5)).astype(np.float32)
    y = rng.integers(0, 4, 3)
    loss, grad, _ = model.loss_and_grad(None, x, y)
    h1, _ = r1(torch.from_numpy(x.astype(np.float64)))
    h2, _ = r2(h1)
    logits = fc(h2[:, -1])
    tl = torch.nn.functional.cross_entropy(logits, torch.from_numpy(y), reduction="sum")
    tl.backward()
    assert_close("logits", model.predict_output(x), logits.detach().numpy())
    assert_close("grad", grad, _torch_grads(model, [r1, r2, fc]))


def test_loss_and_grad_sums_over_partitions(rng):
    """Sums from two halves add up to the whole batch's: what treeAggregate relies on."""
    model = builders.cnn([4, 3], 3, (1, 6, 6), seed=6)
    x = rng.standard_normal((10, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 10)
    la, ga, na = model.loss_and_grad(None, x[:4], y[:4])
    lb, gb, nb = model.loss_and_grad(None, x[4:], y[4:])
    lw, gw, nw = model.loss_and_grad(None, x, y)
    assert na + nb == nw
    assert abs(la + lb - lw) <= 1e-5 * abs(lw)
    assert_close("grad", ga + gb, gw)


def test_batch_of_one_and_dropout_is_seeded(rng):
    model = Sequential([L.Dense(8), L.Dropout(0.5), L.Dense(2)], (3,), seed=7)
    x = rng.standard_normal((1, 3)).astype(np.float32)
    g1 = model.loss_and_grad(None, x, np.array([1]), np.random.default_rng(3))[1]
    g2 = model.loss_and_grad(None, x, np.array([1]), np.random.default_rng(3))[1]
    g3 = model.loss_and_grad(None, x, np.array([1]), np.random.default_rng(4))[1]
    np.testing.assert_array_equal(g1, g2)
    assert not np.array_equal(g1, g3)
    np.testing.assert_array_equal(model.predict_output(x), model.predict_output(x))
