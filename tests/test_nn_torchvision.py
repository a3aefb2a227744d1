"""torchvision's networks (as torchvision writes them, tests/torchvision_models.py) imported by
tracing: same probabilities as torch in eval mode (1e-4), also through ONNX and back to torch;
requires_grad False imports as frozen layers."""
import numpy as np
import pytest
import torch

import torchvision_models as tv
from spark_nn.nn import Sequential
from spark_nn.nn import layers as L

NETS = {
    "resnet18": lambda: tv.resnet18(num_classes=10),
    "resnet34": lambda: tv.resnet34(num_classes=10),
    "resnet50": lambda: tv.resnet50(num_classes=10),
    "resnet18_cifar": lambda: tv.resnet18(num_classes=10, width=16, cifar_stem=True),
    "mobilenet_v2": lambda: tv.MobileNetV2(num_classes=10),
    "vgg11_bn": lambda: tv.vgg11_bn(num_classes=10, hidden=64),
}


def _torch_probs(net, x):
    with torch.no_grad():
        return torch.softmax(net(torch.from_numpy(x)), 1).numpy()


@pytest.mark.parametrize("name", sorted(NETS))
def test_imported_network_predicts_what_torch_predicts(rng, name):
    torch.manual_seed(0)
    net = tv.randomize_bn(NETS[name]())
    ours = Sequential.from_torch(net, (3, 32, 32))
    x = rng.standard_normal((3, 3, 32, 32)).astype(np.float32)
    ref = _torch_probs(net, x)
    np.testing.assert_allclose(ours.predict_proba(x), ref, atol=1e-4, rtol=0)
    # every weight and buffer came over: as many values as torch's state (without BN's counters)
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert ours.params.size + ours.buffers.size == sum(v.numel() for v in state.values())
    # a prediction that ignored BatchNorm's statistics would be far off: they are not trivial
    bn = next(layer for _, layer in ours.named_layers() if isinstance(layer, L.BatchNorm2D))
    assert not np.allclose(bn.buffers["running_var"], 1.0)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_imported_network_through_onnx_and_back_to_torch(rng, tmp_path, name):
    onnxruntime = pytest.importorskip("onnxruntime")
    torch.manual_seed(1)
    net = tv.randomize_bn(NETS[name]())
    ours = Sequential.from_torch(net, (3, 32, 32))
    x = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    ref = _torch_probs(net, x)
    sess = onnxruntime.InferenceSession(ours.to_onnx(str(tmp_path / "m.onnx")), providers=["CPUExecutionProvider"])
    probs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))["probability"]
    np.testing.assert_allclose(probs, ref, atol=1e-4, rtol=0)
    back = ours.to_torch()
    np.testing.assert_allclose(_torch_probs(back, x), ref, atol=1e-4, rtol=0)
    again = Sequential.from_torch(back, (3, 32, 32))
    assert again.config()["layers"] == ours.config()["layers"]
    np.testing.assert_array_equal(again.params, ours.params)
    np.testing.assert_array_equal(again.buffers, ours.buffers)


def test_torch_parameters_without_gradients_import_frozen(rng):
    torch.manual_seed(2)
    net = tv.randomize_bn(NETS["resnet18_cifar"]())
    for p in net.parameters():
        p.requires_grad_(False)
    net.fc = torch.nn.Linear(net.fc.in_features, 3)  # a new head, trainable
    ours = Sequential.from_torch(net, (3, 32, 32))
    assert ours.num_params == 3 * net.fc.in_features + 3
    assert {s.kind for s in ours.slots if not s.path == str(len(ours.layers) - 1)} <= {"frozen", "buffer"}
    before = ours.weights_dict()
    x = rng.standard_normal((8, 3, 32, 32)).astype(np.float32)
    ours.fit(x, rng.integers(0, 3, 8), epochs=2, batch_size=4, lr=0.1)
    after = ours.weights_dict()
    # the frozen body, its BatchNorm statistics included, is bitwise unchanged; the head moved
    head = f"{len(ours.layers) - 1}."
    assert all(np.array_equal(before[k], after[k]) for k in before if not k.startswith(head))
    assert not np.array_equal(before[head + "w"], after[head + "w"])
    back = ours.to_torch()
    assert [p.requires_grad for p in back.parameters()].count(True) == 2


def test_a_traced_network_that_does_not_fit_names_the_node():
    class Squeeze(torch.nn.Module):  # squeeze-and-excitation: a product of two branches
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.fc = torch.nn.Linear(4, 4)

        def forward(self, x):
            y = self.conv(x)
            s = torch.sigmoid(self.fc(y.mean((2, 3))))
            return y * s[:, :, None, None]

    with pytest.raises(ValueError, match=r"cannot take node (getitem|mul) \(call_function"):
        Sequential.from_torch(Squeeze(), (3, 8, 8))
