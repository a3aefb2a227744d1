"""MLflow tracking of fits (spark_nn.ml.tracking) against a local file store: params, per-epoch
metrics with step=epoch, the curves, the model as a pyfunc model that scores pandas without
Spark, nested runs for a CrossValidator's candidates, and nothing without an active run."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from pyspark.ml.linalg import Vectors

mlflow = pytest.importorskip("mlflow")

from spark_nn.datasets import digits_split  # noqa: E402
from spark_nn.ml.classification import CNNClassifier  # noqa: E402
from spark_nn.ml.regression import RNNRegressor  # noqa: E402


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # MLflow 3 prefers a database; a folder suffices here
    uri = "file:" + str(tmp_path / "mlruns")
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.set_experiment("spark_nn tests")
    yield mlflow.tracking.MlflowClient(uri), experiment.experiment_id
    mlflow.set_tracking_uri(None)


@pytest.fixture(scope="module")
def digits(spark):
    xtr, xte, ytr, yte = digits_split()
    df = spark.createDataFrame([(Vectors.dense(a.ravel()), float(b)) for a, b in zip(xtr[:600], ytr[:600])],
                               ["features", "label"]).cache()
    return df, xte[:40]


def _cnn(**kw):
    return CNNClassifier(**dict(dict(layers=[4], numClasses=10, imageShape=[1, 8, 8], maxIter=2, seed=0), **kw))


def test_a_fit_in_an_active_run_logs_params_metrics_curves_and_a_pyfunc_model(spark, store, digits):
    import pandas as pd

    client, _ = store
    df, xte = digits
    with mlflow.start_run() as run:
        model = _cnn(validationSplit=0.2).fit(df)
    rid = run.info.run_id
    got = client.get_run(rid).data
    assert got.params["maxIter"] == "2" and got.params["layers"] == "[4]" and got.params["validationSplit"] == "0.2"
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "seconds", "local_steps"):
        history = client.get_metric_history(rid, key)
        assert [m.step for m in history] == [1, 2], key
        assert [m.value for m in history] == pytest.approx([e[key] for e in model.summary.epochs]), key
    artifacts = {a.path for a in client.list_artifacts(rid)}
    assert {"summary.json", "curves.png", "model"} <= artifacts
    summary = json.load(open(client.download_artifacts(rid, "summary.json")))
    assert summary["epochs"][-1]["val_accuracy"] == model.summary.epochs[-1]["val_accuracy"]
    # the pyfunc model scores pandas rows without Spark, as the Spark model does
    pyfunc = mlflow.pyfunc.load_model(f"runs:/{rid}/model")
    assert pyfunc.metadata.signature.inputs.input_names() == ["features"]
    rows = [a.ravel().tolist() for a in xte]
    out = pyfunc.predict(pd.DataFrame({"features": rows}))
    scored = model.transform(spark.createDataFrame([(i, Vectors.dense(r)) for i, r in enumerate(rows)],
                                                   ["i", "features"])).orderBy("i").collect()
    assert out["prediction"].tolist() == [r.prediction for r in scored]
    np.testing.assert_allclose(np.stack(out["probability"]), np.array([r.probability.toArray() for r in scored]),
                               rtol=1e-6, atol=1e-7)


def test_a_regressor_logs_rmse_and_its_pyfunc_predicts_in_label_units(spark, store):
    import pandas as pd

    client, _ = store
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6))
    y = 500 + 40 * x[:, -1] + rng.normal(0, 1, 300)
    df = spark.createDataFrame([(a.tolist(), float(b)) for a, b in zip(x, y)], "seq array<double>, y double")
    with mlflow.start_run() as run:
        model = RNNRegressor(layers=[8], featuresCol="seq", labelCol="y", maxIter=3).fit(df)
    rid = run.info.run_id
    assert [m.value for m in client.get_metric_history(rid, "rmse")] == \
        pytest.approx([e["rmse"] for e in model.summary.epochs])
    out = mlflow.pyfunc.load_model(f"runs:/{rid}/model").predict(pd.DataFrame({"seq": [r.tolist() for r in x[:5]]}))
    np.testing.assert_allclose(out["prediction"], model.predict(x[:5, :, None].astype(np.float32)), rtol=1e-6)


def test_nothing_is_logged_without_an_active_run_or_with_logging_off(spark, store, digits):
    client, experiment = store
    df, _ = digits
    _cnn(maxIter=1).fit(df)
    assert client.search_runs([experiment]) == []
    with mlflow.start_run() as run:
        _cnn(maxIter=1, mlflowLogging="off").fit(df)
    assert client.get_run(run.info.run_id).data.params == {}


@pytest.mark.once  # pyspark's CrossValidator around our stage; the logging is the driver's, whatever the session
def test_cross_validator_candidates_log_to_nested_runs(spark, store, digits):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    client, experiment = store
    df, _ = digits
    est = _cnn(maxIter=1)
    grid = ParamGridBuilder().addGrid(est.layers, [[2], [4]]).build()
    cv = CrossValidator(estimator=est, estimatorParamMaps=grid, evaluator=MulticlassClassificationEvaluator(),
                        numFolds=2, seed=1, parallelism=2)  # candidates fit in two threads
    with mlflow.start_run() as run:
        cv.fit(df)
    children = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
    assert len(children) == 4  # 2 folds x 2 candidates
    assert sorted(c.data.params["layers"] for c in children) == ["[2]", "[2]", "[4]", "[4]"]
    assert all(c.info.status == "FINISHED" and "loss" in c.data.metrics for c in children)
    # the best candidate's refit on all the rows is a plain fit in the run itself
    assert client.get_run(run.info.run_id).data.params["layers"] in ("[2]", "[4]")


def test_spark_nn_does_not_import_mlflow():
    code = ("import sys; import spark_nn.ml.classification, spark_nn.ml.regression, spark_nn.ml.feature; "
            "assert 'mlflow' not in sys.modules, 'mlflow imported'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr[-2000:]
