"""The regressors on Spark (spark_nn.ml.regression): predictions in the label's units, the
standardization of the targets, per-epoch RMSE/MAE, several targets per row, each loss,
errors that name the column and row, persistence, Pipeline and CrossValidator, checkpoints.
Expected values come from numpy on the collected rows, not from the code under test."""
import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.ml.functions import array_to_vector
from pyspark.ml.linalg import Vectors

from spark_nn.ml.regression import (CNNRegressionModel, CNNRegressor, NetworkRegressor, RNNRegressionModel,
                                    RNNRegressor)
from spark_nn.nn import layers as L
from spark_nn.nn.losses import Huber, MeanAbsoluteError, MeanSquaredError
from spark_nn.nn.model import Sequential

STEPS = 8


def _series(n, seed):
    """Windows of a noisy sum of two sines around 1000 (amplitude ~50) and the next value."""
    rng = np.random.default_rng(seed)
    t = np.arange(n + STEPS)
    s = 1000 + 40 * np.sin(t * 0.31) + 20 * np.sin(t * 0.097 + 1) + rng.normal(0, 2, size=len(t))
    windows = np.lib.stride_tricks.sliding_window_view(s[:-1], STEPS)[:n]
    return windows, s[STEPS:STEPS + n]


@pytest.fixture(scope="module")
def series(spark):
    x, y = _series(700, 0)
    rows = [([[float(v)] for v in w], float(target), [float(target), float(w[-1])], i % 5 == 0)
            for i, (w, target) in enumerate(zip(x, y))]
    df = spark.createDataFrame(rows, "window array<array<double>>, target double, both array<double>, "
                                     "is_val boolean").repartition(2).cache()
    return df, x, y


def _rnn(**kw):
    params = dict(layers=[16], cellType="lstm", featuresCol="window", labelCol="target", maxIter=6, batchSize=32,
                  stepSize=0.01, seed=1)
    params.update(kw)
    return RNNRegressor(**params)


@pytest.fixture(scope="module")
def fitted(series):
    df = series[0]
    return _rnn(validationIndicatorCol="is_val").fit(df)


def test_rnn_regressor_predicts_in_the_label_units(series, fitted):
    df, x, y = series
    model = fitted
    assert isinstance(model, RNNRegressionModel) and model.numOutputs == 1
    out = model.transform(df)
    assert dict(out.dtypes)["prediction"] == "double"
    rows = out.select("target", "prediction").collect()
    target = np.array([r.target for r in rows])
    pred = np.array([r.prediction for r in rows])
    rmse = np.sqrt(np.mean((pred - target) ** 2))
    # the labels sit near 1000 with a spread of ~33: a network that had not learned the scale
    # back would be off by hundreds; one that learned only the mean is off by the spread
    assert rmse < 0.35 * target.std(), (rmse, target.std())
    metrics = model.evaluate(df)
    assert metrics["rmse"] == pytest.approx(rmse, rel=1e-9)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(pred - target)), rel=1e-9)
    assert metrics["r2"] == pytest.approx(1 - np.sum((pred - target) ** 2) / np.sum((target - target.mean()) ** 2),
                                          rel=1e-9)
    # pyspark's RegressionEvaluator reads our prediction column
    assert RegressionEvaluator(labelCol="target").evaluate(out) == pytest.approx(rmse, rel=1e-9)
    # in numpy, without Spark: the same predictions (the rows' order differs after the repartition)
    local = model.predict(x[:, :, None].astype(np.float32))
    assert local.shape == (len(x),)
    np.testing.assert_allclose(np.sort(local), np.sort(pred), rtol=1e-6)


def test_targets_are_standardized_by_the_training_rows(series, fitted):
    df, _, y = series
    train = np.array([r.target for r in df.where("not is_val").select("target").collect()])
    mean, std = fitted.targetScaling
    assert mean[0] == pytest.approx(train.mean(), rel=1e-12)
    assert std[0] == pytest.approx(train.std(), rel=1e-9)


def test_summary_reports_rmse_and_mae_per_epoch_in_label_units(series, fitted):
    df, _, _ = series
    epochs = fitted.summary.epochs
    assert len(epochs) == 6
    for e in epochs:
        assert {"loss", "rmse", "mae", "val_loss", "val_rmse", "val_mae"} <= set(e) and "accuracy" not in e
    assert epochs[-1]["rmse"] < epochs[0]["rmse"]
    # the last epoch's validation metrics are the final weights' on the validation rows
    val = fitted.transform(df.where("is_val")).select("target", "prediction").collect()
    d = np.array([r.prediction - r.target for r in val])
    assert epochs[-1]["val_rmse"] == pytest.approx(np.sqrt(np.mean(d ** 2)), rel=1e-4)
    assert epochs[-1]["val_mae"] == pytest.approx(np.mean(np.abs(d)), rel=1e-4)
    # the loss is the squared error of the standardized targets
    std = fitted.targetScaling[1][0]
    assert epochs[-1]["val_loss"] == pytest.approx(np.mean(d ** 2) / std ** 2, rel=1e-4)


