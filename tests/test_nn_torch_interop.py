"""PyTorch modules in and out of our Sequential: layers, weights bit-exact, same predictions."""
import numpy as np
import pytest
import torch
import torch.nn as nn

from spark_nn.nn import Sequential, builders


def _randomize(module, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 0.6 - 0.3)
    return module.eval()


def _params(module):
    return [p.detach().numpy() for p in module.parameters()]


def _cnn_torch():
    return _randomize(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                    nn.Conv2d(4, 6, (3, 5), stride=(1, 2), padding=(1, 2), bias=False), nn.Tanh(),
                                    nn.Flatten(), nn.Dropout(0.3), nn.Linear(6 * 4 * 2, 7), nn.Sigmoid(),
                                    nn.Linear(7, 3)))


class TextNet(nn.Module):
    """A typical custom torch text model: its forward calls its children in order."""

    def __init__(self, cell, layers=2, nonlinearity="relu"):
        super().__init__()
        self.emb = nn.Embedding(20, 5)
        kw = {"nonlinearity": nonlinearity} if cell is nn.RNN else {}
        self.rnn = cell(5, 6, num_layers=layers, batch_first=True, **kw)
        self.fc = nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(self.rnn(self.emb(ids))[0][:, -1])


def test_cnn_from_torch_predicts_as_torch_and_round_trips_bit_exact(rng):
    tm = _cnn_torch()
    ours = Sequential.from_torch(tm, (1, 8, 8))
    x = rng.standard_normal((7, 1, 8, 8)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.predict_output(x), ref, rtol=1e-5, atol=1e-6)
    back = ours.to_torch()
    for a, b in zip(_params(tm), _params(back), strict=True):
        np.testing.assert_array_equal(a, b)
    with torch.no_grad():
        np.testing.assert_allclose(back(torch.from_numpy(x)).numpy(), ref, rtol=1e-5, atol=1e-6)
    again = Sequential.from_torch(back, (1, 8, 8))
    np.testing.assert_array_equal(again.params, ours.params)
    assert again.config()["layers"] == ours.config()["layers"]


@pytest.mark.parametrize("cell", [nn.RNN, nn.LSTM, nn.GRU])
@pytest.mark.parametrize("batch", [1, 7])
def test_text_models_from_torch_predict_as_torch(rng, cell, batch):
    tm = _randomize(TextNet(cell))
    ours = Sequential.from_torch(tm, (9,))
    assert [type(layer).__name__ for layer in ours.layers][1:3] == [{nn.RNN: "SimpleRNN"}.get(cell, cell.__name__)] * 2
    assert ours.layers[1].return_sequences and not ours.layers[2].return_sequences
    ids = rng.integers(0, 20, (batch, 9))
    with torch.no_grad():
        ref = tm(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(ours.predict_output(ids), ref, rtol=1e-5, atol=1e-6)
    theirs = _params(tm)
    back = _params(ours.to_torch())
    # torch keeps a stacked module's layers as one module: same tensors, in the same order
    for a, b in zip(theirs, back, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_masked_models_to_torch_skip_padding_as_we_do(rng, cell):
    ours = builders.rnn([6, 5, 3], 3, (8,), cell=cell, activation="relu", vocab_size=30, seed=1)
    ids = rng.integers(1, 30, (6, 8))
    ids[0, :5] = 0      # pre-padding
    ids[1, 3:] = 0      # post-padding
    ids[2, :] = 0       # nothing
    ids[3, [0, 7]] = 0  # both sides
    tm = ours.to_torch()
    with torch.no_grad():
        ref = tm(torch.from_numpy(ids)).numpy()
    np.testing.assert_allclose(ours.predict_output(ids), ref, rtol=1e-5, atol=1e-6)
    again = Sequential.from_torch(tm, (8,))
    assert again.layers[0].mask_zero
    np.testing.assert_array_equal(again.params, ours.params)
    assert set(ours.torch_state_dict()) == set(tm.state_dict())


class _BiText(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(3, 4, bidirectional=True, batch_first=True)

    def forward(self, x):
        return self.rnn(x)[0]


class _Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(1, 2, 3)

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], 1)


class _TwoOutputs(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        return y * 2


def test_from_torch_names_the_module_or_node_it_cannot_take():
    with pytest.raises(ValueError, match=r"cannot take 1 \(Upsample\)"):
        Sequential.from_torch(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2), nn.Flatten()), (1, 5, 5))
    with pytest.raises(ValueError, match=r"cannot take rnn \(LSTM\): bidirectional"):
        Sequential.from_torch(_BiText(), (5, 3))
    with pytest.raises(ValueError, match=r"cannot take node cat \(call_function cat\)"):
        Sequential.from_torch(_Concat(), (1, 5, 5))
    with pytest.raises(ValueError, match=r"cannot take node mul \(call_function mul\)"):
        Sequential.from_torch(_TwoOutputs(), (1, 5, 5))
    with pytest.raises(ValueError, match="sigmoid"):
        builders.rnn([4, 2], 2, (3, 2), activation="sigmoid").to_torch()


class _Reordered(nn.Module):
    """Children registered in another order than forward uses them, functional activations,
    a view to flat rows and a residual addition: only the traced dataflow gets this right."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, 2)
        self.conv2 = nn.Conv2d(3, 3, 3, padding=1)
        self.conv1 = nn.Conv2d(1, 3, 3, padding=1)

    def forward(self, x):
        x = torch.nn.functional.relu(self.conv1(x))
        x = x + torch.tanh(self.conv2(x))
        return self.fc(x.view(x.size(0), -1))


def test_from_torch_follows_the_traced_dataflow_not_the_attribute_order(rng):
    tm = _randomize(_Reordered())
    ours = Sequential.from_torch(tm, (1, 4, 4))
    assert [type(layer).__name__ for layer in ours.layers] == ["Conv2D", "Activation", "Residual", "Flatten", "Dense"]
    x = rng.standard_normal((3, 1, 4, 4)).astype(np.float32)
    with torch.no_grad():
        ref = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(ours.predict_output(x), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask", [True, False])
def test_frozen_layers_survive_to_torch_and_back(mask):
    ours = builders.rnn([6, 5, 3], 3, (8,), cell="lstm", vocab_size=30, seed=1)
    ours.layers[0].mask_zero = mask
    ours = Sequential.from_config(ours.config())
    ours.set_trainable(False, [0, 1])
    tm = ours.to_torch()
    assert [p.requires_grad for p in tm.parameters()] == [False] * 5 + [True] * 6
    back = Sequential.from_torch(tm, (8,))
    assert [s.kind for s in back.slots] == [s.kind for s in ours.slots]
