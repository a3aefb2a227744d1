"""Rows dealt over the cores by their position, whatever they hold: Spark's hash as we compute
it, balanced partitions in input order, and the same blocks (so the same fit) for the same
images under another folder."""
import shutil

import numpy as np
import pytest
from pyspark.sql import functions as F

from spark_nn.ml.classification import CNN, RNN
from spark_nn.ml.feature import ImageFeature
from spark_nn.ml.training.blocks import TrainingData, open_block
from spark_nn.ml.training.deal import deal_rows, murmur3_int, partition_key, partition_keys

pytestmark = pytest.mark.once  # the same DataFrame operations in either kind of session


def test_murmur3_is_sparks_hash_of_an_int(spark):
    values = [0, 1, -1, 7, 42, 123456789, -(2 ** 31), 2 ** 31 - 1]
    rows = spark.createDataFrame([(v,) for v in values], "v int").select(F.hash("v").alias("h")).collect()
    assert [r.h for r in rows] == [murmur3_int(v) for v in values]
    for n in (1, 2, 3, 7, 64):
        keys = partition_keys(n)
        assert [murmur3_int(k) % n for k in keys] == list(range(n))
    # the Connect rounds' tree levels: row p to task p mod n, as RDD's HashPartitioner does
    for n in (3, 7):
        placed = spark.range(0, 40).repartition(n, partition_key(F.col("id") % n, n)).select(
            "id", F.spark_partition_id().alias("p")).collect()
        assert all(r.p == r.id % n for r in placed)


@pytest.mark.parametrize("n", [2, 3, 8])
def test_rows_are_dealt_round_robin_in_input_order(spark, n):
    df = spark.range(0, 1001, numPartitions=7).withColumn("x", F.col("id") * 2)
    dealt = deal_rows(df, n, 7)
    assert dealt.columns == ["id", "x"]
    parts = [[r.id for r in p] for p in dealt.rdd.glom().collect()]
    assert len(parts) == n and sorted(sum(parts, [])) == list(range(1001))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    assert all(p == sorted(p) for p in parts)
    # within an input partition, consecutive rows go to consecutive partitions
    where = {i: p for p, ids in enumerate(parts) for i in ids}
    assert all(where[i + 1] == (where[i] + 1) % n for i in range(143 - 1))


def test_the_same_images_under_another_folder_make_the_same_blocks(spark, digits_dirs, tmp_path):
    """An image's origin is its path; Spark's repartition(n) deals rows by their bytes, so this
    failed before the deal by position (and the digits fit's accuracy moved with the folder)."""
    other = tmp_path / "another" / "folder with a longer name"
    shutil.copytree(digits_dirs[0], other)
    spec = {"kind": "image", "shape": [1, 8, 8]}
    found = []
    for root in (digits_dirs[0], str(other)):
        images = ImageFeature.loadImages(root)
        assert images.rdd.getNumPartitions() > 2  # so the pass deals the rows over 2 cores
        td = TrainingData(images, "image", "label", spec, num_partitions=2)
        try:
            found.append([(open_block(b)[0][:], open_block(b)[1][:]) for b in td.blocks()])
        finally:
            td.release()
    for (xa, ya), (xb, yb) in zip(*found):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert [len(x) for x, _ in found[0]] == [718, 719]


def test_bad_rows_are_named_by_their_place_in_the_input(spark):
    """After the deal a row's index in its block means nothing to the user: errors name the
    row of the DataFrame they gave (spark.range's 3 partitions: ids 10-19 are partition 1)."""
    df = spark.range(0, 30, numPartitions=3).select(
        F.when(F.col("id") == 17, F.array(F.lit(0.5), F.lit(float("nan")), F.lit(0.5), F.lit(0.5)))
         .otherwise(F.array(*[F.col("id").cast("double")] * 4)).alias("arr"),
        (F.col("id") % 2).cast("double").alias("label"))
    with pytest.raises(ValueError, match=r"'arr' has NaN or infinite values in row 7 of input partition 1 "):
        CNN(layers=[2], inputCol="arr", outputCol="label", numClasses=2).fit(df)
    seqs = spark.range(0, 30, numPartitions=3).select(
        F.when(F.col("id") == 23, F.array(F.array(F.lit(1.0), F.lit(2.0)), F.array(F.lit(1.0))))
         .otherwise(F.array(F.array(F.lit(1.0), F.lit(2.0)), F.array(F.lit(3.0), F.lit(4.0)))).alias("seq"),
        (F.col("id") % 2).cast("double").alias("label"))
    with pytest.raises(ValueError, match=r"'seq': step 1 of row 3 of input partition 2 has 1 values, expected 2"):
        RNN(layers=[3, 2], inputCol="seq", outputCol="label", numClasses=2).fit(seqs)
