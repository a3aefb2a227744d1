"""CNNClassifier on scikit-learn's digits written out as PNG folders and read back with
ImageFeature.loadImages: accuracy, pyspark's evaluators, save/load, Pipeline and
CrossValidator with our stages."""
import os

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.evaluation import BinaryClassificationEvaluator, MulticlassClassificationEvaluator
from pyspark.ml.linalg import Vectors
from pyspark.ml.tuning import CrossValidator, CrossValidatorModel, ParamGridBuilder
from pyspark.sql import functions as F

from spark_nn.datasets import digits_split
from spark_nn.ml.classification import CNN, CNNClassificationModel, CNNClassifier
from spark_nn.ml.feature import ImageFeature

DIGITS_ARGS = dict(layers=[32, 64, 10], activation="relu", inputCol="image", outputCol="label", numClasses=10,
                   maxIter=15, batchSize=64, stepSize=4e-3, optimizer="adamw", weightDecay=0.05,
                   learningRateSchedule="cosine", seed=0)


@pytest.fixture(scope="module")
def digits_images(spark, digits_dirs):
    train_dir, test_dir = digits_dirs
    return ImageFeature.loadImages(train_dir).cache(), ImageFeature.loadImages(test_dir).cache()


@pytest.fixture(scope="module")
def digits_model(digits_images):
    train, _ = digits_images
    return CNN(**DIGITS_ARGS).fit(train)


def _sorted_predictions(model, df, cols=("prediction", "probability")):
    rows = model.transform(df).select(F.col("image.origin").alias("o"), *cols).orderBy("o").collect()
    return [tuple(r[c] for c in cols) for r in rows]


def test_load_images_gives_image_and_label_with_class_names(digits_images):
    train, test = digits_images
    assert train.columns == ["image", "label"]
    assert train.schema["label"].metadata["ml_attr"]["vals"] == [str(d) for d in range(10)]
    assert (train.count(), test.count()) == (1437, 360)
    row = train.where(F.col("image.origin").endswith("/3/00000.png")).first() or train.first()
    assert (row.image.height, row.image.width, row.image.nChannels) == (8, 8, 1)
    # the labels are the folder names: every file sits in the folder of its label
    wrong = train.where(F.regexp_extract("image.origin", r"/(\d)/[^/]+$", 1).cast("double") != F.col("label"))
    assert wrong.count() == 0


# The bars on the 360 test images, measured with DIGITS_ARGS at fit seeds 0, 1, 2 (the split is
# digits_split's fixed one): accuracy 0.9861, 0.9806, 0.9778 (mean 0.9815, standard error of the
# mean 0.0024, mean - 3 SE 0.9741; 0.98 failed seed 2, as it failed CI once at 0.9778). Seeds 3, 4,
# 5, run as a check, reached 0.9778, 0.9694, 0.9722: over the six, mean 0.9773, SE 0.0024, mean -
# 3 SE 0.9700, and the standard deviation of one fit 0.0059. The bar, 0.96, is 3 of those one-fit
# deviations below the mean (0.9595), so none of the six fails it. f1 likewise: 0.9862, 0.9807,
# 0.9779, 0.9779, 0.9695, 0.9721 (mean - 3 SE 0.9700 over six: bar 0.96); logLoss 0.0581, 0.0538,
# 0.0593, 0.0731, 0.0713, 0.0752 (mean 0.0651, SE 0.0037, mean + 3 SE 0.0763: bar 0.2); one-vs-rest
# AUC of digit 3 at seeds 0, 1, 2 0.9998, 1.0, 0.9997 (mean 0.9999, SE 0.0001, mean - 3 SE 0.9996:
# bar 0.99); the last epoch's training accuracy 0.9965, 0.9986, 0.9993 (mean 0.9981, SE 0.0008,
# mean - 3 SE 0.9956: bar 0.99). Seed 0 gave the same 0.9861 on three runs.
def test_cnn_on_digits_reaches_96_percent(digits_model, digits_images):
    _, test = digits_images
    predictions = digits_model.transform(test)
    acc = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(predictions)
    assert acc >= 0.96, acc  # seeds 0-5: 0.9694-0.9861, mean 0.9773; one-fit SD 0.0059 (see above)
    assert digits_model.classNames == [str(d) for d in range(10)]
    assert digits_model.numClasses == 10 and digits_model.inputSpec["shape"] == [1, 8, 8]
    s = digits_model.summary
    assert len(s.epochs) == 15 and s.epochs[-1]["accuracy"] > 0.99  # 0.9965-0.9993; mean - 3 SE 0.9956
    # localSteps='auto' recorded what it measured and the k the epochs then used
    assert s.localStepsAuto["k"] == s.epochs[-1]["local_steps"] > 1
    assert s.localStepsAuto["fixedMs"] > 0 and s.localStepsAuto["computeMs"] > 0
    # the same pixels through numpy give the same predictions (Spark scoring adds nothing)
    rows = predictions.select("image.data", "prediction").collect()
    x = np.stack([np.frombuffer(r.data, np.uint8) for r in rows]).reshape(-1, 1, 8, 8) / np.float32(255)
    np.testing.assert_array_equal(digits_model.predict(x.astype(np.float32)), [r.prediction for r in rows])


