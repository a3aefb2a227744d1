"""Training data as one block per partition, made in a single pass over the data.

A block holds the rows as the network takes them: float32, token ids as int64, and 8-bit images
(image structs, decoded files) as their uint8 pixels, a quarter of float32's bytes on disk and
in the page cache, which ``batch_rows`` scales to float32 per minibatch in C (csrc/convert.c),
to the same bits as float32 blocks scaled in the pass.

One Spark job (``materialize``) reads the features and labels, deals the rows round-robin over
as many partitions as cores by their place in the input (deal.py), checks every row (an error
names the row by that place: row j of input partition q), splits off the validation rows and
writes each partition's block. Where the block lives:

- resident (default): in the executor's Spark local directory (``SPARK_LOCAL_DIRS``, the block
  manager's own folder, removed by Spark when the executor stops) as raw files that every step
  reads by rows (``RowFile``), so a step's task reads only its minibatch rows: O(batch), not
  O(partition), and a worker's memory does not grow with its partition. The
  persisted RDD holds only a small handle per partition. Spark places and recomputes handle and
  file together (the handle is derived from the data by lineage, so an executor lost with its
  files recomputes both elsewhere); a task whose handle has no file fails with
  ``RESIDENT_LOST`` in its message, and the driver materializes the data again.
- cached: the arrays themselves in Spark's block manager (every step then ships and
  deserializes its partition's whole block to the Python worker).

On a classic session the blocks are a persisted RDD of handles (ClassicTrainingData; rounds use
RDD treeAggregate); on a Spark Connect session, a persisted DataFrame of the same handles, one
row per partition (ConnectTrainingData; rounds are queries over it). ``TrainingData(...)``
picks the one for the DataFrame's session; the pass is the same ``mapInArrow`` in both.

The same pass returns per-partition statistics (rows, labels' range and non-integral
values, largest token id) from which the driver checks the labels and sizes the network, so a
fit needs no other pass over the data.
"""
import json
import os
import re
import shutil
import uuid

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel, TaskContext
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, StringType, StructField, StructType

from spark_nn import kernels
from spark_nn.ml.columns import IMAGE_KINDS, arrow_to_block, feature_expr, label_block, label_expr
from spark_nn.ml.spark_kind import application_id, default_parallelism, is_connect, num_partitions
from spark_nn.ml.training.deal import deal_rows, input_place
from spark_nn.ml.training.errors import RESIDENT_LOST, ResidentBlockLost, unwrap_errors
from spark_nn.ml.training.worker_imports import read_archives_on_change


# 8-bit images stay uint8 in the blocks; False keeps them as float32 (a benchmark's "before")
COMPACT_8BIT = True

_SCHEMA = StructType([StructField("x", BinaryType()), StructField("y", BinaryType()),
                      StructField("meta", StringType())])
_ARROW_SCHEMA = pa.schema([("x", pa.binary()), ("y", pa.binary()), ("meta", pa.string())])


def local_dir():
    """This executor's Spark local directory (the first of SPARK_LOCAL_DIRS, which Spark sets for
    its Python workers); the system's temporary folder outside Spark."""
    dirs = os.environ.get("SPARK_LOCAL_DIRS", "")
    return dirs.split(",")[0] if dirs else os.environ.get("TMPDIR", "/tmp")


def _rows(a):
    """a as a 2-D (rows, values per row) array; also for no rows, where reshape(0, -1) fails."""
    return a.reshape(len(a), int(np.prod(a.shape[1:], dtype=np.int64)))


_NO_LABELS = {"lo": None, "hi": None, "frac": 0, "frac_value": None}


