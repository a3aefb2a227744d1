"""Checked Python entry points to the C kernels (spark_nn._kernels).

Every function validates its arguments here, before the native boundary: inputs must be float32
ndarrays (labels int32/int64) of the stated shape; a wrong dtype, rank or shape raises
ValueError naming the argument and the expected shape. Non-contiguous and Fortran-ordered
inputs are copied to C order. Optional ``out``-style gradient buffers must already be
C-contiguous float32 of the exact shape, since results are written into them.

Layouts (see csrc/nn_kernels.h): images NCHW; sequences batch-major [N, T, D]; weights in
PyTorch's layouts and gate orders (LSTM i,f,g,o; GRU r,z,n).
"""
import os
import threading

import numpy as np

from spark_nn._native import _kernels
from spark_nn.threads import ensure_blas_pinned

# the kinds the recurrent kernels take
ACTIVATIONS = {"identity": 0, "linear": 0, "sigmoid": 1, "tanh": 2, "relu": 3}
# and the elementwise-only ones (csrc/activation.c, activation_forward_ex)
ELEMENTWISE_ACTIVATIONS = dict(ACTIVATIONS, relu6=4, leaky_relu=5, silu=6, gelu=7, gelu_tanh=8)
# kinds whose derivative needs the forward input x
ACTIVATIONS_NEEDING_X = ("silu", "gelu", "gelu_tanh")
LEAKY_RELU_SLOPE = 0.01  # torch.nn.LeakyReLU's default
F32 = np.float32
_tls = threading.local()


def _activation_code(name, table=ACTIVATIONS):
    key = str(name).lower()
    if key not in table:
        raise ValueError(f"activation must be one of {sorted(table)}, got {name!r}")
    return table[key]


def _activation_alpha(key, alpha):
    if key != "leaky_relu":
        if alpha is not None:
            raise ValueError(f"alpha is leaky_relu's negative slope; activation {key!r} takes none")
        return 0.0
    alpha = LEAKY_RELU_SLOPE if alpha is None else alpha
    try:
        alpha = float(alpha)
    except (TypeError, ValueError):
        raise ValueError(f"alpha must be a number, got {alpha!r}") from None
    if not np.isfinite(alpha):
        raise ValueError(f"alpha must be finite, got {alpha!r}")
    return alpha


def _fmt(shape):
    return "(" + ", ".join(str(d) for d in shape) + ")"