def test_prediction_columns_are_what_pyspark_evaluators_expect(digits_model, digits_images):
    _, test = digits_images
    out = digits_model.transform(test)
    assert set(out.columns) >= {"image", "label", "rawPrediction", "probability", "prediction"}
    r = out.first()
    assert len(r.probability) == 10 and abs(sum(r.probability) - 1) < 1e-5
    assert r.prediction == float(np.argmax(r.rawPrediction))
    f1 = MulticlassClassificationEvaluator(metricName="f1").evaluate(out)
    assert f1 > 0.96  # seeds 0-5: 0.9695-0.9862, mean - 3 SE 0.9700
    metrics = digits_model.evaluate(test)
    assert metrics["f1"] == pytest.approx(f1)
    # accuracy as above (seeds 0-5: 0.9694-0.9861); logLoss 0.0538-0.0752, mean + 3 SE 0.0763 (the
    # bars' record: above test_cnn_on_digits_reaches_96_percent)
    assert metrics["accuracy"] >= 0.96 and 0 < metrics["logLoss"] < 0.2
    # one digit against the rest, scored by its probability, for the binary evaluator
    binary = out.select((F.col("label") == 3).cast("double").alias("label"),
                        F.col("probability").alias("rawPrediction"))
    from pyspark.ml.functions import array_to_vector, vector_to_array
    binary = binary.withColumn("rawPrediction", array_to_vector(F.array(
        1 - vector_to_array("rawPrediction")[3], vector_to_array("rawPrediction")[3])))
    assert BinaryClassificationEvaluator().evaluate(binary) > 0.99  # 0.9997-1.0; mean - 3 SE 0.9996


def test_save_load_round_trip_identical(digits_model, digits_images, tmp_path):
    _, test = digits_images
    path = str(tmp_path / "cnn")
    digits_model.write().overwrite().save(path)
    assert sorted(os.listdir(path)) == ["data", "metadata"]
    assert sorted(os.listdir(os.path.join(path, "data"))) == ["model.json", "weights.npz"]
    loaded = CNNClassificationModel.load(path)
    assert _sorted_predictions(loaded, test) == _sorted_predictions(digits_model, test)
    assert loaded.classNames == digits_model.classNames
    assert loaded.getOrDefault("inputCol") == "image" and loaded.uid == digits_model.uid
    with pytest.raises(RuntimeError, match="no training summary"):
        loaded.summary
    # saving again without overwrite is refused and leaves the model intact
    with pytest.raises(Exception, match="exists"):
        digits_model.write().save(path)
    CNNClassificationModel.load(path)


def test_explain_params_copy_and_seed_aliases():
    est = CNN(layers=[8, 10], inputCol="img", outputCol="y", numClasses=10)
    assert est.featuresColumn() == "img" and est.labelColumn() == "y"
    text = est.explainParams()
    for name in ("layers", "stepSize", "batchSize", "optimizer", "inputCol", "localSteps", "aggregationDepth"):
        assert name in text
    other = est.copy({est.stepSize: 0.5})
    assert other.getStepSize() == 0.5 and est.getStepSize() == 0.003  # the CNN default
    assert CNNClassifier is CNN
    plain = CNNClassifier(featuresCol="f", labelCol="l")
    assert plain.featuresColumn() == "f" and plain.labelColumn() == "l"
    with pytest.raises(ValueError, match="stepSize"):
        CNN(stepSize=-1.0)
    with pytest.raises(ValueError, match="activation"):
        CNN(activation="swish")
    with pytest.raises(TypeError, match="no param 'learningRate'"):
        CNN().setParams(learningRate=0.1)


@pytest.fixture(scope="module")
def pixel_vectors(spark):
    xtr, xte, ytr, yte = digits_split()
    tr = spark.createDataFrame([(Vectors.dense(a.ravel().tolist()), float(b)) for a, b in zip(xtr, ytr)],
                               ["features", "label"])
    te = spark.createDataFrame([(Vectors.dense(a.ravel().tolist()), float(b)) for a, b in zip(xte, yte)],
                               ["features", "label"])
    return tr.repartition(2).cache(), te.cache()


def test_pipeline_and_cross_validator_save_and_load(spark, pixel_vectors, tmp_path):
    train, test = pixel_vectors
    cnn = CNNClassifier(numClasses=10, maxIter=3, batchSize=64, stepSize=3e-3, seed=1)
    grid = ParamGridBuilder().addGrid(cnn.layers, [[2], [16]]).addGrid(cnn.stepSize, [3e-3]).build()
    evaluator = MulticlassClassificationEvaluator(metricName="accuracy")
    cv = CrossValidator(estimator=Pipeline(stages=[cnn]), estimatorParamMaps=grid, evaluator=evaluator,
                        numFolds=2, seed=3, parallelism=2)  # two fits at once, from two threads
    cv_model = cv.fit(train)
    assert np.argmax(cv_model.avgMetrics) == 1  # 16 filters beat 2
    best = cv_model.bestModel
    assert isinstance(best, PipelineModel)
    assert best.stages[0].getLayers() == [16]
    expected = [r.prediction for r in cv_model.transform(test).collect()]

    pm_path, cv_path = str(tmp_path / "pipeline"), str(tmp_path / "cv")
    best.write().overwrite().save(pm_path)
    cv_model.write().overwrite().save(cv_path)
    assert [r.prediction for r in PipelineModel.load(pm_path).transform(test).collect()] == expected
    loaded_cv = CrossValidatorModel.load(cv_path)
    assert [r.prediction for r in loaded_cv.transform(test).collect()] == expected
    assert loaded_cv.avgMetrics == pytest.approx(cv_model.avgMetrics)