def test_several_targets_per_row_from_arrays_and_vectors(spark, series):
    df, _, _ = series
    model = _rnn(labelCol="both", maxIter=3).fit(df)
    assert model.numOutputs == 2
    out = model.transform(df)
    assert dict(out.dtypes)["prediction"] == "vector"
    rows = out.select("both", "prediction").collect()
    y = np.array([r.both for r in rows])
    p = np.array([r.prediction.toArray() for r in rows])
    metrics = model.evaluate(df)
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((p - y) ** 2)), rel=1e-9)
    assert metrics["mae"] == pytest.approx(np.mean(np.abs(p - y)), rel=1e-9)
    ss_tot = np.sum((y - y.mean(axis=0)) ** 2)
    assert metrics["r2"] == pytest.approx(1 - np.sum((p - y) ** 2) / ss_tot, rel=1e-9)
    # the second target is the window's last value: the easiest to predict
    assert np.sqrt(np.mean((p[:, 1] - y[:, 1]) ** 2)) < 0.5 * y[:, 1].std()
    # a vector label column trains the same, bit for bit (the labels read through vector_to_array)
    as_vectors = df.withColumn("both", array_to_vector("both"))
    again = _rnn(labelCol="both", maxIter=3).fit(as_vectors)
    np.testing.assert_array_equal(again.weights, model.weights)


@pytest.mark.parametrize("loss, cls", [("squaredError", MeanSquaredError), ("absoluteError", MeanAbsoluteError),
                                       ("huber", Huber)])
def test_each_loss_trains(series, loss, cls):
    df, _, _ = series
    model = _rnn(loss=loss, epsilon=0.5, maxIter=2, layers=[8]).fit(df)
    assert type(model.network.loss) is cls and model.network.loss.target == "labels"
    if loss == "huber":
        assert model.network.loss.delta == 0.5
    rmse = [e["rmse"] for e in model.summary.epochs]
    assert rmse[1] < rmse[0]


def test_bad_labels_are_clear_errors(spark):
    rows = [([1.0, 2.0], "a", 1.0, [1.0, 2.0]), ([2.0, 3.0], "b", float("nan"), [1.0]),
            ([3.0, 4.0], "c", 3.0, [1.0, 2.0])]
    df = spark.createDataFrame(rows, "x array<double>, s string, y double, v array<double>").coalesce(1)
    with pytest.raises(ValueError, match=r"label column 's' has type string"):
        _rnn(featuresCol="x", labelCol="s").fit(df)
    with pytest.raises(Exception, match=r"label column 'y' has a null, NaN or infinite value in row 1 of input "
                                        r"partition 0"):
        _rnn(featuresCol="x", labelCol="y").fit(df)
    with pytest.raises(Exception, match=r"label column 'v': row 1 of input partition 0 has 1 values, expected 2"):
        _rnn(featuresCol="x", labelCol="v").fit(df)


def test_skip_drops_exactly_the_rows_with_invalid_labels(spark):
    rng = np.random.default_rng(3)
    y = rng.normal(50, 10, size=40)
    y[[3, 17, 30]] = np.nan
    df = spark.createDataFrame([([float(i % 7), 1.0], float(v) if v == v else None) for i, v in enumerate(y)],
                               "x array<double>, y double")
    model = _rnn(featuresCol="x", labelCol="y", maxIter=1, handleInvalid="skip").fit(df)
    kept = y[~np.isnan(y)]
    assert model.targetScaling[0][0] == pytest.approx(kept.mean(), rel=1e-12)
    assert model.targetScaling[1][0] == pytest.approx(kept.std(), rel=1e-9)


def test_save_load_pipeline_and_cross_validator(spark, series, fitted, tmp_path):
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    df, _, _ = series
    expected = [r.prediction for r in fitted.transform(df).collect()]
    path = str(tmp_path / "model")
    fitted.write().overwrite().save(path)
    loaded = RNNRegressionModel.load(path)
    assert [r.prediction for r in loaded.transform(df).collect()] == expected
    assert loaded.targetScaling == fitted.targetScaling
    est_path = str(tmp_path / "est")
    est = _rnn(loss="huber", epsilon=0.7)
    est.write().overwrite().save(est_path)
    again = RNNRegressor.load(est_path)
    assert (again.getLoss(), again.getEpsilon(), again.getLabelCol()) == ("huber", 0.7, "target")
    small = df.limit(200)
    est = _rnn(maxIter=2)
    grid = ParamGridBuilder().addGrid(est.layers, [[2], [16]]).build()
    cv = CrossValidator(estimator=Pipeline(stages=[est]), estimatorParamMaps=grid,
                        evaluator=RegressionEvaluator(labelCol="target"), numFolds=2, seed=3)
    cv_model = cv.fit(small)
    assert np.argmin(cv_model.avgMetrics) == 1  # 16 units beat 2 (rmse: smaller is better)
    pm_path = str(tmp_path / "pipeline")
    cv_model.bestModel.write().overwrite().save(pm_path)
    assert [r.prediction for r in PipelineModel.load(pm_path).transform(small).collect()] == \
        [r.prediction for r in cv_model.bestModel.transform(small).collect()]


