"""weightCol on Spark: equal weights train bit for bit as none, the validation metrics are the
weighted ones (checked against numpy on the model's own predictions), and bad weights are clear
errors naming the column and row."""
import numpy as np
import pytest
from pyspark.ml.linalg import Vectors
from pyspark.sql import functions as F

from spark_nn.datasets import digits_split
from spark_nn.ml.classification import CNNClassifier
from spark_nn.ml.regression import RNNRegressor


@pytest.fixture(scope="module")
def digits(spark):
    xtr, _, ytr, _ = digits_split()
    x, y = xtr[:500], ytr[:500]
    w = (np.arange(500) % 4).astype(float) * 0.75  # 0, 0.75, 1.5, 2.25
    rows = [(i, Vectors.dense(a.ravel()), float(b), float(c), i % 5 == 0) for i, (a, b, c) in enumerate(zip(x, y, w))]
    df = spark.createDataFrame(rows, ["i", "features", "label", "w", "is_val"]).cache()
    return df, x, y, w


def _cnn(**kw):
    return CNNClassifier(**dict(dict(layers=[4], numClasses=10, imageShape=[1, 8, 8], maxIter=2, seed=0), **kw))


def test_equal_weights_train_bit_for_bit_as_none(digits):
    df = digits[0].withColumn("two", F.lit(2.5))
    plain = _cnn(validationIndicatorCol="is_val").fit(df)
    weighted = _cnn(validationIndicatorCol="is_val", weightCol="two").fit(df)
    np.testing.assert_array_equal(weighted.weights, plain.weights)
    assert weighted.summary.epochs[-1]["val_accuracy"] == plain.summary.epochs[-1]["val_accuracy"]
    reg = RNNRegressor(layers=[4], featuresCol="features", maxIter=1)
    np.testing.assert_array_equal(reg.copy({reg.weightCol: "two"}).fit(df).weights, reg.fit(df).weights)


def test_the_validation_metrics_are_weighted(digits):
    """After the last epoch, val_loss and val_accuracy are sum(w' * loss_i) / rows and
    sum(w' * right_i) / rows over the validation rows, w' the weights divided by their mean
    over the training rows: computed here from the model's logits with numpy."""
    df, x, y, w = digits
    model = _cnn(validationIndicatorCol="is_val", weightCol="w").fit(df)
    val = (np.arange(len(x)) % 5 == 0)
    scale = 1.0 / w[~val].mean()
    logits = model.network.predict_output(x[val].astype(np.float32)).astype(np.float64)
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    ce = -logp[np.arange(val.sum()), y[val].astype(int)]
    wv = w[val] * scale
    last = model.summary.epochs[-1]
    assert last["val_loss"] == pytest.approx(np.sum(wv * ce) / val.sum(), rel=1e-4)
    right = np.argmax(logits, axis=1) == y[val]
    assert last["val_accuracy"] == pytest.approx(np.sum(wv * right) / val.sum(), rel=1e-6)
    # not the unweighted figure (the weights here change it)
    assert abs(right.mean() - last["val_accuracy"]) > 1e-3 or abs(np.mean(ce) - last["val_loss"]) > 1e-3


def test_bad_weights_are_clear_errors(spark, digits):
    df = digits[0]
    with pytest.raises(ValueError, match="weight column 'label_s' has type string"):
        _cnn(weightCol="label_s").fit(df.withColumn("label_s", F.col("label").cast("string")))
    with pytest.raises(ValueError, match="column 'nope' is not in the DataFrame"):
        _cnn(weightCol="nope").fit(df)
    bad = df.coalesce(1).withColumn("w", F.when(F.col("i") == 7, -1.0).otherwise(F.col("w")))
    with pytest.raises(Exception, match=r"weight column 'w' has a null, negative, NaN or infinite value in row 7 of "
                                        r"input partition 0"):
        _cnn(weightCol="w").fit(bad)
    _cnn(weightCol="w", handleInvalid="skip", maxIter=1).fit(bad)  # the row dropped, the rest trains
    with pytest.raises(ValueError, match="weight column 'zero' is 0 on every training row"):
        _cnn(weightCol="zero").fit(df.withColumn("zero", F.lit(0.0)))
