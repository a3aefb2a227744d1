"""Sequential.precision (issue 31): set on every layer (inside containers too), kept in the config
only when not fp32, a prediction's own precision does not stick, and a bf16 fit learns as fp32's
does while computing something else."""
import numpy as np
import pytest

from spark_nn import kernels as K
from spark_nn.nn import Activation, Conv2D, Dense, Flatten, MaxPool2D, Residual, Sequential

needs_bf16 = pytest.mark.skipif(not K.bf16_available(),
                                reason="this CPU lacks AVX512_BF16 (or SPARK_NN_ISA caps it): no bf16 kernels to test")


def _net(precision="fp32"):
    block = Residual([Conv2D(8), Activation("relu"), Conv2D(8)])
    return Sequential([Conv2D(8), Activation("relu"), block, MaxPool2D(2), Flatten(), Dense(3)], (2, 6, 6),
                      precision=precision)


def test_precision_reaches_every_layer_and_the_config_only_when_bf16():
    net = _net()
    assert "precision" not in net.config()
    net.precision = "BF16"
    assert net.precision == "bf16" and {layer.precision for _, layer in net.named_layers()} == {"bf16"}
    again = Sequential.from_config(net.config())
    assert again.precision == "bf16" and again.config() == net.config()
    with pytest.raises(ValueError, match=r"precision must be one of \['fp32', 'bf16'\], got 'int8'"):
        net.precision = "int8"


@needs_bf16
def test_a_prediction_in_another_precision_does_not_stick(rng):
    net = _net()
    x = rng.standard_normal((4, 2, 6, 6)).astype(np.float32)
    a = net.predict_output(x, precision="bf16")
    assert net.precision == "fp32"
    b = net.predict_output(x)
    assert 1e-6 < np.abs(a - b).max() < 0.05 * np.abs(b).max()


@needs_bf16
def test_a_bf16_fit_learns_as_fp32_does(rng):
    x = rng.standard_normal((96, 2, 6, 6)).astype(np.float32)
    y = (x[:, 0, :3].mean(axis=(1, 2)) > 0).astype(np.int64) + (x[:, 1].mean(axis=(1, 2)) > 0)
    hist = {}
    for p in ("fp32", "bf16"):
        net = _net()
        hist[p] = net.fit(x, y, epochs=8, batch_size=16, lr=3e-3, precision=p)["loss"]
        assert net.precision == p
    assert hist["bf16"] != hist["fp32"]
    assert hist["bf16"][-1] < 0.6 * hist["bf16"][0]
    assert abs(hist["bf16"][-1] - hist["fp32"][-1]) < 0.1 * hist["fp32"][0]
