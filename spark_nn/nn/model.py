"""Sequential model over one flat float32 parameter vector.

All trainable weights live in ``model.params`` and their gradients in ``model.grads`` (each a
contiguous float32 array); layers hold views of them, so a training step ships and sums one
array. Frozen layers' weights live in ``model.frozen`` and non-trainable state (BatchNorm's
running statistics) in ``model.buffers``, beside it (see Sequential._layout).
``loss_and_grad`` is what the Spark driver maps over partitions: it returns sums, so partition
results add up exactly.
"""
import time
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np

from spark_nn.kernels import PRECISIONS, check_precision
from spark_nn.nn.layers import Dropout, Embedding, backward_chain, forward_chain, layer_config, layer_from_config, walk
from spark_nn.nn.losses import loss_from_config
from spark_nn.nn.onnx_export import to_onnx
from spark_nn.nn.optimizers import Optimizer, make_optimizer
from spark_nn.nn.torch_interop import TorchInterop

# Rows per prediction chunk (Sequential.inference_rows), a rule measured on these networks:
# - as many as keep the widest layer's output within CACHE_BYTES, near the cache between layers
#   (the seed CNN scores 15 % faster in fp32 and 29 % in bf16 at 41 rows than at 167, a GRU over
#   100 steps 13 % faster at 163 rows than at 655);
# - but at least a row per WEIGHT_BYTES_PER_ROW of weights: each chunk packs every layer's
#   weights (ResNet-18 scores 12 % slower at 16 rows than at 64); an Embedding table is only
#   gathered from, so it does not count;
# - and never past INFERENCE_BYTES of the widest output (memory).
INFERENCE_BYTES = 16 << 20
CACHE_BYTES = 4 << 20
WEIGHT_BYTES_PER_ROW = 512 << 10
SLOT_KINDS = ("param", "frozen", "buffer")


class Slot(NamedTuple):
    """One array of a layer in the model's flat vectors (see Sequential._layout)."""
    path: str
    name: str
    shape: tuple
    offset: int
    kind: str

    @property
    def key(self):
        return f"{self.path}.{self.name}"


