"""Feature columns -> float32 blocks.

The kind of a features column is read from the schema (before any Spark job):
- "image": Spark's image struct (spark.read.format("image"), ImageFeature.loadImages);
- "vector": pyspark.ml.linalg vectors;
- "array": array of numbers (pixels, a numeric sequence, or token ids when integral);
- "seq": array of arrays of numbers (a sequence of feature vectors);
- "encoded": binary, encoded image files (PNG, JPEG, ...: spark.read.format("binaryFile")'s
  content), decoded on the executors (spark_nn.ml.images, Pillow).
``feature_expr`` turns the column into something Arrow carries cheaply (the image struct and
the bytes as they are, vectors and arrays as array<float>), and ``arrow_to_block`` turns one
Arrow column of a record batch into a numpy block of shape (n,) + the model's input shape,
checking every row. 8-bit images ("image", "encoded") come out as float32 scaled to [0, 1], or
as their uint8 pixels (raw8) for the compact training blocks, which scale them per minibatch.
"""
import numpy as np
from pyspark.ml.functions import vector_to_array
from pyspark.ml.linalg import VectorUDT
from pyspark.sql import functions as F
from pyspark.sql.types import (ArrayType, BinaryType, ByteType, DecimalType, DoubleType, FloatType, IntegerType,
                               LongType, NumericType, ShortType, StructType)

from spark_nn import kernels
from spark_nn.ml.images import decode

IMAGE_FIELDS = {"origin", "height", "width", "nChannels", "mode", "data"}
INTEGRAL = (ByteType, ShortType, IntegerType, LongType)
SUPPORTED = ("an image struct (spark.read.format('image') / ImageFeature.loadImages), binary encoded image files "
             "(spark.read.format('binaryFile')), a vector, array<number> or array<array<number>>")
IMAGE_KINDS = ("image", "encoded")  # 8-bit pixels: compact (uint8) training blocks


def column_type(df, col):
    if col not in df.columns:
        raise ValueError(f"column {col!r} is not in the DataFrame; its columns are {df.columns}")
    return df.schema[col].dataType


def feature_kind(df, col):
    """'image', 'vector', 'array', 'ids' (integral arrays) or 'seq'; errors name the column."""
    t = column_type(df, col)
    if isinstance(t, StructType) and IMAGE_FIELDS <= set(t.fieldNames()):
        return "image"
    if isinstance(t, VectorUDT):
        return "vector"
    if isinstance(t, BinaryType):
        return "encoded"
    if isinstance(t, ArrayType):
        e = t.elementType
        if isinstance(e, INTEGRAL):
            return "ids"
        if isinstance(e, NumericType):
            return "array"
        if isinstance(e, ArrayType) and isinstance(e.elementType, NumericType):
            return "seq"
    raise ValueError(f"features column {col!r} has type {t.simpleString()}; expected {SUPPORTED}")


def check_label_column(df, col):
    t = column_type(df, col)
    if not isinstance(t, NumericType) or isinstance(t, DecimalType):
        raise ValueError(f"label column {col!r} has type {t.simpleString()}; expected a numeric type "
                         "(class indices 0, 1, ..., numClasses-1)")


def check_weight_column(df, col):
    t = column_type(df, col)
    if not isinstance(t, NumericType) or isinstance(t, DecimalType):
        raise ValueError(f"weight column {col!r} has type {t.simpleString()}; expected a numeric type (weights >= 0)")


def target_label_size(df, col):
    """None for a numeric label column (one target per row); for a vector or array<number>
    column, its first row's size (one small job), the number of targets every row must have."""
    t = column_type(df, col)
    if isinstance(t, NumericType) and not isinstance(t, DecimalType):
        return None
    if isinstance(t, VectorUDT) or (isinstance(t, ArrayType) and isinstance(t.elementType, NumericType)):
        return first_row_size(df, col, "vector" if isinstance(t, VectorUDT) else "array")
    raise ValueError(f"label column {col!r} has type {t.simpleString()}; expected a number, or a vector or "
                     "array of numbers for several targets per row")


def label_expr(df, col, size):
    """The label column as Arrow carries it: double, or array<double> of size values (size not None)."""
    if size is None:
        return F.col(col).cast("double")
    if isinstance(column_type(df, col), VectorUDT):
        return vector_to_array(F.col(col), "float64")
    return F.col(col).cast(ArrayType(DoubleType()))


