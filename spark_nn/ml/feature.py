"""Feature stages: images from a folder per class, fixed-length token sequences, and forecasting
windows of time series (TimeSeriesWindows, from spark_nn.ml.timeseries)."""
import functools
import os
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
from pyspark import keyword_only
from pyspark.ml import Estimator, Model, Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.param.shared import HasInputCol, HasOutputCol
from pyspark.ml.util import DefaultParamsReadable
from pyspark.sql import functions as F
from pyspark.sql.types import ArrayType, IntegerType, NumericType, StringType, StructField, StructType

from pyspark.ml.feature import Tokenizer  # noqa: F401  (the seed imports it from here)

from spark_nn.ml.base import NeuralEstimator, NeuralModel, _active_session, list_column
from spark_nn.ml.columns import (IMAGE_KINDS, check_uniform_shapes, encoded_image_shape, feature_kind,
                                 first_row_size, image_shape, shape_fields, uniform_image_shape)
from spark_nn.ml.images import convert_channels, resize_bilinear
from spark_nn.ml.interop import network_copy
from spark_nn.ml.params import AutoEncoderParams, FeaturizerParams, with_accessors
from spark_nn.ml.persistence import ParamsWritable, local_path
from spark_nn.ml.timeseries import TimeSeriesWindows
from spark_nn.nn import builders


def _transform_images(col, size, channels):
    """mapInArrow function rewriting the image struct column (resize and/or channels)."""

    def fn(batches):
        for b in batches:
            arr = b.column(col).combine_chunks() if isinstance(b.column(col), pa.ChunkedArray) else b.column(col)
            fields = dict(zip([f.name for f in arr.type], arr.flatten()))  # flatten() honours slicing
            hs, ws, cs = (fields[k].to_numpy(zero_copy_only=False) for k in ("height", "width", "nChannels"))
            data = fields["data"]
            new_data, nh, nw, nc = [], [], [], []
            for i in range(len(arr)):
                img = np.frombuffer(data[i].as_py(), dtype=np.uint8).reshape(hs[i], ws[i], cs[i])
                img = convert_channels(img, channels)
                if size is not None:
                    img = resize_bilinear(img, *size)
                new_data.append(np.ascontiguousarray(img).tobytes())
                nh.append(img.shape[0])
                nw.append(img.shape[1])
                nc.append(img.shape[2])
            modes = [{1: 0, 3: 16, 4: 24}[c] for c in nc]  # OpenCV type codes, as Spark writes them
            struct = pa.StructArray.from_arrays(
                [fields["origin"], pa.array(nh, pa.int32()), pa.array(nw, pa.int32()), pa.array(nc, pa.int32()),
                 pa.array(modes, pa.int32()), pa.array(new_data, pa.binary())],
                names=["origin", "height", "width", "nChannels", "mode", "data"])
            idx = b.schema.get_field_index(col)
            yield b.set_column(idx, col, struct)

    return fn


