"""The layer graph beyond a plain chain: residual blocks (containers inside the Sequential
spine), frozen layers and the model's named layout (trainable parameters, frozen parameters,
buffers), checked against torch float64 and finite differences."""
import numpy as np
import pytest
import torch

from gradcheck import assert_close
from spark_nn.nn import layers as L
from spark_nn.nn import load_model, save_model
from spark_nn.nn.model import Sequential
from test_nn_gradients import _fd_check


def _block_model(seed=0):
    """conv -> [residual: conv relu conv | strided 1x1 conv] -> relu -> [residual: conv | identity]
    -> flatten -> dense: torchvision's BasicBlock shape (without BatchNorm)."""
    return Sequential([
        L.Conv2D(4, 3, padding=1), L.Activation("relu"),
        L.Residual([L.Conv2D(6, 3, stride=2, padding=1), L.Activation("relu"), L.Conv2D(6, 3, padding=1)],
                   shortcut=[L.Conv2D(6, 1, stride=2, padding=0)]),
        L.Activation("relu"),
        L.Residual([L.Conv2D(6, 3, padding=1, use_bias=False)]),
        L.Flatten(), L.Dense(3)], (2, 7, 9), seed=seed)


def _torch_block_model(model):
    """The same network in torch float64 with our weights copied (by our slot keys)."""
    nn = torch.nn
    w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in model.weights_dict().items()}

    def conv(key, cin, cout, k, s, p, bias=True):
        m = nn.Conv2d(cin, cout, k, s, p, bias=bias).double()
        with torch.no_grad():
            m.weight.copy_(w[key + ".w"])
            if bias:
                m.bias.copy_(w[key + ".b"])
        return m

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.c0 = conv("0", 2, 4, 3, 1, 1)
            self.b1 = conv("2.body.0", 4, 6, 3, 2, 1)
            self.b2 = conv("2.body.2", 6, 6, 3, 1, 1)
            self.sc = conv("2.shortcut.0", 4, 6, 1, 2, 0)
            self.b3 = conv("4.body.0", 6, 6, 3, 1, 1, bias=False)
            self.fc = nn.Linear(6 * 4 * 5, 3).double()
            with torch.no_grad():
                self.fc.weight.copy_(w["6.w"])
                self.fc.bias.copy_(w["6.b"])

        def forward(self, x):
            x = torch.relu(self.c0(x))
            x = torch.relu(self.b2(torch.relu(self.b1(x))) + self.sc(x))
            x = self.b3(x) + x
            return self.fc(torch.flatten(x, 1))

    return Net()


def test_residual_blocks_match_torch_float64(rng):
    model = _block_model()
    assert model.output_shape == (3,)
    x = rng.standard_normal((5, 2, 7, 9)).astype(np.float32)
    y = rng.integers(0, 3, 5)
    loss, grad, _ = model.loss_and_grad(None, x, y)
    net = _torch_block_model(model)
    xt = torch.tensor(x, dtype=torch.float64)
    out = net(xt)
    assert_close("logits", model.last_output, out.detach().numpy())
    tloss = torch.nn.functional.cross_entropy(out, torch.tensor(y), reduction="sum")
    tloss.backward()
    assert abs(loss - tloss.item()) <= 1e-4 * abs(tloss.item())
    names = {"0": net.c0, "2.body.0": net.b1, "2.body.2": net.b2, "2.shortcut.0": net.sc, "4.body.0": net.b3,
             "6": net.fc}
    for slot in model.slots:
        mod = names[slot.path]
        ref = (mod.weight if slot.name == "w" else mod.bias).grad.numpy()
        assert_close(slot.key, grad[slot.offset:slot.offset + ref.size].reshape(ref.shape), ref)


def test_residual_gradient_finite_differences(rng):
    model = Sequential([L.Conv2D(3, 3, padding=1), L.Activation("tanh"),
                        L.Residual([L.Conv2D(3, 3, padding=1), L.Activation("tanh")]),
                        L.Residual([L.Conv2D(5, 3, stride=2, padding=1)], shortcut=[L.Conv2D(5, 1, stride=2, padding=0)]),
                        L.Flatten(), L.Dense(2)], (1, 6, 5), seed=4)
    x = rng.standard_normal((3, 1, 6, 5)).astype(np.float32)
    _fd_check(model, x, rng.integers(0, 2, 3), rng)


def test_residual_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"layer 0 \(Residual.*body's output \(6, 4, 5\) and the shortcut's "
                                         r"\(2, 7, 9\) differ"):
        Sequential([L.Residual([L.Conv2D(6, 3, stride=2, padding=1)]), L.Flatten(), L.Dense(2)], (2, 7, 9))
    with pytest.raises(ValueError, match=r"body layer 1 \(Dense.*add a Flatten"):
        Sequential([L.Residual([L.Conv2D(2, 3, padding=1), L.Dense(3)]), L.Flatten(), L.Dense(2)], (2, 7, 9))


