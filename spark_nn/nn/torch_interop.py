"""PyTorch modules in and out. torch is imported inside these functions only: it is never a
runtime dependency of spark_nn.

Our weights use PyTorch's layouts and gate orders (Conv2d [F, C, kh, kw], Linear [out, in],
RNN/LSTM/GRU weight_ih/weight_hh/bias_ih/bias_hh with gates i,f,g,o and r,z,n), so crossing
over copies arrays unchanged.

from_torch walks a module's children in the order they were registered (an nn.Sequential, or
a custom module whose forward calls its children in that order, e.g. embedding -> lstm -> fc).
A recurrent module passes its whole output sequence on when another recurrent module follows
it, else its last step's state (what ``output[:, -1]`` or ``h_n[-1]`` gives in a forward).
"""
import numpy as np

from spark_nn.nn import layers as L


def _np(t):
    return t.detach().cpu().numpy().astype(np.float32, copy=True)


def _torch_children(module, prefix=""):
    """(path, leaf module) in registration order; containers (Sequential, ModuleList, custom
    modules) are walked, our own recurrent wrapper counts as one leaf."""
    children = list(module.named_children())
    if not children or getattr(module, "_spark_nn_leaf", False):
        return [(prefix or type(module).__name__, module)]
    out = []
    for name, child in children:
        out += _torch_children(child, f"{prefix}.{name}" if prefix else name)
    return out


def _recurrent_layers(path, mod, return_last, cls_name):
    """Our layers (and weights) for one torch RNN/LSTM/GRU module, stacked num_layers deep."""
    if mod.bidirectional:
        raise ValueError(f"from_torch: cannot take {path} ({cls_name}): bidirectional recurrent layers are not "
                         "supported")
    if getattr(mod, "proj_size", 0):
        raise ValueError(f"from_torch: cannot take {path} ({cls_name}): proj_size is not supported")
    out = []
    for k in range(mod.num_layers):
        seq = k < mod.num_layers - 1 or not return_last
        if cls_name == "RNN":
            layer = L.SimpleRNN(mod.hidden_size, mod.nonlinearity, seq)
        else:
            layer = {"LSTM": L.LSTM, "GRU": L.GRU}[cls_name](mod.hidden_size, seq)
        g = layer.gates * mod.hidden_size
        w = {"w_ih": _np(getattr(mod, f"weight_ih_l{k}")), "w_hh": _np(getattr(mod, f"weight_hh_l{k}"))}
        if mod.bias:
            w["b_ih"], w["b_hh"] = _np(getattr(mod, f"bias_ih_l{k}")), _np(getattr(mod, f"bias_hh_l{k}"))
        else:
            w["b_ih"], w["b_hh"] = np.zeros(g, np.float32), np.zeros(g, np.float32)
        out.append((layer, w))
        if mod.dropout and k < mod.num_layers - 1:
            out.append((L.Dropout(mod.dropout), {}))
    return out


def _leaf_layers(path, mod, next_is_recurrent):
    """Our layer(s) and weights for one torch leaf module."""
    import torch.nn as nn

    name = type(mod).__name__
    if getattr(mod, "_spark_nn_leaf", False):  # our to_torch wrapper around a recurrent module
        return _recurrent_layers(path, mod.rnn, not mod.return_sequences, type(mod.rnn).__name__)
    if isinstance(mod, (nn.RNN, nn.LSTM, nn.GRU)):
        return _recurrent_layers(path, mod, not next_is_recurrent, name)
    if isinstance(mod, nn.Conv2d):
        if mod.groups != 1 or tuple(mod.dilation) != (1, 1) or mod.padding_mode != "zeros":
            raise ValueError(f"from_torch: cannot take {path} (Conv2d): only groups=1, dilation=1 and zero "
                             "padding are supported")
        padding = mod.padding if isinstance(mod.padding, str) else list(mod.padding)
        layer = L.Conv2D(mod.out_channels, list(mod.kernel_size), list(mod.stride), padding, mod.bias is not None)
        w = {"w": _np(mod.weight)}
        if mod.bias is not None:
            w["b"] = _np(mod.bias)
        return [(layer, w)]
    if isinstance(mod, nn.MaxPool2d):
        dilation = mod.dilation if isinstance(mod.dilation, tuple) else (mod.dilation,) * 2
        if mod.ceil_mode or mod.return_indices or tuple(dilation) != (1, 1):
            raise ValueError(f"from_torch: cannot take {path} (MaxPool2d): ceil_mode, return_indices and "
                             "dilation are not supported")
        return [(L.MaxPool2D(mod.kernel_size, mod.stride, mod.padding), {})]
    if isinstance(mod, nn.Linear):
        w = {"w": _np(mod.weight)}
        if mod.bias is not None:
            w["b"] = _np(mod.bias)
        return [(L.Dense(mod.out_features, mod.bias is not None), w)]
    if isinstance(mod, nn.Flatten):
        if mod.start_dim != 1 or mod.end_dim != -1:
            raise ValueError(f"from_torch: cannot take {path} (Flatten): only start_dim=1, end_dim=-1")
        return [(L.Flatten(), {})]
    if isinstance(mod, nn.Dropout):
        return [(L.Dropout(mod.p), {})]
    if isinstance(mod, nn.Identity):
        return []
    acts = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}
    if type(mod) in acts:
        return [(L.Activation(acts[type(mod)]), {})]
    if isinstance(mod, nn.Softmax) and mod.dim in (1, -1):
        return [(L.Activation("softmax"), {})]
    if isinstance(mod, nn.Embedding):
        if mod.max_norm is not None:
            raise ValueError(f"from_torch: cannot take {path} (Embedding): max_norm is not supported")
        mask = bool(getattr(mod, "_spark_nn_mask_zero", False))
        return [(L.Embedding(mod.num_embeddings, mod.embedding_dim, mask_zero=mask), {"w": _np(mod.weight)})]
    raise ValueError(f"from_torch: cannot take {path} ({name}); supported: Conv2d, MaxPool2d, Linear, Flatten, "
                     "Dropout, ReLU, Tanh, Sigmoid, Softmax, Identity, Embedding, RNN, LSTM, GRU")


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

    return SparkNNRecurrent, SparkNNModule


