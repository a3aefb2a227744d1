"""Layers of the graph. Each layer

- ``build(input_shape)`` with the per-sample input shape (no batch axis) and returns its
  output shape;
- declares its parameters in ``param_specs()`` as (name, shape) and initialises them in
  ``init_params(rng)``; the model binds views of one flat float32 vector with ``bind``;
- runs ``forward(x, training)`` (caching what backward needs) and ``backward(dy, need_dx)``,
  which writes the parameter gradients into the bound gradient views and returns dx;
- round-trips through ``config()`` / ``layer_from_config``;
- may hold non-trainable state (``buffer_specs()`` / ``init_buffers()``: BatchNorm's running
  statistics), bound as views of the model's buffer vector;
- may be frozen (``trainable`` False, Keras' name): its parameters get no gradient, and a
  frozen BatchNorm normalizes with its running statistics in training too;
- may contain layers (``sublayers()``: a residual block's body and shortcut), which the model
  walks for its slots, its dropout seeding and its exports.
Tensors: images NCHW, sequences [N, T, D], all float32 (token ids int).

Padding: an Embedding with ``mask_zero`` marks each row's data steps (from its first to its
last non-zero id) as ``spans`` [N, 2]; the model hands a layer's ``output_spans`` to the next
layer as ``input_spans`` before its forward, and recurrent layers pass them to the kernels,
which carry the state through padding steps (PyTorch's packed sequences).
"""
import numpy as np

from spark_nn import kernels as K
from spark_nn.nn import init


class Layer:
    """Base class: no parameters, identity shape."""

    input_spans = None  # set by the model before forward: data steps of sequence inputs
    trainable = True
    # 'fp32' or 'bf16': the operands of this layer's GEMMs (Conv2D, Dense), set by the model
    # (Sequential.precision); fp32 sums, weights and gradients either way
    precision = "fp32"

    def __init__(self):
        self.input_shape = None
        self.output_shape = None
        self.params = {}
        self.grads = {}
        self.buffers = {}

    # graph construction
    def build(self, input_shape):
        self.input_shape = tuple(input_shape)
        self.output_shape = self.compute_output_shape(self.input_shape)
        return self.output_shape

    def compute_output_shape(self, input_shape):
        return input_shape

    def param_specs(self):
        return []

    def init_params(self, rng):
        return {}

    def buffer_specs(self):
        return []

    def init_buffers(self):
        return {}

    def sublayers(self):
        """(name, layer) of the layers this one contains (none for a plain layer)."""
        return []

    def bind(self, params, grads, buffers=None):
        self.params, self.grads, self.buffers = params, grads, buffers or {}

    def config(self):
        return {"type": type(self).__name__}

    @property
    def name(self):
        return type(self).__name__.lower()

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "type")
        return f"{type(self).__name__}({args})"

    # computation
    def forward(self, x, training=False):
        raise NotImplementedError

    def backward(self, dy, need_dx=True):
        raise NotImplementedError

    def output_spans(self):
        """Data steps of this layer's output rows (after forward), or None: no padding."""
        return None


