"""A fitted model on disk: Spark ML's metadata JSON (params, plus the input spec and class
names) + data/model.json (architecture) + data/weights.npz. Nothing is pickled; a save writes a
temporary sibling directory and renames it into place, so a failed save leaves no half-written
model and overwrite replaces the old one only at the end."""
import json
import os
import shutil

from pyspark.ml.util import DefaultParamsReader, DefaultParamsWritable, DefaultParamsWriter, MLReader, MLWriter

from spark_nn.ml.spark_kind import is_connect
from spark_nn.nn.persist import atomic_directory, model_from_json, model_to_json, read_arrays, write_arrays

FORMAT_VERSION = 1


def metadata_session(rw):
    """What DefaultParamsWriter/Reader take for the metadata of an MLWriter or MLReader rw: the
    session (pyspark 4 accepts one, and a Spark Connect session has no SparkContext), or the
    SparkContext on a classic session (pyspark 3.5 wants that)."""
    spark = rw.sparkSession
    return spark if is_connect(spark) else spark.sparkContext


def local_path(path):
    """The local (or shared-mount) directory a Spark-style path names: file: URIs and plain paths;
    other schemes are an error."""
    if path.startswith("file:"):
        path = path[5:]
        while path.startswith("//"):
            path = path[1:]
    elif "://" in path:
        raise ValueError(f"spark_nn saves models to local or shared-mount paths; got {path!r}")
    return os.path.abspath(path)


class ParamsWriter(DefaultParamsWriter):
    """pyspark's writer of a params-only stage (metadata JSON), whose overwrite also works on
    Spark Connect: pyspark's asks the JVM to delete the old directory, which a Connect client
    cannot reach; there the old (local or shared-mount) directory is removed here."""

    def _handleOverwrite(self, path):
        if not is_connect(self.sparkSession):
            return super()._handleOverwrite(path)
        local = local_path(path)
        if os.path.isdir(local):
            shutil.rmtree(local)
        elif os.path.exists(local):
            os.remove(local)


class ParamsWritable(DefaultParamsWritable):
    """DefaultParamsWritable with ParamsWriter (save with overwrite on Spark Connect too)."""

    def write(self):
        return ParamsWriter(self)


class NetworkParamWriter(ParamsWriter):
    """An estimator whose ``network`` param holds an in-memory network: the metadata says the
    network was saved beside it, in ``network/`` (spark_nn.nn.save_model's format: JSON and
    .npz), and NetworkParamReader points the param there again."""

    SUBDIR = "network"

    def __init__(self, instance, network):
        super().__init__(instance)
        self.network = network

    def saveImpl(self, path):
        from spark_nn.nn.persist import save_model

        that = self.instance.copy()
        that._set(network=self.SUBDIR)
        DefaultParamsWriter.saveMetadata(that, path, metadata_session(self), extraMetadata={"networkSaved": True})
        save_model(self.network, os.path.join(local_path(path), self.SUBDIR), overwrite=True)


class NetworkParamReader(DefaultParamsReader):
    def load(self, path):
        instance = super().load(path)
        metadata = DefaultParamsReader.loadMetadata(path, metadata_session(self))
        if metadata.get("networkSaved"):
            instance._set(network=os.path.join(local_path(path), NetworkParamWriter.SUBDIR))
        return instance


class NeuralModelWriter(MLWriter):
    def __init__(self, instance):
        super().__init__()
        self.instance = instance

    def save(self, path):
        """Writes the whole model to a temporary directory and renames it into place, so a
        failed save leaves no half-written model and overwrite replaces the old one only at
        the end."""
        self.saveImpl(path)

    def saveImpl(self, path):
        local = local_path(path)
        inst = self.instance

        def fill(tmp):
            DefaultParamsWriter.saveMetadata(inst, tmp, metadata_session(self), extraMetadata=inst._extraMetadata())
            data = os.path.join(tmp, "data")
            os.makedirs(data)
            with open(os.path.join(data, "model.json"), "w") as f:
                json.dump(model_to_json(inst._net), f, indent=1)
            write_arrays(os.path.join(data, "weights.npz"), inst._net.weights_dict())

        atomic_directory(local, self.shouldOverwrite, fill)


class NeuralModelReader(MLReader):
    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path):
        local = local_path(path)
        if not os.path.isdir(os.path.join(local, "metadata")):
            raise ValueError(f"{path} is not a saved spark_nn model (no metadata directory)")
        try:
            metadata = DefaultParamsReader.loadMetadata(path, metadata_session(self))
        except Exception as e:  # Py4JJavaError from a corrupted file, JSON errors, ...
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ValueError(f"{path}: cannot read the model's metadata ({first[:300]})") from None
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        if metadata.get("class") != expected:
            raise ValueError(f"{path} holds a {metadata.get('class')}, not a {expected}")
        version = metadata.get("sparkNNFormatVersion")
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: spark_nn model format version {version!r} is not supported "
                             f"(this spark_nn reads version {FORMAT_VERSION})")
        instance = self.cls()
        instance._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(instance, metadata)
        try:
            with open(os.path.join(local, "data", "model.json")) as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: cannot read data/model.json ({e})") from None
        net = model_from_json(doc)
        net.load_weights_dict(read_arrays(os.path.join(local, "data", "weights.npz")))
        instance._setPayload(net, metadata["inputSpec"], metadata.get("classNames"))
        instance._loadExtra(metadata)
        return instance
