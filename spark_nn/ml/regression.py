"""CNN, RNN and any-network regressors as Spark ML estimators, with pyspark.ml's regressor
conventions:

    rnn = RNNRegressor(layers=[32], cellType="lstm", featuresCol="window", labelCol="target")
    model = rnn.fit(train); predictions = model.transform(test)   # a double column "prediction"

``labelCol`` is a numeric column (one target per row), or a vector / array of numbers (several
targets at once; ``prediction`` is then a vector). ``loss``: 'squaredError' (default),
'absoluteError' or 'huber' (threshold ``epsilon``). The targets are standardized inside the fit
by the training labels' mean and standard deviation (from the pass that writes the training
blocks, no other job), the network learns those, and predictions come back in the label's units.
The summary reports per-epoch RMSE and MAE (and their validation values) in the label's units.
A regressor's round is a classifier's round with another loss (spark_nn.nn.losses).
"""
import functools

import numpy as np
import pyarrow as pa
from pyspark import keyword_only
from pyspark.sql import functions as F

from spark_nn.ml.base import NeuralEstimator, NeuralModel, list_column
from spark_nn.ml.columns import target_label_size
from spark_nn.ml.params import (CNNRegressorParams, NetworkRegressionModelParams, NetworkRegressorParams,
                                RNNRegressorParams)
from spark_nn.ml.templates import CNNTemplate, NetworkTemplate, RNNTemplate
from spark_nn.nn.losses import Huber, MeanAbsoluteError, MeanSquaredError

_LOSSES = {"squaredError": MeanSquaredError, "absoluteError": MeanAbsoluteError, "huber": Huber}


def regression_outputs(model, x, flat=True):
    """The prediction column (doubles; flat False: lists of the targets) of a block, in the
    label's units."""
    k = int(model.output_shape[0])
    pred = model.predict_proba(x) if len(x) else np.zeros((0, k))
    pred = np.asarray(pred, dtype=np.float64).reshape(len(x), k)
    return [pa.array(pred[:, 0]) if flat else list_column(pred)]


class _RegressionModel(NeuralModel):
    """A fitted regressor: ``prediction`` in the label's units (a double, or a vector when the
    labels were vectors or arrays)."""

    @property
    def numOutputs(self):
        """Targets predicted per row."""
        return int(self._net.output_shape[0])

    @property
    def targetScaling(self):
        """(mean, standard deviation) per target that the fit standardized the labels by."""
        loss = self._net.loss
        return (None, None) if loss.shift is None else (loss.shift.tolist(), loss.scale.tolist())

    def _output_columns(self):
        return [(self.getOrDefault(self.predictionCol), "double" if self._labelSize is None else "vector")]

    def _outputs_fn(self):
        return functools.partial(regression_outputs, flat=self._labelSize is None)

    def predict(self, x):
        """Predictions in the label's units for a numpy block shaped like the network input:
        (rows,) for a numeric label, (rows, targets) for vector/array labels."""
        with self._scoring_precision():
            pred = np.asarray(self._net.predict_proba(x), dtype=np.float64)
        return pred[:, 0] if self._labelSize is None else pred

    def evaluate(self, dataset):
        """Scores a labelled DataFrame and returns rmse, mse, mae and r2 as a dict: pyspark's
        RegressionEvaluator's for a numeric label; over every target together (r2 against
        each target's own mean) for vector/array labels."""
        with self._scored(dataset) as scored:
            label, pred = self.labelColumn(), self.getOrDefault(self.predictionCol)
            if self._labelSize is None:
                from pyspark.ml.evaluation import RegressionEvaluator

                ev = RegressionEvaluator(labelCol=label, predictionCol=pred)
                return {m: ev.evaluate(scored, {ev.metricName: m}) for m in ("rmse", "mse", "mae", "r2")}
            return _pooled_metrics(scored, label, pred, self._labelSize)

    def _extraMetadata(self):
        return dict(super()._extraMetadata(), labelSize=self._labelSize)

    def _loadExtra(self, metadata):
        self._labelSize = metadata.get("labelSize")


def _pooled_metrics(df, label, pred, k):
    """rmse, mse, mae and r2 of vector/array labels against vector predictions, over all targets
    (one aggregation job)."""
    from pyspark.ml.functions import vector_to_array

    y = vector_to_array(F.col(label)) if dict(df.dtypes)[label] == "vector" else F.col(label).cast("array<double>")
    p = vector_to_array(F.col(pred))
    aggs = [F.count(F.lit(1)).alias("n")]
    for j in range(k):
        d = p[j] - y[j]
        aggs += [F.sum(d * d).alias(f"se{j}"), F.sum(F.abs(d)).alias(f"ae{j}"), F.sum(y[j]).alias(f"s{j}"),
                 F.sum(y[j] * y[j]).alias(f"ss{j}")]
    r = df.agg(*aggs).first()
    n = r["n"]
    se = sum(r[f"se{j}"] for j in range(k))
    ae = sum(r[f"ae{j}"] for j in range(k))
    tot = sum(r[f"ss{j}"] - r[f"s{j}"] ** 2 / n for j in range(k))
    mse = se / (n * k)
    return {"rmse": float(np.sqrt(mse)), "mse": float(mse), "mae": float(ae / (n * k)),
            "r2": float(1 - se / tot) if tot > 0 else float("nan")}