def _pair(name, v):
    if isinstance(v, (int, np.integer)):
        return (int(v), int(v))
    v = tuple(int(e) for e in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


class Conv2D(Layer):
    """2-D convolution over NCHW. padding: int, pair, 'same' (odd kernels, stride 1) or 'valid'."""

    def __init__(self, filters, kernel_size=3, stride=1, padding="same", use_bias=True, kernel_init="he", groups=1):
        super().__init__()
        self.filters = int(filters)
        if self.filters < 1:
            raise ValueError(f"Conv2D filters must be >= 1, got {filters}")
        self.groups = int(groups)
        if self.groups < 1 or self.filters % self.groups:
            raise ValueError(f"Conv2D groups must be >= 1 and divide filters ({filters}), got {groups}")
        self.kernel_size = _pair("kernel_size", kernel_size)
        self.stride = _pair("stride", stride)
        self.padding = padding
        self.use_bias = bool(use_bias)
        self.kernel_init = kernel_init

    def _pad(self):
        if self.padding == "valid":
            return (0, 0)
        if self.padding == "same":
            if self.stride != (1, 1) or any(k % 2 == 0 for k in self.kernel_size):
                raise ValueError("Conv2D padding='same' needs an odd kernel and stride 1; give an int padding")
            return tuple(k // 2 for k in self.kernel_size)
        return _pair("padding", self.padding)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"Conv2D expects inputs of shape (channels, height, width), got {input_shape}")
        c, h, w = input_shape
        if c % self.groups:
            raise ValueError(f"Conv2D groups ({self.groups}) must divide the input channels ({c})")
        (kh, kw), (sh, sw), (ph, pw) = self.kernel_size, self.stride, self._pad()
        oh, ow = (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1
        if h + 2 * ph < kh or w + 2 * pw < kw or oh < 1 or ow < 1:
            raise ValueError(f"Conv2D: input of size {h}x{w} is smaller than its {kh}x{kw} kernel "
                             f"(padding {ph},{pw})")
        return (self.filters, oh, ow)

    def param_specs(self):
        c = self.input_shape[0] // self.groups
        specs = [("w", (self.filters, c) + self.kernel_size)]
        return specs + ([("b", (self.filters,))] if self.use_bias else [])

    def init_params(self, rng):
        c = self.input_shape[0] // self.groups  # fan-in and -out per group, as torch's init
        kh, kw = self.kernel_size
        out = {"w": init.dense_kernel(rng, (self.filters, c, kh, kw), c * kh * kw, self.filters * kh * kw,
                                      self.kernel_init)}
        if self.use_bias:
            out["b"] = init.zeros(rng, (self.filters,))
        return out

    def forward(self, x, training=False):
        self._x = x
        return K.conv2d_forward(x, self.params["w"], self.params.get("b"), self.stride, self._pad(),
                                precision=self.precision, **self._group_arg())

    def _group_arg(self):
        return {"groups": self.groups} if self.groups != 1 else {}

    def backward(self, dy, need_dx=True):
        if not self.trainable and not need_dx:
            return None
        # a frozen layer has no gradient views: the kernel's dw and db go to scratch arrays
        dx, _, _ = K.conv2d_backward(self._x, self.params["w"], dy, self.stride, self._pad(),
                                     need_dx=need_dx, has_bias=self.use_bias,
                                     dw=self.grads.get("w"), db=self.grads.get("b"), precision=self.precision,
                                     **self._group_arg())
        return dx

    def config(self):
        cfg = {"type": "Conv2D", "filters": self.filters, "kernel_size": list(self.kernel_size),
               "stride": list(self.stride), "padding": self.padding if isinstance(self.padding, str)
               else list(_pair("padding", self.padding)), "use_bias": self.use_bias,
               "kernel_init": self.kernel_init}
        if self.groups != 1:  # absent in configs of ungrouped layers, as saved before groups existed
            cfg["groups"] = self.groups
        return cfg


class MaxPool2D(Layer):
    def __init__(self, pool_size=2, stride=None, padding=0):
        super().__init__()
        self.pool_size = _pair("pool_size", pool_size)
        self.stride = _pair("stride", self.pool_size if stride is None else stride)
        self.padding = _pair("padding", padding)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 3:
            raise ValueError(f"MaxPool2D expects inputs of shape (channels, height, width), got {input_shape}")
        c, h, w = input_shape
        (kh, kw), (sh, sw), (ph, pw) = self.pool_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(f"MaxPool2D: input of size {h}x{w} is smaller than its {kh}x{kw} window")
        return (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    def forward(self, x, training=False):
        y, self._argmax = K.maxpool2d_forward(x, self.pool_size, self.stride, self.padding)
        self._xshape = x.shape
        return y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        return K.maxpool2d_backward(dy, self._argmax, self._xshape, self.pool_size, self.stride, self.padding)

    def config(self):
        return {"type": "MaxPool2D", "pool_size": list(self.pool_size), "stride": list(self.stride),
                "padding": list(self.padding)}


class Flatten(Layer):
    def compute_output_shape(self, input_shape):
        return (int(np.prod(input_shape)),)

    def forward(self, x, training=False):
        self._xshape = x.shape
        return x.reshape(x.shape[0], -1)

    def backward(self, dy, need_dx=True):
        return dy.reshape(self._xshape) if need_dx else None


class Standardize(Layer):
    """(x - mean) / std per feature, with constants (no parameters): how a regressor
    standardizes its inputs by the training rows' statistics (MLlib's ``standardization``).

    axis: the feature axis of a row: -1 the features of a sequence's step (or of a flat row),
    0 an image's channels. mean, std: one value per feature."""

    def __init__(self, mean, std, axis=-1):
        super().__init__()
        self.mean = np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = np.asarray(std, dtype=np.float32).reshape(-1)
        self.axis = int(axis)
        if self.mean.shape != self.std.shape or not (self.std > 0).all():
            raise ValueError(f"Standardize needs as many means as standard deviations (> 0), got {self.mean.size} "
                             f"and {self.std.size}")

    def compute_output_shape(self, input_shape):
        if not -len(input_shape) <= self.axis < len(input_shape) or input_shape[self.axis] != self.mean.size:
            raise ValueError(f"Standardize has {self.mean.size} features on axis {self.axis}; the input shape is "
                             f"{tuple(input_shape)}")
        return input_shape

    def broadcast_shape(self):
        """The constants' shape against a batch (1, *input_shape with 1 but on the axis)."""
        shape = [1] * (len(self.input_shape) + 1)
        shape[self.axis % len(self.input_shape) + 1] = self.mean.size
        return tuple(shape)

    def forward(self, x, training=False):
        shape = self.broadcast_shape()
        return ((x - self.mean.reshape(shape)) / self.std.reshape(shape)).astype(np.float32, copy=False)

    def backward(self, dy, need_dx=True):
        return (dy / self.std.reshape(self.broadcast_shape())).astype(np.float32, copy=False) if need_dx else None

    def config(self):
        return {"type": "Standardize", "mean": self.mean.tolist(), "std": self.std.tolist(), "axis": self.axis}


class Dense(Layer):
    def __init__(self, units, use_bias=True, kernel_init="glorot"):
        super().__init__()
        self.units = int(units)
        if self.units < 1:
            raise ValueError(f"Dense units must be >= 1, got {units}")
        self.use_bias = bool(use_bias)
        self.kernel_init = kernel_init

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Dense expects flat inputs (features,), got {input_shape}; add a Flatten layer")
        return (self.units,)

    def param_specs(self):
        specs = [("w", (self.units, self.input_shape[0]))]
        return specs + ([("b", (self.units,))] if self.use_bias else [])

    def init_params(self, rng):
        fan_in = self.input_shape[0]
        out = {"w": init.dense_kernel(rng, (self.units, fan_in), fan_in, self.units, self.kernel_init)}
        if self.use_bias:
            out["b"] = init.zeros(rng, (self.units,))
        return out

    def forward(self, x, training=False):
        self._x = x
        return K.dense_forward(x, self.params["w"], self.params.get("b"), precision=self.precision)

    def backward(self, dy, need_dx=True):
        if not self.trainable:
            return K.dense_forward(dy, np.ascontiguousarray(self.params["w"].T), precision=self.precision) \
                if need_dx else None
        dx, _, _ = K.dense_backward(self._x, self.params["w"], dy, need_dx=need_dx, has_bias=self.use_bias,
                                    precision=self.precision,
                                    dw=self.grads["w"], db=self.grads.get("b"))
        return dx

    def config(self):
        return {"type": "Dense", "units": self.units, "use_bias": self.use_bias, "kernel_init": self.kernel_init}


ACTIVATION_NAMES = ("sigmoid", "tanh", "relu", "softmax", "identity", "relu6", "leaky_relu", "silu", "gelu")
_NEEDS_INPUT = ("silu", "gelu")  # their backward is written in terms of the input, not the output


class Activation(Layer):
    """Elementwise sigmoid, tanh, ReLU, ReLU6, LeakyReLU (negative slope ``alpha``, torch's
    default 0.01), SiLU, GELU (erf form, torch's default) or identity, or softmax over the last
    axis of (N, C)."""

    def __init__(self, activation, alpha=None):
        super().__init__()
        name = str(activation).lower()
        name = {"linear": "identity", "swish": "silu", "leakyrelu": "leaky_relu"}.get(name, name)
        if name not in ACTIVATION_NAMES:
            raise ValueError(f"activation must be one of {list(ACTIVATION_NAMES)}, got {activation!r}")
        if alpha is not None and name != "leaky_relu":
            raise ValueError(f"alpha is the negative slope of leaky_relu; {name} takes none")
        self.activation = name
        self.alpha = (0.01 if alpha is None else float(alpha)) if name == "leaky_relu" else None

    def compute_output_shape(self, input_shape):
        if self.activation == "softmax" and len(input_shape) != 1:
            raise ValueError(f"softmax expects flat inputs (classes,), got {input_shape}")
        return input_shape

    def _args(self):
        return {"alpha": self.alpha} if self.alpha is not None else {}

    def forward(self, x, training=False):
        if self.activation == "softmax":
            self._y = K.softmax(x)
        else:
            self._y = K.activation_forward(x, self.activation, **self._args())
        # the kinds whose backward reads the input (a leaky ReLU with a negative slope cannot
        # tell the input's sign from its output's)
        needs_x = self.activation in _NEEDS_INPUT or (self.alpha is not None and self.alpha < 0)
        self._x = x if needs_x else None
        return self._y

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        y = self._y
        if self.activation == "softmax":
            return (y * (dy - np.sum(dy * y, axis=1, keepdims=True))).astype(np.float32)
        return K.activation_backward(y, dy, self.activation, x=self._x, **self._args())

    def output_spans(self):
        return self.input_spans

    def config(self):
        cfg = {"type": "Activation", "activation": self.activation}
        if self.alpha is not None:
            cfg["alpha"] = self.alpha
        return cfg


def _plane_input(kind, input_shape):
    if len(input_shape) != 3:
        raise ValueError(f"{kind} expects inputs of shape (channels, height, width), got {input_shape}")
    return input_shape


class AvgPool2D(Layer):
    """Average pooling over NCHW windows (torch's AvgPool2d: padding counted in the divisor
    unless count_include_pad is False)."""

    def __init__(self, pool_size=2, stride=None, padding=0, count_include_pad=True):
        super().__init__()
        self.pool_size = _pair("pool_size", pool_size)
        self.stride = _pair("stride", self.pool_size if stride is None else stride)
        self.padding = _pair("padding", padding)
        self.count_include_pad = bool(count_include_pad)

    def compute_output_shape(self, input_shape):
        c, h, w = _plane_input("AvgPool2D", input_shape)
        (kh, kw), (sh, sw), (ph, pw) = self.pool_size, self.stride, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(f"AvgPool2D: input of size {h}x{w} is smaller than its {kh}x{kw} window")
        if 2 * ph > kh or 2 * pw > kw:
            raise ValueError(f"AvgPool2D: padding {ph},{pw} is more than half the {kh}x{kw} window")
        return (c, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)

    def _args(self):
        return dict(kernel=self.pool_size, stride=self.stride, padding=self.padding,
                    count_include_pad=self.count_include_pad)

    def forward(self, x, training=False):
        self._xshape = x.shape
        return K.avgpool2d_forward(x, **self._args())

    def backward(self, dy, need_dx=True):
        return K.avgpool2d_backward(dy, self._xshape, **self._args()) if need_dx else None

    def config(self):
        return {"type": "AvgPool2D", "pool_size": list(self.pool_size), "stride": list(self.stride),
                "padding": list(self.padding), "count_include_pad": self.count_include_pad}


class GlobalAvgPool2D(Layer):
    """The mean of each channel's plane: (C, H, W) -> (C,) (torch's AdaptiveAvgPool2d(1) and a
    flatten; Keras' GlobalAveragePooling2D)."""

    def compute_output_shape(self, input_shape):
        return (_plane_input("GlobalAvgPool2D", input_shape)[0],)

    def forward(self, x, training=False):
        self._xshape = x.shape
        return K.global_avgpool_forward(x)

    def backward(self, dy, need_dx=True):
        return K.global_avgpool_backward(dy, self._xshape) if need_dx else None


class _BatchNorm(Layer):
    """Batch normalization over the channel axis (axis 1 of the batch), torch's semantics:
    training normalizes with the minibatch's mean and biased variance and moves the running
    statistics by ``momentum`` (variance unbiased); evaluation uses the running statistics. The
    running statistics are buffers: not trained, kept in the model's buffer vector. A frozen
    layer (trainable False) normalizes with its running statistics in training too and leaves
    them alone (Keras' rule for fine-tuning), so its output is what inference computes."""

    ranks = ()

    def __init__(self, momentum=0.1, eps=1e-5, affine=True):
        super().__init__()
        self.momentum, self.eps, self.affine = float(momentum), float(eps), bool(affine)
        if not 0.0 <= self.momentum <= 1.0:
            raise ValueError(f"{type(self).__name__} momentum must be in [0, 1], got {momentum}")
        if not self.eps > 0.0:
            raise ValueError(f"{type(self).__name__} eps must be > 0, got {eps}")

    def compute_output_shape(self, input_shape):
        if len(input_shape) not in self.ranks:
            raise ValueError(f"{type(self).__name__} expects inputs of {self.shape_text}, got {input_shape}")
        return input_shape

    @property
    def channels(self):
        return self.input_shape[0]

    def param_specs(self):
        return [("gamma", (self.channels,)), ("beta", (self.channels,))] if self.affine else []

    def init_params(self, rng):
        c = self.channels
        return {"gamma": np.ones(c, np.float32), "beta": np.zeros(c, np.float32)} if self.affine else {}

    def buffer_specs(self):
        return [("running_mean", (self.channels,)), ("running_var", (self.channels,))]

    def init_buffers(self):
        return {"running_mean": np.zeros(self.channels, np.float32),
                "running_var": np.ones(self.channels, np.float32)}

    def _affine(self):
        if self.affine:
            return self.params["gamma"], self.params["beta"]
        return np.ones(self.channels, np.float32), np.zeros(self.channels, np.float32)

    def forward(self, x, training=False):
        gamma, beta = self._affine()
        self._batch_stats = bool(training and self.trainable)
        x4 = x if x.ndim != 3 else x[..., None]  # (N, C, L) as (N, C, L, 1)
        y, self._mean, self._invstd = K.batchnorm_forward(
            x4, gamma, beta, self.buffers["running_mean"], self.buffers["running_var"], self._batch_stats,
            self.momentum, self.eps)
        self._x4 = x4
        return y.reshape(x.shape)

    def backward(self, dy, need_dx=True):
        train = self.trainable and self.affine
        if not (need_dx or train):
            return None
        dx, _, _ = K.batchnorm_backward(self._x4, self._affine()[0], self._mean, self._invstd,
                                        dy.reshape(self._x4.shape), self._batch_stats, need_dx=need_dx,
                                        dgamma=self.grads.get("gamma"), dbeta=self.grads.get("beta"),
                                        need_dparams=train)
        return None if dx is None else dx.reshape(dy.shape)

    def config(self):
        return {"type": type(self).__name__, "momentum": self.momentum, "eps": self.eps, "affine": self.affine}


class BatchNorm2D(_BatchNorm):
    """torch's BatchNorm2d: per channel over (N, H, W) of images (C, H, W)."""
    ranks, shape_text = (3,), "shape (channels, height, width)"


class BatchNorm1D(_BatchNorm):
    """torch's BatchNorm1d: per feature over N of (C,) inputs, or over (N, L) of (C, L)."""
    ranks, shape_text = (1, 2), "shape (features,) or (channels, length)"


def walk(path, layer):
    """(path, layer) of a layer and, depth first, every layer inside it ('<path>.body.0', ...)."""
    yield path, layer
    for name, sub in layer.sublayers():
        yield from walk(f"{path}.{name}", sub)


def forward_chain(layers, x, training):
    """x through layers in order; each recurrent layer gets the data steps of its input rows."""
    spans = None
    for layer in layers:
        layer.input_spans = spans
        x = layer.forward(x, training)
        spans = layer.output_spans()
    return x


def has_trainable(layer):
    """Whether the layer or a layer inside it has trainable parameters."""
    return (layer.trainable and bool(layer.param_specs())) or any(has_trainable(s) for _, s in layer.sublayers())


def lowest_trainable(layers):
    """Index of the first layer with trainable parameters (len(layers) when none has)."""
    return next((i for i, layer in enumerate(layers) if has_trainable(layer)), len(layers))


def backward_chain(layers, dy, need_dx):
    """dy back through layers (after forward_chain); the parameters' gradients land in their
    views. Without need_dx, stops at the lowest layer with trainable parameters: nothing below
    it needs a gradient, so a frozen body costs no backward."""
    lowest = 0 if need_dx else lowest_trainable(layers)
    for i in range(len(layers) - 1, lowest - 1, -1):
        dy = layers[i].backward(dy, need_dx=need_dx or i > lowest)
    return dy if need_dx else None


class Residual(Layer):
    """A residual block: body(x) + shortcut(x), the shortcut the identity when None, as
    torchvision's BasicBlock and Bottleneck add their ``identity`` (the ReLU after the sum is
    the next layer of the spine). body and shortcut are lists of layers (or their configs)."""

    def __init__(self, body, shortcut=None):
        super().__init__()
        self.body = [layer_from_config(c) if isinstance(c, dict) else c for c in body]
        self.shortcut = None if shortcut is None else \
            [layer_from_config(c) if isinstance(c, dict) else c for c in shortcut]
        if not self.body:
            raise ValueError("Residual needs at least one layer in its body")

    def sublayers(self):
        return [(f"body.{i}", layer) for i, layer in enumerate(self.body)] + \
            [(f"shortcut.{i}", layer) for i, layer in enumerate(self.shortcut or [])]

    def compute_output_shape(self, input_shape):
        shapes = {}
        for branch in ("body", "shortcut"):
            shape = tuple(input_shape)
            for i, layer in enumerate(getattr(self, branch) or []):
                try:
                    shape = layer.build(shape)
                except ValueError as e:
                    raise ValueError(f"{branch} layer {i} ({layer!r}) on input shape {shape}: {e}") from None
            shapes[branch] = shape
        if shapes["body"] != shapes["shortcut"]:
            raise ValueError(f"Residual: the body's output {shapes['body']} and the shortcut's "
                             f"{shapes['shortcut']} differ (give a shortcut that maps the input to the body's "
                             "shape, e.g. a strided 1x1 Conv2D and a BatchNorm2D)")
        return shapes["body"]

    def forward(self, x, training=False):
        y = forward_chain(self.body, x, training)
        s = x if self.shortcut is None else forward_chain(self.shortcut, x, training)
        return y + s

    def backward(self, dy, need_dx=True):
        dx = backward_chain(self.body, dy, need_dx)
        ds = dy if self.shortcut is None else backward_chain(self.shortcut, dy, need_dx)
        return dx + ds if need_dx else None

    def config(self):
        return {"type": "Residual", "body": [layer_config(layer) for layer in self.body],
                "shortcut": None if self.shortcut is None else [layer_config(layer) for layer in self.shortcut]}


class Dropout(Layer):
    """Inverted dropout: at training time zeroes a fraction ``rate`` and scales the rest by
    1/(1-rate); identity at inference. The mask comes from the generator the model hands over
    for the step (``self.rng``), so a step is reproducible from its seed."""

    def __init__(self, rate=0.5):
        super().__init__()
        self.rate = float(rate)
        if not 0.0 <= self.rate < 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1), got {rate}")
        self.rng = np.random.default_rng(0)

    def forward(self, x, training=False):
        if not training or self.rate == 0.0:
            self._mask = None
            return x
        keep = 1.0 - self.rate
        self._mask = (self.rng.random(x.shape, dtype=np.float32) < keep).astype(np.float32) / np.float32(keep)
        return x * self._mask

    def backward(self, dy, need_dx=True):
        if not need_dx:
            return None
        return dy if self._mask is None else dy * self._mask

    def output_spans(self):
        return self.input_spans

    def config(self):
        return {"type": "Dropout", "rate": self.rate}


class Embedding(Layer):
    """Token ids (N, T) in [0, vocab_size) -> vectors (N, T, dim).

    mask_zero: id 0 is padding (SequenceAssembler's and Tokenizer's pad id): each row's data
    steps run from its first to its last non-zero id, and the recurrent layers after this one
    skip the rest, so pre-padding does not drive the state and post-padding does not dilute it."""

    def __init__(self, vocab_size, dim, mask_zero=False):
        super().__init__()
        self.vocab_size, self.dim = int(vocab_size), int(dim)
        self.mask_zero = bool(mask_zero)
        if self.vocab_size < 1 or self.dim < 1:
            raise ValueError(f"Embedding needs vocab_size >= 1 and dim >= 1, got {vocab_size}, {dim}")

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 1:
            raise ValueError(f"Embedding expects token id sequences (steps,), got {input_shape}")
        return (input_shape[0], self.dim)

    def param_specs(self):
        return [("w", (self.vocab_size, self.dim))]

    def init_params(self, rng):
        return {"w": (rng.standard_normal((self.vocab_size, self.dim)) * 0.1).astype(np.float32)}

    def forward(self, x, training=False):
        ids = np.asarray(x)
        if ids.size and (not np.issubdtype(ids.dtype, np.integer) and not np.all(ids == np.floor(ids))):
            raise ValueError("Embedding input must hold integer token ids")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
            bad = np.argwhere((ids < 0) | (ids >= self.vocab_size))[0]
            raise ValueError(f"token id {ids[tuple(bad)]} at row {bad[0]} is outside [0, {self.vocab_size})")
        self._ids = ids
        return self.params["w"][ids]

    def output_spans(self):
        if not self.mask_zero:
            return None
        data = self._ids != 0
        t = data.shape[1]
        begin = np.argmax(data, axis=1)
        end = t - np.argmax(data[:, ::-1], axis=1)
        empty = ~data.any(axis=1)
        begin[empty], end[empty] = 0, 0  # no tokens: the state stays the initial one
        return np.stack([begin, end], axis=1).astype(np.int32)

    def backward(self, dy, need_dx=True):
        """Writes the gradient rows of the ids in the minibatch (self.touched, sorted) and zeroes
        only the rows the previous backward wrote: the table's other rows stay zero, and a step
        costs O(batch), not O(vocab_size) (the optimizer's lazy path updates the touched rows only)."""
        g = self.grads["w"]
        previous = getattr(self, "touched", None)
        if previous is None or getattr(self, "_zeroed_table", None) is not g:
            g[...] = 0.0
            self._zeroed_table = g
        else:
            g[previous] = 0.0
        ids = self._ids.ravel()
        # a sort groups each id's rows (stable: in batch order, so the sums do not depend on
        # the sort's algorithm) and reduceat adds each group: a fifth of np.add.at's time
        order = np.argsort(ids, kind="stable")
        sorted_ids = ids[order]
        starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
        touched = sorted_ids[starts]
        g[touched] = np.add.reduceat(dy.reshape(-1, self.dim)[order], starts, axis=0)
        self.touched = touched
        return None

    def config(self):
        cfg = {"type": "Embedding", "vocab_size": self.vocab_size, "dim": self.dim}
        if self.mask_zero:  # absent in configs saved before masking: those models keep their behaviour
            cfg["mask_zero"] = True
        return cfg


class _Recurrent(Layer):
    """Shared parts of SimpleRNN, LSTM and GRU: (N, T, D) -> (N, T, H) or the last state (N, H)."""

    gates = 1

    def __init__(self, units, return_sequences=False):
        super().__init__()
        self.units = int(units)
        if self.units < 1:
            raise ValueError(f"{type(self).__name__} units must be >= 1, got {units}")
        self.return_sequences = bool(return_sequences)

    def compute_output_shape(self, input_shape):
        if len(input_shape) != 2:
            raise ValueError(f"{type(self).__name__} expects sequences (steps, features), got {input_shape}")
        t = input_shape[0]
        return (t, self.units) if self.return_sequences else (self.units,)

    def param_specs(self):
        g, d, h = self.gates * self.units, self.input_shape[1], self.units
        return [("w_ih", (g, d)), ("w_hh", (g, h)), ("b_ih", (g,)), ("b_hh", (g,))]

    def init_params(self, rng):
        h, d = self.units, self.input_shape[1]
        w_ih = np.concatenate([init.glorot_uniform(rng, (h, d), d, h) for _ in range(self.gates)])
        w_hh = np.concatenate([init.orthogonal(rng, h) for _ in range(self.gates)])
        zeros = init.zeros(rng, (self.gates * h,))
        return {"w_ih": w_ih, "w_hh": w_hh, "b_ih": zeros, "b_hh": zeros.copy()}

    def _dhs(self, dy):
        if self.return_sequences:
            return dy
        n, h = dy.shape
        dhs = np.zeros((n, self.input_shape[0], h), dtype=np.float32)
        dhs[:, -1] = dy
        return dhs

    def _out(self, hs):
        # padding steps carry the state, so the last step holds each row's final state
        return hs if self.return_sequences else hs[:, -1]

    def output_spans(self):
        return self.input_spans if self.return_sequences else None

    def _grads(self):
        """The bound gradient views, under the kernel API's names (dw_ih, ...)."""
        return {"d" + k: v for k, v in self.grads.items()}

    def config(self):
        return {"type": type(self).__name__, "units": self.units, "return_sequences": self.return_sequences}


class SimpleRNN(_Recurrent):
    """Elman RNN. Recurrent weights start orthogonal for tanh/sigmoid and as the identity for
    ReLU (Le, Jaitly and Hinton 2015, "IRNN"): a ReLU state then starts as a running sum of its
    inputs, neither vanishing nor exploding over long sequences."""

    gates = 1

    def __init__(self, units, activation="tanh", return_sequences=False):
        super().__init__(units, return_sequences)
        if str(activation).lower() not in ("tanh", "relu", "sigmoid"):
            raise ValueError(f"SimpleRNN activation must be 'tanh', 'relu' or 'sigmoid', got {activation!r}")
        self.activation = str(activation).lower()

    def init_params(self, rng):
        p = super().init_params(rng)
        if self.activation == "relu":
            p["w_hh"] = np.eye(self.units, dtype=np.float32)
        return p

    def forward(self, x, training=False):
        p = self.params
        self._x, self._spans = x, self.input_spans
        self._hs = K.rnn_forward(x, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"], activation=self.activation,
                                 spans=self._spans)
        return self._out(self._hs)

    def backward(self, dy, need_dx=True):
        g = K.rnn_backward(self._x, self.params["w_ih"], self.params["w_hh"], self._hs, self._dhs(dy),
                           activation=self.activation, need_dx=need_dx, grads=self._grads(), spans=self._spans)
        return g["dx"]

    def config(self):
        return dict(super().config(), activation=self.activation)


class LSTM(_Recurrent):
    gates = 4

    def init_params(self, rng):
        p = super().init_params(rng)
        p["b_ih"][self.units:2 * self.units] = 1.0  # forget-gate bias 1: remember by default
        return p

    def forward(self, x, training=False):
        p = self.params
        self._x, self._spans = x, self.input_spans
        self._hs, self._cs, self._gates = K.lstm_forward(x, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                                         spans=self._spans)
        return self._out(self._hs)

    def backward(self, dy, need_dx=True):
        g = K.lstm_backward(self._x, self.params["w_ih"], self.params["w_hh"], self._hs, self._cs, self._gates,
                            self._dhs(dy), need_dx=need_dx, grads=self._grads(), spans=self._spans)
        return g["dx"]


class GRU(_Recurrent):
    gates = 3

    def forward(self, x, training=False):
        p = self.params
        self._x, self._spans = x, self.input_spans
        self._hs, self._gates, self._hn = K.gru_forward(x, p["w_ih"], p["w_hh"], p["b_ih"], p["b_hh"],
                                                        spans=self._spans)
        return self._out(self._hs)

    def backward(self, dy, need_dx=True):
        g = K.gru_backward(self._x, self.params["w_ih"], self.params["w_hh"], self._hs, self._gates, self._hn,
                           self._dhs(dy), need_dx=need_dx, grads=self._grads(), spans=self._spans)
        return g["dx"]


LAYER_TYPES = {cls.__name__: cls for cls in
               (Conv2D, MaxPool2D, Flatten, Standardize, Dense, Activation, Dropout, Embedding, SimpleRNN, LSTM, GRU,
                AvgPool2D, GlobalAvgPool2D, BatchNorm1D, BatchNorm2D, Residual)}


def layer_config(layer):
    """A layer's config, with ``trainable`` only where it is False (configs saved before frozen
    layers existed read the same)."""
    cfg = layer.config()
    if not layer.trainable:
        cfg["trainable"] = False
    return cfg


def layer_from_config(cfg):
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    trainable = cfg.pop("trainable", True)
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}; known: {sorted(LAYER_TYPES)}")
    try:
        layer = LAYER_TYPES[kind](**cfg)
    except TypeError as e:
        raise ValueError(f"bad arguments for layer {kind}: {e}") from None
    if not trainable:
        layer.trainable = False  # a container's own flag: its layers' configs carry theirs
    return layer
