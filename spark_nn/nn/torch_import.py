"""A torch module into our layers by its traced dataflow (torch.fx), never its attribute order.

``torch.fx.symbolic_trace`` records what the module's ``forward`` really does: module calls,
functions (``F.relu``, ``torch.flatten``, ``+``) and methods (``x.view(x.size(0), -1)``). Each
node maps to one of our layers, or to nothing (a reshape that keeps the rows flat, dropout's
identity in eval), or is an error naming the node and its op. The graph becomes a Sequential
spine: a tensor read by two branches that meet again in an addition is a ``Residual`` block
(body and shortcut, the shortcut empty when it is the tensor itself), so torchvision's
BasicBlock, Bottleneck and InvertedResidual import as they are written.

Recurrent modules are leaves: their output tuple is followed through ``[0]`` (the sequence),
``[:, -1]`` or ``h_n[-1]`` (the last state, where the layer stops returning sequences).
Parameters with ``requires_grad=False`` import as frozen layers; BatchNorm's running
statistics import as the layer's buffers. torch is imported inside these functions only.
"""
import operator

import numpy as np

from spark_nn.nn import layers as L


def _np(t):
    return t.detach().cpu().numpy().astype(np.float32, copy=True)


class _Chain:
    """A traced tensor as our layers: ``layers`` applied to the tensor of node ``base`` (None:
    the model's input). ``rnn`` marks a recurrent module's raw output: 'out' (the tuple),
    'seq' (output[0]), 'state' (h_n or (h_n, c_n)), 'h' (h_n)."""

    def __init__(self, base, layers, rnn=None):
        self.base, self.layers, self.rnn = base, list(layers), rnn


def _recurrent_layers(path, mod, return_last, cls_name):
    """Our layers (and weights) for one torch RNN/LSTM/GRU module, stacked num_layers deep."""
    if mod.bidirectional:
        raise ValueError(f"from_torch: cannot take {path} ({cls_name}): bidirectional recurrent layers are not "
                         "supported")
    if getattr(mod, "proj_size", 0):
        raise ValueError(f"from_torch: cannot take {path} ({cls_name}): proj_size is not supported")
    if not mod.batch_first:
        raise ValueError(f"from_torch: cannot take {path} ({cls_name}): only batch_first=True is supported "
                         "(our sequences are [N, T, D])")
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


def frozen_module(path, mod):
    """True when every parameter of mod has requires_grad False (an error when only some do).
    Our to_torch recurrent wrapper holds its parameters in its child module."""
    held = mod.rnn if getattr(mod, "_spark_nn_leaf", False) else mod
    flags = {p.requires_grad for p in held.parameters(recurse=False)}
    if len(flags) > 1:
        raise ValueError(f"from_torch: cannot take {path} ({type(mod).__name__}): some of its parameters require "
                         "gradients and some do not; freeze or unfreeze the whole module")
    return flags == {False}


