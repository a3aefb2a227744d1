"""CNN and RNN classifiers as Spark ML estimators (the seed's ``CNN`` and ``RNN``).

    cnn = CNN(layers=[32, 64, 10], activation="relu", inputCol="image", outputCol="label", numClasses=10)
    model = cnn.fit(train); predictions = model.transform(test)

``inputCol`` names the features and ``outputCol`` the label column (``featuresCol`` /
``labelCol`` work too); models write ``rawPrediction``, ``probability`` and ``prediction`` like
pyspark's probabilistic classifiers, so pyspark's evaluators work on them.
"""
import math

from pyspark import keyword_only

from spark_nn.ml.base import NeuralEstimator, NeuralModel, classification_outputs
from spark_nn.ml.columns import encoded_image_shape, first_row_size, image_shape, seq_shape
from spark_nn.ml.interop import is_torch_module, network_copy
from spark_nn.ml.params import CNNParams, NetworkModelParams, NetworkParams, RNNParams
from spark_nn.ml.persistence import NetworkParamReader, NetworkParamWriter
from spark_nn.nn import builders
from spark_nn.nn.layers import Embedding
from spark_nn.nn.losses import SoftmaxCrossEntropy
from spark_nn.nn.model import Sequential


def _pixel_shape(stage, df, col, kind, network_shape=None):
    """The row shape of vector/array features: imageShape, else the network's input shape (when
    it is known), else a square single-channel image."""
    size = first_row_size(df, col, kind)
    if stage.isDefined(stage.imageShape):
        shape = stage.getOrDefault(stage.imageShape)
        if len(shape) != 3 or math.prod(shape) != size:
            raise ValueError(f"imageShape {shape} does not match the {size} values per row of {col!r}")
        return list(shape)
    if network_shape is not None:
        if math.prod(network_shape) != size:
            raise ValueError(f"the network takes inputs of shape {tuple(network_shape)} "
                             f"({math.prod(network_shape)} values), but {col!r} has {size} values per row")
        return list(network_shape)
    if math.isqrt(size) ** 2 == size:
        return [1, math.isqrt(size), math.isqrt(size)]
    raise ValueError(f"features column {col!r} has {size} values per row, which is not a square "
                     "image; set imageShape=[channels, height, width]")


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
        return self._net.predict(x)

    def evaluate(self, dataset):
        """Scores a labelled DataFrame and returns pyspark's multiclass metrics as a dict:
        accuracy, f1, weightedPrecision, weightedRecall and logLoss."""
        from pyspark.ml.evaluation import MulticlassClassificationEvaluator

        scored = self.transform(dataset).cache()
        try:
            ev = MulticlassClassificationEvaluator(labelCol=self.labelColumn(),
                                                   predictionCol=self.getOrDefault(self.predictionCol),
                                                   probabilityCol=self.getOrDefault(self.probabilityCol))
            return {m: ev.evaluate(scored, {ev.metricName: m})
                    for m in ("accuracy", "f1", "weightedPrecision", "weightedRecall", "logLoss")}
        finally:
            scored.unpersist()


class CNNClassificationModel(_ClassificationModel, CNNParams):
    """A fitted CNNClassifier."""

    _input_kinds = ("vector", "array", "image")


class CNNClassifier(NeuralEstimator, CNNParams):
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

    def _input_spec(self, df, col, kind):
        if kind == "encoded":
            decoding = self.decoding()
            shape = encoded_image_shape(df, col, decoding["channels"], decoding["size"])
            return {"kind": kind, "shape": shape, "size": decoding["size"]}
        if kind == "image":
            shape = image_shape(df, col)
        elif kind in ("vector", "array"):
            shape = _pixel_shape(self, df, col, kind)
        else:
            raise ValueError(f"CNNClassifier needs images or pixel vectors/arrays in {col!r}; it holds {kind} data "
                             "(use RNNClassifier for sequences)")
        return {"kind": kind, "shape": list(shape)}

    def _network(self, spec, num_classes):
        return builders.cnn(self.getLayers(), num_classes, tuple(spec["shape"]), activation=self.getActivation(),
                            kernel_size=self.getOrDefault(self.kernelSize), pool_size=self.getOrDefault(self.poolSize),
                            dropout=self.getOrDefault(self.dropout), seed=self.getSeed())


class RNNClassificationModel(_ClassificationModel, RNNParams):
    """A fitted RNNClassifier."""

    _input_kinds = ("ids", "seq", "array", "vector")

    @classmethod
    def _default_kind(cls, net):
        if isinstance(net.layers[0], Embedding):
            return "ids"
        return "array" if net.input_shape[-1] == 1 else "seq"


class RNNClassifier(NeuralEstimator, RNNParams):
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

    def _input_spec(self, df, col, kind):
        if kind == "ids":
            steps = first_row_size(df, col, kind)
            vocab = self.getOrDefault(self.vocabSize) if self.isDefined(self.vocabSize) else None
            meta = df.schema[col].metadata.get("spark_nn", {})
            if vocab is None and meta.get("vocabSize"):
                vocab = int(meta["vocabSize"])
            # None: the pass that writes the training blocks finds the largest id
            return {"kind": kind, "shape": [steps], "vocabSize": int(vocab) if vocab else None}
        if kind in ("array", "vector"):
            return {"kind": kind, "shape": [first_row_size(df, col, kind), 1]}
        if kind == "seq":
            return {"kind": kind, "shape": seq_shape(df, col)}
        raise ValueError(f"RNNClassifier needs sequences in {col!r}; it holds {kind} data "
                         "(use CNNClassifier for images)")

    def _network(self, spec, num_classes):
        return builders.rnn(self.getLayers(), num_classes, tuple(spec["shape"]),
                            cell=self.getOrDefault(self.cellType), activation=self.getActivation(),
                            vocab_size=spec.get("vocabSize"), embedding_dim=self.getOrDefault(self.embeddingDim),
                            dropout=self.getOrDefault(self.dropout), seed=self.getSeed())