class Sequential(TorchInterop):
    """Layers in order over one flat parameter vector; from_torch / to_torch / torch_state_dict
    come from spark_nn.nn.torch_interop.

    One call at a time: layers keep their inputs for the backward, and predict(precision=...)
    sets the layers' precision for its duration, so threads that predict with one model at once
    need a copy each (Sequential.from_config(model.config()) and set_state_vector). Spark's
    Python workers run one task at a time."""

    def __init__(self, layers, input_shape, loss=None, seed=0, precision="fp32"):
        self.layers = list(layers)
        if not self.layers:
            raise ValueError("a model needs at least one layer")
        self.input_shape = tuple(int(d) for d in input_shape)
        self.loss = loss if loss is not None else loss_from_config(None)
        shape = self.input_shape
        for i, layer in enumerate(self.layers):
            try:
                shape = layer.build(shape)
            except ValueError as e:
                raise ValueError(f"layer {i} ({layer!r}) on input shape {shape}: {e}") from None
        self.output_shape = shape
        self._layout()
        self.seed = int(seed)
        self.init_weights(self.seed)
        self.precision = precision

    @property
    def precision(self):
        """'fp32' (default) or 'bf16': mixed precision, the convolutions' and dense layers'
        products from operands rounded to bf16 with fp32 sums (AVX512_BF16's vdpbf16ps); the
        weights, gradients, optimizer state, BatchNorm statistics, activations' outputs and the
        loss stay fp32, as torch.autocast and Keras's mixed_float16 keep them. Depthwise and
        thin convolutions (fewer than 32 column rows, e.g. one input channel 3x3) stay fp32.
        'bf16' runs only where the CPU has AVX512_BF16: the first product says so otherwise."""
        return self._precision

    @precision.setter
    def precision(self, value):
        p = str(value).lower()
        if p not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {value!r}")
        self._precision = p
        for _, layer in self.named_layers():
            layer.precision = p

    @contextmanager
    def _precision_of(self, precision):
        """This precision for the duration (None: the model's own)."""
        if precision is None:
            yield
            return
        kept = self.precision
        self.precision = precision
        try:
            yield
        finally:
            self.precision = kept

    def _layout(self, keep=None):
        """Lays the layers' arrays out in three flat float32 vectors and binds the layers' views:
        ``params`` (trainable parameters: what the optimizer steps and a round ships and sums,
        with ``grads`` beside it), ``frozen`` (parameters of layers with trainable False: no
        gradient, no optimizer state) and ``buffers`` (non-trainable state such as BatchNorm's
        running statistics). Each slot is (path, name, shape, offset, kind): ``path`` names the
        layer ("3", or "3.body.0" inside a container), ``offset`` is into its kind's vector.
        keep: arrays by key ('<path>.<name>') to carry over (set_trainable relays the vectors)."""
        self.slots = []
        sizes = {kind: 0 for kind in SLOT_KINDS}
        for path, layer in self.named_layers():
            kind = "param" if layer.trainable else "frozen"
            for name, shape, k in [(n, s, kind) for n, s in layer.param_specs()] + \
                    [(n, s, "buffer") for n, s in layer.buffer_specs()]:
                shape = tuple(int(d) for d in shape)
                self.slots.append(Slot(path, name, shape, sizes[k], k))
                sizes[k] += int(np.prod(shape))
        self.num_params = sizes["param"]
        self.params = np.zeros(sizes["param"], dtype=np.float32)
        self.grads = np.zeros(sizes["param"], dtype=np.float32)
        self.frozen = np.zeros(sizes["frozen"], dtype=np.float32)
        self.buffers = np.zeros(sizes["buffer"], dtype=np.float32)
        for path, layer in self.named_layers():
            mine = [s for s in self.slots if s.path == path]
            layer.bind({s.name: self._view(s) for s in mine if s.kind != "buffer"},
                       {s.name: self._view(s, self.grads) for s in mine if s.kind == "param"},
                       {s.name: self._view(s) for s in mine if s.kind == "buffer"})
        for key, value in (keep or {}).items():
            self._view(self._slot(key))[...] = value

    def _vector(self, kind):
        return {"param": self.params, "frozen": self.frozen, "buffer": self.buffers}[kind]

    def _view(self, slot, flat=None):
        flat = self._vector(slot.kind) if flat is None else flat
        return flat[slot.offset:slot.offset + int(np.prod(slot.shape))].reshape(slot.shape)

    def _slot(self, key):
        return next(s for s in self.slots if s.key == key)

    def named_layers(self):
        """(path, layer) of every layer, containers' layers after the container, depth first."""
        for i, layer in enumerate(self.layers):
            yield from walk(str(i), layer)

    def set_trainable(self, trainable, layers=None):
        """Sets ``trainable`` on the spine's layers (indices or layer objects; all by default) and
        everything inside them, and lays the vectors out again (values kept): a frozen layer's
        parameters leave ``params`` for ``frozen``, so the optimizer and the rounds no longer
        see them. Returns self."""
        chosen = range(len(self.layers)) if layers is None else layers
        keep = self.weights_dict()
        for item in chosen:
            layer = self.layers[item] if isinstance(item, (int, np.integer)) else item
            for _, sub in walk("", layer):
                sub.trainable = bool(trainable)
        self._layout(keep)
        return self

    @property
    def takes_token_ids(self):
        return isinstance(self.layers[0], Embedding)

    # ------------------------------------------------------------------ weights
    def init_weights(self, seed):
        """Deterministic initialisation from seed (He/Glorot, orthogonal recurrent weights), and
        the buffers' initial values (BatchNorm: running mean 0, variance 1)."""
        rng = np.random.default_rng(seed)
        for path, layer in self.named_layers():
            values = dict(layer.init_params(rng), **layer.init_buffers())
            for slot in self.slots:
                if slot.path == path:
                    self._view(slot)[...] = values[slot.name]

    def set_params(self, flat):
        flat = np.asarray(flat)
        if flat.shape != (self.num_params,):
            raise ValueError(f"flat parameters must have shape ({self.num_params},), got {flat.shape}")
        np.copyto(self.params, flat, casting="same_kind")

    def set_buffers(self, flat):
        flat = np.asarray(flat)
        if flat.shape != self.buffers.shape:
            raise ValueError(f"flat buffers must have shape {self.buffers.shape}, got {flat.shape}")
        np.copyto(self.buffers, flat, casting="same_kind")

    def state_vector(self):
        """Every array the network computes with as one flat float32 copy: the trainable
        parameters, then the frozen ones, then the buffers (what a scoring task needs)."""
        return np.concatenate([self.params, self.frozen, self.buffers])

    def set_state_vector(self, flat):
        flat = np.asarray(flat)
        sizes = (self.params.size, self.frozen.size, self.buffers.size)
        if flat.shape != (sum(sizes),):
            raise ValueError(f"a state vector must have shape ({sum(sizes)},), got {flat.shape}")
        start = 0
        for target, size in zip((self.params, self.frozen, self.buffers), sizes):
            np.copyto(target, flat[start:start + size], casting="same_kind")
            start += size

    def weights_dict(self):
        """Named copies of every array (trainable, frozen, buffers), '<layer path>.<name>' -> array."""
        return {s.key: self._view(s).copy() for s in self.slots}

    def load_weights_dict(self, weights):
        expected = {s.key: s.shape for s in self.slots}
        missing = sorted(set(expected) - set(weights))
        extra = sorted(set(weights) - set(expected))
        if missing or extra:
            raise ValueError(f"weights do not match the architecture: missing {missing}, unexpected {extra}")
        for slot in self.slots:
            arr = np.asarray(weights[slot.key])
            if arr.shape != slot.shape:
                raise ValueError(f"weight {slot.key} has shape {arr.shape}, the architecture needs {slot.shape}")
            self._view(slot)[...] = arr

    # ------------------------------------------------------------------ data
    def check_input(self, x, name="x"):
        """x as the array the first layer takes: float32 (N,)+input_shape, or int64 token ids."""
        x = np.asarray(x)
        expected = ("N",) + self.input_shape
        if x.ndim != len(expected) or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"{name} must have shape ({', '.join(map(str, expected))}), got {x.shape}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is empty")
        if self.takes_token_ids:
            return x
        x = np.ascontiguousarray(x, dtype=np.float32)
        if not np.all(np.isfinite(x)):
            row = int(np.argwhere(~np.isfinite(x.reshape(len(x), -1)))[0][0])
            raise ValueError(f"{name} has a NaN or infinite value in row {row}")
        return x

    # ------------------------------------------------------------------ compute
    def forward(self, x, training=False):
        return forward_chain(self.layers, x, training)

    def backward(self, dout):
        """Backward from the output down to the lowest trainable layer only: a frozen body
        below it runs no backward at all (transfer learning's cost is its head's)."""
        backward_chain(self.layers, dout, need_dx=False)

    def _seed_dropout(self, rng):
        for _, layer in self.named_layers():
            if isinstance(layer, Dropout):
                layer.rng = rng

    def loss_and_grad(self, flat_params, x, y, rng=None, copy=True, weight=None):
        """(sum of per-sample losses, gradient of that sum as a flat float32 copy, count).

        ``flat_params`` None keeps the current weights; ``rng`` drives dropout; copy False
        returns ``self.grads`` itself (overwritten by the next call); ``weight``: one per row,
        scaling its loss and gradient (None: 1)."""
        if flat_params is not None:
            self.set_params(flat_params)
        self._seed_dropout(rng if rng is not None else np.random.default_rng(0))
        out = self.forward(x, training=True)
        self.last_output = out
        loss_sum, dout = self.loss(out, y) if weight is None else self.loss(out, y, weight)
        self.backward(dout)
        return loss_sum, (self.grads.copy() if copy else self.grads), int(len(x))

    # ------------------------------------------------------------------ embedding tables
    @property
    def table(self):
        """(offset, rows, width) of the first layer's Embedding table in the flat vector, or None:
        the one block of parameters whose gradient is sparse (the rows a minibatch's ids touch)."""
        if not self.takes_token_ids:
            return None
        slot = next((s for s in self.slots if s.path == "0"), None)
        if slot is None or slot.kind != "param":
            return None  # a frozen table: no gradient, nothing sparse to ship
        off = slot.offset
        return off, self.layers[0].vocab_size, self.layers[0].dim

    def active_index(self, rows):
        """Sorted flat indices of the table's rows ``rows`` (sorted ids) and of every parameter
        outside the table; None for a model without a table (every parameter is active)."""
        if self.table is None:
            return None
        off, vocab, dim = self.table
        rows = np.asarray(rows, dtype=np.int64)
        table = (off + rows[:, None] * dim + np.arange(dim, dtype=np.int64)).ravel()
        return np.concatenate([np.arange(off, dtype=np.int64), table,
                               np.arange(off + vocab * dim, self.num_params, dtype=np.int64)])

    def train_step(self, optimizer, x, y, rng=None, weight=None):
        """One optimizer step in place on ``self.params`` from the mean gradient of (x, y); returns
        (loss sum, rows). With an Embedding table the step is lazy: only the rows the minibatch
        touches (and their optimizer state) change, as torch's SparseAdam and Keras's LazyAdam
        do; the gradient passed is the active entries' only, so a step costs O(batch) in the
        table, not O(vocab_size). When a step touches every row, it is bitwise the dense step.
        Afterwards ``self.grads`` holds the step's mean gradient (dense) or the sum (lazy)."""
        loss_sum, grad, n = self.loss_and_grad(None, x, y, rng, copy=False, weight=weight)
        active = self.active_index(self.layers[0].touched) if self.table is not None else None
        if active is None:
            # in place: grad is self.grads, which the next call overwrites (a new array here is
            # one the size of the model each step, whose pages the kernel maps and zeroes anew)
            optimizer.step(self.params, np.divide(grad, np.float32(n), out=grad))
        else:
            optimizer.step(self.params, grad[active] / np.float32(n), active=active)
        return loss_sum, n

    def inference_rows(self, batch_size=None):
        """Rows per forward chunk when predicting: batch_size, or as many as keep the widest
        layer's output within CACHE_BYTES, but at least one per WEIGHT_BYTES_PER_ROW of weights
        (an Embedding table not counted); at most 1024, and at most as many as keep it within
        INFERENCE_BYTES, so scoring a large block needs bounded memory (a Spark Python worker
        may be capped: spark.executor.pyspark.memory)."""
        if batch_size:
            return int(batch_size)
        widest = max([int(np.prod(layer.output_shape)) for _, layer in self.named_layers()] + [1]) * 4
        packed = self.params.size + self.frozen.size - sum(
            layer.vocab_size * layer.dim for _, layer in self.named_layers() if isinstance(layer, Embedding))
        rows = max(CACHE_BYTES // widest, 4 * packed // WEIGHT_BYTES_PER_ROW)
        return max(1, min(1024, INFERENCE_BYTES // widest, rows))

    def predict_output(self, x, batch_size=None, precision=None):
        """Raw network output (logits for classifiers) in batches (inference_rows); precision
        None: the model's (see Sequential.precision)."""
        x = self.check_input(x)
        batch_size = self.inference_rows(batch_size)
        with self._precision_of(precision):
            outs = [self.forward(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
        return np.concatenate(outs)

    def predict_layer_output(self, x, index, batch_size=None):
        """Output of layer ``index`` (e.g. an autoencoder's code), in batches."""
        x = self.check_input(x)
        batch_size = self.inference_rows(batch_size)
        outs = []
        for i in range(0, len(x), batch_size):
            outs.append(forward_chain(self.layers[:index + 1], x[i:i + batch_size], False))
        return np.concatenate(outs) if outs else np.zeros((0,) + tuple(self.layers[index].output_shape),
                                                          dtype=np.float32)

    def predict_proba(self, x, batch_size=None, precision=None):
        return self.loss.output_transform(self.predict_output(x, batch_size, precision))

    def predict(self, x, batch_size=None, precision=None):
        return np.argmax(self.predict_output(x, batch_size, precision), axis=1)

    def evaluate(self, x, y, batch_size=None, precision=None):
        """(mean loss, accuracy or None: the loss's has_accuracy) over x, y."""
        out = self.predict_output(x, batch_size, precision)
        loss_sum, _ = self.loss(out, y)
        acc = self.loss.correct(out, self.loss.targets(x, y)) / len(out) if self.loss.has_accuracy else None
        return loss_sum / len(out), acc

    def fit(self, x, y, epochs=10, batch_size=64, optimizer="adam", lr=None, seed=None, validation_data=None,
            shuffle=True, verbose=False, precision=None, **optimizer_args):
        """In-process minibatch training (tests, single-machine use). Returns the history:
        per-epoch train loss, validation loss/accuracy when given, and seconds. precision:
        'fp32' or 'bf16' sets the model's (Sequential.precision) for this fit and after it;
        None keeps it."""
        if precision is not None:
            self.precision = precision
            check_precision(self.precision)  # where the CPU lacks bf16, before the first epoch
        x = self.check_input(x)
        y = np.asarray(y)
        if len(y) != len(x):
            raise ValueError(f"x has {len(x)} rows but y has {len(y)}")
        if not isinstance(optimizer, Optimizer):
            if lr is not None:
                optimizer_args["lr"] = lr
            optimizer = make_optimizer(optimizer, **optimizer_args)
        seed = self.seed if seed is None else int(seed)
        history = {"loss": [], "val_loss": [], "val_accuracy": [], "seconds": []}
        for epoch in range(int(epochs)):
            t0 = time.perf_counter()
            rng = np.random.default_rng([seed, epoch])
            order = rng.permutation(len(x)) if shuffle else np.arange(len(x))
            total, count = 0.0, 0
            for start in range(0, len(x), batch_size):
                idx = order[start:start + batch_size]
                loss_sum, n = self.train_step(optimizer, x[idx], y[idx], rng)
                total, count = total + loss_sum, count + n
                if not np.isfinite(loss_sum):
                    raise FloatingPointError(f"non-finite loss at epoch {epoch} step {start // batch_size}; "
                                             "lower the learning rate or set clip_norm")
            history["loss"].append(total / count)
            if validation_data is not None:
                vl, va = self.evaluate(*validation_data)
                history["val_loss"].append(vl)
                history["val_accuracy"].append(va)
            history["seconds"].append(time.perf_counter() - t0)
            if verbose:
                extra = f" val_loss {history['val_loss'][-1]:.4f} val_acc {history['val_accuracy'][-1]}" \
                    if validation_data is not None else ""
                print(f"epoch {epoch + 1}/{epochs} loss {total / count:.4f}{extra}")
        self.optimizer = optimizer
        return history

    # ------------------------------------------------------------------ spec
    def config(self):
        cfg = {"input_shape": list(self.input_shape), "layers": [layer_config(layer) for layer in self.layers],
               "loss": self.loss.config(), "seed": self.seed}
        if self.precision != "fp32":  # absent from fp32 models' configs, as saved before precision existed
            cfg["precision"] = self.precision
        return cfg

    @classmethod
    def from_config(cls, cfg):
        for key in ("input_shape", "layers"):
            if key not in cfg:
                raise ValueError(f"model config has no {key!r}")
        return cls([layer_from_config(c) for c in cfg["layers"]], cfg["input_shape"],
                   loss=loss_from_config(cfg.get("loss")), seed=cfg.get("seed", 0),
                   precision=cfg.get("precision", "fp32"))

    def to_onnx(self, path, upto=None):
        """Writes this model as ONNX (standard operators, dynamic batch axis); see
        spark_nn.nn.onnx_export. upto: export layers 0..upto only (e.g. an encoder)."""
        return to_onnx(self, path, upto=upto)

    def summary(self):
        frozen, buffers = self.frozen.size, self.buffers.size
        lines = [f"Sequential: input {self.input_shape}, {self.num_params} trainable parameters"
                 + (f", {frozen} frozen" if frozen else "") + (f", {buffers} buffer values" if buffers else "")]
        for path, layer in self.named_layers():
            n = sum(int(np.prod(s.shape)) for s in self.slots if s.path == path and s.kind != "buffer")
            depth = path.count(".")
            text = f"{type(layer).__name__}(...)" if layer.sublayers() else repr(layer)
            lines.append(f"  {'  ' * depth}{path:{6 - 2 * depth}s} {text:60s} -> {layer.output_shape}  ({n} params"
                         + ("" if layer.trainable or not n else ", frozen") + ")")
        return "\n".join(lines)