def label_block(arr, size, col, base=0):
    """One Arrow label column -> float64 (n,) (size None) or (n, size); a null row (or a null
    inside one) is NaN, which the pass treats as an invalid row; an array of another size is
    an error naming the row."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if size is None:
        return arr.to_numpy(zero_copy_only=False).astype(np.float64)
    lengths = np.where(np.asarray(arr.is_null()), size, _row_lengths(arr))
    bad = lengths != size
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"label column {col!r}: row {base + first} of this partition has {lengths[first]} values, "
                         f"expected {size} (every row needs the same number of targets)")
    out = np.full((len(arr), size), np.nan)
    valid = np.asarray(arr.is_valid())
    if valid.any():
        rows = arr.filter(pa.array(valid))
        out[valid] = rows.flatten().to_numpy(zero_copy_only=False).astype(np.float64).reshape(-1, size)
    return out


def feature_expr(col, kind):
    """A column expression Arrow carries cheaply."""
    c = F.col(col)
    if kind == "vector":
        return vector_to_array(c, "float32")
    if kind == "array":
        return c.cast(ArrayType(FloatType()))
    if kind == "ids":
        return c.cast(ArrayType(LongType()))
    if kind == "seq":
        return c.cast(ArrayType(ArrayType(FloatType())))
    return c  # image struct


def _row_lengths(arr):
    offsets = np.asarray(arr.offsets)
    return offsets[1:] - offsets[:-1]


def _fail_rows(what, bad, base):
    first = int(np.flatnonzero(bad)[0])
    raise ValueError(f"{what} (row {base + first} of this partition, {int(bad.sum())} such rows)")


def _check_lengths(arr, col, expected_len, base):
    if arr.null_count:
        _fail_rows(f"features column {col!r} has null values", np.asarray(arr.is_null()), base)
    lengths = _row_lengths(arr)
    bad = lengths != expected_len
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"features column {col!r}: row {base + first} of this partition has {lengths[first]} "
                         f"values, expected {expected_len} (all rows must have the same size)")


def _flat_list(arr, col, expected_len, base):
    """ListArray of equal-length rows -> (n, expected_len) numpy, checking nulls and lengths."""
    _check_lengths(arr, col, expected_len, base)
    values = arr.flatten()
    if values.null_count:
        raise ValueError(f"features column {col!r} has null elements inside its arrays")
    return values.to_numpy(zero_copy_only=False).reshape(len(arr), expected_len)


def binary_values(data):
    """The bytes of all rows of an Arrow (large) binary array, concatenated, without copying."""
    import pyarrow as pa

    bufs = data.buffers()
    off_type = np.int64 if pa.types.is_large_binary(data.type) else np.int32
    offsets = np.frombuffer(bufs[1], dtype=off_type)[data.offset:data.offset + len(data) + 1]
    if bufs[2] is None:
        return np.zeros(0, dtype=np.uint8)
    return np.frombuffer(bufs[2], dtype=np.uint8)[offsets[0]:offsets[-1]]


def _decoded(arr, spec, col, base, paths):
    """uint8 (n, h, w, c) of a binary column of encoded image files; errors name the row (and
    the file, given the paths column)."""
    c, h, w = spec.get("image", spec["shape"])
    size = spec.get("size")
    out = np.empty((len(arr), h, w, c), dtype=np.uint8)
    for i, data in enumerate(arr):
        where = f"row {base + i} of this partition" + (f" ({paths[i].as_py()})" if paths is not None else "")
        data = data.as_py()
        if data is None:
            raise ValueError(f"features column {col!r}: {where} is null")
        try:
            img = decode(data, c, size)
        except ValueError as e:
            raise ValueError(f"features column {col!r}: {where}: {e}") from None
        if img.shape != (h, w, c):
            raise ValueError(f"features column {col!r}: {where} is a {img.shape[0]}x{img.shape[1]} image, "
                             f"expected {h}x{w}; set imageSize=[height, width] to resize every file")
        out[i] = img
    return out


def _pixels(arr, spec, col, base, paths):
    """uint8 (n, c, h, w) of an image struct or encoded-file column, every row checked."""
    n = len(arr)
    c, h, w = spec.get("image", spec["shape"])
    if spec["kind"] == "encoded":
        return np.ascontiguousarray(_decoded(arr, spec, col, base, paths).transpose(0, 3, 1, 2))
    if arr.null_count:
        _fail_rows(f"image column {col!r} has null images", np.asarray(arr.is_null()), base)
    fields = dict(zip([f.name for f in arr.type], arr.flatten()))  # flatten() honours slicing
    dims = [fields[k].to_numpy(zero_copy_only=False) for k in ("height", "width", "nChannels")]
    bad = (dims[0] != h) | (dims[1] != w) | (dims[2] != c)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(f"image column {col!r}: row {base + first} of this partition is "
                         f"{dims[0][first]}x{dims[1][first]} with {dims[2][first]} channels, expected "
                         f"{h}x{w} with {c}; load the images with ImageFeature.loadImages(size=...)")
    raw = binary_values(fields["data"])
    if raw.size != n * h * w * c:
        raise ValueError(f"image column {col!r}: image data does not match height x width x nChannels")
    return np.ascontiguousarray(raw.reshape(n, h, w, c).transpose(0, 3, 1, 2))


def arrow_to_block(arr, spec, col, base=0, raw8=False, paths=None):
    """One Arrow column (a ChunkedArray or Array) -> numpy block (n,) + spec['shape'].

    spec: {"kind": ..., "shape": [model input shape]} (image kinds: "image": [c, h, w] when the
    network takes them flat; encoded files: "size" [h, w] to resize to or None); raw8: 8-bit
    images as their uint8 pixels instead of float32 / 255; paths: an Arrow array of the rows'
    file names, for errors. Errors name the column and the row."""
    import pyarrow as pa

    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if isinstance(paths, pa.ChunkedArray):
        paths = paths.combine_chunks()
    kind, shape = spec["kind"], tuple(spec["shape"])
    n = len(arr)
    if kind in IMAGE_KINDS:
        pixels = _pixels(arr, spec, col, base, paths)  # (n, c, h, w) uint8
        # Spark stores rows of pixels with interleaved channels (BGR order for colour)
        if raw8:
            return pixels.reshape((n,) + shape)
        return kernels.gather_scaled(pixels).reshape((n,) + shape)
    if kind == "ids":
        return _flat_list(arr, col, shape[0], base).astype(np.int64, copy=False)
    if kind in ("vector", "array"):
        size = int(np.prod(shape))
        return np.ascontiguousarray(_flat_list(arr, col, size, base), dtype=np.float32).reshape((n,) + shape)
    if kind == "seq":
        t, d = shape
        _check_lengths(arr, col, t, base)
        steps = arr.flatten()
        bad = np.asarray(steps.is_null()) | (_row_lengths(steps) != d)
        if bad.any():  # named by row and step (the flattened steps' index is no row of the DataFrame)
            first = int(np.flatnonzero(bad)[0])
            got = "a null" if not steps[first].is_valid else f"{_row_lengths(steps)[first]} values"
            raise ValueError(f"features column {col!r}: step {first % t} of row {base + first // t} of this partition "
                             f"has {got}, expected {d} values per step")
        block = _flat_list(steps, col, d, 0)
        return np.ascontiguousarray(block, dtype=np.float32).reshape(n, t, d)
    raise ValueError(f"unknown feature kind {kind!r}")


def _reads_python_rows(df):
    """Whether df's plan reads a Python RDD (a classic session's createDataFrame of local rows)."""
    try:
        return "LogicalRDD" in df._jdf.queryExecution().analyzed().toString()
    except Exception:  # Spark Connect (its local rows travel as Arrow), or no JVM plan
        return False


def first_row(df):
    """A row of df (the first, where that is cheap), or None when it has none. A probe of ours
    must not stop a Python worker mid-stream: first() on a DataFrame of local rows (a Python RDD
    on a classic session) ends the task while its Python worker still writes, and PySpark's
    daemon prints that worker's BrokenPipeError, a traceback in the user's script. Such rows
    came from the driver's memory, so reading them all once is cheap: a mapInArrow keeps each
    partition's first row and reads the rest to its end (one job, no shuffle), and the first of
    those is df's first row."""
    if not _reads_python_rows(df):
        return df.first()
    rows = df.mapInArrow(_first_of_partition, df.schema).collect()
    return rows[0] if rows else None