def test_layout_paths_config_and_save_load_round_trip(rng, tmp_path):
    model = _block_model(seed=3)
    keys = [s.key for s in model.slots]
    assert keys == ["0.w", "0.b", "2.body.0.w", "2.body.0.b", "2.body.2.w", "2.body.2.b", "2.shortcut.0.w",
                    "2.shortcut.0.b", "4.body.0.w", "6.w", "6.b"]
    # every layer's views share the one flat vector, in slot order, with no gap
    offsets = [s.offset for s in model.slots]
    sizes = [int(np.prod(s.shape)) for s in model.slots]
    assert offsets == list(np.cumsum([0] + sizes[:-1])) and model.num_params == sum(sizes)
    block = model.layers[2]
    assert np.shares_memory(block.body[0].params["w"], model.params)
    assert np.shares_memory(block.shortcut[0].grads["w"], model.grads)
    x = rng.standard_normal((4, 2, 7, 9)).astype(np.float32)
    again = Sequential.from_config(model.config())
    again.set_params(model.params)
    np.testing.assert_array_equal(again.predict_output(x), model.predict_output(x))
    save_model(model, str(tmp_path / "m"))
    loaded = load_model(str(tmp_path / "m"))
    np.testing.assert_array_equal(loaded.predict_output(x), model.predict_output(x))
    assert "2.body.2" in loaded.summary() and "Residual" in loaded.summary()


def test_frozen_layers_leave_the_trainable_vector_and_keep_their_weights(rng):
    model = _block_model(seed=5)
    full_grad = model.loss_and_grad(None, *(_batch(rng)))[1]
    before = model.weights_dict()
    x, y = _batch(rng)
    model.set_trainable(False, [0, 1, 2])
    assert [s.kind for s in model.slots if s.path.startswith(("0", "2"))] == ["frozen"] * 8
    assert model.num_params == sum(before[k].size for k in ("4.body.0.w", "6.w", "6.b"))
    assert model.frozen.size == sum(v.size for k, v in before.items() if k.startswith(("0.", "2.")))
    after = model.weights_dict()
    assert all(np.array_equal(before[k], after[k]) for k in before)  # relaid, values kept
    # the trainable layers' gradients are the ones the unfrozen model computes for them
    unfrozen = _block_model(seed=5)
    _, g_all, _ = unfrozen.loss_and_grad(None, x, y)
    _, g, _ = model.loss_and_grad(None, x, y)
    for slot in model.slots:
        if slot.kind == "param":
            ref = next(s for s in unfrozen.slots if s.key == slot.key)
            np.testing.assert_array_equal(g[slot.offset:slot.offset + int(np.prod(slot.shape))],
                                          g_all[ref.offset:ref.offset + int(np.prod(ref.shape))])
    assert full_grad.size == unfrozen.num_params
    model.fit(x, y, epochs=3, batch_size=2, lr=0.05)
    trained = model.weights_dict()
    assert all(np.array_equal(before[k], trained[k]) for k in before if k.startswith(("0.", "2.")))
    assert not np.array_equal(before["6.w"], trained["6.w"])
    # frozen survives the config: a reloaded model has the same layout
    again = Sequential.from_config(model.config())
    assert [s.kind for s in again.slots] == [s.kind for s in model.slots]
    assert "frozen" in model.summary()


def test_no_backward_runs_below_the_lowest_trainable_layer(rng, monkeypatch):
    model = _block_model(seed=6)
    model.set_trainable(False, [0, 1, 2, 3, 4])
    ran = []
    for i, layer in enumerate(model.layers):
        original = layer.backward
        monkeypatch.setattr(layer, "backward", lambda dy, need_dx=True, i=i, f=original: ran.append((i, need_dx))
                            or f(dy, need_dx))
    model.loss_and_grad(None, *_batch(rng))
    assert ran == [(6, False)]  # the dense head only, and no dx for it
    model.set_trainable(True, [4])
    ran.clear()
    model.loss_and_grad(None, *_batch(rng))
    assert ran == [(6, True), (5, True), (4, False)]