class ImageFeature:
    """Images from a folder per class (loadImages: image and label), or new images from any
    folder (readImages: image only)."""

    @staticmethod
    def loadImages(path, size=None, grayscale=None, recursive=False, imageCol="image", labelCol="label",
                   spark=None):
        """Reads ``path/<class name>/<image file>`` with Spark's image source into an ``image``
        struct column and a ``label`` column (class names sorted -> 0, 1, ...; the names are in
        the label column's metadata, so models and evaluators know them).

        size: (height, width) to resize every image to; without it, mixed sizes are an error.
        grayscale: True -> 1 channel, False -> 3 channels, None -> as stored.
        recursive: also read images in subfolders of each class folder."""
        spark = spark or _active_session()
        root = local_path(path) if "://" not in path or path.startswith("file:") else path
        if root.startswith("/") and not os.path.isdir(root):
            raise ValueError(f"image folder {path!r} does not exist")
        df = (spark.read.format("image").option("dropInvalid", True).option("recursiveFileLookup", True)
              .load(path))
        origin = F.col("image.origin")
        parent = F.regexp_extract(origin, r"^(.*)/[^/]+$", 1)
        # one job decodes every image (Spark's image source cannot read a file's path alone): it
        # gives the folders and, where images are neither resized nor converted, up to 6 image
        # shapes per folder for the size check below
        check = _as_stored(size, grayscale)
        if check:
            shape = F.struct(*shape_fields("image"))
            found = (df.groupBy(parent.alias("p"))
                     .agg(F.slice(F.array_sort(F.collect_set(shape)), 1, 6).alias("shapes")).collect())
        else:
            found = df.select(parent.alias("p")).distinct().collect()
        parents = sorted(r.p for r in found)
        if not parents:
            raise ValueError(f"no readable images under {path!r}")
        base = os.path.basename(root.rstrip("/"))
        cls_of = {}
        for p in parents:
            parts = unquote(p).split("/")  # origins are URIs: a space is %20, a Chinese class name %E7...
            if base not in parts:
                raise ValueError(f"cannot place {p!r} under {path!r}")
            rel = parts[len(parts) - 1 - parts[::-1].index(base) + 1:]
            if not rel:
                raise ValueError(f"images directly in {path!r} have no class folder; put each class's images in "
                                 "a subfolder named after the class")
            if len(rel) > 1 and not recursive:
                continue
            cls_of[p] = rel[0]
        classes = sorted(set(cls_of.values()))
        if len(classes) < 1:
            raise ValueError(f"no class folders with images under {path!r}")
        index = {c: float(i) for i, c in enumerate(classes)}
        mapping = F.create_map(*[x for p, c in sorted(cls_of.items()) for x in (F.lit(p), F.lit(index[c]))])
        meta = {"ml_attr": {"type": "nominal", "name": labelCol, "vals": classes}}
        df = (df.withColumn("__parent", parent).where(F.col("__parent").isin(list(cls_of)))
              .select(F.col("image").alias(imageCol), mapping[F.col("__parent")].alias(labelCol, metadata=meta)))
        shapes = sorted({(x.h, x.w, x.c) for r in found if r.p in cls_of for x in r.shapes}) if check else None
        return ImageFeature._resized(df, imageCol, size, grayscale, shapes)

    @staticmethod
    def readImages(path, size=None, grayscale=None, imageCol="image", spark=None):
        """Reads every image file under ``path`` (subfolders too) into an ``image`` struct
        column, without labels: new images for a fitted model's ``transform``, resized and
        converted as ``loadImages`` does (give the model's size and grayscale). Each image's
        file is its ``origin`` field (``image.origin``)."""
        spark = spark or _active_session()
        root = local_path(path) if "://" not in path or path.startswith("file:") else path
        if root.startswith("/") and not os.path.isdir(root):
            raise ValueError(f"image folder {path!r} does not exist")
        df = (spark.read.format("image").option("dropInvalid", True).option("recursiveFileLookup", True)
              .load(path).select(F.col("image").alias(imageCol)))
        if df.limit(1).count() == 0:
            raise ValueError(f"no readable images under {path!r}")
        return ImageFeature._resized(df, imageCol, size, grayscale)

    @staticmethod
    def _resized(df, imageCol, size, grayscale, shapes=None):
        """df's images at size and in grayscale or color; with neither, the images must share one
        shape (shapes: the (height, width, channels) found, where the caller has them)."""
        channels = None if grayscale is None else (1 if grayscale else 3)
        if size is not None:
            size = tuple(int(v) for v in size)
            if len(size) != 2 or min(size) < 1:
                raise ValueError(f"size must be (height, width) with positive ints, got {size}")
        if not _as_stored(size, grayscale):
            return df.mapInArrow(_transform_images(imageCol, size, channels), df.schema)
        # mixed sizes: a clear error now rather than at fit time
        if shapes is None:
            uniform_image_shape(df, imageCol)
        else:
            check_uniform_shapes(imageCol, shapes)
        return df


def _as_stored(size, grayscale):
    """Whether images stay as stored: neither resized nor converted (then they must share a shape)."""
    return size is None and grayscale is None