def module_layers(path, mod, shape_in, shape_out):
    """Our layers and weights [(layer, {name: array})] for one torch leaf module call."""
    import torch.nn as nn

    name = type(mod).__name__

    def fail(why):
        return ValueError(f"from_torch: cannot take {path} ({name}): {why}")

    if getattr(mod, "_spark_nn_leaf", False):  # our to_torch wrapper around a recurrent module
        return _recurrent_layers(path, mod.rnn, not mod.return_sequences, type(mod.rnn).__name__)
    if isinstance(mod, (nn.RNN, nn.LSTM, nn.GRU)):
        return _recurrent_layers(path, mod, False, name)
    if isinstance(mod, nn.Conv2d):
        if tuple(mod.dilation) != (1, 1) or mod.padding_mode != "zeros":
            raise fail("only dilation=1 and zero padding are supported")
        padding = mod.padding if isinstance(mod.padding, str) else list(mod.padding)
        layer = L.Conv2D(mod.out_channels, list(mod.kernel_size), list(mod.stride), padding, mod.bias is not None,
                         groups=mod.groups)
        w = {"w": _np(mod.weight)}
        if mod.bias is not None:
            w["b"] = _np(mod.bias)
        return [(layer, w)]
    if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if not mod.track_running_stats or mod.momentum is None:
            raise fail("only running statistics with a momentum (torch's defaults) are supported")
        layer = (L.BatchNorm2D if isinstance(mod, nn.BatchNorm2d) else L.BatchNorm1D)(mod.momentum, mod.eps, mod.affine)
        w = {"running_mean": _np(mod.running_mean), "running_var": _np(mod.running_var)}
        if mod.affine:
            w["gamma"], w["beta"] = _np(mod.weight), _np(mod.bias)
        return [(layer, w)]
    if isinstance(mod, nn.MaxPool2d):
        dilation = mod.dilation if isinstance(mod.dilation, tuple) else (mod.dilation,) * 2
        if mod.ceil_mode or mod.return_indices or tuple(dilation) != (1, 1):
            raise fail("ceil_mode, return_indices and dilation are not supported")
        return [(L.MaxPool2D(mod.kernel_size, mod.stride, mod.padding), {})]
    if isinstance(mod, nn.AvgPool2d):
        if mod.ceil_mode or mod.divisor_override:
            raise fail("ceil_mode and divisor_override are not supported")
        return [(L.AvgPool2D(mod.kernel_size, mod.stride, mod.padding, mod.count_include_pad), {})]
    if isinstance(mod, nn.AdaptiveAvgPool2d):
        return _adaptive_avg(fail, shape_in, shape_out)
    if isinstance(mod, nn.Linear):
        w = {"w": _np(mod.weight)}
        if mod.bias is not None:
            w["b"] = _np(mod.bias)
        return [(L.Dense(mod.out_features, mod.bias is not None), w)]
    if isinstance(mod, nn.Flatten):
        if mod.start_dim != 1 or mod.end_dim != -1:
            raise fail("only start_dim=1, end_dim=-1")
        return _flatten(shape_in)
    if isinstance(mod, nn.Dropout):
        return [(L.Dropout(mod.p), {})]
    if isinstance(mod, nn.Identity):
        return []
    acts = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.ReLU6: "relu6", nn.SiLU: "silu"}
    if type(mod) in acts:
        return [(L.Activation(acts[type(mod)]), {})]
    if isinstance(mod, nn.LeakyReLU):
        return [(L.Activation("leaky_relu", alpha=mod.negative_slope), {})]
    if isinstance(mod, nn.GELU):
        if mod.approximate != "none":
            raise fail("only approximate='none' (the erf form) is supported")
        return [(L.Activation("gelu"), {})]
    if isinstance(mod, nn.Softmax):
        if mod.dim not in (1, -1) or len(shape_in) != 1:
            raise fail("softmax over the features of flat rows only")
        return [(L.Activation("softmax"), {})]
    if isinstance(mod, nn.Embedding):
        if mod.max_norm is not None:
            raise fail("max_norm is not supported")
        mask = bool(getattr(mod, "_spark_nn_mask_zero", False))
        return [(L.Embedding(mod.num_embeddings, mod.embedding_dim, mask_zero=mask), {"w": _np(mod.weight)})]
    raise fail("supported: Conv2d (groups too), BatchNorm1d/2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Linear, "
               "Flatten, Dropout, Identity, ReLU, ReLU6, LeakyReLU, SiLU, GELU, Tanh, Sigmoid, Softmax, Embedding, "
               "RNN, LSTM, GRU")


def _flatten(shape_in):
    return [] if shape_in is not None and len(shape_in) == 1 else [(L.Flatten(), {})]


