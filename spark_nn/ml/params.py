"""Params shared by the spark_nn estimators and models, in pyspark.ml's style: each a Param
with a doc and a type converter, mixed in by the classes that use them."""
import warnings

from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import (HasAggregationDepth, HasFeaturesCol, HasInputCol, HasLabelCol, HasMaxIter,
                                     HasOutputCol, HasPredictionCol, HasProbabilityCol, HasRawPredictionCol, HasSeed,
                                     HasStepSize, HasTol, HasValidationIndicatorCol, HasWeightCol)

from spark_nn.kernels import PRECISIONS
from spark_nn.ml.interop import check_initial_weights, check_network

ACTIVATIONS = ("relu", "tanh", "sigmoid")
OPTIMIZERS = ("adam", "adamw", "sgd")
CELL_TYPES = ("rnn", "lstm", "gru")
HANDLE_INVALID = ("error", "skip")
REGRESSION_LOSSES = ("squaredError", "absoluteError", "huber")


def _in(name, allowed):
    def convert(value):
        value = TypeConverters.toString(value)
        if value.lower() not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        return value.lower()

    return convert


def _named(name, allowed):
    """A case-sensitive choice (pyspark's camelCase values, e.g. 'squaredError')."""
    def convert(value):
        value = TypeConverters.toString(value)
        if value not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
        return value

    return convert


def _positive_ints(value):
    values = TypeConverters.toListInt(value)
    if not values or any(v < 1 for v in values):
        raise ValueError(f"layers must be a non-empty list of positive ints, got {value!r}")
    return values


def _image_size(value):
    values = TypeConverters.toListInt(value)
    if len(values) != 2 or min(values) < 1:
        raise ValueError(f"imageSize must be [height, width] with positive ints, got {value!r}")
    return values


def _check(name, pred, what):
    def convert(value):
        v = TypeConverters.toFloat(value) if what.startswith("a number") else TypeConverters.toInt(value)
        if not pred(v):
            raise ValueError(f"{name} must be {what}, got {value!r}")
        return v

    return convert


def _local_steps(value):
    """'auto' or an int >= 1."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        k = TypeConverters.toInt(value)
    except TypeError:
        k = None
    if k is None or k < 1:
        raise ValueError(f"localSteps must be 'auto' or an int >= 1, got {value!r}")
    return k


def with_accessors(cls):
    """Adds pyspark-style getX/setX methods for every Param of cls that lacks them."""
    for name in dir(cls):
        param = getattr(cls, name, None)
        if not isinstance(param, Param):
            continue
        cap = name[0].upper() + name[1:]
        if not hasattr(cls, "get" + cap):
            setattr(cls, "get" + cap, lambda self, _n=name: self.getOrDefault(_n))
            getattr(cls, "get" + cap).__doc__ = f"Gets the value of {name} or its default."
        if not hasattr(cls, "set" + cap):
            setattr(cls, "set" + cap, lambda self, value, _n=name: self._set(**{_n: value}))
            getattr(cls, "set" + cap).__doc__ = f"Sets the value of {name}."
    return cls


class HasRowWeights(HasWeightCol):
    """weightCol, as MLlib's classifiers and regressors have it."""

    weightCol = Param(Params._dummy(), "weightCol",
                      "column of per-row weights (numbers >= 0) that scale each row's loss, gradient and metrics, as "
                      "MLlib's; rescaled to average 1 over the training rows, so that stepSize means the same with "
                      "and without them. Unset or '': every row weighs 1", typeConverter=TypeConverters.toString)

    def weightColumn(self):
        """The weight column in effect, or None."""
        return self.getOrDefault(self.weightCol) if self.isDefined(self.weightCol) and \
            self.getOrDefault(self.weightCol) else None