def to_torch(model):
    """A torch module that computes what ``model`` (our Sequential) computes, with copies of
    its weights (float32). Sigmoid SimpleRNN cells have no torch counterpart."""
    import torch
    import torch.nn as nn

    SparkNNRecurrent, SparkNNModule = _torch_classes()
    mods = []
    for i, layer in enumerate(model.layers):
        p = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in layer.params.items()}
        if isinstance(layer, L.Conv2D):
            c = layer.input_shape[0]
            m = nn.Conv2d(c, layer.filters, layer.kernel_size, layer.stride, layer._pad(), bias=layer.use_bias)
            tensors = {"weight": p["w"], "bias": p.get("b")}
        elif isinstance(layer, L.MaxPool2D):
            m, tensors = nn.MaxPool2d(layer.pool_size, layer.stride, layer.padding), {}
        elif isinstance(layer, L.Flatten):
            m, tensors = nn.Flatten(), {}
        elif isinstance(layer, L.Dense):
            m = nn.Linear(layer.input_shape[-1], layer.units, bias=layer.use_bias)
            tensors = {"weight": p["w"], "bias": p.get("b")}
        elif isinstance(layer, L.Activation):
            m = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "identity": nn.Identity}.get(
                layer.activation, lambda: nn.Softmax(dim=1))()
            tensors = {}
        elif isinstance(layer, L.Dropout):
            m, tensors = nn.Dropout(layer.rate), {}
        elif isinstance(layer, L.Embedding):
            m, tensors = nn.Embedding(layer.vocab_size, layer.dim), {"weight": p["w"]}
        elif isinstance(layer, L._Recurrent):
            d, h = layer.input_shape[1], layer.units
            if isinstance(layer, L.SimpleRNN):
                if layer.activation == "sigmoid":
                    raise ValueError(f"to_torch: layer {i} (SimpleRNN with sigmoid cells) has no torch counterpart")
                rnn = nn.RNN(d, h, nonlinearity=layer.activation, batch_first=True)
            else:
                rnn = (nn.LSTM if isinstance(layer, L.LSTM) else nn.GRU)(d, h, batch_first=True)
            m = SparkNNRecurrent(rnn, layer.return_sequences)
            tensors = {"rnn.weight_ih_l0": p["w_ih"], "rnn.weight_hh_l0": p["w_hh"], "rnn.bias_ih_l0": p["b_ih"],
                       "rnn.bias_hh_l0": p["b_hh"]}
        else:
            raise ValueError(f"to_torch: layer {i} ({type(layer).__name__}) has no torch counterpart")
        with torch.no_grad():
            for name, value in tensors.items():
                if value is not None:
                    m.get_parameter(name).copy_(value)
        mods.append(m)
    mask = isinstance(model.layers[0], L.Embedding) and model.layers[0].mask_zero
    if mask:
        mods[0]._spark_nn_mask_zero = True
    return SparkNNModule(mods, mask).eval()


def torch_state_dict(model):
    """The state_dict of ``to_torch(model)``: our weights under torch's names."""
    return to_torch(model).state_dict()


class TorchInterop:
    """PyTorch in and out, as methods of spark_nn.nn.Sequential (its base class; this module
    needs nothing of the model's but its layers, weights dict and constructor)."""

    @classmethod
    def from_torch(cls, module, input_shape, loss=None, mask_zero=None):
        """Our Sequential with ``module``'s layers and weights (copied). input_shape: one sample's
        shape, e.g. (1, 28, 28) or (steps,) of token ids. mask_zero: treat token id 0 as padding
        (default: as the module was exported by to_torch, else False, which computes exactly what
        the torch module computes)."""
        import torch.nn as nn

        leaves = _torch_children(module)
        stack, weights = [], []
        rec = (nn.RNN, nn.LSTM, nn.GRU)
        for i, (path, mod) in enumerate(leaves):
            following = [m for _, m in leaves[i + 1:] if not isinstance(m, (nn.Dropout, nn.Identity))]
            nxt = following[0] if following else None
            next_is_recurrent = isinstance(nxt, rec) or getattr(nxt, "_spark_nn_leaf", False)
            for layer, w in _leaf_layers(path, mod, next_is_recurrent):
                stack.append(layer)
                weights.append(w)
        if not stack:
            raise ValueError("from_torch: the module has no layers")
        if mask_zero is not None and isinstance(stack[0], L.Embedding):
            stack[0].mask_zero = bool(mask_zero)
        model = cls(stack, input_shape, loss=loss)
        model.load_weights_dict({f"{i}.{k}": v for i, w in enumerate(weights) for k, v in w.items()})
        return model

    def to_torch(self):
        """A torch module computing what this model computes, with copies of its weights."""
        return to_torch(self)

    def torch_state_dict(self):
        """This model's weights under the names of ``to_torch()``'s module."""
        return torch_state_dict(self)
