"""Scoring a Structured Streaming DataFrame, and the AutoEncoder."""
import numpy as np
import pytest
from pyspark.ml.linalg import Vectors

from spark_nn.datasets import digits_split
from spark_nn.ml.classification import CNNClassifier
from spark_nn.ml.feature import AutoEncoder, AutoEncoderModel


@pytest.fixture(scope="module")
def digit_rows():
    xtr, xte, ytr, yte = digits_split()
    return xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1), ytr, yte


def test_model_scores_a_file_source_stream(spark, digit_rows, tmp_path):
    xtr, xte, ytr, yte = digit_rows
    train = spark.createDataFrame([(a.tolist(), float(b)) for a, b in zip(xtr[:600], ytr[:600])],
                                  "pixels array<double>, label double")
    model = CNNClassifier(layers=[8], inputCol="pixels", numClasses=10, maxIter=3, batchSize=64, stepSize=5e-3,
                          seed=0).fit(train)
    # three files arrive in the watched folder; the stream scores them with the batch model
    src = tmp_path / "incoming"
    batch = spark.createDataFrame([(i, a.tolist()) for i, a in enumerate(xte[:90])], "id long, pixels array<double>")
    for k in range(3):
        batch.where(f"id % 3 = {k}").write.parquet(str(src / f"part{k}"))
    stream = (spark.readStream.schema(batch.schema).option("recursiveFileLookup", "true").parquet(str(src)))
    assert stream.isStreaming
    scored = model.transform(stream).select("id", "prediction", "probability")
    query = scored.writeStream.format("memory").queryName("scored_digits").outputMode("append").start()
    try:
        query.processAllAvailable()
    finally:
        query.stop()
    got = {r.id: r.prediction for r in spark.table("scored_digits").collect()}
    assert len(got) == 90
    expected = model.predict(xte[:90].astype(np.float32).reshape(-1, 1, 8, 8))
    assert [got[i] for i in range(90)] == expected.astype(float).tolist()


def test_autoencoder_codes_and_reconstruction_error(spark, digit_rows, tmp_path):
    xtr, xte, _, _ = digit_rows
    df = spark.createDataFrame([(Vectors.dense(a.tolist()),) for a in xtr], ["features"])
    ae = AutoEncoder(layers=[32, 8], maxIter=20, learningRateSchedule="constant", batchSize=128, stepSize=5e-3, seed=0)
    model = ae.fit(df)
    assert model.codeSize == 8 and not model.summary.epochs[-1]["accuracy"]
    losses = model.summary.trainingLoss
    assert losses[-1] < 0.5 * losses[0]
    test = spark.createDataFrame([(Vectors.dense(a.tolist()),) for a in xte], ["features"])
    out = model.transform(test)
    assert out.columns == ["features", "code", "reconstructionError"]
    rows = out.collect()
    errors = np.array([r.reconstructionError for r in rows])
    # stated bounds: held-out digits (pixels in [0, 1]) reconstruct from 8 numbers with mean squared
    # error < 0.045, under 60 % of predicting every pixel's training mean
    baseline = np.mean((xte - xtr.mean(axis=0)) ** 2)
    assert errors.mean() < 0.045 and errors.mean() < 0.6 * baseline, (errors.mean(), baseline)
    assert len(rows[0].code) == 8
    np.testing.assert_allclose(rows[0].code.toArray(), model.encode(xte[:1])[0], rtol=1e-6)
    # noise is flagged: its reconstruction error is far above the digits'
    noise = np.random.default_rng(0).random((20, 64))
    noisy = model.transform(spark.createDataFrame([(Vectors.dense(a.tolist()),) for a in noise], ["features"]))
    assert min(r.reconstructionError for r in noisy.collect()) > np.percentile(errors, 95)
    with_recon = model.copy({model.reconstructionCol: "recon"}).transform(test).first()
    assert len(with_recon.recon) == 64
    path = str(tmp_path / "ae")
    model.write().save(path)
    again = AutoEncoderModel.load(path).transform(test).collect()
    assert [r.reconstructionError for r in again] == errors.tolist()
    # the encoder as ONNX gives the codes
    onnxruntime = pytest.importorskip("onnxruntime")
    sess = onnxruntime.InferenceSession(model.exportOnnx(str(tmp_path / "encoder.onnx")),
                                        providers=["CPUExecutionProvider"])
    codes = sess.run(None, {"input": xte[:7].astype(np.float32)})
    assert len(codes) == 1
    np.testing.assert_allclose(codes[0], model.encode(xte[:7]), rtol=1e-4, atol=1e-5)


def test_autoencoder_code_column_is_codecol_and_outputcol_still_reads(spark, digit_rows, tmp_path):
    """One meaning per param name: the code column is codeCol (outputCol names the label in CNN
    and RNN); outputCol, its old name, still works for one release with a warning, and a model
    saved under it loads with its column."""
    import json
    import warnings

    xtr, _, _, _ = digit_rows
    df = spark.createDataFrame([(Vectors.dense(a.tolist()),) for a in xtr[:200]], ["features"])
    model = AutoEncoder(layers=[4], maxIter=1, codeCol="z", seed=0).fit(df)
    assert model.transform(df).columns == ["features", "z", "reconstructionError"]
    with pytest.warns(DeprecationWarning, match="use codeCol"):
        old = AutoEncoder(layers=[4], maxIter=1, outputCol="legacy", seed=0).fit(df)
        assert "legacy" in old.transform(df).columns
    path = tmp_path / "ae"
    model.write().overwrite().save(str(path))
    meta_file = next((path / "metadata").glob("part-*"))
    meta = json.loads(meta_file.read_text())
    meta["paramMap"]["outputCol"] = meta["paramMap"].pop("codeCol")  # as a model saved before codeCol
    meta_file.write_text(json.dumps(meta))
    for crc in (path / "metadata").glob(".*.crc"):  # Hadoop's checksum of the file as it was
        crc.unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert AutoEncoderModel.load(str(path)).getOrDefault("outputCol") == "z"
    with pytest.warns(DeprecationWarning):
        assert AutoEncoderModel.load(str(path)).transform(df).columns == ["features", "z", "reconstructionError"]
