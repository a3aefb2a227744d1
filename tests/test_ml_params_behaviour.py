"""What each public param and method of the Spark estimators and models does, asserted on tiny
fits (issue 32 item 2): dropout, kernelSize and poolSize, checkpointInterval, verbose, tol,
aggregationDepth, SGD's momentum and weightDecay, the prediction columns, predictProbability,
numFeatures, hasSummary, summary.asDict and validationLoss, loadImages(recursive=True) and
initialWeights given as a fitted model or a Sequential. Expected values come from torch, numpy
or a hand-worked case, not from the code under test."""
import json
import os

import numpy as np
import pytest
import torch
from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator
from pyspark.ml.linalg import Vectors

from spark_nn.datasets import write_png_gray
from spark_nn.ml.classification import CNNClassificationModel, CNNClassifier, RNNClassifier
from spark_nn.ml.feature import ImageFeature
from spark_nn.ml.training import checkpoint
from spark_nn.ml.training.faults import DELETE_PROPERTY
from spark_nn.ml.training.trainer import DistributedTrainer
from spark_nn.nn import layers as L
from spark_nn.nn.model import Sequential
from conftest import fit_under_fault
from pixel_data import bright_pixel_rows


def cnn(**kw):
    return CNNClassifier(**dict(dict(layers=[4], numClasses=3, imageShape=[1, 6, 6], maxIter=2, batchSize=16,
                                     stepSize=0.05, seed=7, localSteps=1, learningRateSchedule="constant"), **kw))


def frame(spark, x, y, partitions=2):
    rows = [(Vectors.dense(a.tolist()), float(b)) for a, b in zip(x, y)]
    return spark.createDataFrame(rows, ["features", "label"]).repartition(partitions)


@pytest.fixture(scope="module")
def pixels(bright_pixels):
    return bright_pixels