def _first_of_partition(batches):
    found = False
    for b in batches:  # every batch read: the Python worker that feeds this task writes to its end
        if not found and b.num_rows:
            found = True
            yield b.slice(0, 1)


def _no_rows(df, col, what="features column"):
    """The error for a column without a non-null row: an empty DataFrame says so."""
    if first_row(df.select(F.lit(1).alias("one"))) is None:
        return ValueError("the DataFrame is empty: there is nothing to train on")
    return ValueError(f"{what} {col!r} has no non-null rows")


def first_row_size(df, col, kind):
    """Length of the first non-null row of an array/vector column (one small job)."""
    expr = F.size(feature_expr(col, kind))
    row = first_row(df.where(F.col(col).isNotNull()).select(expr.alias("n")))
    if row is None:
        raise _no_rows(df, col)
    return int(row["n"])


def shape_fields(col):
    """The height, width and channel count of image struct column col, as columns h, w, c."""
    return [F.col(f"{col}.height").alias("h"), F.col(f"{col}.width").alias("w"), F.col(f"{col}.nChannels").alias("c")]


def image_shape(df, col):
    """(channels, height, width) of an image column from its first row (one small job); the pass
    that makes the training blocks checks every other row against it, naming the first that
    differs."""
    r = first_row(df.where(F.col(col).isNotNull()).select(*shape_fields(col)))
    if r is None:
        raise _no_rows(df, col, "image column")
    return [int(r.c), int(r.h), int(r.w)]


