"""PyTorch modules in and out. torch is imported inside these functions only: it is never a
runtime dependency of spark_nn.

Our weights use PyTorch's layouts and gate orders (Conv2d [F, C, kh, kw], Linear [out, in],
RNN/LSTM/GRU weight_ih/weight_hh/bias_ih/bias_hh with gates i,f,g,o and r,z,n), so crossing
over copies arrays unchanged.

from_torch follows the module's traced dataflow (spark_nn.nn.torch_import); to_torch builds
a module that runs our layers in order.
"""
import numpy as np

from spark_nn.nn import layers as L
from spark_nn.nn.torch_import import frozen_module, import_layers, module_layers


def _torch_classes():
    """The torch module classes to_torch builds (defined on first use: torch is optional)."""
    import torch
    import torch.nn as nn
    from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

    class SparkNNRecurrent(nn.Module):
        """A torch RNN/LSTM/GRU (batch_first) that returns the whole sequence or the last step's
        state, and skips padding steps given as spans [N, 2] as our kernels do."""

        _spark_nn_leaf = True

        def __init__(self, rnn, return_sequences):
            super().__init__()
            self.rnn, self.return_sequences = rnn, return_sequences

        def forward(self, x, spans=None):
            if spans is None:
                out = self.rnn(x)[0]
                return out if self.return_sequences else out[:, -1]
            n, t = x.shape[:2]
            steps = torch.arange(t, device=x.device)
            begin, end = spans[:, 0:1], spans[:, 1:2]
            length = (end - begin).clamp(min=1)
            src = (steps[None] + begin).clamp(max=t - 1)  # data steps moved to the front
            packed = pack_padded_sequence(x.gather(1, src[..., None].expand(-1, -1, x.shape[2])),
                                          length[:, 0].cpu(), batch_first=True, enforce_sorted=False)
            out = pad_packed_sequence(self.rnn(packed)[0], batch_first=True, total_length=t)[0]
            # back to our layout: zeros before a row's data, its last state carried after it
            back = (steps[None] - begin).clamp(min=0)
            back = torch.minimum(back, length - 1)
            full = out.gather(1, back[..., None].expand(-1, -1, out.shape[2]))
            keep = (steps[None] >= begin) & (end > begin)
            full = full * keep[..., None].to(full.dtype)
            return full if self.return_sequences else full[:, -1]

    class SparkNNModule(nn.Module):
        """Our Sequential as a torch module: layers in order; a mask_zero embedding's spans go
        to the recurrent layers after it."""

        _spark_nn_module = True

        def __init__(self, layers, mask_zero):
            super().__init__()
            self.layers = nn.ModuleList(layers)
            self.mask_zero = mask_zero

        def forward(self, x):
            spans = None
            for layer in self.layers:
                if isinstance(layer, nn.Embedding) and self.mask_zero:
                    data = x != 0
                    t = data.shape[1]
                    any_ = data.any(1)
                    begin = data.int().argmax(1)
                    end = t - data.flip(1).int().argmax(1)
                    spans = torch.stack([torch.where(any_, begin, 0), torch.where(any_, end, 0)], 1)
                    x = layer(x)
                elif isinstance(layer, SparkNNRecurrent):
                    x = layer(x, spans)
                    spans = spans if layer.return_sequences else None
                else:
                    x = layer(x)
            return x

    class SparkNNResidual(nn.Module):
        """Our Residual: body(x) + shortcut(x), the shortcut the identity when None."""

        def __init__(self, body, shortcut):
            super().__init__()
            self.body, self.shortcut = body, shortcut

        def forward(self, x):
            return self.body(x) + (x if self.shortcut is None else self.shortcut(x))

    class SparkNNStandardize(nn.Module):
        """Our Standardize: (x - mean) / std, the constants as buffers shaped against a batch."""

        def __init__(self, mean, std):
            super().__init__()
            self.register_buffer("mean", torch.from_numpy(np.array(mean, dtype=np.float32)))
            self.register_buffer("std", torch.from_numpy(np.array(std, dtype=np.float32)))

        def forward(self, x):
            return (x - self.mean) / self.std

    return SparkNNRecurrent, SparkNNModule, SparkNNResidual, SparkNNStandardize