def _side(name):
    def convert(value):
        value = TypeConverters.toString(value)
        if value not in ("pre", "post"):
            raise ValueError(f"{name} must be 'pre' or 'post', got {value!r}")
        return value

    return convert


def _at_least(name, low):
    def convert(value):
        value = TypeConverters.toInt(value)
        if value < low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
        return value

    return convert


@with_accessors
class SequenceParams(HasInputCol, HasOutputCol):
    """Fixed-length sequences: length, and where short ones are padded and long ones cut."""

    sequenceLength = Param(Params._dummy(), "sequenceLength", "length of the output sequences (>= 1)",
                           typeConverter=_at_least("sequenceLength", 1))
    padding = Param(Params._dummy(), "padding", "where short sequences get zeros: 'pre' or 'post'",
                    typeConverter=_side("padding"))
    truncating = Param(Params._dummy(), "truncating", "where long sequences lose tokens: 'pre' or 'post'",
                       typeConverter=_side("truncating"))

    def __init__(self, *args):
        super().__init__(*args)
        self._setDefault(padding="pre", truncating="pre")

    def setParams(self, **kwargs):
        return self._set(**{k: v for k, v in kwargs.items() if v is not None})

    def _check_input(self, dataset):
        if not self.isDefined(self.sequenceLength):
            raise ValueError(f"{type(self).__name__}: set sequenceLength")
        col = self.getInputCol()
        if col not in dataset.columns:
            raise ValueError(f"column {col!r} is not in the DataFrame; its columns are {dataset.columns}")
        t = dataset.schema[col].dataType
        if not (isinstance(t, ArrayType) and isinstance(t.elementType, (StringType, NumericType))):
            raise ValueError(f"{type(self).__name__} input column {col!r} has type {t.simpleString()}; "
                             "expected an array of strings or numbers (e.g. Tokenizer output)")
        if self.getOutputCol() in dataset.columns:
            raise ValueError(f"output column {self.getOutputCol()!r} already exists in the DataFrame")
        return col

    def _fixed_length(self, ids, col, vocab):
        """Spark SQL expression: ids (array<int> column) padded/truncated to sequenceLength, with
        the metadata RNNClassifier reads (added with select: Spark Connect's withColumn drops an
        alias's metadata)."""
        length = self.getOrDefault(self.sequenceLength)
        n = F.size(ids)
        if self.getOrDefault(self.truncating) == "pre":
            kept = F.slice(ids, F.greatest(n - length + 1, F.lit(1)), length)
        else:
            kept = F.slice(ids, 1, length)
        pad = F.array_repeat(F.lit(0), F.greatest(F.lit(length) - F.size(kept), F.lit(0)))
        seq = F.concat(pad, kept) if self.getOrDefault(self.padding) == "pre" else F.concat(kept, pad)
        seq = F.when(F.col(col).isNull(), F.raise_error(F.lit(f"{type(self).__name__}: column {col!r} has a null "
                                                              "row"))).otherwise(seq).cast(ArrayType(IntegerType()))
        meta = {"spark_nn": {"vocabSize": vocab, "sequenceLength": length}}
        return seq.alias(self.getOutputCol(), metadata=meta)


