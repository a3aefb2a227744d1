"""Estimator/Model machinery shared by the CNN, RNN and autoencoder stages.

An estimator checks the schema and params, converts and checks the data in one pass into
per-partition blocks (spark_nn.ml.training.blocks), builds the network (spark_nn.nn) and runs the
DistributedTrainer. A model scores with ``mapInArrow``:
Arrow record batches -> float32 blocks -> ``predict_proba`` with broadcast weights ->
rawPrediction / probability (vectors) and prediction columns; never a per-row Python UDF.
On disk a model is Spark ML's metadata JSON plus data/model.json (architecture) and
data/weights.npz; nothing is pickled and the directory appears atomically.
"""
import json
from contextlib import contextmanager

import numpy as np
import pyarrow as pa
from pyspark.ml import Estimator, Model
from pyspark.ml.functions import array_to_vector
from pyspark.ml.util import DefaultParamsReadable, MLReadable, MLWritable
from pyspark.sql import SparkSession
from pyspark.sql.types import ArrayType, DoubleType, StructField, StructType

from spark_nn.kernels import check_precision
from spark_nn.ml.columns import arrow_to_block, check_label_column, check_weight_column, feature_expr, feature_kind
from spark_nn.ml.interop import initial_weights
from spark_nn.ml.persistence import (FORMAT_VERSION, NeuralModelReader, NeuralModelWriter, ParamsWritable,
                                     local_path)
from spark_nn.ml.spark_kind import is_connect, spark_conf
from spark_nn.ml.tracking import FitLog, NestedFits, active_run_ids
from spark_nn.ml.training.blocks import TrainingData
from spark_nn.ml.training.rounds import Inline
from spark_nn.ml.training.trainer import DistributedTrainer
from spark_nn.ml.training.worker import worker_model
from spark_nn.nn.losses import SoftmaxCrossEntropy

_TMP_FEATURES = "__spark_nn_features"


def _active_session():
    spark = SparkSession.getActiveSession()
    if spark is None:
        raise RuntimeError("no active SparkSession; create one with SparkSession.builder.getOrCreate()")
    return spark


def task_threads(stage, spark):
    n = stage.getOrDefault(stage.threadsPerTask)
    return n if n > 0 else int(spark_conf(spark, "spark.task.cpus", "1"))


def label_info(df, col, stats, num_classes=None):
    """(numClasses, class names or None) from the label statistics of the pass that made the
    training blocks (spark_nn.ml.training.blocks)."""
    if stats["rows"] == 0:
        raise ValueError("the DataFrame is empty: there is nothing to train on")
    if stats["frac"]:
        raise ValueError(f"label column {col!r} must hold class indices 0, 1, ..., numClasses-1; "
                         f"found {stats['frac']} non-integral values such as {stats['frac_value']}")
    if stats["lo"] < 0:
        raise ValueError(f"label column {col!r} has a negative label ({stats['lo']}); labels must be 0, 1, ...")
    names, k = _label_metadata(df, col, num_classes)
    k = k or int(stats["hi"]) + 1
    if stats["hi"] >= k:
        raise ValueError(f"label column {col!r} has label {int(stats['hi'])}, outside [0, numClasses={k})")
    if k < 2:
        raise ValueError(f"label column {col!r} has a single class; numClasses must be >= 2")
    return int(k), (list(names) if names and len(names) == k else None)


def _label_metadata(df, col, num_classes=None):
    """(class names or None, numClasses or None) known before reading any row: the param, or
    the label column's ML attribute metadata."""
    meta = df.schema[col].metadata.get("ml_attr", {})
    names = meta.get("vals")
    return names, num_classes or (len(names) if names else None) or meta.get("num_vals")