# ------------------------------------------------------------------ dropout
def test_dropout_is_applied_reproducibly_and_survives_a_rerun_round(spark, pixels, tmp_path):
    est = cnn(dropout=0.5, maxIter=3)
    first, second = est.fit(pixels), est.fit(pixels)
    assert first.weights.tobytes() == second.weights.tobytes()  # the masks are keyed by seed, epoch, step
    assert [(type(layer).__name__, getattr(layer, "rate", None)) for layer in first.network.layers][-2:] == \
        [("Dropout", 0.5), ("Dense", None)]
    # the masks change the steps: the same seed without dropout (same initial weights: Dropout
    # has none) trains to other weights, and another seed to others again
    plain = cnn(maxIter=3).fit(pixels)
    assert plain.weights.size == first.weights.size and plain.weights.tobytes() != first.weights.tobytes()
    assert cnn(dropout=0.5, maxIter=3, seed=8).fit(pixels).weights.tobytes() != first.weights.tobytes()
    # a round run again on data materialized again (resident files deleted at epoch 2, step 3,
    # partition 1) draws the same masks: the same bits
    again = fit_under_fault(spark, DELETE_PROPERTY, "1:2:1", tmp_path / "fired", lambda: est.fit(pixels))
    assert again.weights.tobytes() == first.weights.tobytes()
    # at inference dropout is the identity: scoring is deterministic and is the network without it
    x = np.asarray(bright_pixel_rows(np.random.default_rng(1), 8)[0]).reshape(-1, 1, 6, 6)
    tm = first.network.to_torch()
    with torch.no_grad():
        np.testing.assert_allclose(first.predictProbability(x), torch.softmax(tm(torch.from_numpy(x)), 1).numpy(),
                                   rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ kernelSize, poolSize
def test_kernel_size_and_pool_size_shape_the_network(spark):
    x, y = bright_pixel_rows(np.random.default_rng(2), 40, size=9)
    model = CNNClassifier(layers=[4, 6], numClasses=3, kernelSize=5, poolSize=3, maxIter=1, seed=1,
                          localSteps=1).fit(frame(spark, x, y))
    # worked by hand: 9x9 -> conv 5x5 'same' -> 4x9x9 -> pool 3 -> 4x3x3 -> conv 5x5 -> 6x3x3 ->
    # pool 3 -> 6x1x1 -> flatten 6 -> dense 3
    shapes = [(type(layer).__name__, tuple(layer.output_shape)) for layer in model.network.layers]
    assert shapes == [("Conv2D", (4, 9, 9)), ("Activation", (4, 9, 9)), ("MaxPool2D", (4, 3, 3)),
                      ("Conv2D", (6, 3, 3)), ("Activation", (6, 3, 3)), ("MaxPool2D", (6, 1, 1)),
                      ("Flatten", (6,)), ("Dense", (3,))]
    w = model.network.weights_dict()
    assert w["0.w"].shape == (4, 1, 5, 5) and w["3.w"].shape == (6, 4, 5, 5) and w["7.w"].shape == (3, 6)
    pools = [layer for layer in model.network.layers if isinstance(layer, L.MaxPool2D)]
    assert all(p.pool_size == (3, 3) and p.stride == (3, 3) for p in pools)
    # and the defaults, 3 and 2: 9x9 -> 4x9x9 -> 4x4x4 -> 6x4x4 -> 6x2x2
    default = CNNClassifier(layers=[4, 6], numClasses=3, maxIter=1, seed=1, localSteps=1).fit(frame(spark, x, y))
    assert default.network.weights_dict()["0.w"].shape == (4, 1, 3, 3)
    assert tuple(default.network.layers[5].output_shape) == (6, 2, 2)


# ------------------------------------------------------------------ checkpointInterval
def test_checkpoint_interval_writes_every_second_epoch_and_the_last(pixels, tmp_path, monkeypatch):
    written = []
    real_write = checkpoint.write

    def recording_write(directory, epoch, state, arrays):
        written.append(epoch)
        return real_write(directory, epoch, state, arrays)

    monkeypatch.setattr(checkpoint, "write", recording_write)
    folder = tmp_path / "ck"
    cnn(maxIter=5, checkpointDir=str(folder), checkpointInterval=2).fit(pixels)
    assert written == [2, 4, 5]
    # the two newest are kept; 'latest' names the last
    assert sorted(p for p in os.listdir(folder) if p.startswith("epoch-")) == ["epoch-00004", "epoch-00005"]
    assert (folder / "latest").read_text().strip() == "epoch-00005"
    assert json.loads((folder / "epoch-00004" / "state.json").read_text())["epoch"] == 4
    written.clear()
    cnn(maxIter=3, checkpointDir=str(tmp_path / "every")).fit(pixels)  # the default: every epoch
    assert written == [1, 2, 3]


# ------------------------------------------------------------------ verbose
def test_verbose_prints_a_line_per_epoch_on_the_driver(pixels, capsys):
    model = cnn(maxIter=2, verbose=True).fit(pixels)
    err = capsys.readouterr().err
    lines = [line.strip() for line in err.replace("\r", "\n").splitlines() if ": epoch " in line]
    assert len(lines) == 2, err[-2000:]
    for line, e in zip(lines, model.summary.epochs):
        assert line.startswith(f"spark_nn CNNClassifier.fit: epoch {e['epoch']}, loss {e['loss']:.4f}, "
                               f"accuracy {e['accuracy']:.4f}"), line
    cnn(maxIter=2).fit(pixels)  # verbose=False (the default) prints nothing
    assert ": epoch " not in capsys.readouterr().err


# ------------------------------------------------------------------ tol
def test_tol_counts_an_improvement_smaller_than_it_as_none(pixels):
    """Patience 1: with tol 0 the fit goes on while the validation loss falls; with tol above
    epoch 2's improvement it stops after epoch 2 and keeps epoch 1's weights; with tol below
    that improvement epoch 2 counts as one."""
    def fit(**kw):
        return cnn(validationSplit=0.25, earlyStoppingPatience=1, maxIter=3, **kw).fit(pixels)

    free = fit()
    v = [e["val_loss"] for e in free.summary.epochs]
    assert len(v) == 3 and v[1] < v[0], v  # epoch 2 improved (by v[0] - v[1])
    gain = v[0] - v[1]
    strict = fit(tol=2 * gain)
    s = strict.summary
    assert s.stoppedEarly and len(s.epochs) == 2 and s.bestEpoch == 1
    assert [e["val_loss"] for e in s.epochs] == v[:2]
    one_epoch = cnn(validationSplit=0.25, maxIter=1).fit(pixels)  # epoch 1's weights
    assert strict.weights.tobytes() == one_epoch.weights.tobytes()
    lenient = fit(tol=gain / 2)
    assert lenient.summary.epochs[1]["val_loss"] == v[1]
    assert len(lenient.summary.epochs) == 3 and lenient.summary.bestEpoch in (2, 3)


# ------------------------------------------------------------------ aggregationDepth
@pytest.mark.classic_only
def test_aggregation_depth_reaches_tree_aggregate_and_keeps_the_sum(spark, pixels, monkeypatch):
    from pyspark import RDD

    from spark_nn.ml.training.blocks import TrainingData

    depths = []
    real = RDD.treeAggregate

    def recording(self, zero, seq_op, comb_op, depth=2):
        depths.append(depth)
        return real(self, zero, seq_op, comb_op, depth)

    monkeypatch.setattr(RDD, "treeAggregate", recording)
    deep = cnn(aggregationDepth=3).fit(pixels)
    assert depths and set(depths) == {3}
    depths.clear()
    shallow = cnn(aggregationDepth=1).fit(pixels)
    assert depths and set(depths) == {1}
    # two partitions: every depth adds the two partition sums in order
    assert deep.weights.tobytes() == shallow.weights.tobytes() == cnn().fit(pixels).weights.tobytes()
    # nine partitions: depth 3 sums them in a tree on the executors, depth 1 on the driver; the
    # gradient sums agree to float32 rounding
    est = cnn()
    spec = {"kind": "vector", "shape": [1, 6, 6]}
    net = est._network(spec, 3)
    data = TrainingData(pixels, "features", "label", spec, num_partitions=9)
    try:
        results = {}
        assert len(data.sizes) == 9
        for depth in (1, 3):
            depths.clear()
            trainer = DistributedTrainer(net.config(), data, epochs=1, batch_size=48, optimizer="sgd",
                                         step_size=0.1, seed=1, local_steps=1, aggregation_depth=depth)
            results[depth] = trainer.gradient(net.params.copy(), epoch=0, step=0)
            assert depths == [depth]
    finally:
        data.release()
    assert results[1].n == results[3].n > 0 and results[1].loss == pytest.approx(results[3].loss, rel=1e-12)
    np.testing.assert_allclose(results[3].vec, results[1].vec, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------ SGD momentum, weightDecay
@pytest.mark.parametrize("momentum, weight_decay", [(0.9, 0.0), (0.0, 0.05), (0.5, 0.02)])
def test_sgd_momentum_and_weight_decay_train_as_torch_sgd(spark, momentum, weight_decay):
    """batchSize above the row count: every step is one full-batch gradient step (both
    partitions' rows), which torch.optim.SGD takes on the same network and rows."""
    x, y = bright_pixel_rows(np.random.default_rng(3), 40)
    est = cnn(optimizer="sgd", momentum=momentum, weightDecay=weight_decay, stepSize=0.1, batchSize=64, maxIter=4)
    model = est.fit(frame(spark, x, y))
    start = est._network({"kind": "vector", "shape": [1, 6, 6]}, 3)  # the fit's initial weights (same seed)
    tm = start.to_torch().train()
    opt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=momentum, weight_decay=weight_decay)
    xt, yt = torch.from_numpy(x.reshape(-1, 1, 6, 6)), torch.from_numpy(y.astype(np.int64))
    for _ in range(4):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(tm(xt), yt).backward()
        opt.step()
    ours = model.network.torch_state_dict()
    for name, value in tm.state_dict().items():
        np.testing.assert_allclose(ours[name].numpy(), value.detach().numpy(), rtol=2e-4, atol=2e-6, err_msg=name)
    assert not np.allclose(model.weights, start.params)  # it moved


# ------------------------------------------------------------------ prediction columns, predictProbability
@pytest.fixture(scope="module")
def two_class(spark):
    """A 2-class model with its own column names, and held-out rows it did not see."""
    x, y = bright_pixel_rows(np.random.default_rng(4), 80, classes=2)
    model = cnn(numClasses=2, maxIter=3, predictionCol="pred", probabilityCol="prob",
                rawPredictionCol="raw").fit(frame(spark, x, y))
    xt, yt = bright_pixel_rows(np.random.default_rng(5), 60, classes=2)
    return model, frame(spark, xt, yt, partitions=1), xt.reshape(-1, 1, 6, 6), yt


def torch_outputs(model, x):
    with torch.no_grad():
        logits = model.network.to_torch()(torch.from_numpy(np.asarray(x, np.float32))).numpy()
    return logits, torch.softmax(torch.from_numpy(logits), 1).numpy()


def test_custom_prediction_columns_are_written_and_read_by_the_evaluators(two_class):
    model, test, x, y = two_class
    scored = model.transform(test).cache()
    assert {"pred", "prob", "raw"} <= set(scored.columns)
    assert not {"prediction", "probability", "rawPrediction"} & set(scored.columns)
    rows = scored.collect()  # one partition: the input order
    logits, probs = torch_outputs(model, x)
    np.testing.assert_allclose([r.raw.toArray() for r in rows], logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose([r.prob.toArray() for r in rows], probs, rtol=1e-5, atol=1e-6)
    assert [r.pred for r in rows] == np.argmax(logits, 1).astype(float).tolist()
    accuracy = np.mean(np.argmax(logits, 1) == y)
    log_loss = -np.mean(np.log(probs[np.arange(len(y)), y]))
    auc = roc_auc(logits[:, 1], y)
    # pyspark's evaluators, told the columns, read them; model.evaluate knows them itself
    acc = MulticlassClassificationEvaluator(predictionCol="pred", metricName="accuracy").evaluate(scored)
    ll = MulticlassClassificationEvaluator(predictionCol="pred", probabilityCol="prob",
                                           metricName="logLoss").evaluate(scored)
    assert acc == pytest.approx(accuracy, abs=1e-12) and ll == pytest.approx(log_loss, rel=1e-5)
    assert BinaryClassificationEvaluator(rawPredictionCol="raw").evaluate(scored) == pytest.approx(auc, abs=1e-9)
    metrics = model.evaluate(test)
    assert metrics["accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert metrics["logLoss"] == pytest.approx(log_loss, rel=1e-5)
    # a column set to '' is not written
    assert "prob" not in model.copy({model.probabilityCol: ""}).transform(test).columns
    scored.unpersist()


def roc_auc(score, y):
    """The area under the ROC curve: the chance that a positive row outscores a negative one
    (ties count half)."""
    pos, neg = score[y == 1], score[y == 0]
    return (np.sum(pos[:, None] > neg[None, :]) + 0.5 * np.sum(pos[:, None] == neg[None, :])) / (len(pos) * len(neg))


def test_predict_probability_is_the_softmax_of_the_logits(two_class):
    model, _, x, _ = two_class
    probs = model.predictProbability(x)
    _, expected = torch_outputs(model, x)
    assert probs.shape == (len(x), 2)
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-6)
    assert model.predict(x).tolist() == np.argmax(expected, 1).tolist()


# ------------------------------------------------------------------ numFeatures, hasSummary
def test_num_features_is_the_values_a_row_holds(spark, two_class):
    model, _, _, _ = two_class
    assert model.numFeatures == 36  # 1 x 6 x 6
    rng = np.random.default_rng(6)
    seq = rng.standard_normal((30, 5, 2))
    df = spark.createDataFrame([(s.tolist(), float(i % 2)) for i, s in enumerate(seq)],
                               "seq array<array<double>>, label double")
    rnn = RNNClassifier(layers=[3], inputCol="seq", maxIter=1, localSteps=1).fit(df)
    assert rnn.numFeatures == 10  # 5 steps x 2 features


def test_has_summary_only_on_a_fitted_model(two_class, tmp_path):
    model, _, _, _ = two_class
    assert model.hasSummary and model.summary.totalIterations > 0
    copied = model.copy()
    assert not copied.hasSummary
    with pytest.raises(RuntimeError, match="no training summary"):
        copied.summary
    model.write().save(str(tmp_path / "m"))
    loaded = CNNClassificationModel.load(str(tmp_path / "m"))
    assert not loaded.hasSummary
    with pytest.raises(RuntimeError, match="no training summary"):
        loaded.summary


# ------------------------------------------------------------------ summary.asDict, validationLoss
def test_summary_validation_loss_and_as_dict(spark):
    from pyspark.sql import functions as F

    x, y = bright_pixel_rows(np.random.default_rng(7), 90)
    is_val = np.arange(90) % 4 == 0
    df = spark.createDataFrame([(Vectors.dense(a.tolist()), float(b), bool(v)) for a, b, v in zip(x, y, is_val)],
                               ["features", "label", "isVal"]).repartition(2)
    model = cnn(maxIter=2, validationIndicatorCol="isVal").fit(df)
    s = model.summary
    assert len(s.validationLoss) == 2 and s.validationLoss == [e["val_loss"] for e in s.epochs]
    # the last epoch's validation loss is the final model's mean cross-entropy on the isVal rows
    logits, _ = torch_outputs(model, x[is_val].reshape(-1, 1, 6, 6))
    expected = torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(y[is_val])).item()
    assert s.validationLoss[-1] == pytest.approx(expected, rel=1e-5)
    d = s.asDict()
    assert set(d) == {"objectiveHistory", "objectiveSteps", "epochs", "totalIterations", "stoppedEarly",
                      "bestEpoch", "localStepsAuto"}
    assert d["objectiveHistory"] == s.objectiveHistory and d["epochs"] == s.epochs
    assert d["totalIterations"] == s.totalIterations == len(s.objectiveHistory) == 2 * 5  # 68 rows, batch 16
    assert d["stoppedEarly"] is False and d["bestEpoch"] is None and d["localStepsAuto"] is None
    assert json.loads(json.dumps(d)) == d  # plain JSON: what a checkpoint and MLflow store
    # without validation rows there is no validation loss
    assert cnn(maxIter=1).fit(df.where(~F.col("isVal"))).summary.validationLoss == []


# ------------------------------------------------------------------ loadImages(recursive=True)
def test_load_images_recursive_reads_subfolders_of_each_class(spark, tmp_path):
    root = tmp_path / "classes"
    for rel, level in (("a/0.png", 10), ("a/deeper/1.png", 20), ("a/deeper/still/2.png", 30), ("b/3.png", 40)):
        os.makedirs(root / os.path.dirname(rel), exist_ok=True)
        write_png_gray(str(root / rel), np.full((4, 4), level, np.uint8))

    def read(**kw):
        df = ImageFeature.loadImages(str(root), **kw)
        return df.schema["label"].metadata["ml_attr"]["vals"], sorted(
            (r.image.origin.rsplit("/", 1)[1], r.label, r.image.data[0]) for r in df.collect())

    assert read() == (["a", "b"], [("0.png", 0.0, 10), ("3.png", 1.0, 40)])
    assert read(recursive=True) == (["a", "b"], [("0.png", 0.0, 10), ("1.png", 0.0, 20), ("2.png", 0.0, 30),
                                                 ("3.png", 1.0, 40)])
    # an image of another size in a subfolder: left out without recursive, so not checked either
    write_png_gray(str(root / "a/deeper/4.png"), np.full((6, 6), 50, np.uint8))
    assert read()[1] == [("0.png", 0.0, 10), ("3.png", 1.0, 40)]
    with pytest.raises(ValueError, match=r"mixes image sizes/channels \(4x4x1, 6x6x1\)"):
        read(recursive=True)


# ------------------------------------------------------------------ initialWeights
def start_of_fit(monkeypatch):
    """Records the weights each fit's trainer starts from."""
    starts = []
    real = DistributedTrainer.run

    def run(self, weights):
        starts.append(np.array(weights, copy=True))
        return real(self, weights)

    monkeypatch.setattr(DistributedTrainer, "run", run)
    return starts


def test_initial_weights_from_a_fitted_model_or_a_sequential(pixels, monkeypatch):
    starts = start_of_fit(monkeypatch)
    first = cnn(maxIter=1).fit(pixels)
    before = first.weights.copy()
    tuned = cnn(maxIter=1, initialWeights=first).fit(pixels)
    assert starts[1].tobytes() == before.tobytes()  # the second fit started where the first ended
    assert first.weights.tobytes() == before.tobytes()  # and left the given model as it was
    assert tuned.weights.tobytes() != first.weights.tobytes()
    assert not tuned.isSet(tuned.initialWeights)  # an in-memory start is not the model's to keep
    # a Sequential of the same layers, initialised from another seed
    net = Sequential([L.Conv2D(4, 3), L.Activation("relu"), L.MaxPool2D(2), L.Flatten(), L.Dense(3)], (1, 6, 6),
                     seed=99)
    cnn(maxIter=1, initialWeights=net).fit(pixels)
    assert starts[2].tobytes() == net.params.tobytes()
    assert starts[2].tobytes() != starts[0].tobytes()  # not the seed's own initial weights


def test_initial_weights_with_another_layer_count_is_a_clear_error(pixels):
    net = Sequential([L.Conv2D(4, 3), L.Activation("relu"), L.MaxPool2D(2), L.Flatten(), L.Dense(3), L.Dense(3)],
                     (1, 6, 6))
    with pytest.raises(ValueError, match=r"initialWeights \(Sequential\) do not fit this estimator's network: "
                                         r"6 weight arrays there, 4 here"):
        cnn(maxIter=1, initialWeights=net).fit(pixels)
    shorter = Sequential([L.Conv2D(4, 3), L.Activation("relu"), L.MaxPool2D(2), L.Flatten()], (1, 6, 6))
    with pytest.raises(ValueError, match=r"do not fit this estimator's network: 2 weight arrays there, 4 here"):
        cnn(maxIter=1, initialWeights=shorter).fit(pixels)


# ------------------------------------------------------------------ a partition of validation rows only
def test_a_batch_holding_only_validation_rows_trains(spark):
    """The test rows unioned after the training rows (compare_peers' recipe): when a partition's
    training rows fill whole Arrow batches, its last batches hold validation rows only, and the
    pass's label moments of such a batch are of no rows (this broke the 60k benchmark once:
    reshape(0, -1) fails). 40 training rows then 20 validation rows, dealt over 2 partitions in
    batches of 10."""
    from spark_nn.ml.regression import CNNRegressor

    x, y = bright_pixel_rows(np.random.default_rng(3), 60)
    rows = [(i, Vectors.dense(a.tolist()), float(b), i >= 40) for i, (a, b) in enumerate(zip(x, y))]
    df = spark.createDataFrame(rows, ["i", "features", "label", "isVal"]).coalesce(1)
    key = "spark.sql.execution.arrow.maxRecordsPerBatch"
    before = spark.conf.get(key)
    spark.conf.set(key, "10")
    try:
        model = cnn(maxIter=1, validationIndicatorCol="isVal").fit(df)
        reg = CNNRegressor(layers=[4], imageShape=[1, 6, 6], maxIter=1, validationIndicatorCol="isVal").fit(df)
    finally:
        spark.conf.set(key, before)
    assert model.summary.epochs[-1]["val_loss"] > 0
    assert reg.summary.epochs[-1]["val_rmse"] > 0