def _torch_layer(layer, path, classes):
    """The torch module for one of our layers (a container's layers inside it), with copies of
    its weights and buffers; requires_grad False where the layer is frozen."""
    import torch
    import torch.nn as nn

    SparkNNRecurrent, _, SparkNNResidual, _ = classes
    p = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in dict(layer.params, **layer.buffers).items()}
    if isinstance(layer, L.Conv2D):
        c = layer.input_shape[0]
        m = nn.Conv2d(c, layer.filters, layer.kernel_size, layer.stride, layer._pad(), bias=layer.use_bias,
                      groups=layer.groups)
        tensors = {"weight": p["w"], "bias": p.get("b")}
    elif isinstance(layer, L._BatchNorm):
        m = (nn.BatchNorm2d if isinstance(layer, L.BatchNorm2D) else nn.BatchNorm1d)(
            layer.channels, layer.eps, layer.momentum, layer.affine)
        tensors = {"weight": p.get("gamma"), "bias": p.get("beta"), "running_mean": p["running_mean"],
                   "running_var": p["running_var"]}
    elif isinstance(layer, L.MaxPool2D):
        m, tensors = nn.MaxPool2d(layer.pool_size, layer.stride, layer.padding), {}
    elif isinstance(layer, L.AvgPool2D):
        m, tensors = nn.AvgPool2d(layer.pool_size, layer.stride, layer.padding, count_include_pad=layer.count_include_pad), {}
    elif isinstance(layer, L.GlobalAvgPool2D):
        m, tensors = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), {}
    elif isinstance(layer, L.Flatten):
        m, tensors = nn.Flatten(), {}
    elif isinstance(layer, L.Standardize):
        shape = layer.broadcast_shape()
        m, tensors = classes[3](layer.mean.reshape(shape), layer.std.reshape(shape)), {}
    elif isinstance(layer, L.Dense):
        m = nn.Linear(layer.input_shape[-1], layer.units, bias=layer.use_bias)
        tensors = {"weight": p["w"], "bias": p.get("b")}
    elif isinstance(layer, L.Activation):
        kinds = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity, "relu6": nn.ReLU6,
                 "silu": nn.SiLU, "gelu": nn.GELU, "softmax": lambda: nn.Softmax(dim=1),
                 "leaky_relu": lambda: nn.LeakyReLU(layer.alpha)}
        m, tensors = kinds[layer.activation](), {}
    elif isinstance(layer, L.Dropout):
        m, tensors = nn.Dropout(layer.rate), {}
    elif isinstance(layer, L.Embedding):
        m, tensors = nn.Embedding(layer.vocab_size, layer.dim), {"weight": p["w"]}
    elif isinstance(layer, L._Recurrent):
        d, h = layer.input_shape[1], layer.units
        if isinstance(layer, L.SimpleRNN):
            if layer.activation == "sigmoid":
                raise ValueError(f"to_torch: layer {path} (SimpleRNN with sigmoid cells) has no torch counterpart")
            rnn = nn.RNN(d, h, nonlinearity=layer.activation, batch_first=True)
        else:
            rnn = (nn.LSTM if isinstance(layer, L.LSTM) else nn.GRU)(d, h, batch_first=True)
        m = SparkNNRecurrent(rnn, layer.return_sequences)
        tensors = {"rnn.weight_ih_l0": p["w_ih"], "rnn.weight_hh_l0": p["w_hh"], "rnn.bias_ih_l0": p["b_ih"],
                   "rnn.bias_hh_l0": p["b_hh"]}
    elif isinstance(layer, L.Residual):
        def branch(name, layers):
            return nn.Sequential(*[_torch_layer(sub, f"{path}.{name}.{j}", classes) for j, sub in enumerate(layers)])
        m = SparkNNResidual(branch("body", layer.body), None if layer.shortcut is None else
                            branch("shortcut", layer.shortcut))
        tensors = {}
    else:
        raise ValueError(f"to_torch: layer {path} ({type(layer).__name__}) has no torch counterpart")
    with torch.no_grad():
        for name, value in tensors.items():
            if value is None:
                continue
            if name in ("running_mean", "running_var"):
                m.get_buffer(name).copy_(value)
            else:
                m.get_parameter(name).copy_(value)
                m.get_parameter(name).requires_grad_(layer.trainable)
    return m


def to_torch(model):
    """A torch module (in eval mode) that computes what ``model`` (our Sequential) computes, with
    copies of its weights and buffers (float32); frozen layers' parameters do not require
    gradients. Sigmoid SimpleRNN cells have no torch counterpart."""
    classes = _torch_classes()
    mods = [_torch_layer(layer, str(i), classes) for i, layer in enumerate(model.layers)]
    mask = isinstance(model.layers[0], L.Embedding) and model.layers[0].mask_zero
    if mask:
        mods[0]._spark_nn_mask_zero = True
    return classes[1](mods, mask).eval()


def torch_state_dict(model):
    """The state_dict of ``to_torch(model)``: our weights under torch's names."""
    return to_torch(model).state_dict()


class TorchInterop:
    """PyTorch in and out, as methods of spark_nn.nn.Sequential (its base class; this module
    needs nothing of the model's but its layers, weights dict and constructor)."""

    @classmethod
    def from_torch(cls, module, input_shape, loss=None, mask_zero=None):
        """Our Sequential with ``module``'s layers and weights (copied), following its traced
        dataflow (spark_nn.nn.torch_import). input_shape: one sample's shape, e.g. (3, 32, 32)
        or (steps,) of token ids. Parameters with requires_grad False import as frozen layers.
        mask_zero: treat token id 0 as padding (default: as the module was exported by
        to_torch, else False, which computes exactly what the torch module computes)."""
        input_shape = tuple(int(d) for d in input_shape)
        if getattr(module, "_spark_nn_module", False) and module.mask_zero:
            # our own to_torch module: its forward runs its layers in order, handing the
            # embedding's padding spans to the recurrent layers (which tracing cannot follow)
            stack, weights, frozen = [], {}, set()
            for i, mod in enumerate(module.layers):
                for layer, w in module_layers(str(i), mod, None, None):
                    stack.append(layer)
                    weights[id(layer)] = w
                    if frozen_module(str(i), mod):
                        frozen.add(id(layer))
        else:
            stack, weights, frozen = import_layers(module, input_shape)
        if not stack:
            raise ValueError("from_torch: the module has no layers")
        if mask_zero is not None and isinstance(stack[0], L.Embedding):
            stack[0].mask_zero = bool(mask_zero)
        every = [layer for top in stack for _, layer in L.walk("", top)]
        for layer in every:
            if id(layer) in frozen:
                layer.trainable = False
        model = cls(stack, input_shape, loss=loss)
        model.load_weights_dict({f"{path}.{k}": v for path, layer in model.named_layers()
                                 for k, v in weights.get(id(layer), {}).items()})
        return model

    def to_torch(self):
        """A torch module computing what this model computes, with copies of its weights."""
        return to_torch(self)

    def torch_state_dict(self):
        """This model's weights under the names of ``to_torch()``'s module."""
        return torch_state_dict(self)
