"""Losses over a batch. ``loss(out, y)`` returns (sum of per-sample losses, d(sum)/d(out)), so
per-partition results add up exactly; ``predict`` maps the network output to predictions."""
import numpy as np

from spark_nn import kernels as K


class SoftmaxCrossEntropy:
    """Multiclass: out are logits (N, C); y integer class ids; optional class weights."""

    name = "softmax_cross_entropy"

    def __init__(self, class_weight=None):
        self.class_weight = None if class_weight is None else np.asarray(class_weight, dtype=np.float32)

    def __call__(self, out, y):
        row_loss, _, dout = K.softmax_cross_entropy(out, y, self.class_weight)
        return float(np.sum(row_loss, dtype=np.float64)), dout

    def output_transform(self, out):
        return K.softmax(out)

    def config(self):
        return {"type": self.name, "class_weight": None if self.class_weight is None else self.class_weight.tolist()}


class BinaryCrossEntropy:
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

    def config(self):
        return {"type": self.name}


class MeanSquaredError:
    """Per sample, the mean over features of the squared error (autoencoders, regression)."""

    name = "mean_squared_error"

    def __call__(self, out, y):
        d = out.astype(np.float64) - np.asarray(y, dtype=np.float64).reshape(out.shape)
        per = d.size // d.shape[0]
        return float(np.sum(d * d) / per), (2.0 / per * d).astype(np.float32)

    def output_transform(self, out):
        return out

    def config(self):
        return {"type": self.name}


LOSSES = {c.name: c for c in (SoftmaxCrossEntropy, BinaryCrossEntropy, MeanSquaredError)}


def loss_from_config(cfg):
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; known: {sorted(LOSSES)}")
    return LOSSES[kind](**cfg)
