"""Dealing a DataFrame's rows round-robin over n partitions by their position in the input,
the same way whatever the rows hold.

Spark's own round-robin ``repartition(n)`` first sorts each input partition by the rows' bytes
(spark.sql.execution.sortBeforeRepartition, so that a retried task deals the same rows), so
which rows end in which partition, and in what order, depended on what the rows hold: the same
images under another folder (an image's origin is its path) made other blocks and another fit
(the digits test's accuracy moved between 0.978 and 0.989 with pytest's temporary folder). Here
each row's key is its position: the rows of each input partition go round-robin over the n
partitions (by a hash partitioning whose keys are chosen to land there), and each partition
keeps its rows in input order.
"""
from pyspark.sql import functions as F

_SEED = 42  # the seed of Spark's Murmur3Hash, which HashPartitioning uses
_M32 = 0xFFFFFFFF


def _rotl(x, r):
    return ((x << r) | (x >> (32 - r))) & _M32


def murmur3_int(value, seed=_SEED):
    """Spark's Murmur3_x86_32.hashInt(value, seed), a signed 32-bit int: F.hash of an int column."""
    k1 = (value & _M32) * 0xCC9E2D51 & _M32
    k1 = _rotl(k1, 15) * 0x1B873593 & _M32
    h1 = (seed & _M32) ^ k1
    h1 = (_rotl(h1, 13) * 5 + 0xE6546B64) & _M32
    h1 ^= 4
    h1 ^= h1 >> 16
    h1 = h1 * 0x85EBCA6B & _M32
    h1 ^= h1 >> 13
    h1 = h1 * 0xC2B2AE35 & _M32
    h1 ^= h1 >> 16
    return h1 - (1 << 32) if h1 & 0x80000000 else h1


def partition_keys(n):
    """For each partition p < n the smallest int whose Spark hash partitioning sends it to p."""
    keys, value = [None] * n, 0
    while None in keys:
        p = murmur3_int(value) % n  # Python's % is Spark's pmod for a positive n
        if keys[p] is None:
            keys[p] = value
        value += 1
    return keys


def partition_key(index, n):
    """A column to hash-partition by (df.repartition(n, key)) that sends each row to partition
    `index` (a column of ints in [0, n)), as RDD's HashPartitioner sends int keys; hashing the
    index itself sends some to the same partition and leaves others empty."""
    return F.element_at(F.array(*[F.lit(k) for k in partition_keys(n)]), (index + 1).cast("int"))


def deal_rows(df, n, inputs, position=None):
    """df's rows (in `inputs` partitions) over n partitions: row j of input partition q to
    partition (q n // inputs + j) mod n, each partition in input order. One shuffle, as
    repartition(n); its sort is by a long, not by the rows' bytes. position: a column of df
    holding F.monotonically_increasing_id() (q 2^33 + j) of the input, kept; None: one is added
    for the deal and dropped."""
    pos = position or "_spark_nn_pos"
    if position is None:
        df = df.withColumn(pos, F.monotonically_increasing_id())
    # the input partitions start their deals spread over the n partitions, so that the rows
    # left over by each (its size mod n) do not all go to the first
    q = F.spark_partition_id().cast("long")
    start = (q * n / max(int(inputs), 1)).cast("long")
    key = partition_key((F.col(pos) - q * (1 << 33) + start) % n, n)
    dealt = df.withColumn("_spark_nn_key", key).repartition(n, "_spark_nn_key").sortWithinPartitions(pos)
    return dealt.drop("_spark_nn_key") if position else dealt.drop(pos, "_spark_nn_key")


def input_place(position):
    """(input partition, row within it) of a monotonically_increasing_id() value."""
    return divmod(int(position), 1 << 33)
