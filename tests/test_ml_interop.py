"""Torch modules into Spark models (fromTorch) and estimators started from given weights
(initialWeights): predictions as torch's, saving, fine-tuning, clear errors."""
import numpy as np
import pytest
import torch
import torch.nn as nn
from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.linalg import Vectors

from spark_nn.datasets import digits_split
from spark_nn.ml.classification import (CNN, CNNClassificationModel, CNNClassifier, RNNClassificationModel)


def _digits_cnn():
    """The network CNN(layers=[8, 10]) builds for 8x8 images, written in torch."""
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def digits(spark):
    xtr, xte, ytr, yte = digits_split(seed=0)

    def frame(x, y):
        rows = [(Vectors.dense(a.ravel().tolist()), float(b)) for a, b in zip(x, y)]
        return spark.createDataFrame(rows, ["features", "label"]).repartition(2).cache()

    return (xtr, ytr, frame(xtr, ytr)), (xte, yte, frame(xte, yte))


@pytest.fixture(scope="module")
def torch_trained(digits):
    """A torch CNN trained in-process for 3 epochs on the digits training half."""
    (xtr, ytr, _), _ = digits
    torch.manual_seed(0)
    net = _digits_cnn()
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x, y = torch.from_numpy(xtr), torch.from_numpy(np.asarray(ytr, np.int64))
    for _ in range(3):
        for idx in torch.randperm(len(x)).split(32):
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    return net.eval()