def _adaptive_avg(fail, shape_in, shape_out):
    """AdaptiveAvgPool2d: to 1x1 a global average (the flatten that usually follows is then a
    no-op: our GlobalAvgPool2D's rows are flat already); to k x k where k divides the input,
    an average pool of input/k windows."""
    if len(shape_in) != 3:
        raise fail(f"expects (C, H, W) inputs, got {shape_in}")
    (c, h, w), (oh, ow) = shape_in, shape_out[1:]
    if (oh, ow) == (1, 1):
        return [(L.GlobalAvgPool2D(), {}), (_Unflat(c), {})]
    if h % oh or w % ow:
        raise fail(f"output size {oh}x{ow} does not divide the input's {h}x{w}")
    return [(L.AvgPool2D((h // oh, w // ow), (h // oh, w // ow)), {})]


class _Unflat:
    """Marker after a global average: torch's tensor is still (C, 1, 1) there; a flatten that
    follows removes the marker, anything else is an error (our layer's rows are flat)."""

    def __init__(self, c):
        self.c = c


def _tracer():
    import torch.fx as fx
    import torch.nn as nn

    class Tracer(fx.Tracer):
        def is_leaf_module(self, m, qualname):
            return isinstance(m, (nn.RNN, nn.LSTM, nn.GRU)) or getattr(m, "_spark_nn_leaf", False) or \
                super().is_leaf_module(m, qualname)

    return Tracer()


_SHAPE_QUERIES = {"size", "dim"}


def _tensor_users(node):
    return [u for u in node.users if not (u.op == "call_method" and u.target in _SHAPE_QUERIES)
            and not (u.op == "call_function" and u.target is getattr and u.args[1] in ("shape", "ndim"))]


def _shape(node):
    meta = node.meta.get("tensor_meta")
    return None if meta is None or not hasattr(meta, "shape") else tuple(int(d) for d in meta.shape[1:])


def import_layers(module, input_shape):
    """(layers, weights by id(layer), frozen layer ids) of a torch module, by its traced graph."""
    import torch
    import torch.fx as fx
    import torch.nn.functional as F
    from torch.fx.passes.shape_prop import ShapeProp

    try:
        graph = _tracer().trace(module)
    except Exception as e:  # noqa: BLE001 - fx raises many kinds; the user needs its text
        raise ValueError(f"from_torch: torch.fx cannot trace {type(module).__name__}: {e}") from None
    gm = fx.GraphModule(module, graph)
    ids = any(isinstance(m, torch.nn.Embedding) for m in module.modules())
    sample = torch.zeros((1,) + tuple(input_shape), dtype=torch.long if ids else torch.float32)
    was_training = module.training
    module.eval()
    try:
        ShapeProp(gm).propagate(sample)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"from_torch: the module does not run on an input of shape {tuple(input_shape)}: {e}") \
            from None
    finally:
        module.train(was_training)
    modules = dict(module.named_modules())
    weights, frozen = {}, set()
    values = {}

    def value_of(node):
        """The chain a user of node extends: a tensor read by several consumers is a branch point."""
        v = values[node]
        if len(_tensor_users(node)) > 1 and v.rnn is None:
            return _Chain(node, [])
        return _Chain(v.base, v.layers, v.rnn)

    def extend(node, src, new):
        chain = value_of(src)
        if chain.rnn not in (None, "seq"):
            raise ValueError(f"from_torch: cannot take node {node.name} ({_op_text(node)}): it reads a recurrent "
                             "module's output tuple; take output[0], output[0][:, -1] or h_n[-1] first")
        for layer, w in new:
            weights[id(layer)] = w
        if chain.layers and isinstance(chain.layers[-1], _Unflat):
            if not (new and isinstance(new[0][0], L.Flatten)):
                raise ValueError(f"from_torch: cannot take node {node.name} ({_op_text(node)}) after a global "
                                 "average pool: only a flatten may follow it")
            chain.layers.pop()
            new = new[1:]
        values[node] = _Chain(chain.base, chain.layers + [layer for layer, _ in new])

    def fail(node, why=""):
        return ValueError(f"from_torch: cannot take node {node.name} ({_op_text(node)})" + (f": {why}" if why else ""))

    act_functions = {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.silu: "silu", torch.sigmoid: "sigmoid",
                     F.sigmoid: "sigmoid", torch.tanh: "tanh", F.tanh: "tanh", F.gelu: "gelu"}
    act_methods = {"relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}
    output = None
    for node in gm.graph.nodes:
        shape_out = _shape(node)
        if node.op == "placeholder":
            if values:
                raise fail(node, "the module takes more than one input")
            values[node] = _Chain(None, [])
            continue
        if node.op == "output":
            output = node.args[0]
            break
        if node.op == "get_attr":
            raise fail(node, "a module attribute used as a tensor")
        if node.op == "call_method" and node.target in _SHAPE_QUERIES:
            continue
        src = node.args[0] if node.args else None
        shape_in = _shape(src) if isinstance(src, fx.Node) else None
        if node.op == "call_module":
            mod = modules[node.target]
            new = module_layers(node.target, mod, shape_in, shape_out)
            if frozen_module(node.target, mod):
                frozen.update(id(layer) for layer, _ in new)
            if len(node.args) != 1 or node.kwargs:
                if not getattr(mod, "_spark_nn_leaf", False):
                    raise fail(node, "modules are called with one tensor")
            extend(node, src, new)
            if isinstance(mod, (torch.nn.RNN, torch.nn.LSTM, torch.nn.GRU)):
                values[node].rnn = "out"
            continue
        target = node.target
        if node.op == "call_function" and target is operator.getitem or \
                node.op == "call_method" and target == "__getitem__":
            values[node] = _getitem(node, values[src], fail)
            continue
        if target in (operator.add, operator.iadd, torch.add) or (node.op == "call_method" and target in ("add",
                                                                                                          "add_")):
            base, block = _add(node, [value_of(a) for a in node.args[:2]], fail)
            before = values[base]  # the branch point's own chain, which the block now continues
            values[node] = _Chain(before.base, before.layers + [block])
            continue
        if node.op == "call_function" and target in act_functions or \
                node.op == "call_method" and target in act_methods:
            name = act_functions.get(target) if node.op == "call_function" else act_methods[target]
            if name == "gelu" and node.kwargs.get("approximate", "none") != "none":
                raise fail(node, "only approximate='none' (the erf form) is supported")
            extend(node, src, [(L.Activation(name), {})])
            continue
        if node.op == "call_function" and target is F.leaky_relu:
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            extend(node, src, [(L.Activation("leaky_relu", alpha=slope), {})])
            continue
        if (node.op == "call_function" and target is torch.flatten) or \
                (node.op == "call_method" and target in ("flatten", "view", "reshape")):
            if len(shape_out) != 1:
                raise fail(node, f"only reshapes to flat rows (batch, features) are supported; this gives "
                                 f"{shape_out}")
            # a flatten of flat rows is nothing, except right after a global average (see _Unflat)
            unflat = bool(values[src].layers) and isinstance(values[src].layers[-1], _Unflat)
            extend(node, src, [(L.Flatten(), {})] if unflat else _flatten(shape_in))
            continue
        if node.op == "call_function" and target is F.adaptive_avg_pool2d:
            extend(node, src, _adaptive_avg(lambda why: fail(node, why), shape_in, shape_out))
            continue
        if node.op == "call_method" and target == "mean" and len(shape_in or ()) == 3 and \
                sorted(a % 4 for a in _mean_dims(node)) == [2, 3] and len(shape_out) == 1:
            extend(node, src, [(L.GlobalAvgPool2D(), {})])
            continue
        if node.op == "call_function" and target is F.dropout:
            p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p", 0.5)
            extend(node, src, [(L.Dropout(p), {})])
            continue
        raise fail(node)
    if not isinstance(output, fx.Node):
        raise ValueError("from_torch: the module must return one tensor")
    chain = values[output]
    if chain.rnn is not None:
        raise ValueError("from_torch: the module returns a recurrent module's output tuple; return output[0] or "
                         "its last step")
    if chain.base is not None:
        raise ValueError(f"from_torch: node {chain.base.name} ({_op_text(chain.base)}) branches into tensors that "
                         "are never added back together; only residual additions are supported")
    layers = [layer for layer in chain.layers if not isinstance(layer, _Unflat)]
    return layers, weights, frozen


def _mean_dims(node):
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = [dims] if isinstance(dims, int) else list(dims or [])
    if not node.kwargs.get("keepdim", False) and not (len(node.args) > 2 and node.args[2]):
        return dims
    return []


def _op_text(node):
    target = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{node.op} {target}"


def _add(node, chains, fail):
    """(branch point, Residual block) of a + b, two chains from one branch point (the shortcut
    empty when it is the branch point's tensor itself)."""
    if len(node.args) != 2 or node.kwargs or not all(hasattr(a, "op") for a in node.args):
        raise fail(node, "only the sum of two tensors is supported")
    a, b = chains
    if a.rnn is not None or b.rnn is not None or a.base is not b.base:
        raise fail(node, "the two tensors do not branch from one tensor")
    if not a.layers and not b.layers:
        raise fail(node, "x + x is not a residual block")
    body, shortcut = (a.layers, b.layers) if len(a.layers) >= len(b.layers) else (b.layers, a.layers)
    if not body or any(isinstance(layer, _Unflat) for layer in body + shortcut):
        raise fail(node, "the residual branches must end in layers of the same shape")
    return a.base, L.Residual(body, shortcut or None)


def _getitem(node, chain, fail):
    """A recurrent module's output followed through its tuple, to the sequence or the last state:
    output[0] is the sequence; output[1] is h_n (GRU, RNN) or (h_n, c_n) (LSTM); the sequence's
    [:, -1] and h_n[-1] are the last layer's final state (the layer then returns no sequence)."""
    index = node.args[1]
    last_step = isinstance(index, tuple) and index == (slice(None), -1)
    lstm = bool(chain.layers) and isinstance(chain.layers[-1], L.LSTM)
    if chain.rnn == "out" and index in (0, 1):
        return _Chain(chain.base, chain.layers, "seq" if index == 0 else "state" if lstm else "h")
    if chain.rnn == "state" and index == 0:
        return _Chain(chain.base, chain.layers, "h")
    if (chain.rnn == "seq" and last_step) or (chain.rnn == "h" and index == -1):
        chain.layers[-1].return_sequences = False
        return _Chain(chain.base, chain.layers)
    raise fail(node, f"indexing with {index!r} is not supported (take output[0], output[0][:, -1] or h_n[-1])")
