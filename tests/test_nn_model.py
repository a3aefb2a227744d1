import json
import os

import numpy as np
import pytest

from spark_nn.nn import builders, load_model, save_model
from spark_nn.nn import layers as L
from spark_nn.nn.persist import read_arrays


def test_flat_parameter_vector_is_shared_by_all_layers():
    model = builders.cnn([4, 6, 3], 3, (1, 8, 8), seed=0)
    assert model.params.flags.c_contiguous and model.params.dtype == np.float32
    assert model.num_params == sum(v.size for v in model.weights_dict().values())
    for layer in model.layers:
        for name, view in layer.params.items():
            assert np.shares_memory(view, model.params), name
        for name, view in layer.grads.items():
            assert np.shares_memory(view, model.grads), name


def test_initialisation_is_deterministic_and_seeded():
    a = builders.rnn([8, 2], 2, (5, 3), cell="lstm", seed=11)
    b = builders.rnn([8, 2], 2, (5, 3), cell="lstm", seed=11)
    c = builders.rnn([8, 2], 2, (5, 3), cell="lstm", seed=12)
    np.testing.assert_array_equal(a.params, b.params)
    assert not np.array_equal(a.params, c.params)
    w_hh = a.layers[0].params["w_hh"]
    for g in range(4):  # each gate's recurrent block is orthogonal
        blk = w_hh[g * 8:(g + 1) * 8].astype(np.float64)
        np.testing.assert_allclose(blk @ blk.T, np.eye(8), atol=1e-5)
    np.testing.assert_array_equal(a.layers[0].params["b_ih"][8:16], 1.0)  # forget-gate bias


def test_seed_layer_rule():
    m = builders.cnn([32, 64, 10], 10, (1, 8, 8))
    assert [type(l).__name__ for l in m.layers] == ["Conv2D", "Activation", "MaxPool2D", "Conv2D", "Activation",
                                                    "MaxPool2D", "Flatten", "Dense"]
    assert m.output_shape == (10,)
    m = builders.cnn([32, 64], 10, (1, 8, 8))  # output layer appended
    assert [l.filters for l in m.layers if isinstance(l, L.Conv2D)] == [32, 64] and m.output_shape == (10,)
    r = builders.rnn([64, 32, 16], 2, (10,), vocab_size=100)
    assert [type(l).__name__ for l in r.layers] == ["Embedding", "SimpleRNN", "SimpleRNN", "SimpleRNN", "Dense"]
    assert [l.return_sequences for l in r.layers[1:4]] == [True, True, False]
    assert r.output_shape == (2,)


@pytest.mark.parametrize("call,match", [
    (lambda: builders.cnn([], 10, (1, 8, 8)), "non-empty list"),
    (lambda: builders.cnn([32, 0], 10, (1, 8, 8)), "positive ints"),
    (lambda: builders.cnn([32, -4], 10, (1, 8, 8)), "positive ints"),
    (lambda: builders.cnn([32], 1, (1, 8, 8)), "numClasses must be >= 2"),
    (lambda: builders.cnn([32], 10, (1, 8, 8), activation="swish"), "activation must be"),
    (lambda: builders.rnn([8], 2, (5, 3), cell="transformer"), "cellType must be one of"),
    (lambda: builders.cnn([8, 8, 8, 8], 10, (1, 8, 8)),
     r"layer 11 \(MaxPool2D.*on input shape \(8, 1, 1\).*smaller than its 2x2 window; the images are too small"),
])
def test_builder_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_explicit_specs_give_full_control(rng):
    m = builders.from_specs([
        {"type": "Conv2D", "filters": 5, "kernel_size": [5, 3], "stride": 1, "padding": [2, 1], "activation": "tanh"},
        {"type": "MaxPool2D", "pool_size": 2},
        {"type": "Flatten"}, {"type": "Dropout", "rate": 0.25},
        {"type": "Dense", "units": 12, "activation": "relu"}, {"type": "Dense", "units": 4}], (3, 10, 9))
    assert [type(l).__name__ for l in m.layers] == ["Conv2D", "Activation", "MaxPool2D", "Flatten", "Dropout",
                                                    "Dense", "Activation", "Dense"]
    assert m.predict_proba(rng.standard_normal((2, 3, 10, 9)).astype(np.float32)).shape == (2, 4)
    with pytest.raises(ValueError, match="unknown layer type 'Conv3D'"):
        builders.from_specs([{"type": "Conv3D"}], (1, 4, 4))
    with pytest.raises(ValueError, match="bad arguments for layer Dense"):
        builders.from_specs([{"type": "Dense", "width": 3}], (4,))