class HasSeedAliases(HasFeaturesCol, HasLabelCol):
    """The seed's keywords: inputCol names the features, outputCol the label column."""

    inputCol = Param(Params._dummy(), "inputCol",
                     "features column (the seed API's name; when set it takes precedence over featuresCol)",
                     typeConverter=TypeConverters.toString)
    outputCol = Param(Params._dummy(), "outputCol",
                      "label column (the seed API's name; when set it takes precedence over labelCol)",
                      typeConverter=TypeConverters.toString)

    def getInputCol(self):
        return self.getOrDefault(self.inputCol)

    def getOutputCol(self):
        return self.getOrDefault(self.outputCol)

    def setInputCol(self, value):
        return self._set(inputCol=value)

    def setOutputCol(self, value):
        return self._set(outputCol=value)

    def featuresColumn(self):
        """The features column in effect (inputCol if set, else featuresCol)."""
        return self.getInputCol() if self.isSet(self.inputCol) else self.getFeaturesCol()

    def labelColumn(self):
        return self.getOutputCol() if self.isSet(self.outputCol) else self.getLabelCol()


@with_accessors
class TrainingParams(HasMaxIter, HasStepSize, HasSeed, HasTol, HasAggregationDepth, HasValidationIndicatorCol):
    """Params of every spark_nn network estimator and model: the network and how it is trained."""

    # pyspark's shared params, with their ranges checked when set
    maxIter = Param(Params._dummy(), "maxIter", "number of epochs (passes over the training data), >= 1",
                    typeConverter=_check("maxIter", lambda v: v >= 1, "an int >= 1"))
    stepSize = Param(Params._dummy(), "stepSize", "learning rate of the optimizer, > 0",
                     typeConverter=_check("stepSize", lambda v: v > 0 and v == v, "a number > 0"))
    aggregationDepth = Param(Params._dummy(), "aggregationDepth", "depth of the treeAggregate summing gradients, "
                             ">= 1", typeConverter=_check("aggregationDepth", lambda v: v >= 1, "an int >= 1"))
    tol = Param(Params._dummy(), "tol", "least validation-loss improvement that resets earlyStoppingPatience, >= 0",
                typeConverter=_check("tol", lambda v: v >= 0, "a number >= 0"))

    batchSize = Param(Params._dummy(), "batchSize", "examples per optimizer step, summed over all partitions",
                      typeConverter=_check("batchSize", lambda v: v >= 1, "an int >= 1"))
    optimizer = Param(Params._dummy(), "optimizer", f"optimizer, one of {list(OPTIMIZERS)}",
                      typeConverter=_in("optimizer", OPTIMIZERS))
    momentum = Param(Params._dummy(), "momentum", "momentum of the sgd optimizer, in [0, 1)",
                     typeConverter=_check("momentum", lambda v: 0 <= v < 1, "a number in [0, 1)"))
    weightDecay = Param(Params._dummy(), "weightDecay", "weight decay (L2 for sgd/adam, decoupled for adamw), >= 0",
                        typeConverter=_check("weightDecay", lambda v: v >= 0, "a number >= 0"))
    clipNorm = Param(Params._dummy(), "clipNorm", "clip each step's mean gradient to this global L2 norm (0: no "
                     "clipping); default 1.0 for recurrent networks (RNNClassifier, RNNRegressor), whose "
                     "gradients can explode through time, 0 for the others",
                     typeConverter=_check("clipNorm", lambda v: v >= 0, "a number >= 0"))
    learningRateSchedule = Param(Params._dummy(), "learningRateSchedule",
                                 "'constant' or 'cosine' (decays stepSize to 0 over all steps)",
                                 typeConverter=_in("learningRateSchedule", ("constant", "cosine")))
    validationSplit = Param(Params._dummy(), "validationSplit",
                            "fraction of the rows held out to validate after each epoch (0: none)",
                            typeConverter=_check("validationSplit", lambda v: 0 <= v < 1, "a number in [0, 1)"))
    earlyStoppingPatience = Param(Params._dummy(), "earlyStoppingPatience",
                                  "stop after this many epochs without a validation loss improvement larger than "
                                  "tol, keeping the best weights (0: never stop early)",
                                  typeConverter=_check("earlyStoppingPatience", lambda v: v >= 0, "an int >= 0"))
    threadsPerTask = Param(Params._dummy(), "threadsPerTask",
                           "kernel threads in each Spark task (0: spark.task.cpus)",
                           typeConverter=_check("threadsPerTask", lambda v: v >= 0, "an int >= 0"))
    localSteps = Param(Params._dummy(), "localSteps",
                       "optimizer steps each partition takes on its own before the weights and optimizer "
                       "states are averaged: 'auto' (warm-up rounds of 1, 2, 4, ... steps, then the k that "
                       "keeps Spark's fixed cost per round at most 5% of the round; k per epoch is in the "
                       "summary), or an int (1: synchronous data-parallel training, one treeAggregate per step)",
                       typeConverter=_local_steps)
    pipelineRounds = Param(Params._dummy(), "pipelineRounds",
                           "submit each round before the one before it has returned, so that the executors do "
                           "not wait while the driver sums, averages and ships (two rounds in flight): a round "
                           "then starts from weights that lack the previous round's change; when it returns, "
                           "its own change is added and half of the change it missed is kept (delayed "
                           "averaging, a staleness of exactly one round, so a fit stays reproducible); an "
                           "epoch's rounds are all applied before the next epoch",
                           typeConverter=TypeConverters.toBoolean)
    residentData = Param(Params._dummy(), "residentData",
                         "keep each partition's training block as a file in the executor's Spark local "
                         "directory, read by rows, so a step reads only its minibatch rows "
                         "(False: cache the blocks in Spark's block manager; each step then deserializes "
                         "its partition's whole block)", typeConverter=TypeConverters.toBoolean)
    initialWeights = Param(Params._dummy(), "initialWeights",
                           "weights to start the fit from (fine-tuning): the path of a saved spark_nn model, a "
                           "fitted spark_nn model, a spark_nn.nn.Sequential or a torch module with the layers "
                           "this estimator builds; unset: fresh weights from seed",
                           typeConverter=check_initial_weights)
    handleInvalid = Param(Params._dummy(), "handleInvalid",
                          "rows with NaN/infinite features, or a null/NaN/infinite label or an invalid weight: "
                          "'error' (default; the error names the row) or 'skip' them",
                          typeConverter=_in("handleInvalid", HANDLE_INVALID))
    verbose = Param(Params._dummy(), "verbose", "print progress on the driver", typeConverter=TypeConverters.toBoolean)
    checkpointDir = Param(Params._dummy(), "checkpointDir",
                          "local or shared-mount directory for training checkpoints ('' : none); a fit whose "
                          "checkpointDir holds a checkpoint of the same run resumes from it",
                          typeConverter=TypeConverters.toString)
    mlflowLogging = Param(Params._dummy(), "mlflowLogging",
                          "'auto': when an MLflow run is active on the driver, log the fit to it (params, per-epoch "
                          "metrics, the curves and the model as an MLflow pyfunc model; a CrossValidator's "
                          "candidates to nested runs); 'off': never",
                          typeConverter=_in("mlflowLogging", ("auto", "off")))
    checkpointInterval = Param(Params._dummy(), "checkpointInterval",
                               "write a checkpoint every this many epochs (and after the last)",
                               typeConverter=_check("checkpointInterval", lambda v: v >= 1, "an int >= 1"))
    precision = Param(Params._dummy(), "precision",
                      "'fp32' or 'bf16': mixed precision on CPUs with AVX512_BF16 (an error elsewhere): the "
                      "products of the convolutions and dense layers from bf16-rounded operands with fp32 sums, "
                      "in fits and in transform; weights, gradients, optimizer state and the loss stay fp32",
                      typeConverter=_in("precision", PRECISIONS))

    def __init__(self, *args):
        super().__init__(*args)
        # measured with the seed's programs: on digits, 30 epochs of batch 32 at 0.003 with a cosine
        # decay reach 0.985 test accuracy on every random 80/20 split tried, where 10 epochs of
        # batch 64 at a constant 0.001 stop near 0.977; the RNN program gains as much. Epochs are
        # cheap with localSteps='auto'.
        self._setDefault(maxIter=30, stepSize=0.003, batchSize=32, optimizer="adam",
                         momentum=0.9, weightDecay=0.0, clipNorm=0.0, learningRateSchedule="cosine",
                         validationSplit=0.0, earlyStoppingPatience=0, threadsPerTask=0, localSteps="auto",
                         pipelineRounds=False, residentData=True,
                         handleInvalid="error", verbose=False, tol=0.0, aggregationDepth=2, seed=0,
                         checkpointDir="", checkpointInterval=1, mlflowLogging="auto", precision="fp32")


