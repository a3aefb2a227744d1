"""Regression losses (spark_nn.nn.losses): values and gradients against torch's MSELoss,
L1Loss and HuberLoss in float64, target standardization, the metric sums a fit reports, and a
regression network's whole gradient by finite differences."""
import numpy as np
import pytest
import torch

from spark_nn.nn import builders
from spark_nn.nn import layers as L
from spark_nn.nn.losses import Huber, MeanAbsoluteError, MeanSquaredError, loss_from_config
from spark_nn.nn.model import Sequential

TORCH = {"mse": lambda: torch.nn.MSELoss(reduction="mean"), "mae": lambda: torch.nn.L1Loss(reduction="mean"),
         "huber": lambda: torch.nn.HuberLoss(reduction="mean", delta=0.7)}
OURS = {"mse": lambda **kw: MeanSquaredError(target="labels", **kw), "mae": lambda **kw: MeanAbsoluteError(**kw),
        "huber": lambda **kw: Huber(delta=0.7, **kw)}


@pytest.mark.parametrize("kind", sorted(TORCH))
@pytest.mark.parametrize("shape", [(1, 1), (7, 1), (5, 3)])
def test_regression_loss_and_gradient_match_torch(rng, kind, shape):
    """Our loss sum / rows is torch's mean-reduced loss and our gradient of the sum, divided by
    the rows, is torch's; errors straddle Huber's threshold and include exact zeros (where L1's
    gradient is 0 in both)."""
    out = rng.standard_normal(shape).astype(np.float32)
    y = (out + rng.choice([-2.0, -0.5, 0.0, 0.3, 1.5], size=shape)).astype(np.float32)
    loss = OURS[kind]()
    total, grad = loss(out, loss.targets(None, y))
    o = torch.tensor(out.astype(np.float64), requires_grad=True)
    ref = TORCH[kind]()(o, torch.tensor(y.astype(np.float64)))
    ref.backward()
    n = shape[0]
    assert total / n == pytest.approx(ref.item(), rel=1e-12, abs=1e-12)
    assert grad.dtype == np.float32 and grad.shape == out.shape
    np.testing.assert_allclose(grad / n, o.grad.numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("kind", sorted(OURS))
def test_standardized_targets_train_in_standard_units_and_predict_in_the_labels(rng, kind):
    shift, scale = np.array([1000.0, -3.0]), np.array([50.0, 0.25])
    loss = OURS[kind](shift=shift, scale=scale)
    y = rng.standard_normal((6, 2)) * scale + shift
    t = loss.targets(None, y)
    np.testing.assert_allclose(t, (y - shift) / scale, rtol=1e-6)
    out = rng.standard_normal((6, 2)).astype(np.float32)
    np.testing.assert_allclose(loss.output_transform(out), out.astype(np.float64) * scale + shift, rtol=1e-12)
    # the metric sums are in the label's units: squared and absolute error of the predictions
    pred = out.astype(np.float64) * scale + shift
    yt = t.astype(np.float64) * scale + shift  # the float32 targets, back in label units
    sums = loss.metric_sums(out, t)
    assert sums[0] == pytest.approx(np.sum(np.mean((pred - yt) ** 2, axis=1)), rel=1e-9)
    assert sums[1] == pytest.approx(np.sum(np.mean(np.abs(pred - yt), axis=1)), rel=1e-9)
    metrics = loss.metrics(sums, 6)
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((pred - yt) ** 2)), rel=1e-9)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(pred - yt)), rel=1e-9)
    again = loss_from_config(loss.config())
    assert type(again) is type(loss) and again.config() == loss.config()
    np.testing.assert_array_equal(again.targets(None, y), t)


def test_regression_loss_arguments_are_checked():
    with pytest.raises(ValueError, match="together"):
        MeanAbsoluteError(shift=[1.0])
    with pytest.raises(ValueError, match="positive"):
        MeanAbsoluteError(shift=[1.0], scale=[0.0])
    with pytest.raises(ValueError, match="delta"):
        Huber(delta=0)
    assert MeanSquaredError().target == "inputs" and MeanAbsoluteError().target == "labels"