class _Regressor(NeuralEstimator):
    """What the regressors share: the label is a number or a vector/array of numbers, the loss
    comes from the loss param, and its targets are standardized by the pass's label statistics."""

    def _regression_loss(self, shift=None, scale=None):
        kind = self.getOrDefault(self.loss)
        kwargs = dict(target="labels", shift=shift, scale=scale)
        if kind == "huber":
            kwargs["delta"] = self.getOrDefault(self.epsilon)
        return _LOSSES[kind](**kwargs)

    def _head_loss(self, current):
        return self._regression_loss()

    def _check_labels(self, df, col):
        return target_label_size(df, col)

    def _known_outputs(self, df, col, spec, label_size):
        return label_size or 1

    def _standardized(self, spec):
        if not (self.hasParam("standardization") and self.getOrDefault(self.standardization)) or \
                spec["kind"] not in ("vector", "array", "seq"):
            return spec
        axis = 0 if len(spec["shape"]) == 3 else -1  # an image's channels; a step's features
        features = spec["shape"][axis]
        return dict(spec, standardize={"mean": [0.0] * features, "std": [1.0] * features, "axis": axis})

    def _outputs_of(self, df, col, stats, spec, label_size):
        if stats["rows"] == 0:
            raise ValueError("the DataFrame is empty: there is nothing to train on")
        if not stats["count"]:
            raise ValueError(f"label column {col!r} has no valid value left to train on")
        mean, std = _mean_std(stats)
        if "standardize" in spec:
            spec["standardize"] = dict(zip(("mean", "std"), map(np.ndarray.tolist, _mean_std(stats["features"]))),
                                       axis=spec["standardize"]["axis"])
        return label_size or 1, None, self._regression_loss(mean, std)


def _mean_std(moments):
    """(mean, standard deviation) of each column from the pass's moments; a constant column's
    standard deviation is taken as 1 (it is only shifted)."""
    mean = np.asarray(moments["mean"], dtype=np.float64)
    std = np.sqrt(np.asarray(moments["m2"], dtype=np.float64) / moments["count"])
    return mean, np.where((std > 0) & np.isfinite(std), std, 1.0)


class CNNRegressionModel(_RegressionModel, CNNRegressorParams):
    """A fitted CNNRegressor."""


class CNNRegressor(CNNTemplate, _Regressor, CNNRegressorParams):
    """Convolutional network regressor: each entry of ``layers`` but an output one is a block of
    kernelSize x kernelSize convolution ('same' padding) + activation + poolSize max-pooling,
    then a dense output layer with one output per target.

    Features: as CNNClassifier's (image structs, encoded image files, pixel vectors/arrays with
    imageShape)."""

    _model_class = CNNRegressionModel

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self.setParams(**self._input_kwargs)


class RNNRegressionModel(_RegressionModel, RNNRegressorParams):
    """A fitted RNNRegressor."""


class RNNRegressor(RNNTemplate, _Regressor, RNNRegressorParams):
    """Recurrent network regressor (forecasting): each entry of ``layers`` but an output one is a
    recurrent layer of that many units (cellType 'rnn', 'lstm' or 'gru'), the last feeding a
    dense output layer with one output per target.

    Features: numeric sequences (array<array<double>>: steps x features, e.g. from
    TimeSeriesWindows), numeric arrays/vectors (one feature per step) or token ids."""

    _model_class = RNNRegressionModel

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self.setParams(**self._input_kwargs)


class NetworkRegressionModel(_RegressionModel, NetworkRegressionModelParams):
    """A fitted NetworkRegressor."""


class NetworkRegressor(NetworkTemplate, _Regressor, NetworkRegressorParams):
    """Trains the network you give (``network``: a spark_nn.nn.Sequential, a torch module, a
    fitted model or a saved one's path) as a regressor: its flat output has one value per
    target. Every training param of the other estimators applies; layers with trainable False
    stay frozen (transfer learning).

    Features: whichever the network's first layer takes (see NetworkClassifier)."""

    _model_class = NetworkRegressionModel

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self.setParams(**self._input_kwargs)

    def _known_outputs(self, df, col, spec, label_size):
        k = self._network_outputs(spec)
        if k != (label_size or 1):
            raise ValueError(f"the network has {k} outputs but label column {col!r} has {label_size or 1} "
                             "value(s) per row; they must match")
        return k


__all__ = ["CNNRegressionModel", "CNNRegressor", "NetworkRegressionModel", "NetworkRegressor", "RNNRegressionModel",
           "RNNRegressor"]