@with_accessors
class SequenceAssembler(Transformer, SequenceParams, DefaultParamsReadable, ParamsWritable):
    """Array of tokens (strings or numbers) -> fixed-length array<int> of token ids.

    Ids come from feature hashing (Spark's Murmur3 ``hash``) into [1, vocabSize), 0 being the
    padding id, so no fit is needed. Sequences longer than sequenceLength lose tokens at the
    truncating side; shorter ones get zeros at the padding side ('pre' keeps the last tokens
    next to the network's output, as Keras' pad_sequences does by default). Computed by Spark
    SQL expressions in the JVM; the output column's metadata carries vocabSize and
    sequenceLength for RNNClassifier. See VocabularySequenceAssembler for ids from a vocabulary."""

    vocabSize = Param(Params._dummy(), "vocabSize", "number of ids, padding id 0 included (>= 2)",
                      typeConverter=_at_least("vocabSize", 2))

    @keyword_only
    def __init__(self, *, inputCol=None, outputCol=None, sequenceLength=None, vocabSize=None, padding=None,
                 truncating=None):
        super().__init__()
        # 2^15 ids: at 10000, hash collisions cost the seed's RNN program 3 points of test
        # accuracy on the Rotten Tomatoes snippets (vocabulary ~20k words; benchmarks/text_rnn.py)
        self._setDefault(vocabSize=32768)
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol=None, outputCol=None, sequenceLength=None, vocabSize=None, padding=None,
                  truncating=None):
        return super().setParams(**self._input_kwargs)

    def _transform(self, dataset):
        col = self._check_input(dataset)
        vocab = self.getOrDefault(self.vocabSize)
        ids = F.transform(F.col(col), lambda tok: (F.pmod(F.hash(tok), F.lit(vocab - 1)) + 1).cast("int"))
        return dataset.select("*", self._fixed_length(ids, col, vocab))


@with_accessors
class VocabularySequenceAssembler(Estimator, SequenceParams, DefaultParamsReadable, ParamsWritable):
    """Learns a vocabulary from a column of token arrays: tokens seen at least minCount times,
    the maxVocabSize most frequent (ties by token), get ids 2, 3, ... in that order; 0 is
    padding and 1 (oovId) every token outside the vocabulary. The model maps tokens to ids and
    pads/truncates like SequenceAssembler; it saves its vocabulary with its params."""

    minCount = Param(Params._dummy(), "minCount", "least number of occurrences to enter the vocabulary (>= 1)",
                     typeConverter=_at_least("minCount", 1))
    maxVocabSize = Param(Params._dummy(), "maxVocabSize", "most tokens in the vocabulary (>= 1)",
                         typeConverter=_at_least("maxVocabSize", 1))

    @keyword_only
    def __init__(self, *, inputCol=None, outputCol=None, sequenceLength=None, minCount=None, maxVocabSize=None,
                 padding=None, truncating=None):
        super().__init__()
        self._setDefault(minCount=1, maxVocabSize=20000)
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, inputCol=None, outputCol=None, sequenceLength=None, minCount=None, maxVocabSize=None,
                  padding=None, truncating=None):
        return super().setParams(**self._input_kwargs)

    def _fit(self, dataset):
        col = self._check_input(dataset)
        tokens = F.explode(F.col(col).cast(ArrayType(StringType()))).alias("t")
        counts = (dataset.select(tokens).where(F.col("t").isNotNull())
                  .groupBy("t").count().where(F.col("count") >= self.getOrDefault(self.minCount))
                  .orderBy(F.desc("count"), F.asc("t")).limit(self.getOrDefault(self.maxVocabSize)))
        vocabulary = [r["t"] for r in counts.collect()]
        if not vocabulary:
            raise ValueError(f"column {col!r} has no token occurring at least minCount="
                             f"{self.getOrDefault(self.minCount)} times")
        model = VocabularySequenceAssemblerModel(vocabulary=vocabulary)
        self._copyValues(model)
        return model


