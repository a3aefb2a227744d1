"""ONNX export of a Sequential, with standard operators only (opset 17): Conv (grouped too),
BatchNormalization, MaxPool, AveragePool, GlobalAveragePool, Add (residual blocks), Flatten, Gemm,
Relu/Tanh/Sigmoid/Softmax/LeakyRelu, Clip (ReLU6), SiLU and GELU from Sigmoid/Erf, Gather
(embeddings), RNN/LSTM/GRU (time-major, between Transposes). The
batch axis is dynamic. ``onnx`` is an optional extra (pip install "spark_nn[onnx]"), imported
here only.

Padding: a model whose Embedding has mask_zero skips padding steps (see layers.py). In ONNX
each row's tokens are moved to the front (GatherElements with the row's first data step as
offset) and the recurrent operators get ``sequence_lens``, which is how ONNX skips steps; rows
without tokens give the zero state, as ours do.
"""
import numpy as np

from spark_nn.nn import layers as L
from spark_nn.nn.losses import RegressionLoss, SoftmaxCrossEntropy

OPSET = 17
_LSTM_ORDER = [0, 3, 1, 2]  # ours/torch i,f,g,o -> ONNX i,o,f,c
_GRU_ORDER = [1, 0, 2]      # ours/torch r,z,n -> ONNX z,r,h


