"""Executor-resident training blocks: the same weights as blocks cached in Spark's block
manager, recovery when the files vanish mid-fit, no files left behind, one pass of setup."""

import numpy as np
import pytest
from pyspark.ml.linalg import Vectors

from spark_nn.ml.training.blocks import RowFile, TrainingData, open_block
from spark_nn.ml.training.faults import DELETE_PROPERTY
from spark_nn.ml.classification import CNNClassifier
from conftest import fit_under_fault, resident_files
from pixel_data import bright_pixel_rows


@pytest.fixture(scope="module")
def data(spark):
    x, y = bright_pixel_rows(np.random.default_rng(11), 120)
    rows = [(Vectors.dense(a.tolist()), float(b), bool(i % 5 == 0)) for i, (a, b) in enumerate(zip(x, y))]
    return spark.createDataFrame(rows, ["features", "label", "isVal"]).repartition(3).cache()


def est(**kw):
    return CNNClassifier(**dict(dict(layers=[4], numClasses=3, imageShape=[1, 6, 6], maxIter=3, batchSize=16,
                                     stepSize=0.02, seed=4, localSteps=1), **kw))


@pytest.mark.parametrize("local_steps", [1, 3])
def test_resident_and_cached_blocks_give_bitwise_equal_weights(data, local_dirs, local_steps):
    resident = est(localSteps=local_steps, validationSplit=0.25).fit(data)
    cached = est(localSteps=local_steps, validationSplit=0.25, residentData=False).fit(data)
    np.testing.assert_array_equal(resident.weights, cached.weights)
    assert resident.summary.epochs[-1]["val_loss"] == cached.summary.epochs[-1]["val_loss"]
    assert resident_files(local_dirs) == []  # removed at the end of the fit
    assert resident_files(local_dirs, depth=1) == []  # folders too


def test_resident_blocks_hold_every_row_once_and_are_read_by_rows(spark, data, local_dirs):
    spec = {"kind": "vector", "shape": [1, 6, 6]}
    td = TrainingData(data, "features", "label", spec, val_indicator="isVal")
    try:
        assert len(td.sizes) == 2  # coalesced to spark.default.parallelism
        assert sum(td.sizes) == 96 and sum(td.val_sizes) == 24
        assert td.stats["rows"] == 120 and td.stats["lo"] == 0 and td.stats["hi"] == 2
        files = resident_files(local_dirs)
        assert len(files) == 2 * 4  # x, y, validation x, validation y per partition
        blocks = td.blocks()  # handles: small, no data
        x, y, xv, yv = open_block(blocks[0])
        assert isinstance(x, RowFile) and x.shape == (td.sizes[0], 1, 6, 6) and y.shape == (td.sizes[0],)
        assert xv.shape == (td.val_sizes[0], 1, 6, 6)
        everything = np.concatenate([np.concatenate([open_block(b)[0], open_block(b)[2]]) for b in blocks])
        source = np.array([r.features.toArray() for r in data.collect()], dtype=np.float32).reshape(-1, 1, 6, 6)
        assert sorted(map(bytes, everything)) == sorted(map(bytes, source))
        np.testing.assert_array_equal(x[[2, 0, 2]], np.asarray(x)[[2, 0, 2]])  # rows read one by one
        np.testing.assert_array_equal(x[1:3], np.asarray(x)[1:3])
        with pytest.raises(IndexError, match="rows outside"):
            x[[td.sizes[0]]]
    finally:
        td.release()
    assert resident_files(local_dirs) == []


@pytest.mark.parametrize("local_steps", [1, 3])
def test_files_deleted_mid_fit_are_materialized_again(spark, data, local_dirs, tmp_path, local_steps):
    reference = est(localSteps=local_steps).fit(data).weights
    # epoch 1 (0-based), step 3, partition 0: the files deleted once, that round run again
    recovered = fit_under_fault(spark, DELETE_PROPERTY, "1:3:0", tmp_path / "deleted",
                                lambda: est(localSteps=local_steps).fit(data))
    np.testing.assert_array_equal(recovered.weights, reference)
    assert resident_files(local_dirs) == []


def test_no_files_left_after_a_failed_fit(data, local_dirs):
    with pytest.raises(ValueError, match="training loss became"):
        est(stepSize=1e12, optimizer="sgd").fit(data)
    assert resident_files(local_dirs) == []
    bad = data.selectExpr("if(label = 2, array(double('NaN'), 1.0, 1.0, 1.0), array(1.0, 2.0, 3.0, 4.0)) as arr",
                          "label")
    with pytest.raises(ValueError, match="NaN or infinite"):
        est(inputCol="arr", imageShape=[1, 2, 2], layers=[2]).fit(bad)
    assert resident_files(local_dirs) == []