def check_array(name, a, shape, dtype=F32):
    """Return ``a`` as a C-contiguous array of ``dtype`` after checking rank and shape.

    ``shape`` holds ints (must match) or strings (any size, named in the message)."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name} must be a numpy.ndarray of {np.dtype(dtype).name} with shape "
                         f"{_fmt(shape)}, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name} must have dtype {np.dtype(dtype).name}, got {a.dtype} "
                         f"(expected shape {_fmt(shape)})")
    if a.ndim != len(shape) or any(isinstance(e, int) and e != d for e, d in zip(shape, a.shape)):
        raise ValueError(f"{name} must have shape {_fmt(shape)}, got {_fmt(a.shape)}")
    if a.size == 0:
        raise ValueError(f"{name} must not be empty, got shape {_fmt(a.shape)}")
    return np.ascontiguousarray(a)


def _shape_of(a):
    """Any shape: for elementwise ops only dtype and emptiness are checked."""
    return tuple(a.shape) if isinstance(a, np.ndarray) else ("N",)


def _optional(name, a, shape):
    return None if a is None else check_array(name, a, shape)


def _out(name, a, shape):
    """An output buffer: given ones must be writable, C-contiguous, float32 and exact."""
    if a is None:
        return np.empty(shape, dtype=F32)
    if (not isinstance(a, np.ndarray) or a.dtype != F32 or tuple(a.shape) != tuple(shape)
            or not a.flags.c_contiguous or not a.flags.writeable):
        got = f"{a.dtype} {_fmt(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{name} must be a writable C-contiguous float32 array of shape "
                         f"{_fmt(shape)}, got {got}")
    return a


def _workspace(n):
    """A per-thread, grow-only float32 scratch buffer of at least n floats."""
    buf = getattr(_tls, "ws", None)
    if buf is None or buf.size < n:
        buf = np.empty(max(int(n), 1), dtype=F32)
        _tls.ws = buf
    return buf[:max(int(n), 1)]


def _pair(name, v):
    if isinstance(v, (int, np.integer)):
        v = (int(v), int(v))
    v = tuple(int(e) for e in v)
    if len(v) != 2:
        raise ValueError(f"{name} must be an int or a pair of ints, got {v!r}")
    return v


def _prepare():
    ensure_blas_pinned()


# ----------------------------------------------------------------------------- activations

def activation_forward(x, name, alpha=None):
    """y = f(x) elementwise. name: identity (linear), sigmoid, tanh, relu, relu6, leaky_relu
    (alpha: the negative slope, default 0.01), silu, gelu (exact, erf form) or gelu_tanh
    (PyTorch's approximate='tanh')."""
    kind = _activation_code(name, ELEMENTWISE_ACTIVATIONS)
    alpha = _activation_alpha(str(name).lower(), alpha)
    x = check_array("x", x, _shape_of(x))
    y = np.empty_like(x)
    if kind <= ACTIVATIONS["relu"]:
        _kernels.act_forward(kind, x, y)
    else:
        _kernels.act_forward_ex(kind, x, y, alpha)
    return y


def activation_backward(y, dy, name, x=None, alpha=None):
    """dx = dy * f'(x). Read from the forward output y, except for silu, gelu and gelu_tanh,
    which need the forward input x (y may then be None), and leaky_relu with a negative alpha
    (x needed; with x given, leaky_relu reads x)."""
    key = str(name).lower()
    kind = _activation_code(name, ELEMENTWISE_ACTIVATIONS)
    alpha = _activation_alpha(key, alpha)
    if x is None and (key in ACTIVATIONS_NEEDING_X or (key == "leaky_relu" and alpha < 0)):
        why = " with a negative alpha" if key == "leaky_relu" else ""
        raise ValueError(f"activation_backward for {key!r}{why} needs the forward input x (the derivative is "
                         f"not a function of the output y); pass x=")
    use_x = key in ACTIVATIONS_NEEDING_X or (key == "leaky_relu" and x is not None)
    if not use_x and y is None:
        raise ValueError(f"activation_backward for {key!r} needs the forward output y")
    src = check_array("x", x, _shape_of(x)) if use_x else check_array("y", y, _shape_of(y))
    dy = check_array("dy", dy, src.shape)
    dx = np.empty_like(dy)
    if kind <= ACTIVATIONS["relu"]:
        _kernels.act_backward(kind, src, dy, dx)
    else:
        _kernels.act_backward_ex(kind, src if use_x else None, None if use_x else src, dy, dx, alpha)
    return dx


# ----------------------------------------------------------------------------- dense

PRECISIONS = ("fp32", "bf16")


def check_precision(precision):
    """'fp32' or 'bf16' (lower-cased); 'bf16' raises where the CPU cannot run it (require_bf16)."""
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
    if p == "bf16" and not _kernels.get_reference():
        require_bf16()
    return p


def _bf16(precision):
    if precision == "fp32":
        return False
    return check_precision(precision) == "bf16"


def dense_forward(x, w, b=None, precision="fp32"):
    """y[N,OUT] = x[N,IN] w[OUT,IN]^T + b[OUT]. precision 'bf16': x and w rounded to bf16, fp32
    sums (the bias added in fp32)."""
    _prepare()
    w = check_array("w", w, ("OUT", "IN"))
    out_f, in_f = w.shape
    x = check_array("x", x, ("N", in_f))
    b = _optional("b", b, (out_f,))
    y = np.empty((x.shape[0], out_f), dtype=F32)
    ws = _workspace(_kernels.dense_bf16_ws_size(x.shape[0], in_f, out_f)) if _bf16(precision) else None
    _kernels.dense_fwd(x.shape[0], in_f, out_f, x, w, b, y, ws)
    return y


def dense_backward(x, w, dy, need_dx=True, has_bias=True, dw=None, db=None, precision="fp32"):
    """Returns (dx or None, dw[OUT,IN], db[OUT] or None). precision 'bf16': both products from
    bf16-rounded operands with fp32 sums; db an fp32 sum."""
    _prepare()
    w = check_array("w", w, ("OUT", "IN"))
    out_f, in_f = w.shape
    x = check_array("x", x, ("N", in_f))
    n = x.shape[0]
    dy = check_array("dy", dy, (n, out_f))
    dx = np.empty((n, in_f), dtype=F32) if need_dx else None
    dw = _out("dw", dw, (out_f, in_f))
    db = _out("db", db, (out_f,)) if has_bias else None
    ws = _workspace(_kernels.dense_bf16_ws_size(n, in_f, out_f)) if _bf16(precision) else None
    _kernels.dense_bwd(n, in_f, out_f, x, w, dy, dx, dw, db, ws)
    return dx, dw, db


# ----------------------------------------------------------------------------- softmax / loss

def softmax(logits):
    logits = check_array("logits", logits, ("N", "C"))
    probs = np.empty_like(logits)
    _kernels.softmax_fwd(logits.shape[0], logits.shape[1], logits, probs)
    return probs


def softmax_cross_entropy(logits, labels, class_weight=None, need_grad=True):
    """Per-row losses -w[y] log softmax(logits)[y], the probabilities, and the gradient of the
    summed loss with respect to the logits. Returns (row_loss[N], probs[N,C], dlogits or None)."""
    logits = check_array("logits", logits, ("N", "C"))
    n, c = logits.shape
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},), got {_fmt(labels.shape)}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    bad = np.flatnonzero((labels < 0) | (labels >= c))
    if bad.size:
        raise ValueError(f"labels must lie in [0, {c}); row {bad[0]} has label {labels[bad[0]]}")
    labels = np.ascontiguousarray(labels, dtype=np.int32)
    class_weight = _optional("class_weight", class_weight, (c,))
    probs = np.empty_like(logits)
    row_loss = np.empty(n, dtype=F32)
    dlogits = np.empty_like(logits) if need_grad else None
    _kernels.softmax_xent(n, c, logits, labels, class_weight, probs, row_loss, dlogits)
    return row_loss, probs, dlogits