class _Graph:
    def __init__(self):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.nodes, self.inits, self._n = [], [], 0

    def name(self, base):
        self._n += 1
        return f"{base}_{self._n}"

    def const(self, base, array):
        name = self.name(base)
        self.inits.append(self.numpy_helper.from_array(np.asarray(array), name))
        return name

    def op(self, kind, inputs, base=None, n_out=1, **attrs):
        outs = [self.name(base or kind.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(kind, inputs, outs, **attrs))
        return outs if n_out > 1 else outs[0]


def _spans(g, ids, steps):
    """(ids with each row's tokens moved to the front, int32 lengths >= 1, float [N, 1] 1 where
    the row has tokens) for a mask_zero embedding's input."""
    data = g.op("Cast", [g.op("Not", [g.op("Equal", [ids, g.const("zero", np.array(0, np.int64))])])],
                to=1)  # float
    begin = g.op("ArgMax", [data], axis=1, keepdims=1)
    last = g.op("ArgMax", [data], axis=1, keepdims=1, select_last_index=1)
    has = g.op("ReduceMax", [data], axes=[1], keepdims=1)
    length = g.op("Add", [g.op("Sub", [last, begin]), g.const("one", np.array(1, np.int64))])
    length = g.op("Max", [length, g.const("one", np.array(1, np.int64))])
    lens = g.op("Cast", [g.op("Squeeze", [length, g.const("axis1", np.array([1], np.int64))])], to=6)  # int32
    index = g.op("Mod", [g.op("Add", [g.const("steps", np.arange(steps, dtype=np.int64)[None]), begin]),
                         g.const("T", np.array(steps, np.int64))])
    return g.op("GatherElements", [ids, index], axis=1), lens, has


def _recurrent(g, layer, x, lens):
    """ONNX RNN/LSTM/GRU node(s) for one of our recurrent layers: [N, T, D] -> [N, T, H] or [N, H]."""
    p, h = layer.params, layer.units
    if isinstance(layer, L.LSTM):
        kind, order, attrs = "LSTM", _LSTM_ORDER, {}
    elif isinstance(layer, L.GRU):
        kind, order, attrs = "GRU", _GRU_ORDER, {"linear_before_reset": 1}
    else:
        kind, order = "RNN", [0]
        attrs = {"activations": [{"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid"}[layer.activation]]}
    gates = layer.gates
    w = np.concatenate([np.split(p["w_ih"], gates)[i] for i in order])[None]
    r = np.concatenate([np.split(p["w_hh"], gates)[i] for i in order])[None]
    b = np.concatenate([np.concatenate([np.split(p[k], gates)[i] for i in order]) for k in ("b_ih", "b_hh")])[None]
    # time-major (layout 0): onnxruntime implements no other layout
    inputs = [g.op("Transpose", [x], perm=[1, 0, 2]), g.const("W", w.astype(np.float32)),
              g.const("R", r.astype(np.float32)), g.const("B", b.astype(np.float32))]
    if lens is not None:
        inputs.append(lens)
    y, y_h = g.op(kind, inputs, base=kind.lower(), n_out=2, hidden_size=h, **attrs)
    if layer.return_sequences:  # Y: [T, 1, N, H]
        return g.op("Transpose", [g.op("Squeeze", [y, g.const("axis1", np.array([1], np.int64))])], perm=[1, 0, 2])
    return g.op("Squeeze", [y_h, g.const("axis0", np.array([0], np.int64))])  # Y_h: [1, N, H]


def _activation(g, layer, x):
    kind = layer.activation
    if kind == "identity":
        return x
    if kind in ("relu", "tanh", "sigmoid", "softmax"):
        op = {"relu": "Relu", "tanh": "Tanh", "sigmoid": "Sigmoid", "softmax": "Softmax"}[kind]
        return g.op(op, [x], **({"axis": 1} if op == "Softmax" else {}))
    if kind == "relu6":
        return g.op("Clip", [x, g.const("zero", np.array(0, np.float32)), g.const("six", np.array(6, np.float32))])
    if kind == "leaky_relu":
        return g.op("LeakyRelu", [x], alpha=layer.alpha)
    if kind == "silu":
        return g.op("Mul", [x, g.op("Sigmoid", [x])])
    # gelu, erf form (opset 17 has no Gelu): x * (1 + erf(x / sqrt 2)) / 2
    erf = g.op("Erf", [g.op("Mul", [x, g.const("rsqrt2", np.array(1 / np.sqrt(2), np.float32))])])
    half = g.op("Mul", [x, g.const("half", np.array(0.5, np.float32))])
    return g.op("Mul", [half, g.op("Add", [erf, g.const("one", np.array(1, np.float32))])])


def _layer(g, layer, x, path):
    """The ONNX nodes of one non-recurrent layer (a Residual's layers inside it) on x."""
    if isinstance(layer, L.Conv2D):
        (ph, pw) = layer._pad()
        ins = [x, g.const("conv_w", layer.params["w"])] + ([g.const("conv_b", layer.params["b"])]
                                                         if layer.use_bias else [])
        return g.op("Conv", ins, kernel_shape=list(layer.kernel_size), strides=list(layer.stride),
                    pads=[ph, pw, ph, pw], group=layer.groups)
    if isinstance(layer, L._BatchNorm):
        gamma, beta = layer._affine()
        ins = [x, g.const("bn_scale", gamma), g.const("bn_bias", beta), g.const("bn_mean", layer.buffers["running_mean"]),
               g.const("bn_var", layer.buffers["running_var"])]
        return g.op("BatchNormalization", ins, epsilon=layer.eps)
    if isinstance(layer, (L.MaxPool2D, L.AvgPool2D)):
        (ph, pw) = layer.padding
        attrs = {"count_include_pad": int(layer.count_include_pad)} if isinstance(layer, L.AvgPool2D) else {}
        return g.op("MaxPool" if isinstance(layer, L.MaxPool2D) else "AveragePool", [x],
                    kernel_shape=list(layer.pool_size), strides=list(layer.stride), pads=[ph, pw, ph, pw], **attrs)
    if isinstance(layer, L.GlobalAvgPool2D):
        return g.op("Flatten", [g.op("GlobalAveragePool", [x])], axis=1)
    if isinstance(layer, L.Flatten):
        return g.op("Flatten", [x], axis=1)
    if isinstance(layer, L.Standardize):
        shape = layer.broadcast_shape()
        return g.op("Div", [g.op("Sub", [x, g.const("mean", layer.mean.reshape(shape))]),
                            g.const("std", layer.std.reshape(shape))])
    if isinstance(layer, L.Dense):
        ins = [x, g.const("dense_w", layer.params["w"])] + ([g.const("dense_b", layer.params["b"])]
                                                          if layer.use_bias else [])
        return g.op("Gemm", ins, transB=1)
    if isinstance(layer, L.Activation):
        return _activation(g, layer, x)
    if isinstance(layer, L.Dropout):
        return x  # identity at inference
    if isinstance(layer, L.Residual):
        y = x
        for j, sub in enumerate(layer.body):
            y = _layer(g, sub, y, f"{path}.body.{j}")
        s = x
        for j, sub in enumerate(layer.shortcut or []):
            s = _layer(g, sub, s, f"{path}.shortcut.{j}")
        return g.op("Add", [y, s])
    raise ValueError(f"to_onnx: layer {path} ({type(layer).__name__}) has no ONNX export")


def to_onnx(model, path, upto=None, output_names=None):
    """Writes model (layers 0..upto, all by default) as an ONNX file and returns path.

    Input 'input': float32 [batch, *input_shape], or int64 token ids [batch, steps] when the
    first layer is an Embedding. Outputs: 'output' (the last layer's output; logits for
    classifiers) and, for a whole classifier, 'probability' (its softmax); for a whole regressor
    with standardized targets, 'prediction' (the output in the label's units)."""
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise ImportError("ONNX export needs the onnx package: pip install \"spark_nn[onnx]\"") from None
    layers = model.layers[: (len(model.layers) if upto is None else upto + 1)]
    g = _Graph()
    ids_in = isinstance(layers[0], L.Embedding)
    x = "input"
    lens = has = None
    masked = ids_in and layers[0].mask_zero
    recurrent = [i for i, layer in enumerate(layers) if isinstance(layer, L._Recurrent)]
    if masked and recurrent and layers[recurrent[-1]].return_sequences:
        raise ValueError("to_onnx: a padded (mask_zero) model must end its recurrent layers with the last step's "
                         "state (return_sequences=False)")
    for i, layer in enumerate(layers):
        if isinstance(layer, L.Embedding):
            if masked:
                x, lens, has = _spans(g, x, model.input_shape[0])
            x = g.op("Gather", [g.const("embedding", layer.params["w"]), x], axis=0)
        elif isinstance(layer, L.Dropout):
            continue  # identity at inference
        elif not isinstance(layer, L._Recurrent):
            x = _layer(g, layer, x, str(i))
        elif isinstance(layer, L._Recurrent):
            x = _recurrent(g, layer, x, lens)
            if masked and i == recurrent[-1]:
                x = g.op("Mul", [x, has])  # rows without tokens: the zero state
    names = output_names or ["output", "probability"]
    outputs = [(names[0], x)]
    if upto is None and isinstance(model.loss, SoftmaxCrossEntropy) and len(model.output_shape) == 1:
        outputs.append((names[1], g.op("Softmax", [x], axis=1)))
    elif upto is None and isinstance(model.loss, RegressionLoss) and model.loss.shift is not None:
        scale, shift = (np.asarray(v, np.float32).reshape(1, -1) for v in (model.loss.scale, model.loss.shift))
        outputs.append(("prediction", g.op("Add", [g.op("Mul", [x, g.const("scale", scale)]),
                                                   g.const("shift", shift)])))
    for name, src in outputs:
        g.nodes.append(helper.make_node("Identity", [src], [name]))
    in_type = TensorProto.INT64 if ids_in else TensorProto.FLOAT
    out_shape = ["batch"] + list(layers[-1].output_shape)
    graph = helper.make_graph(
        g.nodes, "spark_nn", [helper.make_tensor_value_info("input", in_type, ["batch"] + list(model.input_shape))],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, out_shape) for name, _ in outputs], g.inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="spark_nn")
    onnx.checker.check_model(proto)
    onnx.save(proto, path)
    return path