@with_accessors
class VocabularySequenceAssemblerModel(Model, SequenceParams, DefaultParamsReadable, ParamsWritable):
    """Maps tokens to vocabulary ids (0 padding, 1 out of vocabulary, 2... the vocabulary)."""

    vocabulary = Param(Params._dummy(), "vocabulary", "the tokens with ids 2, 3, ... in order",
                       typeConverter=TypeConverters.toListString)
    OOV_ID = 1

    @keyword_only
    def __init__(self, *, vocabulary=None):
        super().__init__()
        if vocabulary is not None:
            self._set(vocabulary=vocabulary)

    @property
    def vocabSize(self):
        return len(self.getOrDefault(self.vocabulary)) + 2

    def _transform(self, dataset):
        col = self._check_input(dataset)
        tmp = "__spark_nn_ids"
        vocab = pa.array(self.getOrDefault(self.vocabulary), pa.string())
        schema = StructType(list(dataset.schema.fields) + [StructField(tmp, ArrayType(IntegerType()))])
        string_type = isinstance(dataset.schema[col].dataType.elementType, StringType)

        def lookup(batches):
            import pyarrow.compute as pc

            for b in batches:
                arr = b.column(col)
                values = arr.flatten()
                if not string_type:
                    values = values.cast(pa.string())
                idx = pc.index_in(values, value_set=vocab)
                ids = pc.fill_null(pc.add(idx, pa.scalar(2, pa.int32())), pa.scalar(1, pa.int32()))
                offsets = pc.subtract(arr.offsets, arr.offsets[0])
                lists = pa.ListArray.from_arrays(offsets, ids, mask=arr.is_null())
                yield b.append_column(tmp, lists)

        out = dataset.mapInArrow(lookup, schema)
        return out.select("*", self._fixed_length(F.col(tmp), col, self.vocabSize)).drop(tmp)


def autoencoder_outputs(model, x, code_index):
    """code (vector), reconstruction error (double), reconstruction (vector) for a block."""
    n = len(x)
    flat = x.reshape(n, -1)
    if n == 0:
        width = int(np.prod(model.layers[code_index].output_shape))
        return (list_column(np.zeros((0, width))), pa.array([], pa.float64()),
                list_column(np.zeros((0, flat.shape[1]))))
    code = model.predict_layer_output(x, code_index).reshape(n, -1)
    recon = model.predict_output(x).reshape(n, -1)
    err = np.mean((recon.astype(np.float64) - flat) ** 2, axis=1)
    return list_column(code), pa.array(err), list_column(recon)


class AutoEncoderModel(NeuralModel, AutoEncoderParams):
    """A fitted AutoEncoder: writes the code vector (codeCol) and the reconstruction error
    (reconstructionErrorCol; large values flag unusual rows) and, when reconstructionCol is set,
    the reconstruction."""

    @property
    def codeLayer(self):
        return int(self._spec["codeLayer"])

    @property
    def codeSize(self):
        return int(np.prod(self._net.layers[self.codeLayer].output_shape))

    def _onnx_upto(self):
        return self.codeLayer  # the encoder: its output is the code

    def _output_columns(self):
        return [(self.codeColumn(), "vector"), (self.getOrDefault(self.reconstructionErrorCol), "double"),
                (self.getOrDefault(self.reconstructionCol), "vector")]

    def _outputs_fn(self):
        return functools.partial(autoencoder_outputs, code_index=self.codeLayer)

    def encode(self, x):
        """Codes for a numpy block (n, numFeatures)."""
        with self._scoring_precision():
            return self._net.predict_layer_output(np.asarray(x, dtype=np.float32), self.codeLayer)


class AutoEncoder(NeuralEstimator, AutoEncoderParams):
    """Dense autoencoder trained to reproduce its input (mean squared error): input ->
    layers[0] -> ... -> layers[-1] (the code) -> ... mirrored ... -> input size, the hidden
    layers using ``activation`` and the output layer linear.

    Features: vectors or numeric arrays (scale them to comparable ranges first, e.g. with
    StandardScaler or MinMaxScaler). Unsupervised: no label column."""

    takes_labels = False
    _model_class = AutoEncoderModel

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        self.setParams(**self._input_kwargs)

    def _input_spec(self, df, col, kind):
        if kind in IMAGE_KINDS:  # images reach the dense network flat: [channels x height x width]
            decoding = self.decoding()
            image = (encoded_image_shape(df, col, decoding["channels"], decoding["size"]) if kind == "encoded"
                     else image_shape(df, col))
            return {"kind": kind, "shape": [int(np.prod(image))], "image": image, "size": decoding["size"]}
        if kind not in ("vector", "array"):
            raise ValueError(f"AutoEncoder needs vectors, numeric arrays or images in {col!r}; it holds {kind} "
                             "data")
        return {"kind": kind, "shape": [first_row_size(df, col, kind)]}

    def _network(self, spec, num_classes):
        net, code_index = builders.autoencoder(spec["shape"][0], self.getLayers(), activation=self.getActivation(),
                                               seed=self.getSeed())
        spec["codeLayer"] = code_index
        return net