# ----------------------------------------------------------------------------- conv2d

def _conv_dims(x, w, stride, padding, groups=1):
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be an integer >= 1, got {groups!r}")
    groups = int(groups)
    w = check_array("w", w, ("OC", "C/groups", "KH", "KW"))
    oc, cg, kh, kw = w.shape
    if oc % groups:
        raise ValueError(f"groups={groups} must divide the output channels: w has shape {_fmt(w.shape)}, "
                         f"{oc} output channels")
    c = cg * groups
    if isinstance(x, np.ndarray) and x.ndim == 4 and x.shape[1] % groups:
        raise ValueError(f"groups={groups} must divide the input channels: x has shape {_fmt(x.shape)}")
    x = check_array("x", x, ("N", c, "H", "W"))
    sh, sw = _pair("stride", stride)
    ph, pw = _pair("padding", padding)
    if sh < 1 or sw < 1:
        raise ValueError(f"stride must be >= 1, got {(sh, sw)}")
    if ph < 0 or pw < 0:
        raise ValueError(f"padding must be >= 0, got {(ph, pw)}")
    n, _, h, wd = x.shape
    if h + 2 * ph < kh or wd + 2 * pw < kw:
        raise ValueError(f"x of spatial size {(h, wd)} with padding {(ph, pw)} is smaller than "
                         f"the kernel {(kh, kw)}")
    dims = (n, c, h, wd, oc, kh, kw, sh, sw, ph, pw, groups)
    oh, ow = _kernels.conv2d_out_shape(dims)
    return x, w, dims, (n, oc, oh, ow)