def test_save_load_round_trip_is_bit_identical(tmp_path, rng):
    m = builders.rnn([6, 3], 3, (4,), cell="gru", vocab_size=20, seed=3)
    x = rng.integers(0, 20, (7, 4))
    m.fit(x, rng.integers(0, 3, 7), epochs=2, batch_size=4)
    path = tmp_path / "model"
    save_model(m, str(path))
    doc = json.loads((path / "model.json").read_text())
    assert doc["format"] == "spark_nn.Sequential" and doc["format_version"] == 1
    loaded = load_model(str(path))
    np.testing.assert_array_equal(loaded.params, m.params)
    np.testing.assert_array_equal(loaded.predict_proba(x), m.predict_proba(x))
    with pytest.raises(FileExistsError):
        save_model(m, str(path))
    save_model(m, str(path), overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["model"]  # no temporary left behind


def test_load_rejects_bad_files(tmp_path):
    m = builders.cnn([3], 2, (1, 4, 4))
    save_model(m, str(tmp_path / "m"))
    with pytest.raises(ValueError, match="no model.json"):
        load_model(str(tmp_path))
    weights = read_arrays(str(tmp_path / "m" / "weights.npz"))
    weights["0.w"] = weights["0.w"][:1]
    with open(tmp_path / "m" / "weights.npz", "wb") as f:
        np.savez(f, **weights)
    with pytest.raises(ValueError, match=r"weight 0.w has shape \(1, 1, 3, 3\), the architecture needs \(3, 1, 3, 3\)"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "weights.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(ValueError, match="cannot read weights file"):
        load_model(str(tmp_path / "m"))
    (tmp_path / "m" / "model.json").write_text('{"format": "keras"}')
    with pytest.raises(ValueError, match="not a spark_nn model"):
        load_model(str(tmp_path / "m"))


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    from spark_nn.nn import persist

    def broken(path, arrays):
        raise OSError("disk full")

    monkeypatch.setattr(persist, "write_arrays", broken)
    with pytest.raises(OSError, match="disk full"):
        save_model(builders.cnn([2], 2, (1, 4, 4)), str(tmp_path / "m"))
    assert os.listdir(tmp_path) == []


def test_input_checks(rng):
    m = builders.cnn([2], 2, (1, 4, 4))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 1, 4, 4\), got \(3, 4, 4\)"):
        m.predict(np.zeros((3, 4, 4), np.float32))
    bad = np.zeros((3, 1, 4, 4), np.float32)
    bad[2, 0, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN or infinite value in row 2"):
        m.predict(bad)
    r = builders.rnn([3], 2, (4,), vocab_size=5)
    with pytest.raises(ValueError, match=r"token id 7 at row 1 is outside \[0, 5\)"):
        r.predict(np.array([[0, 1, 2, 3], [4, 7, 0, 0]]))


def test_summary_lists_layers():
    text = builders.cnn([4], 3, (1, 6, 6)).summary()
    assert "Conv2D" in text and "parameters" in text


def test_the_loss_says_what_a_fit_trains_for():
    from spark_nn.nn.losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy, loss_from_config

    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    out = np.array([[0.1, 2.0], [3.0, -1.0], [0.0, 1.0]], dtype=np.float32)
    sce = SoftmaxCrossEntropy()
    labels = sce.targets(x, np.array([1.0, 1.0, 1.0]))
    assert labels.dtype == np.int64 and labels.tolist() == [1, 1, 1]
    assert sce.has_accuracy and sce.correct(out, labels) == 2
    reconstruction = builders.autoencoder(2, [1])[0].loss
    assert reconstruction.targets(x, np.zeros(3)) is x and not reconstruction.has_accuracy
    assert reconstruction.correct(out, x) == 0 and reconstruction.config() == {"type": "mean_squared_error"}
    y = np.ones(3)
    regression = MeanSquaredError(target="labels")
    assert regression.targets(x, y).tolist() == [[1.0]] * 3 and loss_from_config(regression.config()).target == "labels"
    scaled = MeanSquaredError(target="labels", shift=[2.0], scale=[4.0])  # (label - 2) / 4
    assert scaled.targets(x, np.array([2.0, 6.0, -2.0])).ravel().tolist() == [0.0, 1.0, -1.0]
    assert scaled.output_transform(np.array([[0.5]], np.float32)).tolist() == [[4.0]]
    assert BinaryCrossEntropy().targets(x, y) is y and not BinaryCrossEntropy().has_accuracy
    assert isinstance(loss_from_config(None), SoftmaxCrossEntropy)
    with pytest.raises(ValueError, match="target"):
        MeanSquaredError(target="outputs")


def _widest_bytes(model):
    return max(int(np.prod(layer.output_shape)) for _, layer in model.named_layers()) * 4


def test_prediction_chunks_keep_small_networks_in_cache_and_amortize_large_weights(rng):
    from spark_nn.nn import model as M

    # wide activations, few weights: as many rows as keep the widest output within CACHE_BYTES
    seed = builders.cnn([32, 64, 10], 10, (1, 28, 28))
    rows = seed.inference_rows()
    assert 1 < rows < M.INFERENCE_BYTES // _widest_bytes(seed)
    assert rows * _widest_bytes(seed) <= M.CACHE_BYTES < (rows + 1) * _widest_bytes(seed)
    # 256 KB outputs (16 rows by the cache) but 16 MB of weights: a row per WEIGHT_BYTES_PER_ROW
    net = M.Sequential([L.Conv2D(64), L.Flatten(), L.Dense(64)], (3, 32, 32))
    weights = 4 * (net.params.size + net.frozen.size)
    assert M.CACHE_BYTES // _widest_bytes(net) < weights // M.WEIGHT_BYTES_PER_ROW == net.inference_rows()
    # an Embedding table is gathered from, not packed: 25.6 MB of it would ask for 50 rows
    text = builders.rnn([8, 2], 2, (400,), vocab_size=100_000, embedding_dim=64)
    assert 4 * text.params.size // M.WEIGHT_BYTES_PER_ROW > M.CACHE_BYTES // _widest_bytes(text)
    assert text.inference_rows() == M.CACHE_BYTES // _widest_bytes(text)
    # never past INFERENCE_BYTES of the widest output, whatever the weights
    huge = builders.cnn([64, 10], 10, (3, 256, 256))
    assert huge.inference_rows() * _widest_bytes(huge) <= M.INFERENCE_BYTES
    assert seed.inference_rows(batch_size=7) == 7
    # the chunking does not change the predictions
    x = rng.standard_normal((rows * 2 + 3, 1, 28, 28)).astype(np.float32)
    np.testing.assert_allclose(seed.predict_output(x), seed.predict_output(x, batch_size=len(x)), rtol=1e-5, atol=1e-6)