@with_accessors
class TemplateParams(Params):
    """Params of the estimators that build their network from a template (CNN, RNN, AutoEncoder)."""

    layers = Param(Params._dummy(), "layers",
                   "hidden widths (conv filters for CNNs, units per recurrent layer for RNNs); a last entry equal "
                   "to numClasses is the output layer, otherwise one is appended", typeConverter=_positive_ints)
    activation = Param(Params._dummy(), "activation", f"hidden activation, one of {list(ACTIVATIONS)}",
                       typeConverter=_in("activation", ACTIVATIONS))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(activation="relu")


@with_accessors
class NeuralParams(TrainingParams, HasSeedAliases, HasRowWeights, HasPredictionCol, HasProbabilityCol,
                   HasRawPredictionCol):
    """Params of the classifiers: the seed's column aliases and pyspark's prediction columns."""

    numClasses = Param(Params._dummy(), "numClasses",
                       "number of classes (>= 2); inferred from the label column when not set",
                       typeConverter=_check("numClasses", lambda v: v >= 2, "an int >= 2"))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(inputCol="features", outputCol="label")


class EncodedImageParams(Params):
    """How a binary column of encoded image files (PNG, JPEG, ...: spark.read.format("binaryFile")'s
    content, or any binary column) is decoded on the executors (with Pillow)."""

    imageSize = Param(Params._dummy(), "imageSize",
                      "[height, width] that encoded image files (a binary features column) are resized to; "
                      "needed when the files differ in size", typeConverter=_image_size)
    grayscale = Param(Params._dummy(), "grayscale",
                      "decode encoded image files (a binary features column) to one gray channel instead of 3 "
                      "(BGR, as Spark's image source)", typeConverter=TypeConverters.toBoolean)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(grayscale=False)

    def decoding(self):
        """{"channels", "size"} for columns.arrow_to_block's encoded kind."""
        size = self.getOrDefault(self.imageSize) if self.isDefined(self.imageSize) else None
        return {"channels": 1 if self.getOrDefault(self.grayscale) else 3, "size": size}


