"""Rounds on a Spark Connect session, with only what Connect offers: DataFrame queries,
``mapInArrow``, ``toArrow``/``collect``, tags and interrupts.

A round is one query over the persisted DataFrame of handles (one row per partition; Spark's
cache keeps each row where its resident files are, and recomputes both by lineage):

    handles --mapInArrow(task)--> one result row per partition (pid, loss, vector as raw
    float32 bytes, counts) --[tree levels: repartition by pid % m, mapInArrow(sum)]--> driver

The payload (raw weight bytes, optimizer state) rides in the task function's closure, which
the query plan carries anyway. With many partitions the results are summed in levels on the
executors, as RDD treeAggregate does, so the driver receives O(payload x partitions^(1/depth))
bytes. Every sum adds rows in partition order, so a round's result is the same bitwise as
the classic backend's for the same partitions (tested).
"""
import math
import uuid

import numpy as np
import pyarrow as pa
from pyspark.sql import functions as F

from spark_nn.ml.training.blocks import blocks_of_batches
from spark_nn.ml.training.deal import partition_key
from spark_nn.ml.training.rounds import Rounds
from spark_nn.ml.training.round_result import FIELDS, ZERO, RoundResult

# a RoundResult's fields as Arrow columns (numbers as themselves, arrays as raw bytes), after
# the partition id
_ARROW = {float: (pa.float64(), "double"), int: (pa.int64(), "long"), np.ndarray: (pa.binary(), "binary")}
_COLUMNS = [("pid", pa.int32(), "int", None)] + [
    (f.name, *_ARROW[f.metadata["kind"]], f.metadata.get("dtype")) for f in FIELDS]
RESULT_SCHEMA = ", ".join(f"{name} {ddl}" for name, _, ddl, _ in _COLUMNS)


def encode(rows):
    """[(pid, RoundResult)] -> one Arrow record batch of RESULT_SCHEMA's columns."""
    arrays = []
    for name, kind, _, dtype in _COLUMNS:
        col = [pid if name == "pid" else getattr(r, name) for pid, r in rows]
        if dtype is not None:
            col = [None if v is None else np.ascontiguousarray(v, dtype=dtype).tobytes() for v in col]
        arrays.append(pa.array(col, kind))
    return pa.RecordBatch.from_arrays(arrays, names=[c[0] for c in _COLUMNS])


def decode(table):
    """[(pid, RoundResult)] of Arrow result rows (a table or record batch)."""
    cols = {}
    for name, _, _, dtype in _COLUMNS:
        values = table.column(name).to_pylist()
        if dtype is not None:
            values = [None if v is None else np.frombuffer(v, dtype=dtype) for v in values]
        cols[name] = values
    pids = cols.pop("pid")
    return [(pid, RoundResult(**{name: values[i] for name, values in cols.items()})) for i, pid in enumerate(pids)]


def fold(rows):
    """(smallest pid, sum of the results added in pid order) of [(pid, RoundResult)]."""
    rows = sorted(rows, key=lambda r: r[0])
    total = ZERO
    for _, result in rows:
        total = total + result
    return (rows[0][0] if rows else 0), total


def _sum_level(batches):
    """A tree level's task: the sum of the result rows that reached it, as one row."""
    rows = [r for b in batches for r in decode(b)]
    if rows:
        yield encode([fold(rows)])


ROUNDS_TAG = "spark_nn-rounds"


class ConnectRounds(Rounds):
    """Rounds as DataFrame queries on a Spark Connect session. Every round's query carries the
    fit's own tag and ROUNDS_TAG: interrupting the driver (Ctrl-C) interrupts the running query
    (spark.interruptTag), and spark.interruptTag("spark_nn-rounds") from another thread stops
    the session's running fits (each raises)."""

    def __init__(self, data, depth, description):
        super().__init__(data, depth, description)
        self.spark = data.spark
        self.tag = f"spark_nn-{uuid.uuid4().hex[:12]}"
        self.text = description

    def _sum(self, task, payload):
        def round_task(batches):
            for block in blocks_of_batches(batches):
                pid = block["pid"]
                yield encode([(pid, r) for r in task(pid, [block], payload)])

        query = self.tree(self.data.handles.mapInArrow(round_task, RESULT_SCHEMA), len(self.sizes))
        for tag in (self.tag, ROUNDS_TAG):
            self.spark.addTag(tag)
        try:
            table = query.toArrow()
        except KeyboardInterrupt:
            self.spark.interruptTag(self.tag)
            raise
        finally:
            for tag in (self.tag, ROUNDS_TAG):
                self.spark.removeTag(tag)
        return fold(decode(table))[1]

    def cancel(self):
        self.spark.interruptTag(self.tag)

    def tree(self, results, n):
        """Adds RDD treeAggregate's levels on the executors: while the driver would receive
        more than about scale + n / scale results, rows go to n / scale tasks (by pid) that sum
        them, the rows of pid p to task p mod n as treeAggregate's HashPartitioner sends them."""
        scale = max(int(math.ceil(n ** (1.0 / self.depth))), 2)
        while n > scale + math.ceil(n / scale):
            n = n // scale
            results = results.repartition(n, partition_key(F.col("pid") % n, n)).mapInArrow(_sum_level, RESULT_SCHEMA)
        return results

    def describe(self, text):
        """Connect has no job descriptions; the text is kept for logs, the tag marks the queries."""
        self.text = text or self.description