class NeuralEstimator(Estimator, DefaultParamsReadable, ParamsWritable):
    """Base of the spark_nn estimators. Subclasses give ``_input_spec``, ``_network`` and
    ``_model_class``."""

    takes_labels = True  # reads a label column (an autoencoder's targets are its inputs)

    def setParams(self, **kwargs):
        """Sets params by name; an unknown name is an error that lists the known ones."""
        for name in kwargs:
            if not self.hasParam(name):
                known = sorted(p.name for p in self.params)
                raise TypeError(f"{type(self).__name__} has no param {name!r}; known params: {known}")
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def _input_spec(self, df, col):
        raise NotImplementedError

    def _check_params(self):
        """Errors of the params alone, raised before anything reads the data."""
        check_precision(self.getOrDefault(self.precision))  # bf16 where the driver's CPU lacks it
        if self.hasParam("layers") and not self.isDefined(self.layers):
            raise ValueError(f"{type(self).__name__}: set layers, e.g. layers=[32, 64, 10]")

    # ------------------------------------------------ what the fit trains for (classes, by default)
    def _head_loss(self, current):
        """The loss the network trains with, given the one it has (None for a template's):
        softmax cross-entropy over the classes (a given network's own keeps its class weights)."""
        return current if isinstance(current, SoftmaxCrossEntropy) else SoftmaxCrossEntropy()

    def _standardized(self, spec):
        """The input spec, with a "standardize" entry when the network standardizes its inputs
        (the pass then measures them, and _outputs_of sets the values)."""
        return spec

    def _check_labels(self, df, col):
        """Errors of the label column's type, before any job; returns the labels' size per row
        (None: one number), which the pass reads them by."""
        check_label_column(df, col)
        return None

    def _declared_num_classes(self, spec):
        """numClasses known before the pass (the param), or None: the labels tell."""
        return self.getOrDefault(self.numClasses) if self.hasParam("numClasses") and self.isDefined(
            self.numClasses) else None

    def _known_outputs(self, df, col, spec, label_size):
        """The network's outputs when the schema and params tell them before the pass, else None."""
        declared = self._declared_num_classes(spec)
        return _label_metadata(df, col, declared)[1] if col is not None else declared

    def _outputs_of(self, df, col, stats, spec, label_size):
        """(network outputs, class names or None, the loss to train with or None: the network's)
        from the label statistics of the pass."""
        if stats["rows"] == 0:
            raise ValueError("the DataFrame is empty: there is nothing to train on")
        if col is None:
            return self._declared_num_classes(spec), None, None
        k, names = label_info(df, col, stats, self._declared_num_classes(spec))
        return k, names, None

    def write(self):
        if self.isDefined(self.initialWeights) and not isinstance(self.getOrDefault(self.initialWeights), str):
            raise ValueError("initialWeights holds an in-memory model, which an estimator's metadata cannot "
                             "store; save the model and set initialWeights to its path")
        return super().write()

    def _network(self, spec, num_classes):
        raise NotImplementedError

    def _fit(self, dataset):
        fcol = self.featuresColumn()
        lcol = self.labelColumn() if self.takes_labels else None
        self._check_params()
        # everything the schema, the params and at most one row tell is checked before the pass
        kind = feature_kind(dataset, fcol)
        label_size = self._check_labels(dataset, lcol) if lcol is not None else None
        wcol = self.weightColumn() if self.hasParam("weightCol") else None
        if wcol is not None:
            check_weight_column(dataset, wcol)
        indicator = self.getOrDefault(self.validationIndicatorCol) \
            if self.isDefined(self.validationIndicatorCol) else None
        if indicator and indicator not in dataset.columns:
            raise ValueError(f"validationIndicatorCol {indicator!r} is not in the DataFrame; "
                             f"columns: {dataset.columns}")
        spec = self._standardized(self._input_spec(dataset, fcol, kind))
        known_k = self._known_outputs(dataset, lcol, spec, label_size)
        probe = dict(spec, vocabSize=spec.get("vocabSize") or 2) if spec["kind"] == "ids" else dict(spec)
        probe_net = self._network(probe, known_k or 2)  # errors of the layer stack's shapes now, before any job
        start = None  # initialWeights, checked and converted before the pass when the network is known by now
        if self.isDefined(self.initialWeights) and known_k and (spec["kind"] != "ids" or spec.get("vocabSize")):
            start = initial_weights(self.getOrDefault(self.initialWeights), probe_net)
        checkpoint_dir = self.getOrDefault(self.checkpointDir)
        # the one pass over the data: rows checked, validation rows split off, blocks written
        data = TrainingData(dataset, fcol, lcol, spec, self.getOrDefault(self.handleInvalid),
                            val_fraction=0.0 if indicator else self.getOrDefault(self.validationSplit),
                            val_indicator=indicator, seed=self.getSeed(),
                            resident=self.getOrDefault(self.residentData), label_size=label_size,
                            feature_axis=spec["standardize"]["axis"] if "standardize" in spec else None,
                            weight_col=wcol)
        tracking = FitLog(self)
        try:
            num_outputs, class_names, loss = self._outputs_of(dataset, lcol, data.stats, spec, label_size)
            if wcol is not None and data.stats["weights"]["count"] and not data.stats["weights"]["mean"][0] > 0:
                raise ValueError(f"weight column {wcol!r} is 0 on every training row: there is nothing to train on")
            if spec["kind"] == "ids" and spec.get("vocabSize") is None:
                spec["vocabSize"] = (data.stats["max_id"] or 0) + 1
            elif spec["kind"] == "ids" and (data.stats["max_id"] or 0) >= spec["vocabSize"]:
                raise ValueError(f"features column {fcol!r} has token id {data.stats['max_id']}, outside the "
                                 f"network's vocabulary [0, {spec['vocabSize']})")
            net = self._network(spec, num_outputs)
            if self.isDefined(self.initialWeights):
                same = start is not None and net.config() == probe_net.config()
                net.load_weights_dict(start if same else initial_weights(self.getOrDefault(self.initialWeights), net))
            if loss is not None:
                net.loss = loss
            if sum(data.sizes) == 0:
                raise ValueError("no training rows are left (after the validation split and skipped rows)")
            if net.num_params == 0:
                raise ValueError("every layer of the network is frozen (trainable=False): there is nothing to train")
            net.precision = self.getOrDefault(self.precision)  # in the config the tasks build their network from
            trainer = DistributedTrainer(
                net.config(), data, epochs=self.getMaxIter(), batch_size=self.getBatchSize(),
                optimizer=self.getOptimizer(), step_size=self.getStepSize(), seed=self.getSeed(),
                momentum=self.getOrDefault(self.momentum), weight_decay=self.getOrDefault(self.weightDecay),
                clip_norm=self.getOrDefault(self.clipNorm),
                schedule=self.getOrDefault(self.learningRateSchedule),
                aggregation_depth=self.getAggregationDepth(), threads=task_threads(self, dataset.sparkSession),
                tol=self.getTol(), patience=self.getOrDefault(self.earlyStoppingPatience),
                verbose=self.getOrDefault(self.verbose),
                local_steps=self.getOrDefault(self.localSteps),
                pipeline=self.getOrDefault(self.pipelineRounds),
                checkpoint_dir=local_path(checkpoint_dir) if checkpoint_dir else None,
                checkpoint_interval=self.getOrDefault(self.checkpointInterval),
                description=f"spark_nn {type(self).__name__}.fit", frozen=net.frozen, buffers=net.buffers,
                on_epoch=tracking.epoch)
            weights = trainer.run(net.params)
        except BaseException:
            tracking.fail()
            raise
        finally:
            data.release()
        net.set_params(weights)
        net.set_buffers(trainer.buffers)
        model = self._model_class()
        model._setPayload(net, spec, class_names, label_size)
        model._summary = trainer.summary
        self._copyValues(model)
        if model.isSet(model.initialWeights) and not isinstance(model.getOrDefault(model.initialWeights), str):
            model.clear(model.initialWeights)  # an in-memory start is not the model's to keep (or save)
        tracking.finish(model, fcol)
        return model

    def fitMultiple(self, dataset, paramMaps):
        """pyspark's fitMultiple (CrossValidator, TrainValidationSplit); with an MLflow run active
        here, each fit logs to a run nested under it (spark_nn.ml.tracking)."""
        parent = active_run_ids()
        inner = super().fitMultiple(dataset, paramMaps)
        return inner if parent is None else NestedFits(inner, parent)