__all__ = ["AutoEncoder", "AutoEncoderModel", "ImageFeature", "SequenceAssembler", "TimeSeriesWindows", "Tokenizer",
           "VocabularySequenceAssembler", "VocabularySequenceAssemblerModel"]


def layer_outputs(model, x, index):
    """One layer's output, flat per row (a vector column), for a block."""
    width = int(np.prod(model.layers[index].output_shape))
    if len(x) == 0:
        return [list_column(np.zeros((0, width)))]
    return [list_column(model.predict_layer_output(x, index).reshape(len(x), width))]


class NetworkFeaturizer(FeaturizerParams, NeuralModel):
    """Writes one layer's output of a network as a vector column (``outputCol``, default
    'embedding'): by default the input of its last Dense layer, the features a classifier's head
    reads, e.g. a pretrained ResNet's 512 pooled features for a model of your own downstream.
    Scores in Arrow batches with ``mapInArrow``, as a model's transform does.

    network: a spark_nn.nn.Sequential, a torch module (traced on the driver; its input shape from
    image structs or ``imageShape``), a fitted spark_nn model or a saved one's path."""

    @keyword_only
    def __init__(self, **kwargs):
        super().__init__()
        for name in self._input_kwargs:
            if not self.hasParam(name):
                raise TypeError(f"NetworkFeaturizer has no param {name!r}")
        self._set(**self._input_kwargs)

    def layerIndex(self, net=None):
        """The index of the layer whose output is written."""
        net = net or self._net
        index = self.getOrDefault(self.layer)
        if index == -1:
            dense = [i for i, layer in enumerate(net.layers) if type(layer).__name__ == "Dense"]
            if not dense or dense[-1] == 0:
                raise ValueError("NetworkFeaturizer: the network has no Dense layer after another layer; set layer")
            return dense[-1] - 1
        if not 0 <= index < len(net.layers):
            raise ValueError(f"NetworkFeaturizer: layer {index} is outside the network's {len(net.layers)} layers")
        return index

    def _prepare(self, dataset):
        """The network (once) and the input spec for this dataset's features column."""
        col = self.getInputCol()
        kind = feature_kind(dataset, col)
        if self._net is None:
            if not self.isDefined(self.network):
                raise ValueError("NetworkFeaturizer: set network")
            shape = None
            if kind == "image":
                shape = image_shape(dataset, col)
            elif self.isDefined(self.imageShape):
                shape = self.getOrDefault(self.imageShape)
            net = network_copy(self.getOrDefault(self.network), None if shape is None else tuple(shape))
            self._setPayload(net, {"kind": kind, "shape": list(net.input_shape)})
            self.layerIndex()  # a bad layer is an error before any job
        spec = dict(self._spec)
        if kind == "encoded":
            decoding = self.decoding()
            spec.update(kind=kind, size=decoding["size"])
        return spec

    def _transform(self, dataset):
        self._spec = self._prepare(dataset)
        return super()._transform(dataset)

    def _output_columns(self):
        return [(self.getOutputCol(), "vector")]

    def _outputs_fn(self):
        return functools.partial(layer_outputs, index=self.layerIndex())

    @property
    def numFeatures(self):
        return int(np.prod(self._net.layers[self.layerIndex()].output_shape))

    def write(self):
        """Saves the network with the params (the network param itself is not metadata)."""
        if self._net is None:
            raise ValueError("NetworkFeaturizer: transform a DataFrame once (or load a saved featurizer) before "
                             "saving: the network is resolved against the input's shape")
        that = self.copy()
        that.clear(that.network)
        that._setPayload(self._net, self._spec)
        return super(NetworkFeaturizer, that).write()