def conv2d_output_shape(input_shape, out_channels, kernel, stride=1, padding=0):
    """(N, OC, OH, OW) of a convolution over input_shape (N, C, H, W)."""
    n, c, h, w = input_shape
    (kh, kw), (sh, sw), (ph, pw) = _pair("kernel", kernel), _pair("stride", stride), _pair("padding", padding)
    return (n, out_channels, (h + 2 * ph - kh) // sh + 1, (w + 2 * pw - kw) // sw + 1)


# a convolution with fewer column rows per group (C/groups KH KW) than this stays fp32 under
# precision 'bf16': its products are too thin to gain (conv 1->32 3x3 on 64x28x28 measured 0.57x
# fp32's speed forward in bf16, whose k pairs of one channel are half zeros) and it is memory-bound
BF16_MIN_COLUMN_ROWS = 32


def _conv_bf16(precision, dims):
    """Whether this convolution runs its products in bf16: precision 'bf16', not depthwise
    (groups == C > 1: a direct kernel, no GEMM, memory-bound) and at least BF16_MIN_COLUMN_ROWS
    column rows; the others stay fp32."""
    n, c, h, w, oc, kh, kw, sh, sw, ph, pw, groups = dims
    return _bf16(precision) and not (groups > 1 and groups == c) and c // groups * kh * kw >= BF16_MIN_COLUMN_ROWS


def conv2d_forward(x, w, b=None, stride=1, padding=0, groups=1, precision="fp32"):
    """y[N,OC,OH,OW] = conv(x[N,C,H,W], w[OC,C/groups,KH,KW]) + b[OC] (PyTorch's F.conv2d with
    groups: output channel o sees input channels [g C/groups, (g+1) C/groups), g = o // (OC/groups);
    groups == C is a depthwise convolution). precision 'bf16': x and w rounded to bf16, fp32
    sums (an implicit bf16 GEMM, csrc/conv_bf16.c); depthwise and thin convolutions stay fp32
    (_conv_bf16)."""
    _prepare()
    x, w, dims, yshape = _conv_dims(x, w, stride, padding, groups)
    b = _optional("b", b, (w.shape[0],))
    y = np.empty(yshape, dtype=F32)
    bf16 = _conv_bf16(precision, dims)
    ws = _workspace(_kernels.conv2d_ws_size(dims, _kernels.threads_now(), bf16))
    _kernels.conv2d_fwd(dims, x, w, b, y, ws, bf16)
    return y


def conv2d_backward(x, w, dy, stride=1, padding=0, need_dx=True, has_bias=True, dw=None, db=None, groups=1,
                    precision="fp32"):
    """Returns (dx[N,C,H,W] or None, dw[OC,C/groups,KH,KW], db[OC] or None). precision 'bf16':
    both products from bf16-rounded operands (x, w, dy) with fp32 sums; db an fp32 sum."""
    _prepare()
    x, w, dims, yshape = _conv_dims(x, w, stride, padding, groups)
    dy = check_array("dy", dy, yshape)
    dx = np.empty(x.shape, dtype=F32) if need_dx else None
    dw = _out("dw", dw, w.shape)
    db = _out("db", db, (w.shape[0],)) if has_bias else None
    bf16 = _conv_bf16(precision, dims)
    ws = _workspace(_kernels.conv2d_ws_size(dims, _kernels.threads_now(), bf16))
    _kernels.conv2d_bwd(dims, x, w, dy, dx, dw, db, ws, bf16)
    return dx, dw, db


def conv2d_forward_reference(x, w, b=None, stride=1, padding=0, groups=1):
    """Direct (no im2col, no BLAS) convolution with float64 accumulation, for tests."""
    x, w, dims, yshape = _conv_dims(x, w, stride, padding, groups)
    b = _optional("b", b, (w.shape[0],))
    y = np.empty(yshape, dtype=F32)
    _kernels.conv2d_direct(dims, x, w, b, y)
    return y


# ----------------------------------------------------------------------------- max-pool

def _pool_dims(shape, kernel, stride, padding):
    kh, kw = _pair("kernel", kernel)
    sh, sw = _pair("stride", kernel if stride is None else stride)
    ph, pw = _pair("padding", padding)
    n, c, h, w = shape
    if kh < 1 or kw < 1 or sh < 1 or sw < 1:
        raise ValueError(f"kernel and stride must be >= 1, got kernel {(kh, kw)} stride {(sh, sw)}")
    if ph < 0 or pw < 0 or 2 * ph > kh or 2 * pw > kw:
        raise ValueError(f"padding must be in [0, kernel/2], got {(ph, pw)} for kernel {(kh, kw)}")
    if h + 2 * ph < kh or w + 2 * pw < kw:
        raise ValueError(f"input of spatial size {(h, w)} is smaller than the pooling window {(kh, kw)}")
    dims = (n, c, h, w, kh, kw, sh, sw, ph, pw)
    oh, ow = _kernels.pool2d_out_shape(dims)
    return dims, (n, c, oh, ow)


def maxpool2d_forward(x, kernel=2, stride=None, padding=0):
    """Returns (y[N,C,OH,OW], argmax[N,C,OH,OW] int32: flat index in the input plane)."""
    x = check_array("x", x, ("N", "C", "H", "W"))
    dims, yshape = _pool_dims(x.shape, kernel, stride, padding)
    y = np.empty(yshape, dtype=F32)
    argmax = np.empty(yshape, dtype=np.int32)
    _kernels.maxpool2d_fwd(dims, x, y, argmax)
    return y, argmax


def maxpool2d_backward(dy, argmax, input_shape, kernel=2, stride=None, padding=0):
    """dx[input_shape] with dy scattered to the positions in argmax."""
    input_shape = tuple(int(d) for d in input_shape)
    if len(input_shape) != 4:
        raise ValueError(f"input_shape must be (N, C, H, W), got {input_shape}")
    dims, yshape = _pool_dims(input_shape, kernel, stride, padding)
    dy = check_array("dy", dy, yshape)
    argmax = check_array("argmax", argmax, yshape, dtype=np.int32)
    dx = np.empty(input_shape, dtype=F32)
    _kernels.maxpool2d_bwd(dims, dy, argmax, dx)
    return dx


def avgpool2d_forward(x, kernel=2, stride=None, padding=0, count_include_pad=True):
    """y[N,C,OH,OW]: means over the windows of x[N,C,H,W] (PyTorch's AvgPool2d, floor output
    size; stride None: the kernel). count_include_pad: padding counts as zeros in the divisor
    (KH*KW), else only the window's inputs inside the image count."""
    x = check_array("x", x, ("N", "C", "H", "W"))
    dims, yshape = _pool_dims(x.shape, kernel, stride, padding)
    y = np.empty(yshape, dtype=F32)
    _kernels.avgpool2d_fwd(dims, bool(count_include_pad), x, y)
    return y


def _input_shape4(input_shape):
    try:
        input_shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        raise ValueError(f"input_shape must be (N, C, H, W), got {input_shape!r}") from None
    if len(input_shape) != 4 or min(input_shape) < 1:
        raise ValueError(f"input_shape must be (N, C, H, W) of positive sizes, got {input_shape}")
    return input_shape


def avgpool2d_backward(dy, input_shape, kernel=2, stride=None, padding=0, count_include_pad=True):
    """dx[input_shape]: each dy spread evenly (dy / divisor) over its window."""
    input_shape = _input_shape4(input_shape)
    dims, yshape = _pool_dims(input_shape, kernel, stride, padding)
    dy = check_array("dy", dy, yshape)
    dx = np.empty(input_shape, dtype=F32)
    _kernels.avgpool2d_bwd(dims, bool(count_include_pad), dy, dx)
    return dx


def global_avgpool_forward(x):
    """y[N,C]: the mean of each plane of x[N,C,H,W] (AdaptiveAvgPool2d(1) and flatten), summed
    in a fixed order: the same bits for any thread count."""
    x = check_array("x", x, ("N", "C", "H", "W"))
    n, c, h, w = x.shape
    y = np.empty((n, c), dtype=F32)
    _kernels.global_avgpool_fwd(n, c, h, w, x, y)
    return y


def global_avgpool_backward(dy, input_shape):
    """dx[N,C,H,W] = dy[N,C] / (H W) over each plane."""
    n, c, h, w = _input_shape4(input_shape)
    dy = check_array("dy", dy, (n, c))
    dx = np.empty((n, c, h, w), dtype=F32)
    _kernels.global_avgpool_bwd(n, c, h, w, dy, dx)
    return dx


# ----------------------------------------------------------------------------- batch norm

def _bn_input(name, x, c=None):
    """x as a C-contiguous float32 (N, C) or (N, C, H, W) array, and its (N, C, S), S = H*W or 1."""
    if isinstance(x, np.ndarray) and x.ndim not in (2, 4):
        raise ValueError(f"{name} must have shape (N, C) or (N, C, H, W), got {_fmt(x.shape)}")
    ch = "C" if c is None else c
    shape = ("N", ch) if isinstance(x, np.ndarray) and x.ndim == 2 else ("N", ch, "H", "W")
    x = check_array(name, x, shape)
    n, c = x.shape[:2]
    return x, (n, c, x.size // (n * c))


def _bn_param(name, a, c, fill):
    """gamma / beta: (C,) float32, None for PyTorch's affine=False (gamma 1, beta 0)."""
    return np.full(c, fill, dtype=F32) if a is None else check_array(name, a, (c,))


def _bn_running(name, a, c):
    """A running statistic updated in place: a writable float32 (C,) array (a view into a bigger
    flat vector is fine; a strided one is updated through a contiguous copy)."""
    if (not isinstance(a, np.ndarray) or a.dtype != F32 or a.shape != (c,)):
        got = f"{a.dtype} {_fmt(a.shape)}" if isinstance(a, np.ndarray) else type(a).__name__
        raise ValueError(f"{name} must be a float32 array of shape {_fmt((c,))} (updated in place in training), "
                         f"got {got}")
    if not a.flags.writeable:
        raise ValueError(f"{name} must be writable: training updates it in place")
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def _bn_scalars(momentum, eps):
    momentum, eps = float(momentum), float(eps)
    if not np.isfinite(momentum):
        raise ValueError(f"momentum must be a finite number, got {momentum}")
    if not (np.isfinite(eps) and eps >= 0.0):
        raise ValueError(f"eps must be a finite number >= 0, got {eps}")
    return momentum, eps


def batchnorm_forward(x, gamma, beta, running_mean, running_var, training, momentum=0.1, eps=1e-5):
    """Batch normalization of x (N, C) or (N, C, H, W) per channel C (csrc/batchnorm.c).

    Training: batch mean and biased variance over N*H*W; running_mean / running_var ((C,)
    float32, or None: not tracked) are updated IN PLACE as PyTorch does (momentum, unbiased
    variance; running_var is left unchanged when N*H*W == 1, where PyTorch raises). Eval:
    normalizes with the running statistics, which are only read. gamma / beta None: 1 / 0.
    Returns (y like x, mean (C,), invstd (C,)), the statistics used (for batchnorm_backward)."""
    x, (n, c, s) = _bn_input("x", x)
    gamma, beta = _bn_param("gamma", gamma, c, 1.0), _bn_param("beta", beta, c, 0.0)
    momentum, eps = _bn_scalars(momentum, eps)
    training = bool(training)
    if training:
        rm = None if running_mean is None else _bn_running("running_mean", running_mean, c)
        rv = None if running_var is None else _bn_running("running_var", running_var, c)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("eval mode needs running_mean and running_var")
        rm, rv = check_array("running_mean", running_mean, (c,)), check_array("running_var", running_var, (c,))
    y = np.empty_like(x)
    mean = np.empty(c, dtype=F32)
    invstd = np.empty(c, dtype=F32)
    _kernels.batchnorm_fwd(training, n, c, s, x, gamma, beta, rm, rv, momentum, eps, y, mean, invstd)
    if training:  # strided running statistics were updated through a copy
        if rm is not None and rm is not running_mean:
            running_mean[...] = rm
        if rv is not None and rv is not running_var:
            running_var[...] = rv
    return y, mean, invstd


def batchnorm_backward(x, gamma, mean, invstd, dy, training, need_dx=True, dgamma=None, dbeta=None,
                       need_dparams=True):
    """Gradients of batchnorm_forward from its saved mean / invstd: training, through the batch
    statistics; eval, with them frozen (dx = dy gamma invstd). dgamma / dbeta: optional
    preallocated writable C-contiguous float32 (C,) outputs, written (not accumulated);
    need_dparams=False computes neither, need_dx=False no dx.
    Returns (dx or None, dgamma or None, dbeta or None)."""
    x, (n, c, s) = _bn_input("x", x)
    gamma = _bn_param("gamma", gamma, c, 1.0)
    mean, invstd = check_array("mean", mean, (c,)), check_array("invstd", invstd, (c,))
    dy = check_array("dy", dy, x.shape)
    dx = np.empty_like(x) if need_dx else None
    if need_dparams:
        dgamma, dbeta = _out("dgamma", dgamma, (c,)), _out("dbeta", dbeta, (c,))
    else:
        dgamma = dbeta = None
    if dx is not None or dgamma is not None:
        _kernels.batchnorm_bwd(bool(training), n, c, s, x, gamma, mean, invstd, dy, dx, dgamma, dbeta)
    return dx, dgamma, dbeta


# ----------------------------------------------------------------------------- recurrent

def _seq_dims(x, w_ih, w_hh, gates):
    w_ih = check_array("w_ih", w_ih, (f"{gates}*H" if gates > 1 else "H", "D"))
    if w_ih.shape[0] % gates:
        raise ValueError(f"w_ih must have shape ({gates}*H, D), got {_fmt(w_ih.shape)}")
    g, d = w_ih.shape
    h = g // gates
    w_hh = check_array("w_hh", w_hh, (g, h))
    x = check_array("x", x, ("N", "T", d))
    return x, w_ih, w_hh, x.shape[0], x.shape[1], d, h, g


def check_spans(spans, n, t):
    """spans[N,2] int32 of each row's data steps [begin, end), or None (every step is data).
    Steps outside a row's span are padding: the recurrent kernels carry the state through them
    and pass no gradient to the weights or x from them (PyTorch's packed sequences)."""
    if spans is None:
        return None
    a = np.asarray(spans)
    if a.shape != (n, 2) or not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"spans must be an integer array of shape ({n}, 2), got {a.dtype} {_fmt(a.shape)}")
    bad = np.flatnonzero((a[:, 0] < 0) | (a[:, 0] > a[:, 1]) | (a[:, 1] > t))
    if bad.size:
        raise ValueError(f"spans row {bad[0]} is {a[bad[0]].tolist()}; each must be [begin, end) "
                         f"with 0 <= begin <= end <= {t}")
    return np.ascontiguousarray(a, dtype=np.int32)


def rnn_forward(x, w_ih, w_hh, b_ih, b_hh, h0=None, activation="tanh", spans=None):
    """hs[N,T,H]: every hidden state of an Elman RNN over x[N,T,D] (spans: see check_spans)."""
    _prepare()
    act = _activation_code(activation)
    x, w_ih, w_hh, n, t, d, h, g = _seq_dims(x, w_ih, w_hh, 1)
    b_ih, b_hh = check_array("b_ih", b_ih, (g,)), check_array("b_hh", b_hh, (g,))
    h0 = _optional("h0", h0, (n, h))
    spans = check_spans(spans, n, t)
    hs = np.empty((n, t, h), dtype=F32)
    ws = _workspace(_kernels.rnn_ws_size(n, t, d, h)[0])
    _kernels.rnn_fwd(act, n, t, d, h, x, spans, h0, w_ih, w_hh, b_ih, b_hh, hs, ws)
    return hs


def rnn_backward(x, w_ih, w_hh, hs, dhs, h0=None, activation="tanh", need_dx=True, grads=None, spans=None):
    """Returns dict dx, dh0, dw_ih, dw_hh, db_ih, db_hh; ``grads`` may hold output buffers for
    the four weight gradients."""
    _prepare()
    act = _activation_code(activation)
    x, w_ih, w_hh, n, t, d, h, g = _seq_dims(x, w_ih, w_hh, 1)
    h0 = _optional("h0", h0, (n, h))
    hs = check_array("hs", hs, (n, t, h))
    dhs = check_array("dhs", dhs, (n, t, h))
    spans = check_spans(spans, n, t)
    out = _grad_buffers(grads, g, d, h, n, t, need_dx, True)
    ws = _workspace(_kernels.rnn_ws_size(n, t, d, h)[1])
    _kernels.rnn_bwd(act, n, t, d, h, x, spans, h0, w_ih, w_hh, hs, dhs, out["dx"], out["dh0"],
                     out["dw_ih"], out["dw_hh"], out["db_ih"], out["db_hh"], ws)
    return out


def _grad_buffers(grads, g, d, h, n, t, need_dx, need_dh0):
    grads = grads or {}
    out = {k: _out(k, grads.get(k), s) for k, s in
           (("dw_ih", (g, d)), ("dw_hh", (g, h)), ("db_ih", (g,)), ("db_hh", (g,)))}
    out["dx"] = np.empty((n, t, d), dtype=F32) if need_dx else None
    out["dh0"] = np.empty((n, h), dtype=F32) if need_dh0 else None
    return out


def lstm_forward(x, w_ih, w_hh, b_ih, b_hh, h0=None, c0=None, spans=None):
    """Returns (hs[N,T,H], cs[N,T,H], gates[N,T,4H]) of an LSTM over x[N,T,D]."""
    _prepare()
    x, w_ih, w_hh, n, t, d, h, g = _seq_dims(x, w_ih, w_hh, 4)
    b_ih, b_hh = check_array("b_ih", b_ih, (g,)), check_array("b_hh", b_hh, (g,))
    h0, c0 = _optional("h0", h0, (n, h)), _optional("c0", c0, (n, h))
    hs = np.empty((n, t, h), dtype=F32)
    cs = np.empty((n, t, h), dtype=F32)
    gates = np.empty((n, t, g), dtype=F32)
    spans = check_spans(spans, n, t)
    ws = _workspace(_kernels.lstm_ws_size(n, t, d, h)[0])
    _kernels.lstm_fwd(n, t, d, h, x, spans, h0, c0, w_ih, w_hh, b_ih, b_hh, hs, cs, gates, ws)
    return hs, cs, gates


def lstm_backward(x, w_ih, w_hh, hs, cs, gates, dhs, h0=None, c0=None, dcT=None, need_dx=True,
                  grads=None, spans=None):
    """Returns dict dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh."""
    _prepare()
    x, w_ih, w_hh, n, t, d, h, g = _seq_dims(x, w_ih, w_hh, 4)
    h0, c0 = _optional("h0", h0, (n, h)), _optional("c0", c0, (n, h))
    hs, cs = check_array("hs", hs, (n, t, h)), check_array("cs", cs, (n, t, h))
    gates = check_array("gates", gates, (n, t, g))
    dhs = check_array("dhs", dhs, (n, t, h))
    dcT = _optional("dcT", dcT, (n, h))
    out = _grad_buffers(grads, g, d, h, n, t, need_dx, True)
    out["dc0"] = np.empty((n, h), dtype=F32)
    spans = check_spans(spans, n, t)
    ws = _workspace(_kernels.lstm_ws_size(n, t, d, h)[1])
    _kernels.lstm_bwd(n, t, d, h, x, spans, h0, c0, w_ih, w_hh, hs, cs, gates, dhs, dcT, out["dx"],
                      out["dh0"], out["dc0"], out["dw_ih"], out["dw_hh"], out["db_ih"],
                      out["db_hh"], ws)
    return out


def gru_forward(x, w_ih, w_hh, b_ih, b_hh, h0=None, spans=None):
    """Returns (hs[N,T,H], gates[N,T,3H], hn[N,T,H]) of a GRU over x[N,T,D]."""
    _prepare()
    x, w_ih, w_hh, n, t, d, h, g = _seq_dims(x, w_ih, w_hh, 3)
    b_ih, b_hh = check_array("b_ih", b_ih, (g,)), check_array("b_hh", b_hh, (g,))
    h0 = _optional("h0", h0, (n, h))
    hs = np.empty((n, t, h), dtype=F32)
    gates = np.empty((n, t, g), dtype=F32)
    hn = np.empty((n, t, h), dtype=F32)
    spans = check_spans(spans, n, t)
    ws = _workspace(_kernels.gru_ws_size(n, t, d, h)[0])
    _kernels.gru_fwd(n, t, d, h, x, spans, h0, w_ih, w_hh, b_ih, b_hh, hs, gates, hn, ws)
    return hs, gates, hn


def gru_backward(x, w_ih, w_hh, hs, gates, hn, dhs, h0=None, need_dx=True, grads=None, spans=None):
    """Returns dict dx, dh0, dw_ih, dw_hh, db_ih, db_hh."""
    _prepare()
    x, w_ih, w_hh, n, t, d, h, g = _seq_dims(x, w_ih, w_hh, 3)
    h0 = _optional("h0", h0, (n, h))
    hs, hn = check_array("hs", hs, (n, t, h)), check_array("hn", hn, (n, t, h))
    gates = check_array("gates", gates, (n, t, g))
    dhs = check_array("dhs", dhs, (n, t, h))
    out = _grad_buffers(grads, g, d, h, n, t, need_dx, True)
    spans = check_spans(spans, n, t)
    ws = _workspace(_kernels.gru_ws_size(n, t, d, h)[1])
    _kernels.gru_bwd(n, t, d, h, x, spans, h0, w_ih, w_hh, hs, gates, hn, dhs, out["dx"], out["dh0"],
                     out["dw_ih"], out["dw_hh"], out["db_ih"], out["db_hh"], ws)
    return out


# ----------------------------------------------------------------------------- optimizer

def sum_of_squares(x):
    """Sum of x's squares in double, over fixed blocks (the same bits at any thread count)."""
    x = check_array("x", x, _shape_of(x))
    return _kernels.sum_sq(x)


def gather_scaled(src, rows=None, scale=255.0):
    """float32 rows of a uint8 block, divided by scale (csrc/convert.c): src[rows] / scale,
    shape (len(rows),) + src.shape[1:]; rows None: every row. src may be a memory map (only
    the rows read are paged in); rows must be in [0, len(src))."""
    if not isinstance(src, np.ndarray) or src.dtype != np.uint8 or src.ndim < 1:
        got = f"{src.dtype} {_fmt(src.shape)}" if isinstance(src, np.ndarray) else type(src).__name__
        raise ValueError(f"src must be a uint8 numpy array with a row axis, got {got}")
    src = np.ascontiguousarray(src)
    if rows is not None:
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        if rows.ndim != 1:
            raise ValueError(f"rows must be 1-D, got shape {_fmt(rows.shape)}")
        if len(rows) and (rows.min() < 0 or rows.max() >= len(src)):
            raise ValueError(f"rows must lie in [0, {len(src)}), got {rows.min()}..{rows.max()}")
    m = len(src) if rows is None else len(rows)
    out = np.empty((m,) + src.shape[1:], dtype=F32)
    if m and out.size:
        _kernels.gather_u8(src, rows, float(scale), out)
    return out


def adam_update(params, grad, m, v, step, beta1, beta2, eps, l2, decay):
    """One Adam/AdamW step in place on params, m and v (csrc/optim.c): step is the bias-corrected
    learning rate, l2 the coupled weight decay, decay the decoupled factor (1 for none)."""
    shape = _shape_of(params)
    for name, a in (("params", params), ("m", m), ("v", v)):
        _out(name, a, shape)
    grad = check_array("grad", grad, shape)
    _kernels.adam_upd(params, grad, m, v, step, beta1, beta2, eps, l2, decay)


def adam_update_at(params, grad, m, v, index, step, beta1, beta2, eps, l2, decay):
    """adam_update at the entries ``index`` of params, m and v only (lazy Adam): index sorted,
    distinct int64 flat positions, grad[i] the gradient at index[i]; the same bits per entry."""
    shape = _shape_of(params)
    for name, a in (("params", params), ("m", m), ("v", v)):
        _out(name, a, shape)
    index = np.asarray(index)
    if index.dtype != np.int64 or index.ndim != 1 or not index.flags.c_contiguous:
        raise ValueError(f"index must be a C-contiguous 1-D int64 array, got {index.dtype} {_fmt(index.shape)}")
    if index.size and (index[0] < 0 or index[-1] >= params.size or np.any(index[1:] <= index[:-1])):
        raise ValueError(f"index must be sorted, distinct positions in [0, {params.size})")
    grad = check_array("grad", grad, index.shape)
    _kernels.adam_upd_at(index, params, grad, m, v, step, beta1, beta2, eps, l2, decay)


# ----------------------------------------------------------------------------- bf16

def bf16_available():
    """Whether the bf16 kernels run here: the CPU has AVX512_BF16 and SPARK_NN_ISA does not cap
    it ('avx512bf16' or unset keeps it; 'avx512' and below leave it out)."""
    return bool(_kernels.bf16_level())


def require_bf16(what="precision='bf16'"):
    """An error naming the missing instruction when the bf16 kernels cannot run here."""
    if not bf16_available():
        raise RuntimeError(f"{what} needs the AVX512_BF16 instructions (vdpbf16ps: Intel Cooper Lake, Sapphire "
                           "Rapids and later, AMD Zen 4 and later), which this CPU lacks or SPARK_NN_ISA caps "
                           f"(it is {os.environ.get('SPARK_NN_ISA', 'unset')!r}); use precision='fp32'")


def round_bf16(x):
    """float32 x rounded to bf16 (nearest even) and back to float32, as the bf16 kernels round
    their operands: a reference for tests."""
    u = np.ascontiguousarray(x, dtype=F32).view(np.uint32).astype(np.uint64)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    r = np.where(nan, (u & 0xFFFF0000) | 0x00400000, r)
    return r.astype(np.uint32).view(F32).reshape(np.shape(x))


def gemm_bf16(a, b, trans_b=False, out=None, accumulate=False):
    """a @ b (b.T when trans_b) with both operands rounded to bf16 and fp32 sums (csrc/gemm_bf16.c,
    AVX512_BF16's vdpbf16ps). a (M, K), b (K, N) or (N, K); out (M, N) float32 to write (or add
    to, accumulate) or None. Raises where the CPU lacks the instructions (no fp32 fallback),
    except in the scalar reference mode (spark_nn._kernels.set_reference), which runs anywhere."""
    a = check_array("a", a, ("M", "K"))
    b = check_array("b", b, ("N", "K") if trans_b else ("K", "N"))
    m, k = a.shape
    kb, n = (b.shape[1], b.shape[0]) if trans_b else b.shape
    if kb != k:
        raise ValueError(f"a has {k} columns but b has {kb} {'columns' if trans_b else 'rows'}")
    if out is None:
        out = np.zeros((m, n), dtype=F32) if accumulate else np.empty((m, n), dtype=F32)
    else:
        out = check_array("out", out, ("M", "N"))
        if out.shape != (m, n):
            raise ValueError(f"out must have shape ({m}, {n}), got {_fmt(out.shape)}")
    if not _kernels.get_reference():
        require_bf16("gemm_bf16")
    _kernels.gemm_bf16(a, b, out, int(bool(trans_b)), int(bool(accumulate)))
    return out