def _batch(rng, n=4):
    return rng.standard_normal((n, 2, 7, 9)).astype(np.float32), rng.integers(0, 3, n)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_layers_match_torch_float64_and_move_their_statistics_as_torch(rng, training):
    # no bias before a BatchNorm, as real networks do: in training its exact gradient is 0, which
    # float32 rounding cannot match in relative terms
    model = Sequential([L.Conv2D(3, 3, padding=1, use_bias=False), L.BatchNorm2D(momentum=0.2), L.Activation("relu"),
                        L.Flatten(), L.Dense(5, use_bias=False), L.BatchNorm1D(eps=1e-3), L.Activation("tanh"),
                        L.Dense(2)], (2, 5, 4), seed=7)
    model.buffers[:] = rng.uniform(0.5, 1.5, model.buffers.size)  # statistics that are not the 0/1 start
    for slot in model.slots:
        if slot.name in ("gamma", "beta"):
            model._view(slot)[...] = rng.uniform(0.5, 1.5, slot.shape)
    x = rng.standard_normal((6, 2, 5, 4)).astype(np.float32)
    y = rng.integers(0, 2, 6)
    w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in model.weights_dict().items()}
    nn = torch.nn
    conv, bn2, fc1, bn1, fc2 = (nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.BatchNorm2d(3, momentum=0.2),
                                nn.Linear(60, 5, bias=False),
                                nn.BatchNorm1d(5, eps=1e-3), nn.Linear(5, 2))
    net = nn.Sequential(conv, bn2, nn.ReLU(), nn.Flatten(), fc1, bn1, nn.Tanh(), fc2).double()
    with torch.no_grad():
        conv.weight.copy_(w["0.w"])
        fc1.weight.copy_(w["4.w"])
        fc2.weight.copy_(w["7.w"])
        fc2.bias.copy_(w["7.b"])
        for mod, i in ((bn2, 1), (bn1, 5)):
            mod.weight.copy_(w[f"{i}.gamma"])
            mod.bias.copy_(w[f"{i}.beta"])
            mod.running_mean.copy_(w[f"{i}.running_mean"])
            mod.running_var.copy_(w[f"{i}.running_var"])
    net.train(training)
    model.set_trainable(True)
    if training:
        loss, grad, _ = model.loss_and_grad(None, x, y)
    else:
        model.set_trainable(False, [1, 5])  # frozen BatchNorm: running statistics in training too
        loss, grad, _ = model.loss_and_grad(None, x, y)
    out = net(torch.tensor(x, dtype=torch.float64))
    assert_close("logits", model.last_output, out.detach().numpy())
    torch.nn.functional.cross_entropy(out, torch.tensor(y), reduction="sum").backward()
    mods = {"0": conv, "1": bn2, "4": fc1, "5": bn1, "7": fc2}
    names = {"w": "weight", "b": "bias", "gamma": "weight", "beta": "bias"}
    for slot in model.slots:
        mod = mods[slot.path]
        if slot.kind == "param":
            ref = getattr(mod, names[slot.name]).grad.numpy()
            assert_close(slot.key, grad[slot.offset:slot.offset + ref.size].reshape(ref.shape), ref)
        elif slot.kind == "buffer":  # moved by the minibatch in training, untouched when frozen
            assert_close(slot.key, model._view(slot), getattr(mod, slot.name).numpy())


def test_batchnorm_network_gradient_finite_differences(rng):
    model = Sequential([L.Conv2D(3, 3, padding=1), L.BatchNorm2D(), L.Activation("tanh"),
                        L.Residual([L.Conv2D(3, 3, padding=1, use_bias=False), L.BatchNorm2D()]),
                        L.GlobalAvgPool2D(), L.Dense(4), L.BatchNorm1D(), L.Dense(2)], (1, 5, 6), seed=8)
    x = rng.standard_normal((5, 1, 5, 6)).astype(np.float32)
    buffers = model.buffers.copy()

    def loss_and_grad(params, xb, yb, rng_=None, copy=True):
        model.buffers[:] = buffers  # the running statistics move with every forward: the same start each time
        return Sequential.loss_and_grad(model, params, xb, yb, rng_, copy)

    model.loss_and_grad = loss_and_grad
    _fd_check(model, x, rng.integers(0, 2, 5), rng)


@pytest.mark.parametrize("name,alpha,module", [
    ("relu6", None, lambda: torch.nn.ReLU6()), ("leaky_relu", 0.2, lambda: torch.nn.LeakyReLU(0.2)),
    ("leaky_relu", -0.3, lambda: torch.nn.LeakyReLU(-0.3)), ("silu", None, lambda: torch.nn.SiLU()),
    ("gelu", None, lambda: torch.nn.GELU())])
def test_activation_layers_match_torch_float64(rng, name, alpha, module):
    model = Sequential([L.Dense(6), L.Activation(name, alpha=alpha), L.Dense(3)], (4,), seed=9)
    x = (rng.standard_normal((7, 4)) * 3).astype(np.float32)
    y = rng.integers(0, 3, 7)
    _, grad, _ = model.loss_and_grad(None, x, y)
    w = {k: torch.from_numpy(v.astype(np.float64)) for k, v in model.weights_dict().items()}
    fc1, fc2 = torch.nn.Linear(4, 6).double(), torch.nn.Linear(6, 3).double()
    with torch.no_grad():
        for mod, i in ((fc1, 0), (fc2, 2)):
            mod.weight.copy_(w[f"{i}.w"])
            mod.bias.copy_(w[f"{i}.b"])
    out = fc2(module()(fc1(torch.tensor(x, dtype=torch.float64))))
    assert_close("logits", model.last_output, out.detach().numpy())
    torch.nn.functional.cross_entropy(out, torch.tensor(y), reduction="sum").backward()
    ref = np.concatenate([p.grad.numpy().ravel() for p in (fc1.weight, fc1.bias, fc2.weight, fc2.bias)])
    assert_close("gradient", grad, ref)
    assert Sequential.from_config(model.config()).layers[1].config() == model.layers[1].config()
