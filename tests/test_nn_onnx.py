"""ONNX export run with onnxruntime against our predictions, for every layer kind, batch 1 and 7."""
import numpy as np
import pytest

from spark_nn.nn import Sequential, builders
from spark_nn.nn import layers as L

onnxruntime = pytest.importorskip("onnxruntime")  # the test extra installs it


def _run(path, x):
    sess = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    return {o.name: v for o, v in zip(sess.get_outputs(), sess.run(None, {"input": x}))}


def _randomize(model, rng):
    model.set_params((rng.standard_normal(model.num_params) * 0.3).astype(np.float32))
    return model


CNN = [{"type": "Conv2D", "filters": 4, "kernel_size": 3, "padding": "same", "activation": "relu"},
       {"type": "MaxPool2D", "pool_size": 2},
       {"type": "Conv2D", "filters": 3, "kernel_size": [3, 2], "stride": [1, 2], "padding": [1, 0],
        "use_bias": False, "activation": "tanh"},
       {"type": "MaxPool2D", "pool_size": 2, "stride": 1, "padding": 1},
       {"type": "Flatten"}, {"type": "Dropout", "rate": 0.5},
       {"type": "Dense", "units": 6, "activation": "sigmoid"}, {"type": "Dense", "units": 3}]


@pytest.mark.parametrize("batch", [1, 7])
def test_cnn_export_matches_our_predictions(rng, tmp_path, batch):
    model = _randomize(builders.from_specs(CNN, (2, 8, 9)), rng)
    x = rng.standard_normal((batch, 2, 8, 9)).astype(np.float32)
    out = _run(model.to_onnx(str(tmp_path / "cnn.onnx")), x)
    np.testing.assert_allclose(out["output"], model.predict_output(x), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["probability"], model.predict_proba(x), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("cell,act", [("rnn", "relu"), ("rnn", "tanh"), ("rnn", "sigmoid"), ("lstm", None),
                                      ("gru", None)])
@pytest.mark.parametrize("batch", [1, 7])
def test_padded_token_models_export_matches_our_predictions(rng, tmp_path, cell, act, batch):
    model = builders.rnn([6, 5, 3], 3, (9,), cell=cell, activation=act or "tanh", vocab_size=40, seed=2)
    model.layers[-1].params["b"][...] = rng.standard_normal(3)
    ids = rng.integers(1, 40, (batch, 9))
    if batch > 1:
        ids[0, :6] = 0       # pre-padded
        ids[1, 4:] = 0       # post-padded
        ids[2, :] = 0        # no tokens
        ids[3, [0, 1, 8]] = 0
    out = _run(model.to_onnx(str(tmp_path / "rnn.onnx")), ids)
    np.testing.assert_allclose(out["output"], model.predict_output(ids), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("cls", [L.SimpleRNN, L.LSTM, L.GRU])
def test_numeric_sequence_models_export_matches_our_predictions(rng, tmp_path, cls):
    rec = [cls(5, return_sequences=True), cls(4)]
    model = _randomize(Sequential(rec + [L.Dense(2)], (6, 3)), rng)
    x = rng.standard_normal((7, 6, 3)).astype(np.float32)
    out = _run(model.to_onnx(str(tmp_path / "seq.onnx")), x)
    np.testing.assert_allclose(out["output"], model.predict_output(x), rtol=1e-4, atol=1e-5)


def test_encoder_export_stops_at_the_code(rng, tmp_path):
    model, code = builders.autoencoder(10, [6, 3])
    _randomize(model, rng)
    x = rng.standard_normal((7, 10)).astype(np.float32)
    out = _run(model.to_onnx(str(tmp_path / "enc.onnx"), upto=code), x)
    assert set(out) == {"output"}
    np.testing.assert_allclose(out["output"], model.predict_layer_output(x, code), rtol=1e-4, atol=1e-5)