@with_accessors
class RegressorParams(TrainingParams, HasSeedAliases, HasRowWeights, HasPredictionCol):
    """Params of the regressors: pyspark's featuresCol / labelCol / predictionCol (inputCol and
    outputCol work too, as for CNN and RNN), the loss, and Huber's threshold."""

    loss = Param(Params._dummy(), "loss",
                 f"the loss to minimize, one of {list(REGRESSION_LOSSES)}: 'squaredError' (mean squared error), "
                 "'absoluteError' (mean absolute error), 'huber' (squared below epsilon, linear above), each on "
                 "the targets standardized by the training labels' mean and standard deviation",
                 typeConverter=_named("loss", REGRESSION_LOSSES))
    epsilon = Param(Params._dummy(), "epsilon",
                    "the 'huber' loss's threshold (torch's delta), in standard deviations of the label, > 0",
                    typeConverter=_check("epsilon", lambda v: v > 0, "a number > 0"))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(loss="squaredError", epsilon=1.35)


class HasStandardization(Params):
    standardization = Param(Params._dummy(), "standardization",
                            "standardize the input features by the training rows' mean and standard deviation "
                            "(per feature of a sequence step, per channel of pixel vectors/arrays) inside the "
                            "network, as MLlib's standardization; image structs, encoded images and token ids are "
                            "left as they are", typeConverter=TypeConverters.toBoolean)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(standardization=True)


