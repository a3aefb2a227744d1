"""Padding id 0 through the layer graph, and the recurrent initialisations."""
import numpy as np
import pytest

from spark_nn.nn import builders
from spark_nn.nn import layers as L
from spark_nn.nn.model import Sequential


def test_embedding_spans_run_from_first_to_last_token():
    emb = L.Embedding(9, 2, mask_zero=True)
    Sequential([emb], (5,))
    ids = np.array([[0, 0, 3, 4, 5],    # pre-padded
                    [3, 4, 0, 0, 0],    # post-padded
                    [0, 7, 0, 8, 0],    # both sides; the inner 0 is inside the span
                    [0, 0, 0, 0, 0],    # no tokens
                    [1, 2, 3, 4, 5]])
    emb.forward(ids)
    np.testing.assert_array_equal(emb.output_spans(), [[2, 5], [0, 2], [1, 4], [0, 0], [0, 5]])
    assert emb.output_spans().dtype == np.int32
    plain = L.Embedding(9, 2)
    Sequential([plain], (5,))
    plain.forward(ids)
    assert plain.output_spans() is None


def test_embedding_config_keeps_mask_zero_and_old_configs_load_unmasked():
    assert L.layer_from_config(L.Embedding(5, 3, mask_zero=True).config()).mask_zero
    old = {"type": "Embedding", "vocab_size": 5, "dim": 3}  # saved before masking existed
    assert L.Embedding(5, 3).config() == old
    assert not L.layer_from_config(old).mask_zero


def _pair(cell, act, long_t, short_t, seed=3):
    """Two seed-style models over long_t and short_t steps with the same weights."""
    kw = dict(cell=cell, activation=act, vocab_size=12, embedding_dim=4, seed=seed)
    long_m = builders.rnn([5, 3, 2], 2, (long_t,), **kw)
    short_m = builders.rnn([5, 3, 2], 2, (short_t,), **kw)
    short_m.set_params(long_m.params)
    return long_m, short_m


@pytest.mark.parametrize("cell,act", [("rnn", "relu"), ("rnn", "tanh"), ("lstm", None), ("gru", None)])
def test_padding_changes_neither_outputs_nor_gradients(rng, cell, act):
    """Stacked recurrent layers over pre- or post-padded rows give the outputs and the weight
    gradients of the same rows without padding."""
    long_m, short_m = _pair(cell, act or "tanh", 9, 5)
    tokens = rng.integers(1, 12, (6, 5))
    y = rng.integers(0, 2, 6)
    pre = np.concatenate([np.zeros((3, 4), np.int64), tokens[:3]], axis=1)
    post = np.concatenate([tokens[3:], np.zeros((3, 4), np.int64)], axis=1)
    padded = np.concatenate([pre, post])
    np.testing.assert_allclose(long_m.predict_output(padded), short_m.predict_output(tokens), rtol=1e-5, atol=1e-6)
    loss_l, grad_l, _ = long_m.loss_and_grad(None, padded, y)
    loss_s, grad_s, _ = short_m.loss_and_grad(None, tokens, y)
    assert loss_l == pytest.approx(loss_s, rel=1e-5)
    np.testing.assert_allclose(grad_l, grad_s, rtol=1e-4, atol=1e-6)


def test_unmasked_embedding_lets_padding_drive_the_state(rng):
    """The control for the test above: without mask_zero the padded rows score differently."""
    long_m, short_m = _pair("rnn", "tanh", 9, 5)
    long_m.layers[0].mask_zero = False
    tokens = rng.integers(1, 12, (4, 5))
    padded = np.concatenate([np.zeros((4, 4), np.int64), tokens], axis=1)
    assert not np.allclose(long_m.predict_output(padded), short_m.predict_output(tokens), atol=1e-4)


def test_recurrent_weights_start_identity_for_relu_and_orthogonal_otherwise():
    m = builders.rnn([6, 4, 2], 2, (3,), cell="rnn", activation="relu", vocab_size=10)
    for layer in m.layers[1:3]:
        np.testing.assert_array_equal(layer.params["w_hh"], np.eye(layer.units))
        np.testing.assert_array_equal(layer.params["b_hh"], 0.0)
    for cell, act in (("rnn", "tanh"), ("rnn", "sigmoid"), ("lstm", "tanh"), ("gru", "tanh")):
        m = builders.rnn([6, 2], 2, (3,), cell=cell, activation=act, vocab_size=10)
        w = m.layers[1].params["w_hh"]
        for block in np.split(w, w.shape[0] // 6):
            np.testing.assert_allclose(block @ block.T, np.eye(6), atol=1e-5)
            assert not np.allclose(block, np.eye(6))