class NeuralModel(Model, MLWritable, MLReadable):
    """Base of the fitted spark_nn models: holds the network, its input spec and class names."""

    def __init__(self):
        super().__init__()
        self._net, self._spec, self._classNames, self._summary = None, None, None, None
        self._bcast = None

    def _setPayload(self, net, spec, class_names=None, label_size=None):
        self._net, self._spec, self._classNames, self._labelSize = net, dict(spec), class_names, label_size
        self._bcast = None

    # --------------------------------------------------------------- accessors
    @property
    def network(self):
        """The trained spark_nn.nn.Sequential (usable without Spark)."""
        return self._net

    @property
    def numClasses(self):
        return int(self._net.output_shape[0])

    @property
    def numFeatures(self):
        return int(np.prod(self._spec["shape"]))

    @property
    def classNames(self):
        return self._classNames

    @property
    def inputSpec(self):
        return dict(self._spec)

    @property
    def weights(self):
        return self._net.params.copy()

    @property
    def hasSummary(self):
        return self._summary is not None

    @property
    def summary(self):
        if self._summary is None:
            raise RuntimeError("no training summary: this model was loaded or copied, not fitted")
        return self._summary

    def exportOnnx(self, path):
        """Writes the network as an ONNX file (needs pip install "spark_nn[onnx]"): input
        'input' (float32 [batch, *inputSpec shape], or int64 token ids), output 'output' (and
        'probability' for classifiers). Feed it what the network takes: image columns are
        scaled to [0, 1], channels in Spark's BGR order. Returns path."""
        return self._net.to_onnx(path, upto=self._onnx_upto())

    def _onnx_upto(self):
        return None

    def predictProbability(self, x):
        """Class probabilities for a numpy block shaped like the network input, in the model's
        precision (as transform scores)."""
        with self._scoring_precision():
            return self._net.predict_proba(x)

    def _scoring_precision(self):
        """The network in the model's precision param for the duration: transform, predict,
        predictProbability, encode and the MLflow model score in it; the network itself keeps
        the precision it was trained in."""
        return self._net._precision_of(check_precision(self.getOrDefault(self.precision)))

    # --------------------------------------------------------------- scoring
    def _output_columns(self):
        """[(column name, 'vector' | 'double')] in the order ``_outputs_fn`` returns them;
        a column whose param is set to '' is not written."""
        raise NotImplementedError

    def _outputs_fn(self):
        """A picklable function (network, block) -> list of Arrow arrays, one per output."""
        raise NotImplementedError

    def _shipped_weights(self, spark, config_json):
        """The weights as the scoring tasks read them (.value): a broadcast kept per SparkContext
        and network layout (config_json: set_trainable moves arrays between the vectors) on a
        classic session; on Spark Connect, which has no broadcasts, inside the scoring
        function's closure (which the query plan carries anyway)."""
        if is_connect(spark):
            return Inline(self._net.state_vector())
        sc = spark.sparkContext
        if self._bcast is None or self._bcast[0] is not sc or self._bcast[1] != config_json:
            self._bcast = (sc, config_json, sc.broadcast(self._net.state_vector()))
        return self._bcast[2]

    def _transform(self, dataset):
        fcol = self.featuresColumn()
        kind = feature_kind(dataset, fcol)
        expected = self._spec["kind"]
        if not ({kind, expected} <= {"vector", "array"} or kind == expected):
            raise ValueError(f"features column {fcol!r} holds {kind} data but the model was trained on {expected}")
        outputs = self._output_columns()
        wanted = [(i, name, t) for i, (name, t) in enumerate(outputs) if name]
        for _, name, _ in wanted:
            if name in dataset.columns:
                raise ValueError(f"output column {name!r} already exists in the DataFrame; choose another "
                                 "name with the matching *Col param")
        spec = dict(self._spec, kind=kind)
        prepared = dataset.withColumn(_TMP_FEATURES, feature_expr(fcol, kind))
        with self._scoring_precision():
            config_json = json.dumps(self._net.config(), sort_keys=True)
        bcast, outputs_fn = self._shipped_weights(dataset.sparkSession, config_json), self._outputs_fn()
        threads = task_threads(self, dataset.sparkSession)
        with_paths = kind == "encoded" and "path" in dataset.columns  # binaryFile's: errors name the file

        def score(batches):
            model = worker_model(config_json, threads)
            model.set_state_vector(bcast.value)
            model.frozen_key = None  # a fit's tasks in this worker must load their frozen arrays again
            for b in batches:
                x = arrow_to_block(b.column(_TMP_FEATURES), spec, fcol,
                                   paths=b.column("path") if with_paths else None)
                arrays = outputs_fn(model, x)
                for i, name, _ in wanted:
                    b = b.append_column(name, arrays[i])
                yield b

        schema = StructType(list(prepared.schema.fields) + [
            StructField(name, ArrayType(DoubleType()) if t == "vector" else DoubleType()) for _, name, t in wanted])
        out = prepared.mapInArrow(score, schema).drop(_TMP_FEATURES)
        for _, name, t in wanted:
            if t == "vector":
                out = out.withColumn(name, array_to_vector(name))
        return out

    @contextmanager
    def _scored(self, dataset):
        """This model's predictions on dataset, cached while an evaluate's evaluators read them."""
        scored = self.transform(dataset).cache()
        try:
            yield scored
        finally:
            scored.unpersist()

    # --------------------------------------------------------------- persistence
    def write(self):
        return NeuralModelWriter(self)

    @classmethod
    def read(cls):
        return NeuralModelReader(cls)

    def _extraMetadata(self):
        return {"sparkNNFormatVersion": FORMAT_VERSION, "inputSpec": self._spec, "classNames": self._classNames}

    def _loadExtra(self, metadata):
        pass

    def copy(self, extra=None):
        that = super().copy(extra)
        that._summary = None
        return that


def list_column(block):
    """(n, k) numbers -> an Arrow list<double> array without per-row Python."""
    block = np.ascontiguousarray(block, dtype=np.float64)
    n, k = block.shape
    offsets = pa.array(np.arange(0, (n + 1) * k, k, dtype=np.int32))
    return pa.ListArray.from_arrays(offsets, pa.array(block.ravel()))


def classification_outputs(model, x):
    """rawPrediction (logits), probability, prediction for a block."""
    if len(x) == 0:
        k = model.output_shape[0]
        return list_column(np.zeros((0, k))), list_column(np.zeros((0, k))), pa.array([], pa.float64())
    raw = model.predict_output(x)
    prob = model.loss.output_transform(raw)
    return list_column(raw), list_column(prob), pa.array(np.argmax(raw, axis=1).astype(np.float64))