def _label_stats(y, ytrain):
    """What the driver needs to check a partition's labels and scale regression targets without
    another pass: the range and non-integral values (class ids) of every label y (the rows with
    a null or NaN label are gone by now: an error, or skipped), and per target the count, mean
    and sum of squared deviations of the training rows' ytrain (merged across partitions as
    Chan et al.'s)."""
    flat = _rows(y).ravel()
    frac = flat != np.floor(flat)
    checks = {"lo": float(flat.min()) if len(flat) else None, "hi": float(flat.max()) if len(flat) else None,
              "frac": int(frac.sum()), "frac_value": float(flat[frac][0]) if frac.any() else None}
    return dict(checks, **_moments(_rows(ytrain)))


def _moments(v):
    """count, mean and sum of squared deviations of each column of v (rows x columns)."""
    if not len(v):
        return {"count": 0, "mean": None, "m2": None}
    v = np.asarray(v, dtype=np.float64)
    mean = v.mean(axis=0)
    return {"count": len(v), "mean": mean.tolist(), "m2": ((v - mean) ** 2).sum(axis=0).tolist()}


def _merge_moments(a, b):
    """The moments of two parts together (Chan, Golub and LeVeque's pairwise update)."""
    if not b["count"]:
        return dict(a)
    if not a["count"]:
        return dict(b)
    na, nb = a["count"], b["count"]
    ma, mb = np.array(a["mean"]), np.array(b["mean"])
    delta, n = mb - ma, na + nb
    return {"count": n, "mean": (ma + delta * nb / n).tolist(),
            "m2": (np.array(a["m2"]) + np.array(b["m2"]) + delta ** 2 * na * nb / n).tolist()}


def _merge_label_moments(parts):
    out = _moments([])
    for p in parts:
        out = _merge_moments(out, p)
    return out


def _feature_moments(x, axis):
    """The moments of each feature of a block's rows (n, *shape): axis is the feature axis of a
    row (-1: a step's features; 0: an image's channels), every other position a sample."""
    x = np.moveaxis(np.asarray(x), axis % (x.ndim - 1) + 1, -1)
    return _moments(x.reshape(-1, x.shape[-1]))


def _merge_label_stats(parts):
    out = dict(_NO_LABELS, **_moments([]))
    for s in parts:
        out["frac"] += s["frac"]
        if out["frac_value"] is None:
            out["frac_value"] = s["frac_value"]
        for key, pick in (("lo", min), ("hi", max)):
            if s[key] is not None:
                out[key] = s[key] if out[key] is None else pick(out[key], s[key])
        out.update(_merge_moments(out, s))
    return out


class _PartitionWriter:
    """Accumulates one partition's train and validation rows, into files or in memory."""

    def __init__(self, directory, pid, attempt, dtype):
        self.dtype, self.pid = dtype, pid
        self.files = None
        if directory is not None:
            os.makedirs(directory, exist_ok=True)
            base = os.path.join(directory, f"part-{pid:05d}")
            self.final = {k: f"{base}.{k}" for k in ("x", "y", "xv", "yv")}
            self.tmp = {k: f"{p}.tmp{attempt}" for k, p in self.final.items()}
            self.files = {k: open(p, "wb") for k, p in self.tmp.items()}
        self.chunks = {k: [] for k in ("x", "y", "xv", "yv")}
        self.n, self.nv = 0, 0

    def add(self, x, y, val):
        x = np.ascontiguousarray(x, dtype=self.dtype)
        y = np.ascontiguousarray(y, dtype=np.float64)
        for key, xs, ys in (("", x[~val], y[~val]), ("v", x[val], y[val])):
            if self.files is not None:
                xs.tofile(self.files["x" + key])
                ys.tofile(self.files["y" + key])
            else:
                self.chunks["x" + key].append(xs.tobytes())
                self.chunks["y" + key].append(ys.tobytes())
        self.n += int((~val).sum())
        self.nv += int(val.sum())

    def close(self):
        """The handle (resident) or None; files appear under their final names only when whole."""
        if self.files is None:
            return None
        for f in self.files.values():
            f.close()
        for k in self.final:
            os.replace(self.tmp[k], self.final[k])
        return self.final

    def abort(self):
        if self.files is not None:
            for k, f in self.files.items():
                f.close()
                if os.path.exists(self.tmp[k]):
                    os.remove(self.tmp[k])


