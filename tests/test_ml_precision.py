"""precision='bf16' through the estimators (issue 31): the tasks build their network in bf16
(the fit's weights are those of the same steps in one process in bf16, not fp32's), transform
scores in the model's precision (setPrecision('fp32') on a bf16-fitted model scores in fp32),
the param persists, and where the CPU lacks AVX512_BF16 the fit is an error before any job."""
import numpy as np
import pytest
from pyspark.ml.linalg import Vectors

from spark_nn import kernels as K
from spark_nn.datasets import digits_split
from spark_nn.ml.classification import CNNClassificationModel, CNNClassifier
from spark_nn.ml.spark_kind import is_connect

needs_bf16 = pytest.mark.skipif(not K.bf16_available(),
                                reason="this CPU lacks AVX512_BF16 (or SPARK_NN_ISA caps it): no bf16 kernels to test")


@pytest.fixture(scope="module")
def digits(spark):
    xtr, _, ytr, _ = digits_split()
    x, y = xtr[:300], ytr[:300]
    rows = [(Vectors.dense(a.ravel()), float(b)) for a, b in zip(x, y)]
    return spark.createDataFrame(rows, ["features", "label"]).repartition(1).cache(), x, y


def _cnn(**kw):
    # conv 8 -> 16 has 72 column rows: a bf16 product (the first conv, one channel, stays fp32)
    return CNNClassifier(**dict(dict(layers=[8, 16], numClasses=10, imageShape=[1, 8, 8], maxIter=2, seed=0,
                                     localSteps=1), **kw))


@needs_bf16
def test_a_bf16_fit_trains_in_bf16_and_scores_in_its_precision(digits, tmp_path):
    df, x, y = digits
    fp32 = _cnn(maxIter=8).fit(df)
    bf16 = _cnn(maxIter=8, precision="bf16").fit(df)
    assert bf16.getPrecision() == "bf16" and bf16.network.precision == "bf16"
    diff = np.abs(bf16.weights - fp32.weights).max()
    assert diff > 1e-6, "a bf16 fit computed what fp32 computes"
    # transform scores in bf16: the logits equal the network's own bf16 forward on these rows
    xs = x[:40].astype(np.float32)
    out = np.array([r.rawPrediction.toArray() for r in bf16.transform(df.limit(40)).select("rawPrediction")
                    .collect()])
    np.testing.assert_allclose(out, bf16.network.predict_output(xs, precision="bf16"), rtol=0, atol=1e-5)
    assert np.abs(out - bf16.network.predict_output(xs, precision="fp32")).max() > 1e-5
    # and in fp32 once the model is set so, on a saved and loaded copy too
    bf16.write().overwrite().save(str(tmp_path / "m"))
    loaded = CNNClassificationModel.load(str(tmp_path / "m"))
    assert loaded.getPrecision() == "bf16"
    loaded.setPrecision("fp32")
    out32 = np.array([r.rawPrediction.toArray() for r in loaded.transform(df.limit(40)).select("rawPrediction")
                      .collect()])
    np.testing.assert_allclose(out32, bf16.network.predict_output(xs, precision="fp32"), rtol=0, atol=1e-5)
    # the model's precision, not its network's (left as trained: transform does not change it)
    assert loaded.network.precision == "bf16"
    np.testing.assert_array_equal(loaded.predictProbability(xs), loaded.network.predict_proba(xs, precision="fp32"))
    np.testing.assert_array_equal(loaded.predict(xs), loaded.network.predict(xs, precision="fp32"))
    assert loaded.network.precision == "bf16"
    # it learns as fp32 does: training accuracy within 5 points (80 steps of 32 rows)
    acc = {name: (m.network.predict(x.astype(np.float32)) == y).mean() for name, m in (("fp32", fp32), ("bf16", bf16))}
    assert acc["fp32"] > 0.6 and abs(acc["bf16"] - acc["fp32"]) < 0.05, acc


def test_bf16_where_the_cpu_lacks_it_is_an_error_before_any_job(spark, digits, monkeypatch):
    monkeypatch.setattr(K, "bf16_available", lambda: False)
    tracker = None if is_connect(spark) else spark.sparkContext.statusTracker()  # Connect has no SparkContext
    before = tracker.getJobIdsForGroup() if tracker else None
    with pytest.raises(RuntimeError, match=r"AVX512_BF16.*precision='fp32'"):
        _cnn(precision="bf16").fit(digits[0])
    if tracker:
        assert tracker.getJobIdsForGroup() == before
    with pytest.raises(ValueError, match=r"precision must be one of \[.fp32., .bf16.\], got .fp16."):
        _cnn(precision="fp16")
