"""CNN and RNN classifiers as Spark ML estimators (the seed's ``CNN`` and ``RNN``).

    cnn = CNN(layers=[32, 64, 10], activation="relu", inputCol="image", outputCol="label", numClasses=10)
    model = cnn.fit(train); predictions = model.transform(test)

``inputCol`` names the features and ``outputCol`` the label column (``featuresCol`` /
``labelCol`` work too); models write ``rawPrediction``, ``probability`` and ``prediction`` like
pyspark's probabilistic classifiers, so pyspark's evaluators work on them.
"""
from pyspark import keyword_only

from spark_nn.ml.base import NeuralEstimator, NeuralModel, classification_outputs
from spark_nn.ml.params import CNNParams, NetworkModelParams, NetworkParams, RNNParams
from spark_nn.ml.templates import CNNTemplate, NetworkTemplate, RNNTemplate
from spark_nn.nn.layers import Embedding
from spark_nn.nn.model import Sequential


class _ClassificationModel(NeuralModel):
    _input_kinds = ()  # feature column kinds a model made by fromTorch may read; the first is the default

    @classmethod
    def fromTorch(cls, module, inputShape, inputKind=None, classNames=None, maskZero=None, **params):
        """A Spark model with a torch module's layers and weights (Sequential.from_torch), which
        transforms, evaluates and saves like a fitted one. inputShape: one row's network input,
        e.g. [1, 28, 28] or [steps] of token ids; inputKind: the features column's kind (see
        _input_kinds; 'image' columns are scaled to [0, 1] with Spark's BGR channel order);
        params: the model's params, e.g. inputCol='image'."""
        net = Sequential.from_torch(module, tuple(int(d) for d in inputShape), mask_zero=maskZero)
        kind = inputKind or cls._default_kind(net)
        if kind not in cls._input_kinds:
            raise ValueError(f"{cls.__name__}.fromTorch: inputKind must be one of {list(cls._input_kinds)}, "
                             f"got {kind!r}")
        spec = {"kind": kind, "shape": [int(d) for d in inputShape]}
        if kind == "ids":
            spec["vocabSize"] = net.layers[0].vocab_size
        k = int(net.output_shape[0])
        if classNames is not None and len(classNames) != k:
            raise ValueError(f"classNames has {len(classNames)} names but the module has {k} outputs")
        model = cls()
        unknown = sorted(name for name in params if not model.hasParam(name))
        if unknown:
            raise TypeError(f"{cls.__name__} has no param(s) {unknown}")
        model._set(**params)
        model._setPayload(net, spec, list(classNames) if classNames is not None else None)
        return model

    @classmethod
    def _default_kind(cls, net):
        return cls._input_kinds[0]

    def _output_columns(self):
        return [(self.getOrDefault(self.rawPredictionCol), "vector"),
                (self.getOrDefault(self.probabilityCol), "vector"),
                (self.getOrDefault(self.predictionCol), "double")]

    def _outputs_fn(self):
        return classification_outputs

    def predict(self, x):
        """Predicted class indices for a numpy block shaped like the network input."""
        with self._scoring_precision():
            return self._net.predict(x)

    def evaluate(self, dataset):
        """Scores a labelled DataFrame and returns pyspark's multiclass metrics as a dict:
        accuracy, f1, weightedPrecision, weightedRecall and logLoss."""
        from pyspark.ml.evaluation import MulticlassClassificationEvaluator

        with self._scored(dataset) as scored:
            ev = MulticlassClassificationEvaluator(labelCol=self.labelColumn(),
                                                   predictionCol=self.getOrDefault(self.predictionCol),
                                                   probabilityCol=self.getOrDefault(self.probabilityCol))
            return {m: ev.evaluate(scored, {ev.metricName: m})
                    for m in ("accuracy", "f1", "weightedPrecision", "weightedRecall", "logLoss")}


class CNNClassificationModel(_ClassificationModel, CNNParams):
    """A fitted CNNClassifier."""

    _input_kinds = ("vector", "array", "image")


class CNNClassifier(CNNTemplate, NeuralEstimator, CNNParams):
    """Convolutional network classifier: each entry of ``layers`` but an output one is a block of
    kernelSize x kernelSize convolution ('same' padding) + activation + poolSize max-pooling,
    then a dense output layer over numClasses.

    Features: an image struct column (spark.read.format("image"), ImageFeature.loadImages), or
    vectors / numeric arrays with ``imageShape`` = [channels, height, width] (square
    single-channel images are recognised without it)."""

    _model_class = CNNClassificationModel

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self.setParams(**self._input_kwargs)


class RNNClassificationModel(_ClassificationModel, RNNParams):
    """A fitted RNNClassifier."""

    _input_kinds = ("ids", "seq", "array", "vector")

    @classmethod
    def _default_kind(cls, net):
        if isinstance(net.layers[0], Embedding):
            return "ids"
        return "array" if net.input_shape[-1] == 1 else "seq"


class RNNClassifier(RNNTemplate, NeuralEstimator, RNNParams):
    """Recurrent network classifier: each entry of ``layers`` but an output one is a recurrent
    layer of that many units (cellType 'rnn', 'lstm' or 'gru'; stacked, the last one feeding a
    dense output layer over numClasses).

    Features: integer token sequences (array<int>, e.g. from SequenceAssembler; embedded with
    embeddingDim), numeric sequences (array<array<double>>: steps x features), or numeric
    arrays/vectors (one feature per step)."""

    _model_class = RNNClassificationModel

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self.setParams(**self._input_kwargs)


class NetworkClassificationModel(_ClassificationModel, NetworkModelParams):
    """A fitted NetworkClassifier."""

    _input_kinds = ("image", "vector", "array", "encoded", "seq", "ids")

    @classmethod
    def _default_kind(cls, net):
        if isinstance(net.layers[0], Embedding):
            return "ids"
        return {3: "image", 2: "seq"}.get(len(net.input_shape), "array")


class NetworkClassifier(NetworkTemplate, NeuralEstimator, NetworkParams):
    """Trains the network you give (``network``: a spark_nn.nn.Sequential, a torch module, a
    fitted model or a saved one's path) as a classifier over its outputs: logits, one per class
    (softmax cross-entropy). Every training param of CNN and RNN applies; layers with trainable
    False (a torch module's parameters with requires_grad False) stay frozen, for transfer
    learning: a pretrained body, frozen, and a new head.

    Features: image structs (spark.read.format("image"), ImageFeature.loadImages), encoded image
    files (binary), pixel vectors/arrays (shape from imageShape or the network's input shape),
    numeric sequences or token ids, whichever the network's first layer takes."""

    _model_class = NetworkClassificationModel

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self.setParams(**self._input_kwargs)

    def _declared_num_classes(self, spec):
        k = self._network_outputs(spec)
        if k < 2:
            raise ValueError(f"a classifier network ends in one logit per class (>= 2); this one has {k} output")
        if self.isDefined(self.numClasses) and self.getOrDefault(self.numClasses) != k:
            raise ValueError(f"numClasses is {self.getOrDefault(self.numClasses)} but the network has {k} outputs")
        return k


# The seed's names.
CNN = CNNClassifier
RNN = RNNClassifier

__all__ = ["CNN", "CNNClassificationModel", "CNNClassifier", "NetworkClassificationModel", "NetworkClassifier", "RNN",
           "RNNClassificationModel", "RNNClassifier"]
