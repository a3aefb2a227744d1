"""Losses over a batch. ``loss(out, y)`` returns (sum of per-sample losses, d(sum)/d(out)), so
per-partition results add up exactly; ``output_transform`` maps the network output to
probabilities (or outputs).

A loss also says what a fit trains for, so that a distributed fit's tasks and driver ask it
rather than branch on the kind of model: ``targets(x, y)`` (what the output is compared with:
labels, or the inputs themselves), ``correct(out, targets)`` (how many rows it predicts
correctly) and ``has_accuracy`` (whether that count means anything; else it is 0)."""
import numpy as np

from spark_nn import kernels as K


class Loss:
    """What every loss shares: targets are the labels as given, and there is no accuracy."""

    name = None
    has_accuracy = False

    def targets(self, x, y):
        """What the output of the rows x (with labels y) is compared with."""
        return y

    def correct(self, out, targets):
        """Rows of out predicted correctly (0 for a loss without accuracy)."""
        return 0

    def config(self):
        return {"type": self.name}


class SoftmaxCrossEntropy(Loss):
    """Multiclass: out are logits (N, C); y integer class ids; optional class weights."""

    name = "softmax_cross_entropy"
    has_accuracy = True

    def __init__(self, class_weight=None):
        self.class_weight = None if class_weight is None else np.asarray(class_weight, dtype=np.float32)

    def __call__(self, out, y):
        row_loss, _, dout = K.softmax_cross_entropy(out, y, self.class_weight)
        return float(np.sum(row_loss, dtype=np.float64)), dout

    def output_transform(self, out):
        return K.softmax(out)

    def targets(self, x, y):
        """The class ids, as int64."""
        return np.asarray(y).astype(np.int64)

    def correct(self, out, targets):
        """Rows whose largest logit is their class's."""
        return int(np.sum(np.argmax(out, axis=1) == targets))

    def config(self):
        return {"type": self.name, "class_weight": None if self.class_weight is None else self.class_weight.tolist()}


class BinaryCrossEntropy(Loss):
    """Binary or multi-label: out are logits (N, K), y in [0, 1] of the same shape."""

    name = "binary_cross_entropy"

    def __call__(self, out, y):
        z = out.astype(np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(z.shape)
        loss = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        p = 1.0 / (1.0 + np.exp(-z))
        return float(loss.sum()), (p - y).astype(np.float32)

    def output_transform(self, out):
        return K.activation_forward(out, "sigmoid")


class MeanSquaredError(Loss):
    """Per sample, the mean over features of the squared error (autoencoders, regression).

    target: what a distributed fit compares the output with: "inputs" (an autoencoder's
    reconstruction, the default) or "labels"."""

    name = "mean_squared_error"
    TARGETS = ("inputs", "labels")

    def __init__(self, target="inputs"):
        if target not in self.TARGETS:
            raise ValueError(f"MeanSquaredError's target must be one of {self.TARGETS}, got {target!r}")
        self.target = target

    def __call__(self, out, y):
        d = out.astype(np.float64) - np.asarray(y, dtype=np.float64).reshape(out.shape)
        per = d.size // d.shape[0]
        return float(np.sum(d * d) / per), (2.0 / per * d).astype(np.float32)

    def output_transform(self, out):
        return out

    def targets(self, x, y):
        return x if self.target == "inputs" else y

    def config(self):
        return {"type": self.name} if self.target == "inputs" else {"type": self.name, "target": self.target}


LOSSES = {c.name: c for c in (SoftmaxCrossEntropy, BinaryCrossEntropy, MeanSquaredError)}


def loss_from_config(cfg):
    """The loss of a config; no config (None or {}) is the default loss, softmax cross-entropy."""
    if not cfg:
        return SoftmaxCrossEntropy()
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; known: {sorted(LOSSES)}")
    return LOSSES[kind](**cfg)