class RowFile:
    """An array of rows in a resident block's file, read by rows with pread: only the rows a
    step asks for enter the Python worker. The file's pages stay in the operating system's page
    cache, outside the worker's memory (a memory map would count every page it touched in the
    worker's RSS, and the whole file in the address space that spark.executor.pyspark.memory
    limits), so a partition can be far larger than a worker's memory."""

    def __init__(self, path, dtype, shape, n):
        if not os.path.exists(path):
            raise ResidentBlockLost(f"{RESIDENT_LOST}: {path} is gone")
        self.path, self.dtype, self.row_shape, self.n = path, np.dtype(dtype), tuple(shape), int(n)
        self.shape = (self.n,) + self.row_shape
        self.row_bytes = self.dtype.itemsize * int(np.prod(self.row_shape, dtype=np.int64))
        self._fd = None

    def __len__(self):
        return self.n

    def _file(self):
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                raise ResidentBlockLost(f"{RESIDENT_LOST}: {self.path} is gone") from None
        return self._fd

    def take(self, rows):
        """The rows (int array) as a new array, in that order."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows),) + self.row_shape, dtype=self.dtype)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise IndexError(f"rows outside [0, {self.n}) of {self.path}")
        view, fd, size = memoryview(out.reshape(-1).view(np.uint8)), self._file(), self.row_bytes
        for i, r in enumerate(rows.tolist()):
            if os.preadv(fd, [view[i * size:(i + 1) * size]], r * size) != size:
                raise ResidentBlockLost(f"{RESIDENT_LOST}: {self.path} is shorter than its {self.n} rows")
        return out

    def read(self, start=0, stop=None):
        """Rows start..stop-1 in one read."""
        stop = self.n if stop is None else min(stop, self.n)
        out = np.empty((max(stop - start, 0),) + self.row_shape, dtype=self.dtype)
        if out.size:
            got = os.preadv(self._file(), [memoryview(out.reshape(-1).view(np.uint8))], start * self.row_bytes)
            if got != out.nbytes:
                raise ResidentBlockLost(f"{RESIDENT_LOST}: {self.path} is shorter than its {self.n} rows")
        return out

    def __getitem__(self, rows):
        if isinstance(rows, slice):
            start, stop, step = rows.indices(self.n)
            return self.read(start, stop) if step == 1 else self.take(np.arange(start, stop, step))
        return self.take(rows)

    def __array__(self, dtype=None, copy=None):
        out = self.read()
        return out if dtype is None else out.astype(dtype)

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()


def open_block(block):
    """(x, y, x_val, y_val) of a partition's block: RowFiles for a resident block (reading rows
    of them reads only those rows), arrays for a cached one."""
    shape, dtype = tuple(block["shape"]), np.dtype(block["dtype"])
    if "files" in block:
        f, n, nv, yshape = block["files"], block["n"], block["nv"], tuple(block.get("label_shape", ()))
        return (RowFile(f["x"], dtype, shape, n), RowFile(f["y"], np.float64, yshape, n),
                RowFile(f["xv"], dtype, shape, nv), RowFile(f["yv"], np.float64, yshape, nv))
    return block["x"], block["y"], block["xv"], block["yv"]


def block_from_row(x, y, meta):
    """A partition's block from its handle row (x, y: the raw bytes of a cached block, empty
    for a resident one; meta: the JSON the pass wrote)."""
    block = json.loads(meta)
    if block["files"] is None:
        del block["files"]
        shape, dt = tuple(block["shape"]), np.dtype(block["dtype"])
        n, nv = block["n"], block["nv"]
        xs = np.frombuffer(x, dtype=dt).reshape((n + nv,) + shape)
        ys = np.frombuffer(y, dtype=np.float64).reshape((n + nv,) + tuple(block.get("label_shape", ())))
        block.update(x=xs[:n], xv=xs[n:], y=ys[:n], yv=ys[n:])
    return block


def blocks_of_batches(batches):
    """The blocks held by Arrow record batches of handle rows (a Connect round's input)."""
    for b in batches:
        xs, ys, metas = (b.column(i) for i in range(3))
        for i in range(b.num_rows):
            yield block_from_row(xs[i].as_py(), ys[i].as_py(), metas[i].as_py())


def labels_and_weights(y, weight_scale=None):
    """(labels, float32 weights or None) of a block's label rows: with weight_scale, the rows
    carry their weight as the last column (weightCol), returned times weight_scale (which
    makes the training rows' weights average 1); a one-target label comes back flat."""
    if weight_scale is None:
        return y, None
    y = np.asarray(y)
    labels = y[:, 0] if y.shape[1] == 2 else y[:, :-1]
    return labels, (y[:, -1] * weight_scale).astype(np.float32)


def batch_rows(x, rows=None):
    """float32 rows of a block's array (an ndarray or a RowFile; rows None: all), as the network
    takes them: a uint8 block's pixels divided by 255 in the same pass as the gather from
    memory (kernels.gather_scaled), or right after a RowFile's read."""
    if isinstance(x, RowFile):
        x, rows = (x.read() if rows is None else x.take(rows)), None
    if x.dtype == np.uint8:
        return kernels.gather_scaled(x, rows, 255.0)
    return np.asarray(x) if rows is None else x[rows]


def delete_block(block):
    """Removes a resident block's files, and the fit's folder once it is empty."""
    paths = list(block.get("files", {}).values())
    for path in paths:
        if os.path.exists(path):
            os.remove(path)
    if paths:
        try:
            os.rmdir(os.path.dirname(paths[0]))
        except OSError:  # another partition's files are still there
            pass


_ROW_OF_PARTITION = re.compile(r"row (\d+) of this partition")


def _name_input_rows(message, places, base):
    """A conversion error's 'row r of this partition' (r counted in the dealt partition, from
    base at this batch) as where the row is in the DataFrame the user gave: 'row j of input
    partition q'."""
    def place(match):
        i = int(match.group(1)) - base
        if not 0 <= i < len(places):
            return match.group(0)
        q, j = input_place(places[i])
        return f"row {j} of input partition {q}"

    return _ROW_OF_PARTITION.sub(place, message)


class TrainingData:
    """The persisted per-partition blocks of one fit and what the pass that made them found.
    ``TrainingData(df, ...)`` makes a ClassicTrainingData or a ConnectTrainingData, by df's
    session: they differ in how the handles are kept, listed and their files deleted.

    sizes / val_sizes: training / validation rows per partition; stats: the merged label
    statistics ("rows" counts every row read, skipped ones included; "max_id" for token ids)."""

    connect = False  # whether the handles are a Connect DataFrame (the trainer picks its rounds by it)

    def __new__(cls, df, *args, **kwargs):
        if cls is TrainingData:
            cls = ConnectTrainingData if is_connect(df.sparkSession) else ClassicTrainingData
        return super().__new__(cls)

    def __init__(self, df, feature_col, label_col, spec, handle_invalid="error", *, val_fraction=0.0,
                 val_indicator=None, seed=0, resident=True, num_partitions=None, label_size=None,
                 feature_axis=None, weight_col=None):
        self.df, self.feature_col, self.label_col, self.label_size = df, feature_col, label_col, label_size
        self.feature_axis = feature_axis  # not None: the pass also returns the features' moments on that axis
        self.weight_col = weight_col  # per-row weights, stored as the label rows' last column
        self.spec, self.handle_invalid = dict(spec), handle_invalid
        self.val_fraction, self.val_indicator, self.seed = float(val_fraction), val_indicator, int(seed)
        self.resident = bool(resident)
        self.spark = df.sparkSession
        self.num_partitions = num_partitions or default_parallelism(self.spark)
        self._kept = self.directory = None  # the persisted handles (_persist's), this fit's folder
        self.materialize()

    @property
    def has_validation(self):
        return bool(self.val_indicator) or self.val_fraction > 0

    def materialize(self):
        """Runs the one pass: deals the rows over the cores, converts, checks, splits and writes
        every partition's block (one Spark job of two stages: the deal's shuffle, then the
        conversion)."""
        self.directory = (f"spark_nn/{application_id(self.spark)}-{uuid.uuid4().hex[:12]}"
                          if self.resident else None)
        handles, stats = self._persist(self._build())
        try:
            blocks = unwrap_errors(stats)
        except BaseException:
            handles.unpersist()
            self._remove_directory()
            raise
        self._kept = handles
        parts = [(b["n"], b["nv"], b["stats"]) for b in blocks]
        self.sizes = [p[0] for p in parts]
        self.val_sizes = [p[1] for p in parts]
        stats = _merge_label_stats([p[2]["labels"] for p in parts])
        stats["rows"] = sum(p[2]["rows"] for p in parts)
        ids = [p[2]["max_id"] for p in parts if p[2]["max_id"] is not None]
        stats["max_id"] = max(ids) if ids else None
        stats["features"] = _moments([])
        stats["weights"] = _moments([])
        for p in parts:
            stats["features"] = _merge_moments(stats["features"], p[2]["features"])
            stats["weights"] = _merge_moments(stats["weights"], p[2]["weights"])
        # weights times weight_scale average 1 over the training rows (None: no weightCol)
        mean = stats["weights"]["mean"][0] if stats["weights"]["count"] else 0.0
        self.weight_scale = None if not self.weight_col else (1.0 / mean if mean > 0 else 1.0)
        self.stats = stats
        return self

    def _build(self):
        spec, fcol, lcol, has_label = self.spec, self.feature_col, self.label_col, self.label_col is not None
        label_size, feature_axis, wcol = self.label_size, self.feature_axis, self.weight_col
        handle_invalid, val_fraction, seed = self.handle_invalid, self.val_fraction, self.seed
        relative_dir = self.directory
        raw8 = spec["kind"] in IMAGE_KINDS and COMPACT_8BIT
        dtype = np.int64 if spec["kind"] == "ids" else (np.uint8 if raw8 else np.float32)
        with_paths = spec["kind"] == "encoded" and "path" in self.df.columns  # binaryFile's: errors name the file
        cols = [feature_expr(fcol, spec["kind"]).alias("x")]
        cols.append(label_expr(self.df, lcol, label_size).alias("y") if has_label else F.lit(0.0).alias("y"))
        cols.append(F.coalesce(F.col(self.val_indicator).cast("boolean"), F.lit(False)).alias("v")
                    if self.val_indicator else F.lit(False).alias("v"))
        cols.append(F.monotonically_increasing_id().alias("i"))  # the row's place in the input, for errors
        cols.append(F.col("path").cast("string").alias("p") if with_paths else F.lit(None).cast("string").alias("p"))
        if wcol:
            cols.append(F.col(wcol).cast("double").alias("w"))
        selected = self.df.select(*cols)
        # a round lasts as long as its largest partition's share, so the rows are dealt round-robin
        # over as many partitions as cores, even when the input has as many: a parquet file's
        # partitions end at row groups (60k rows in two: 32768 and 27232, so every round took 9 %
        # longer than with 30000 each), and a train + test union can hold all its training rows in
        # one (2x the epoch); a coalesce merges neighbours. Dealt by position, not by Spark's
        # repartition(n), whose deal depends on the rows' bytes (deal.py). The shuffle costs the
        # 60k pass 0.6-1.0 s, less than the 9 % of one epoch it saves.
        inputs = num_partitions(selected)
        if inputs != 1 or self.num_partitions != 1:
            selected = deal_rows(selected, self.num_partitions, inputs, position="i")

        def convert(batches):
            from spark_nn.ml.training.faults import maybe_kill_executor  # (faults imports this module)

            read_archives_on_change()  # before the fit's rounds reuse this worker (worker_imports)
            ctx = TaskContext.get()
            pid = ctx.partitionId() if ctx else 0
            attempt = ctx.taskAttemptId() if ctx else 0
            directory = os.path.join(local_dir(), relative_dir) if relative_dir else None
            writer = _PartitionWriter(directory, pid, attempt, dtype)
            rng = np.random.default_rng([seed, pid, 0x5eed])
            labels, rows, max_id, base = [], 0, None, 0
            features = _moments([])
            weights = []
            try:
                for b in batches:
                    places = b.column(3).to_numpy(zero_copy_only=False)
                    try:
                        x = arrow_to_block(b.column(0), spec, fcol, base, raw8=raw8,
                                           paths=b.column(4) if with_paths else None)
                    except ValueError as e:
                        raise ValueError(_name_input_rows(str(e), places, base)) from None
                    try:
                        y = label_block(b.column(1), label_size, lcol, base) if has_label else \
                            np.zeros(b.num_rows)
                    except ValueError as e:
                        raise ValueError(_name_input_rows(str(e), places, base)) from None
                    w = b.column(5).to_numpy(zero_copy_only=False).astype(np.float64) if wcol else None
                    val = b.column(2).to_numpy(zero_copy_only=False).astype(bool)
                    if val_fraction > 0:
                        val = rng.random(len(x)) < val_fraction
                    rows += len(x)
                    ok = np.ones(len(x), dtype=bool)
                    checks = [(f"features column {fcol!r} has NaN or infinite values", x)] \
                        if dtype == np.float32 else []
                    if has_label:
                        checks.append((f"label column {lcol!r} has a null, NaN or infinite value", y))
                    if wcol:
                        checks.append((f"weight column {wcol!r} has a null, negative, NaN or infinite value",
                                       np.where(w >= 0, w, np.nan)))
                    for what, values in checks:
                        good = np.isfinite(_rows(values)).all(axis=1)
                        if not good.all() and handle_invalid == "error":
                            q, j = input_place(places[int(np.flatnonzero(~good)[0])])
                            raise ValueError(f"{what} in row {j} of input partition {q} ({int((~good).sum())} such "
                                             "rows in this batch); set handleInvalid='skip' to drop them")
                        ok &= good
                    if not ok.all():
                        x, y, val = x[ok], y[ok], val[ok]
                        w = None if w is None else w[ok]
                    if dtype == np.int64 and len(x):
                        top = int(x.max())
                        max_id = top if max_id is None else max(max_id, top)
                    if has_label:  # checks over every row; the moments (to scale targets by) of the training rows
                        ytrain = y[~val]
                        labels.append(_label_stats(y, ytrain))
                    if feature_axis is not None:
                        train = x[~val]
                        features = _merge_moments(features, _feature_moments(
                            train / np.float32(255) if train.dtype == np.uint8 else train, feature_axis))
                    if wcol:
                        weights.append(_moments(w[~val].reshape(-1, 1)))
                        y = np.concatenate([_rows(y), w.reshape(-1, 1)], axis=1)
                    writer.add(x, y, val)
                    base += b.num_rows
                    maybe_kill_executor(-1, -1, pid)  # tests only: a batch of the pass written
                files = writer.close()
            except BaseException:
                writer.abort()
                raise
            meta = {"pid": pid, "files": files, "n": writer.n, "nv": writer.nv, "shape": list(spec["shape"]),
                    "dtype": np.dtype(dtype).str,
                    "label_shape": ([(label_size or 1) + 1] if wcol else [] if label_size is None else [label_size]),
                    "stats": {"rows": rows, "max_id": max_id, "labels": _merge_label_stats(labels),
                              "features": features, "weights": _merge_label_moments(weights)}}
            chunks = writer.chunks
            yield pa.RecordBatch.from_arrays(
                [pa.array([b"".join(chunks["x"] + chunks["xv"])], pa.binary()),
                 pa.array([b"".join(chunks["y"] + chunks["yv"])], pa.binary()),
                 pa.array([json.dumps(meta)])], schema=_ARROW_SCHEMA)

        return selected.mapInArrow(convert, _SCHEMA)

    def _persist(self, handles):
        """(the pass's DataFrame of handle rows persisted as this kind keeps it, a function that
        runs the pass and returns each partition's meta dict in partition order)."""
        raise NotImplementedError

    def blocks(self):
        """Every partition's block (handles only, for a resident one), in partition order."""
        raise NotImplementedError

    @staticmethod
    def _delete_files(kept):
        """Deletes the resident files of the persisted handles (a job over them: each task runs
        where its files are)."""
        raise NotImplementedError

    def _remove_directory(self):
        """Best effort after a failure: removes this fit's folder wherever these tasks run
        (every executor in local mode; on a cluster Spark removes its local dirs when an
        executor stops)."""
        if not self.directory:
            return
        relative, n = self.directory, self.num_partitions

        def remove(batches):
            shutil.rmtree(os.path.join(local_dir(), relative), ignore_errors=True)
            yield pa.RecordBatch.from_arrays([pa.array([0], pa.int32())], names=["ok"])

        try:
            self.spark.range(0, n, 1, n).mapInArrow(remove, "ok int").collect()
        except Exception:
            pass

    def release(self):
        """Deletes the resident files and their folder (one small job over the handles, which
        run where their files are; the folder-wide removal job only if that fails) and
        unpersists the blocks."""
        kept, self._kept = self._kept, None
        if kept is None:
            return
        try:
            if self.resident:
                self._delete_files(kept)
        except Exception:  # a failed fit: try the folder-wide removal; Spark removes its local dirs at the end
            self._remove_directory()
        finally:
            try:
                kept.unpersist()
            except Exception:  # the session may be gone
                pass

    def rematerialize(self):
        self.release()
        return self.materialize()


class ClassicTrainingData(TrainingData):
    """On a classic session: the blocks as Python objects, kept by a persisted RDD (``rdd``,
    which rounds.RDDRounds maps over)."""

    @property
    def rdd(self):
        return self._kept

    def _persist(self, handles):
        handles = handles.rdd.mapPartitions(
            lambda rows: (block_from_row(r.x, r.y, r.meta) for r in rows)).persist(StorageLevel.MEMORY_AND_DISK)
        return handles, lambda: handles.map(lambda b: {k: b[k] for k in ("n", "nv", "stats")}).collect()

    def blocks(self):
        return self._kept.collect()

    @staticmethod
    def _delete_files(kept):
        kept.foreach(delete_block)


class ConnectTrainingData(TrainingData):
    """On a Spark Connect session: one row per partition, (x, y, meta), kept by Spark's cache
    (``handles``, the DataFrame that connect_rounds.ConnectRounds queries)."""

    connect = True

    @property
    def handles(self):
        return self._kept

    def _persist(self, handles):
        handles = handles.persist(StorageLevel.MEMORY_AND_DISK)
        return handles, lambda: sorted((json.loads(r[0]) for r in handles.select("meta").collect()),
                                       key=lambda b: b["pid"])

    def blocks(self):
        return sorted((block_from_row(r.x, r.y, r.meta) for r in self._kept.collect()), key=lambda b: b["pid"])

    @staticmethod
    def _delete_files(kept):
        def delete(batches):
            for block in blocks_of_batches(batches):
                delete_block(block)
            yield pa.RecordBatch.from_arrays([pa.array([0], pa.int32())], names=["ok"])

        kept.mapInArrow(delete, "ok int").collect()
