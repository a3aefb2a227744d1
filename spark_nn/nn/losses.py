"""Losses over a batch. ``loss(out, y, weight=None)`` returns (sum of per-sample losses,
d(sum)/d(out)), so per-partition results add up exactly; ``weight`` (one per row, a fit's
weightCol) scales each row's loss and gradient, and metric_sums weighs its rows the same; ``output_transform`` maps the network output to
probabilities (or outputs).

A loss also says what a fit trains for, so that a distributed fit's tasks and driver ask it
rather than branch on the kind of model: ``targets(x, y)`` (what the output is compared with:
class ids, labels standardized, or the inputs themselves), ``metric_sums(out, targets)`` (per-row
sums that add up over partitions: rows predicted correctly, squared and absolute errors in the
label's units) and ``metrics(sums, n)`` (what a fit's summary reports from them: accuracy, or
RMSE and MAE).

Regression losses standardize their targets: ``shift`` and ``scale`` (per output, the label
statistics of the fit's pass) map labels to (label - shift) / scale, the network learns those,
and ``output_transform`` maps its outputs back to the label's units."""
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

    def metric_sums(self, out, targets, weight=None):
        """float64 sums over the rows of out (each times its weight) that metrics() reads, or
        None (no metric)."""
        return None

    def metrics(self, sums, n):
        """The summary's metrics of n rows from their summed metric_sums (None: no rows)."""
        return {"accuracy": None}

    def config(self):
        return {"type": self.name}


class SoftmaxCrossEntropy(Loss):
    """Multiclass: out are logits (N, C); y integer class ids; optional class weights."""

    name = "softmax_cross_entropy"
    has_accuracy = True

    def __init__(self, class_weight=None):
        self.class_weight = None if class_weight is None else np.asarray(class_weight, dtype=np.float32)

    def __call__(self, out, y, weight=None):
        row_loss, _, dout = K.softmax_cross_entropy(out, y, self.class_weight)
        if weight is not None:
            w = np.asarray(weight, dtype=np.float32)
            return float(np.sum(row_loss.astype(np.float64) * w)), dout * w[:, None]
        return float(np.sum(row_loss, dtype=np.float64)), dout

    def output_transform(self, out):
        return K.softmax(out)

    def targets(self, x, y):
        """The class ids, as int64."""
        return np.asarray(y).astype(np.int64)

    def correct(self, out, targets):
        """Rows whose largest logit is their class's."""
        return int(np.sum(np.argmax(out, axis=1) == targets))

    def metric_sums(self, out, targets, weight=None):
        if weight is None:
            return np.array([self.correct(out, targets)], dtype=np.float64)
        hit = np.argmax(out, axis=1) == targets
        return np.array([np.sum(np.asarray(weight, dtype=np.float64)[hit])])

    def metrics(self, sums, n):
        return {"accuracy": float(sums[0]) / n if sums is not None and n else None}

    def config(self):
        return {"type": self.name, "class_weight": None if self.class_weight is None else self.class_weight.tolist()}


class BinaryCrossEntropy(Loss):
    """Binary or multi-label: out are logits (N, K), y in [0, 1] of the same shape."""

    name = "binary_cross_entropy"

    def __call__(self, out, y, weight=None):
        z = out.astype(np.float64)
        y = np.asarray(y, dtype=np.float64).reshape(z.shape)
        loss = np.maximum(z, 0) - z * y + np.log1p(np.exp(-np.abs(z)))
        grad = 1.0 / (1.0 + np.exp(-z)) - y
        if weight is not None:
            w = np.asarray(weight, dtype=np.float64).reshape((-1,) + (1,) * (z.ndim - 1))
            loss, grad = loss * w, grad * w
        return float(loss.sum()), grad.astype(np.float32)

    def output_transform(self, out):
        return K.activation_forward(out, "sigmoid")


