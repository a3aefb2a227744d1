"""How the estimators get their network, shared by the classifiers and the regressors: the CNN
and RNN templates build it from ``layers`` (spark_nn.nn.builders), the network estimators take
the user's. Each says what it reads from the features column (``_input_spec``) and builds the
network for k outputs with the estimator's head loss (``_network``); what the outputs mean
(classes or targets) is the estimator's."""
import math

from spark_nn.ml.columns import encoded_image_shape, first_row_size, image_shape, seq_shape
from spark_nn.ml.interop import is_torch_module, network_copy
from spark_nn.ml.persistence import NetworkParamReader, NetworkParamWriter
from spark_nn.nn import builders
from spark_nn.nn.layers import Embedding


def pixel_shape(stage, df, col, kind, network_shape=None):
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


def image_spec(stage, df, col, kind, network_shape=None):
    """The input spec of an image-like features column (image structs, encoded files, pixel
    vectors/arrays), or None for another kind."""
    if kind == "encoded":
        decoding = stage.decoding()
        return {"kind": kind, "shape": encoded_image_shape(df, col, decoding["channels"], decoding["size"]),
                "size": decoding["size"]}
    if kind == "image":
        return {"kind": kind, "shape": image_shape(df, col)}
    if kind in ("vector", "array"):
        return {"kind": kind, "shape": pixel_shape(stage, df, col, kind, network_shape)}
    return None


class CNNTemplate:
    """Blocks of kernelSize x kernelSize convolution ('same' padding) + activation + poolSize
    max-pooling, then a dense output layer."""

    def _input_spec(self, df, col, kind):
        spec = image_spec(self, df, col, kind)
        if spec is None:
            raise ValueError(f"{type(self).__name__} needs images or pixel vectors/arrays in {col!r}; it holds {kind} "
                             f"data (use {type(self).__name__.replace('CNN', 'RNN')} for sequences)")
        return spec

    def _network(self, spec, k):
        return builders.cnn(self.getLayers(), k, tuple(spec["shape"]), activation=self.getActivation(),
                            kernel_size=self.getOrDefault(self.kernelSize), pool_size=self.getOrDefault(self.poolSize),
                            dropout=self.getOrDefault(self.dropout), seed=self.getSeed(), loss=self._head_loss(None),
                            standardize=spec.get("standardize"))


class RNNTemplate:
    """Stacked recurrent layers (cellType), the last feeding a dense output layer."""

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
        raise ValueError(f"{type(self).__name__} needs sequences in {col!r}; it holds {kind} data "
                         f"(use {type(self).__name__.replace('RNN', 'CNN')} for images)")

    def _network(self, spec, k):
        return builders.rnn(self.getLayers(), k, tuple(spec["shape"]),
                            cell=self.getOrDefault(self.cellType), activation=self.getActivation(),
                            vocab_size=spec.get("vocabSize"), embedding_dim=self.getOrDefault(self.embeddingDim),
                            dropout=self.getOrDefault(self.dropout), seed=self.getSeed(), loss=self._head_loss(None),
                            standardize=spec.get("standardize"))


class NetworkTemplate:
    """The network the user gives (``network``: a spark_nn.nn.Sequential, a torch module, a
    fitted model or a saved one's path), given the estimator's head loss; a network given in
    memory is saved beside the params."""

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
            raise ValueError(f"{type(self).__name__}: saving a torch network converts it, which needs its input "
                             "shape: set imageShape, or give network a spark_nn network")
        return NetworkParamWriter(self, self._given(shape))

    @classmethod
    def read(cls):
        return NetworkParamReader(cls)

    def _check_params(self):
        super()._check_params()
        if not self.isDefined(self.network):
            raise ValueError(f"{type(self).__name__}: set network, e.g. network=spark_nn.nn.Sequential([...], "
                             "input_shape) or a torch module")

    def _given(self, shape):
        """The network param as a Sequential of its own with the estimator's loss (a network
        saved with another loss keeps none of it). Torch modules are traced on the input shape;
        the conversion is made once per value and shape (a trace or a load can take seconds)
        and copied for each use."""
        value = self.getOrDefault(self.network)
        if shape is None and is_torch_module(value):
            raise ValueError(f"{type(self).__name__}: a torch network needs the input shape: use image structs, or "
                             "set imageShape=[channels, height, width] for vector/array pixels")
        cached = getattr(self, "_converted", None)
        if cached is None or cached[0] is not value or cached[1] != shape:
            cached = self._converted = (value, shape, network_copy(value, shape))
        net = network_copy(cached[2], shape)
        net.loss = self._head_loss(net.loss)
        return net

    def _known_shape(self):
        """The network's input shape when it is known without data (not a torch module), else None."""
        return None if is_torch_module(self.getOrDefault(self.network)) else list(self._given(None).input_shape)

    def _input_spec(self, df, col, kind):
        spec = image_spec(self, df, col, kind, self._known_shape())
        if spec is None and kind == "seq":
            spec = {"kind": kind, "shape": seq_shape(df, col)}
        elif spec is None and kind == "ids":
            spec = {"kind": kind, "shape": [first_row_size(df, col, kind)]}
        elif spec is None:
            raise ValueError(f"{type(self).__name__} cannot read {kind} data in {col!r}")
        net = self._given(tuple(spec["shape"]))
        if list(net.input_shape) != list(spec["shape"]):
            raise ValueError(f"the network takes inputs of shape {net.input_shape}, but the rows of {col!r} have "
                             f"shape {tuple(spec['shape'])}")
        if kind == "ids":
            if not isinstance(net.layers[0], Embedding):
                raise ValueError(f"{col!r} holds token ids, but the network's first layer is "
                                 f"{type(net.layers[0]).__name__}, not an Embedding")
            spec["vocabSize"] = net.layers[0].vocab_size
        if len(net.output_shape) != 1:
            raise ValueError(f"{type(self).__name__}: the network must end in a flat output (one value per class or "
                             f"target); this one's output shape is {net.output_shape}")
        return spec

    def _network_outputs(self, spec):
        return int(self._given(tuple(spec["shape"])).output_shape[0])

    def _network(self, spec, k):
        return self._given(tuple(spec["shape"]))