def test_resume_and_early_stopping(series, tmp_path):
    df, _, _ = series
    kw = dict(maxIter=3, learningRateSchedule="constant", localSteps=2, layers=[4])
    full = _rnn(checkpointDir=str(tmp_path / "a"), **kw).fit(df)
    _rnn(checkpointDir=str(tmp_path / "b"), **dict(kw, maxIter=1)).fit(df)
    resumed = _rnn(checkpointDir=str(tmp_path / "b"), **kw).fit(df)
    np.testing.assert_array_equal(resumed.weights, full.weights)
    assert [e["rmse"] for e in resumed.summary.epochs] == [e["rmse"] for e in full.summary.epochs]
    # a step size that diverges after the first epoch: early stopping keeps the best epoch
    stopped = _rnn(maxIter=6, validationIndicatorCol="is_val", earlyStoppingPatience=1, stepSize=0.01,
                   layers=[4]).fit(df)
    best = stopped.summary.bestEpoch
    losses = [e["val_loss"] for e in stopped.summary.epochs]
    assert losses[best - 1] == min(losses)


def test_cnn_and_network_regressors(spark, rng):
    """Images whose label is their brightness, in the label's units (0-255 * 4 + 7)."""
    x = rng.random((300, 1, 6, 6))
    bright = x.mean(axis=(1, 2, 3)) * 255 * 4 + 7
    df = spark.createDataFrame([(Vectors.dense(a.ravel()), float(b)) for a, b in zip(x, bright)],
                               ["features", "label"]).repartition(2).cache()
    model = CNNRegressor(layers=[4], imageShape=[1, 6, 6], maxIter=20, stepSize=0.02, seed=0).fit(df)
    assert isinstance(model, CNNRegressionModel)
    spread = bright.std()
    assert model.evaluate(df)["rmse"] < 0.5 * spread
    # the user's network (no standardization of its inputs: centred features here) on a label
    # linear in them, with an offset and scale far from the standardized targets'
    z = rng.standard_normal((300, 5))
    w = np.array([3.0, -1.0, 0.5, 2.0, 0.0])
    lin = spark.createDataFrame([(Vectors.dense(a), float(a @ w * 30 + 1000)) for a in z],
                                ["features", "label"]).repartition(2)
    net = Sequential([L.Dense(1)], (5,))
    linear = NetworkRegressor(network=net, maxIter=10, stepSize=0.05, seed=0).fit(lin)
    assert linear.evaluate(lin)["rmse"] < 0.05 * (z @ w * 30).std()  # 0.025 reached
    with pytest.raises(ValueError, match="the network has 1 outputs but label column 'both' has 2"):
        NetworkRegressor(network=net, labelCol="both").fit(lin.selectExpr("features", "array(label, label) as both"))


def test_recurrent_defaults_survive_the_shared_params():
    """The recurrent estimators' own defaults win over TrainingParams' (their mixins come later
    in the MRO, so the concrete classes set them)."""
    from spark_nn.ml.classification import RNNClassifier

    rnn = RNNClassifier()
    assert (rnn.getMaxIter(), rnn.getClipNorm(), rnn.getActivation(), rnn.getStepSize()) == (10, 1.0, "tanh", 0.003)
    reg = RNNRegressor()
    assert (reg.getMaxIter(), reg.getClipNorm(), reg.getActivation(), reg.getStepSize()) == (30, 1.0, "tanh", 0.01)
    assert (reg.getLoss(), reg.getEpsilon(), reg.getStandardization(), reg.getLabelCol()) == \
        ("squaredError", 1.35, True, "label")


def test_summary_plot_shows_rmse_for_a_regressor(fitted, tmp_path):
    pytest.importorskip("matplotlib")
    fig = fitted.summary.plot(str(tmp_path / "curves.png"))
    ax = fig.axes[1]
    assert ax.get_ylabel() == "RMSE (label units)"
    lines = {line.get_label(): line.get_ydata().tolist() for line in ax.get_lines()}
    assert lines["train"] == [e["rmse"] for e in fitted.summary.epochs]
    assert lines["validation"] == [e["val_rmse"] for e in fitted.summary.epochs]
    assert (tmp_path / "curves.png").stat().st_size > 0