class RegressionLoss(Loss):
    """What the regression losses share: per sample, the mean over outputs of an elementwise
    error of out - targets (torch's reduction='mean' over a batch is the sum / rows).

    target: "labels" (regression) or "inputs" (an autoencoder's reconstruction).
    shift, scale: per-output label statistics; targets are (label - shift) / scale and
    output_transform returns outputs in the label's units (None: labels as they are)."""

    TARGETS = ("inputs", "labels")
    default_target = "labels"

    def __init__(self, target=None, shift=None, scale=None):
        target = self.default_target if target is None else target
        if target not in self.TARGETS:
            raise ValueError(f"{type(self).__name__}'s target must be one of {self.TARGETS}, got {target!r}")
        if (shift is None) != (scale is None):
            raise ValueError("give shift and scale together")
        self.target = target
        self.shift = None if shift is None else np.asarray(shift, dtype=np.float64).reshape(-1)
        self.scale = None if scale is None else np.asarray(scale, dtype=np.float64).reshape(-1)
        if self.scale is not None and not (self.scale > 0).all():
            raise ValueError(f"scale must be positive, got {self.scale.tolist()}")

    def elementwise(self, d):
        """(error, d(error)/d(out)) of each element of d = out - targets (float64)."""
        raise NotImplementedError

    def __call__(self, out, y, weight=None):
        d = out.astype(np.float64) - np.asarray(y, dtype=np.float64).reshape(out.shape)
        per = d.size // max(d.shape[0], 1)
        err, grad = self.elementwise(d)
        if weight is not None:
            w = np.asarray(weight, dtype=np.float64).reshape((-1,) + (1,) * (d.ndim - 1))
            err, grad = err * w, grad * w
        return float(np.sum(err) / per), (grad / per).astype(np.float32)

    def targets(self, x, y):
        if self.target == "inputs":
            return x
        t = np.asarray(y, dtype=np.float64).reshape(len(y), -1)
        if self.shift is not None:
            t = (t - self.shift) / self.scale
        return t.astype(np.float32)

    def output_transform(self, out):
        """The outputs in the label's units."""
        if self.shift is None:
            return out
        return out.astype(np.float64) * self.scale + self.shift

    def metric_sums(self, out, targets, weight=None):
        """Per row, the mean over outputs of the squared and of the absolute error in the label's
        units, summed over the rows (an autoencoder's reconstruction has none)."""
        if self.target == "inputs":
            return None
        d = out.astype(np.float64) - np.asarray(targets, dtype=np.float64).reshape(out.shape)
        if self.scale is not None:
            d = d * self.scale
        d = d.reshape(len(d), -1)
        w = 1.0 if weight is None else np.asarray(weight, dtype=np.float64)
        return np.array([np.sum(w * np.mean(d * d, axis=1)), np.sum(w * np.mean(np.abs(d), axis=1))])

    def metrics(self, sums, n):
        if self.target == "inputs":
            return {"accuracy": None}
        if sums is None or not n:
            return {"rmse": None, "mae": None}
        return {"rmse": float(np.sqrt(sums[0] / n)), "mae": float(sums[1] / n)}

    def config(self):
        cfg = {"type": self.name}
        if self.target != self.default_target:
            cfg["target"] = self.target
        if self.shift is not None:
            cfg.update(shift=self.shift.tolist(), scale=self.scale.tolist())
        return cfg


class MeanSquaredError(RegressionLoss):
    """Squared error (torch's MSELoss); its default target is the inputs (autoencoders)."""

    name = "mean_squared_error"
    default_target = "inputs"

    def elementwise(self, d):
        return d * d, 2.0 * d


class MeanAbsoluteError(RegressionLoss):
    """Absolute error (torch's L1Loss; gradient 0 where out equals the target, as torch's)."""

    name = "mean_absolute_error"

    def elementwise(self, d):
        return np.abs(d), np.sign(d)


class Huber(RegressionLoss):
    """Huber loss with threshold delta (torch's HuberLoss): squared below delta, linear above;
    in standardized units when the targets are standardized."""

    name = "huber"

    def __init__(self, delta=1.35, **kwargs):
        super().__init__(**kwargs)
        if not delta > 0:
            raise ValueError(f"Huber's delta must be > 0, got {delta!r}")
        self.delta = float(delta)

    def elementwise(self, d):
        a, delta = np.abs(d), self.delta
        small = a <= delta
        err = np.where(small, 0.5 * d * d, delta * (a - 0.5 * delta))
        return err, np.where(small, d, delta * np.sign(d))

    def config(self):
        return dict(super().config(), delta=self.delta)


LOSSES = {c.name: c for c in (SoftmaxCrossEntropy, BinaryCrossEntropy, MeanSquaredError, MeanAbsoluteError, Huber)}


def loss_from_config(cfg):
    """The loss of a config; no config (None or {}) is the default loss, softmax cross-entropy."""
    if not cfg:
        return SoftmaxCrossEntropy()
    cfg = dict(cfg)
    kind = cfg.pop("type", None)
    if kind not in LOSSES:
        raise ValueError(f"unknown loss {kind!r}; known: {sorted(LOSSES)}")
    return LOSSES[kind](**cfg)