class NetworkClassificationModel(_ClassificationModel, NetworkModelParams):
    """A fitted NetworkClassifier."""

    _input_kinds = ("image", "vector", "array", "encoded", "seq", "ids")

    @classmethod
    def _default_kind(cls, net):
        if isinstance(net.layers[0], Embedding):
            return "ids"
        return {3: "image", 2: "seq"}.get(len(net.input_shape), "array")


class NetworkClassifier(NeuralEstimator, NetworkParams):
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

    def write(self):
        """Saves the params; a network given in memory is saved beside them (``network/``) and
        the loaded estimator reads it from there. A torch module is converted first, which
        needs imageShape."""
        value = self.getOrDefault(self.network) if self.isDefined(self.network) else None
        if value is None or isinstance(value, str):
            return super().write()
        if self.isDefined(self.initialWeights) and not isinstance(self.getOrDefault(self.initialWeights), str):
            return super().write()  # its error about initialWeights
        shape = tuple(self.getOrDefault(self.imageShape)) if self.isDefined(self.imageShape) else None
        if shape is None and is_torch_module(value):
            raise ValueError("NetworkClassifier: saving a torch network converts it, which needs its input shape: "
                             "set imageShape, or give network a spark_nn network")
        return NetworkParamWriter(self, self._given(shape))

    @classmethod
    def read(cls):
        return NetworkParamReader(cls)

    def _check_params(self):
        if not self.isDefined(self.network):
            raise ValueError("NetworkClassifier: set network, e.g. network=spark_nn.nn.Sequential([...], "
                             "input_shape) or a torch module")

    def _given(self, shape):
        """The network param as a Sequential of its own, trained for classes: its loss is softmax
        cross-entropy whatever the given network's (a network saved as an autoencoder keeps
        none of that). Torch modules are traced on the input shape; the conversion is made once
        per value and shape (a trace or a load can take seconds) and copied for each use."""
        value = self.getOrDefault(self.network)
        if shape is None and is_torch_module(value):
            raise ValueError("NetworkClassifier: a torch network needs the input shape: use image structs, or "
                             "set imageShape=[channels, height, width] for vector/array pixels")
        cached = getattr(self, "_converted", None)
        if cached is None or cached[0] is not value or cached[1] != shape:
            cached = self._converted = (value, shape, network_copy(value, shape))
        net = network_copy(cached[2], shape)
        if not isinstance(net.loss, SoftmaxCrossEntropy):
            net.loss = SoftmaxCrossEntropy()
        return net

    def _known_shape(self):
        """The network's input shape when it is known without data (not a torch module), else None."""
        return None if is_torch_module(self.getOrDefault(self.network)) else list(self._given(None).input_shape)

    def _input_spec(self, df, col, kind):
        if kind == "encoded":
            decoding = self.decoding()
            spec = {"kind": kind, "shape": encoded_image_shape(df, col, decoding["channels"], decoding["size"]),
                    "size": decoding["size"]}
        elif kind == "image":
            spec = {"kind": kind, "shape": image_shape(df, col)}
        elif kind in ("vector", "array"):
            spec = {"kind": kind, "shape": _pixel_shape(self, df, col, kind, self._known_shape())}
        elif kind == "seq":
            spec = {"kind": kind, "shape": seq_shape(df, col)}
        elif kind == "ids":
            spec = {"kind": kind, "shape": [first_row_size(df, col, kind)]}
        else:
            raise ValueError(f"NetworkClassifier cannot read {kind} data in {col!r}")
        net = self._given(tuple(spec["shape"]))
        if list(net.input_shape) != list(spec["shape"]):
            raise ValueError(f"the network takes inputs of shape {net.input_shape}, but the rows of {col!r} have "
                             f"shape {tuple(spec['shape'])}")
        if kind == "ids":
            if not isinstance(net.layers[0], Embedding):
                raise ValueError(f"{col!r} holds token ids, but the network's first layer is "
                                 f"{type(net.layers[0]).__name__}, not an Embedding")
            spec["vocabSize"] = net.layers[0].vocab_size
        if len(net.output_shape) != 1 or net.output_shape[0] < 2:
            raise ValueError(f"a classifier network ends in one logit per class (>= 2); this one's output shape is "
                             f"{net.output_shape}")
        return spec

    def _declared_num_classes(self, spec):
        k = int(self._given(tuple(spec["shape"])).output_shape[0])
        if self.isDefined(self.numClasses) and self.getOrDefault(self.numClasses) != k:
            raise ValueError(f"numClasses is {self.getOrDefault(self.numClasses)} but the network has {k} outputs")
        return k

    def _network(self, spec, num_classes):
        return self._given(tuple(spec["shape"]))


# The seed's names.
CNN = CNNClassifier
RNN = RNNClassifier

__all__ = ["CNN", "CNNClassificationModel", "CNNClassifier", "NetworkClassificationModel", "NetworkClassifier", "RNN",
           "RNNClassificationModel", "RNNClassifier"]