def uniform_image_shape(df, col):
    """(channels, height, width) of an image column whose images must all share it; mixed sizes
    are an error listing them (one job over every row)."""
    shapes = df.select(*shape_fields(col)).distinct().limit(6).collect()
    return check_uniform_shapes(col, [tuple(r) for r in shapes])


def check_uniform_shapes(col, shapes):
    """[channels, height, width] of the one (height, width, channels) in shapes, the distinct
    shapes found in image column col; none or several are an error."""
    if not shapes:
        raise ValueError(f"image column {col!r} has no rows")
    if len(shapes) > 1:
        listed = ", ".join(f"{h}x{w}x{c}" for h, w, c in shapes[:5])
        raise ValueError(f"image column {col!r} mixes image sizes/channels ({listed}); "
                         "load them with ImageFeature.loadImages(size=(height, width)) to resize")
    h, w, c = shapes[0]
    return [int(c), int(h), int(w)]


def encoded_image_shape(df, col, channels, size=None):
    """[channels, height, width] of a binary column of encoded image files: size (h, w) when
    given, else the first non-null file's, decoded on an executor (one small job; the driver
    needs no decoder). The pass that makes the training blocks checks every other file."""
    if size is not None:
        return [int(channels)] + [int(v) for v in size]
    import pyarrow as pa

    def shape_of(batches):
        for b in batches:
            for data in b.column(0):
                try:
                    h, w, _ = decode(data.as_py(), channels).shape
                    yield pa.RecordBatch.from_arrays([pa.array([h]), pa.array([w]), pa.array([None], pa.string())],
                                                     names=["h", "w", "error"])
                except ValueError as e:
                    yield pa.RecordBatch.from_arrays([pa.array([0]), pa.array([0]), pa.array([str(e)])],
                                                     names=["h", "w", "error"])
                return

    first = df.where(F.col(col).isNotNull()).select(col).limit(1)
    rows = first.mapInArrow(shape_of, "h long, w long, error string").collect()  # one row: read to its end
    row = rows[0] if rows else None
    if row is None:
        raise _no_rows(df, col)
    if row.error:
        raise ValueError(f"features column {col!r}: the first file: {row.error}")
    return [int(channels), int(row.h), int(row.w)]


def seq_shape(df, col):
    """(steps, features) of an array<array<number>> column from its first row."""
    row = first_row(df.where(F.col(col).isNotNull()).select(F.size(col).alias("t"), F.size(F.col(col)[0]).alias("d")))
    if row is None:
        raise _no_rows(df, col)
    return [int(row["t"]), int(row["d"])]