class CNNTemplateParams(TemplateParams, EncodedImageParams):
    """How CNNClassifier and CNNRegressor build their network."""

    kernelSize = Param(Params._dummy(), "kernelSize", "convolution kernel size (odd)",
                       typeConverter=_check("kernelSize", lambda v: v >= 1 and v % 2 == 1, "an odd int >= 1"))
    poolSize = Param(Params._dummy(), "poolSize", "max-pooling window and stride after each convolution",
                     typeConverter=_check("poolSize", lambda v: v >= 1, "an int >= 1"))
    imageShape = Param(Params._dummy(), "imageShape",
                       "[channels, height, width] of vector/array features (image structs carry their own)",
                       typeConverter=TypeConverters.toListInt)
    dropout = Param(Params._dummy(), "dropout", "dropout rate before the output layer, in [0, 1)",
                    typeConverter=_check("dropout", lambda v: 0 <= v < 1, "a number in [0, 1)"))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(kernelSize=3, poolSize=2, dropout=0.0)


class RNNTemplateParams(TemplateParams):
    """How RNNClassifier and RNNRegressor build their network."""

    cellType = Param(Params._dummy(), "cellType", f"recurrent cell, one of {list(CELL_TYPES)}; activation applies "
                     "to 'rnn' cells (LSTM and GRU have fixed gate nonlinearities)",
                     typeConverter=_in("cellType", CELL_TYPES))
    vocabSize = Param(Params._dummy(), "vocabSize",
                      "token id range [0, vocabSize) of integer sequences; from SequenceAssembler's column metadata "
                      "or the data when not set", typeConverter=_check("vocabSize", lambda v: v >= 1, "an int >= 1"))
    embeddingDim = Param(Params._dummy(), "embeddingDim", "size of the token embedding for integer sequences",
                         typeConverter=_check("embeddingDim", lambda v: v >= 1, "an int >= 1"))
    dropout = CNNTemplateParams.dropout

    # the defaults of the training params that recurrent networks change (set by the concrete
    # classes, whose __init__ runs last: TrainingParams comes before this mixin in their MRO)
    TRAINING_DEFAULTS = dict(clipNorm=1.0)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(cellType="rnn", embeddingDim=32, dropout=0.0, activation="tanh")


@with_accessors
class CNNParams(NeuralParams, CNNTemplateParams):
    pass


@with_accessors
class RNNParams(NeuralParams, RNNTemplateParams):
    def __init__(self, *args):
        super().__init__(*args)
        # maxIter: on the seed's text program (Rotten Tomatoes snippets, lazy Adam in the embedding)
        # test accuracy is flat from 8 epochs on (8: 0.738, 10: 0.724, 15: 0.725, 30: 0.717, one
        # run each): the last 20 of 30 epochs only overfit, at twice the time of the first 10
        self._setDefault(maxIter=10, **RNNTemplateParams.TRAINING_DEFAULTS)


@with_accessors
class CNNRegressorParams(RegressorParams, CNNTemplateParams, HasStandardization):
    pass


@with_accessors
class RNNRegressorParams(RegressorParams, RNNTemplateParams, HasStandardization):
    def __init__(self, *args):
        super().__init__(*args)
        # forecasting the next value from 24 past ones with an LSTM of 32 (benchmarks/forecast.py,
        # test RMSE, one run each): sunspots 29.6 at 10 epochs of 0.003, 23.1 at 30, 17.8 at 30
        # of 0.01; Nino 1+2 temperatures 0.511 at 30 of 0.003, 0.496 at 30 of 0.01
        self._setDefault(maxIter=30, stepSize=0.01, **RNNTemplateParams.TRAINING_DEFAULTS)