@pytest.mark.parametrize("kind", sorted(OURS))
def test_regression_network_gradient_matches_finite_differences(rng, kind):
    """A one-output LSTM regressor's whole gradient, through the standardized targets."""
    loss = OURS[kind](shift=[5.0], scale=[2.0])
    net = builders.rnn([6], 1, (4, 2), cell="lstm", loss=loss, seed=3)
    assert net.output_shape == (1,)
    x = rng.standard_normal((5, 4, 2)).astype(np.float32)
    y = loss.targets(x, rng.standard_normal(5) * 2.0 + 5.0)
    _, grad, _ = net.loss_and_grad(None, x, y)
    theta = net.params.copy()
    for _ in range(3):
        v = rng.standard_normal(theta.shape)
        v /= np.linalg.norm(v)
        eps = 1e-3
        lp = net.loss_and_grad((theta + eps * v).astype(np.float32), x, y)[0]
        lm = net.loss_and_grad((theta - eps * v).astype(np.float32), x, y)[0]
        analytic = 2 * eps * float(np.dot(grad.astype(np.float64), v))
        assert abs((lp - lm) - analytic) <= 2e-2 * abs(analytic) + 1e-5, (lp - lm, analytic)
    net.set_params(theta)


def test_a_dense_regressor_learns_a_linear_map_in_process(rng):
    """In-process fit on standardized targets of y = x @ w + 100: the predictions in the label's
    units come within 1 % of the label's spread (a regression must not learn the mean only)."""
    w = np.array([3.0, -2.0, 0.5])
    x = rng.standard_normal((512, 3)).astype(np.float32)
    y = x.astype(np.float64) @ w + 100.0
    loss = MeanSquaredError(target="labels", shift=[y.mean()], scale=[y.std()])
    net = Sequential([L.Dense(1)], (3,), loss=loss, seed=0)
    net.fit(x, loss.targets(x, y), epochs=60, batch_size=32, lr=0.05)
    pred = net.predict_proba(x)[:, 0]
    assert np.sqrt(np.mean((pred - y) ** 2)) < 0.01 * y.std()


@pytest.mark.parametrize("axis, shape", [(-1, (5, 3)), (0, (2, 4, 3)), (-1, (4,))])
def test_standardize_layer_matches_numpy_torch_and_onnx(rng, tmp_path, axis, shape):
    """Standardize: (x - mean) / std on the feature axis of a row; its gradient is dy / std; to_torch
    and ONNX compute the same (a regressor's network starts with it)."""
    features = shape[axis]
    mean, std = rng.standard_normal(features) * 10, rng.random(features) * 3 + 0.1
    net = Sequential([L.Standardize(mean, std, axis), L.Flatten(), L.Dense(2)], shape,
                     loss=MeanSquaredError(target="labels"), seed=1)
    x = (rng.standard_normal((7,) + shape) * 5).astype(np.float32)
    moved = np.moveaxis(x.astype(np.float64), axis % len(shape) + 1, -1)
    expected = np.moveaxis((moved - mean.astype(np.float32)) / std.astype(np.float32), -1, axis % len(shape) + 1)
    layer = net.layers[0]
    np.testing.assert_allclose(layer.forward(x), expected, rtol=1e-5, atol=1e-5)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_allclose(layer.backward(dy), np.moveaxis(
        np.moveaxis(dy, axis % len(shape) + 1, -1) / std.astype(np.float32), -1, axis % len(shape) + 1), rtol=1e-6)
    ours = net.predict_output(x)
    with torch.no_grad():
        theirs = net.to_torch()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(theirs, ours, rtol=1e-5, atol=1e-5)
    onnxruntime = pytest.importorskip("onnxruntime")
    path = net.to_onnx(str(tmp_path / "net.onnx"))
    sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(sess.run(None, {"input": x})[0], ours, rtol=1e-5, atol=1e-5)
    assert L.layer_from_config(layer.config()).config() == layer.config()
    with pytest.raises(ValueError, match="features on axis"):
        Sequential([L.Standardize([0.0] * (features + 1), [1.0] * (features + 1), axis)], shape)


def test_onnx_export_of_a_regressor_predicts_in_the_label_units(rng, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    loss = Huber(shift=[1000.0, -2.0], scale=[30.0, 0.5])
    net = builders.rnn([5], 2, (6, 3), cell="gru", loss=loss, standardize={"mean": [1, 2, 3], "std": [1, 2, 4]})
    x = rng.standard_normal((4, 6, 3)).astype(np.float32)
    sess = onnxruntime.InferenceSession(net.to_onnx(str(tmp_path / "r.onnx")), providers=["CPUExecutionProvider"])
    got = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))
    np.testing.assert_allclose(got["output"], net.predict_output(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got["prediction"], net.predict_proba(x), rtol=1e-5, atol=1e-3)