def test_cnn_from_torch_transforms_like_torch_and_saves(digits, torch_trained, tmp_path):
    _, (xte, yte, test) = digits
    model = CNNClassificationModel.fromTorch(torch_trained, [1, 8, 8], inputCol="features",
                                             classNames=[str(d) for d in range(10)])
    got = model.transform(test).select("features", "probability", "prediction").collect()
    x = np.array([r.features.toArray() for r in got], np.float32).reshape(-1, 1, 8, 8)
    with torch.no_grad():
        ref = torch.softmax(torch_trained(torch.from_numpy(x)), 1).numpy()
    np.testing.assert_allclose(np.array([r.probability.toArray() for r in got]), ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal([r.prediction for r in got], ref.argmax(1))
    path = str(tmp_path / "from_torch")
    model.write().save(path)
    again = CNNClassificationModel.load(path)
    assert again.classNames == model.classNames and again.numClasses == 10
    np.testing.assert_array_equal(again.weights, model.weights)


class _TextNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb, self.rnn, self.fc = nn.Embedding(50, 4), nn.GRU(4, 6, batch_first=True), nn.Linear(6, 3)

    def forward(self, ids):
        return self.fc(self.rnn(self.emb(ids))[0][:, -1])


def test_rnn_from_torch_scores_token_sequences_like_torch(spark):
    torch.manual_seed(1)
    tm = _TextNet().eval()
    ids = np.random.default_rng(0).integers(0, 50, (7, 5))
    df = spark.createDataFrame([(row.tolist(),) for row in ids], ["tokens"])
    model = RNNClassificationModel.fromTorch(tm, [5], inputCol="tokens")
    assert model.inputSpec == {"kind": "ids", "shape": [5], "vocabSize": 50}
    raw = np.array([r.rawPrediction.toArray() for r in model.transform(df).collect()])
    with torch.no_grad():
        np.testing.assert_allclose(raw, tm(torch.from_numpy(ids)).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="inputKind must be one of"):
        RNNClassificationModel.fromTorch(tm, [5], inputKind="image")


@pytest.mark.once
def test_fine_tuning_from_torch_beats_training_from_scratch(digits, torch_trained, tmp_path):
    (_, _, train), (_, _, test) = digits
    acc = MulticlassClassificationEvaluator(metricName="accuracy")

    def fit(**kw):
        est = CNN(layers=[8, 10], inputCol="features", numClasses=10, maxIter=1, localSteps=1, seed=3, **kw)
        return est.fit(train)

    scratch, tuned = fit(), fit(initialWeights=torch_trained)
    a_scratch, a_tuned = acc.evaluate(scratch.transform(test)), acc.evaluate(tuned.transform(test))
    assert a_tuned > a_scratch + 0.05, (a_tuned, a_scratch)

    # a saved model's path: the fit starts from exactly its weights (a tiny step barely moves them)
    path = str(tmp_path / "start")
    tuned.write().save(path)
    est = CNNClassifier(layers=[8, 10], inputCol="features", numClasses=10, maxIter=1, stepSize=1e-9,
                        initialWeights=path)
    np.testing.assert_allclose(est.fit(train).weights, tuned.weights, atol=1e-6)
    est.write().save(str(tmp_path / "estimator"))  # a path persists with the estimator
    assert CNNClassifier.load(str(tmp_path / "estimator")).getInitialWeights() == path
    with pytest.raises(ValueError, match="in-memory model"):
        est.setInitialWeights(torch_trained).write().save(str(tmp_path / "estimator2"))


@pytest.mark.classic_only  # counts jobs with the SparkContext's status tracker
def test_initial_weights_that_do_not_fit_are_refused_before_the_pass_over_the_data(digits, torch_trained, spark):
    (_, _, train), _ = digits
    train.count()  # the fixture's own jobs (a test run alone, or first, would count them)
    tracker = spark.sparkContext.statusTracker()
    before = len(tracker.getJobIdsForGroup(None))
    with pytest.raises(ValueError, match=r"initialWeights \(torch Sequential\) do not fit this estimator's network: "
                                         r"weight 0 is Conv2D.w \(8, 1, 3, 3\) there, Conv2D.w \(16, 1, 3, 3\)"):
        CNN(layers=[16, 10], inputCol="features", numClasses=10, initialWeights=torch_trained).fit(train)
    assert len(tracker.getJobIdsForGroup(None)) <= before + 1  # the first row's size only
    with pytest.raises(TypeError, match="initialWeights must be"):
        CNN(initialWeights=3.5)


def test_spark_models_export_onnx_that_scores_as_transform(digits, torch_trained, spark, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    _, (xte, _, test) = digits
    cnn = CNNClassificationModel.fromTorch(torch_trained, [1, 8, 8], inputCol="features")
    sess = onnxruntime.InferenceSession(cnn.exportOnnx(str(tmp_path / "cnn.onnx")), providers=["CPUExecutionProvider"])
    rows = cnn.transform(test).select("features", "probability").collect()
    x = np.array([r.features.toArray() for r in rows], np.float32).reshape(-1, 1, 8, 8)
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"input": x})))
    np.testing.assert_allclose(out["probability"], [r.probability.toArray() for r in rows], rtol=1e-4, atol=1e-6)

    from spark_nn.ml.classification import RNN
    from spark_nn.ml.feature import SequenceAssembler

    words = spark.createDataFrame([("good film".split(), 1.0), ("bad".split(), 0.0), ("not good at all".split(), 0.0),
                                   ("a great one".split(), 1.0)] * 8, ["words", "label"])
    seqs = SequenceAssembler(inputCol="words", outputCol="seq", sequenceLength=6, vocabSize=64).transform(words)
    rnn = RNN(layers=[5, 2], cellType="lstm", inputCol="seq", numClasses=2, maxIter=2).fit(seqs)
    sess = onnxruntime.InferenceSession(rnn.exportOnnx(str(tmp_path / "rnn.onnx")), providers=["CPUExecutionProvider"])
    rows = rnn.transform(seqs).select("seq", "rawPrediction").collect()
    ids = np.array([r.seq for r in rows], np.int64)
    np.testing.assert_allclose(sess.run(["output"], {"input": ids})[0], [r.rawPrediction.toArray() for r in rows],
                               rtol=1e-4, atol=1e-5)