@with_accessors
class AutoEncoderParams(TrainingParams, TemplateParams, HasInputCol, EncodedImageParams):
    """inputCol: the features; codeCol: the code vector; reconstructionErrorCol: per-row MSE.
    (outputCol is codeCol's old name, read for one release with a deprecation warning: in CNN
    and RNN outputCol names the label column.)"""

    codeCol = Param(Params._dummy(), "codeCol", "column for each row's code vector (the encoder's output)",
                    typeConverter=TypeConverters.toString)
    outputCol = Param(Params._dummy(), "outputCol", "deprecated: codeCol's old name (when set and codeCol is not, "
                      "it names the code column, with a warning)", typeConverter=TypeConverters.toString)
    reconstructionErrorCol = Param(Params._dummy(), "reconstructionErrorCol",
                                   "column for each row's reconstruction error (mean squared error over the "
                                   "features); '' to leave it out", typeConverter=TypeConverters.toString)
    reconstructionCol = Param(Params._dummy(), "reconstructionCol",
                              "column for the reconstructed features (a vector); '' (default) to leave it out",
                              typeConverter=TypeConverters.toString)

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(inputCol="features", codeCol="code", reconstructionErrorCol="reconstructionError",
                         reconstructionCol="", activation="relu")

    def featuresColumn(self):
        return self.getInputCol()

    def codeColumn(self):
        """The code column in effect: codeCol, or the deprecated outputCol when only it is set
        (a stage saved under the old name loads so)."""
        if self.isSet(self.outputCol) and not self.isSet(self.codeCol):
            warnings.warn("AutoEncoder's outputCol is deprecated: it names the code column here but the label "
                          "column in CNN and RNN; use codeCol", DeprecationWarning, stacklevel=3)
            return self.getOrDefault(self.outputCol)
        return self.getOrDefault(self.codeCol)


class NetworkInputParams(EncodedImageParams):
    imageShape = CNNTemplateParams.imageShape


class HasNetwork(Params):
    network = Param(Params._dummy(), "network",
                    "the network to train: a spark_nn.nn.Sequential, a torch nn.Module (converted on the driver by "
                    "tracing: torch is needed there only), a fitted spark_nn model, or the path of a saved network "
                    "or model; its layers with trainable False (torch: requires_grad False) stay frozen",
                    typeConverter=check_network)


@with_accessors
class NetworkModelParams(NeuralParams, NetworkInputParams):
    """Params of a classifier of the user's network, fitted: its network is the model's own
    (NeuralModel.network), not a param."""


@with_accessors
class NetworkParams(NetworkModelParams, HasNetwork):
    """Params of the classifier that trains a network the user gives."""


@with_accessors
class NetworkRegressionModelParams(RegressorParams, NetworkInputParams):
    """Params of a regressor of the user's network, fitted."""


@with_accessors
class NetworkRegressorParams(NetworkRegressionModelParams, HasNetwork):
    """Params of the regressor that trains a network the user gives."""


@with_accessors
class FeaturizerParams(HasInputCol, HasOutputCol, EncodedImageParams):
    """Params of NetworkFeaturizer: which network, which of its layers, which columns."""

    network = HasNetwork.network
    imageShape = CNNTemplateParams.imageShape
    layer = Param(Params._dummy(), "layer",
                  "index of the layer (in the network's top-level list) whose output is written; -1 (default): "
                  "the input of the last Dense layer, the features a classifier's head reads",
                  typeConverter=TypeConverters.toInt)
    threadsPerTask = TrainingParams.threadsPerTask
    precision = TrainingParams.precision

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(inputCol="features", outputCol="embedding", layer=-1, threadsPerTask=0, precision="fp32")

    def featuresColumn(self):
        return self.getInputCol()
