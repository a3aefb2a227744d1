"""Bad input gets a clear error naming the column, row or parameter, before any training."""
import numpy as np
import pytest
from pyspark.ml.linalg import Vectors

from spark_nn.datasets import write_png_gray
from spark_nn.ml.classification import CNN, RNN
from spark_nn.ml.feature import AutoEncoder, ImageFeature


@pytest.fixture(scope="module")
def pixels(spark):
    rng = np.random.default_rng(0)
    rows = [(Vectors.dense(rng.random(16).tolist()), rng.random(16).tolist(), float(i % 3)) for i in range(30)]
    return spark.createDataFrame(rows, ["features", "arr", "label"]).cache()


def cnn(**kw):
    return CNN(**dict(dict(layers=[2], maxIter=1, batchSize=8), **kw))


CASES = [
    ("missing features column", lambda df: cnn(inputCol="nope").fit(df), "column 'nope' is not in the DataFrame"),
    ("missing label column", lambda df: cnn(outputCol="y").fit(df), "column 'y' is not in the DataFrame"),
    ("features of a wrong type", lambda df: cnn(inputCol="name").fit(df.selectExpr("*", "'x' as name")),
     "features column 'name' has type string"),
    ("label of a wrong type", lambda df: cnn().fit(df.selectExpr("features", "'a' as label")),
     "label column 'label' has type string"),
    ("non-integral labels", lambda df: cnn().fit(df.selectExpr("features", "label + 0.5 as label")),
     "must hold class indices"),
    ("negative labels", lambda df: cnn().fit(df.selectExpr("features", "label - 1 as label")), "negative label"),
    ("labels outside numClasses", lambda df: cnn(numClasses=2).fit(df), r"label 2\.?0?, outside \[0, numClasses=2\)"),
    ("null labels", lambda df: cnn().fit(df.selectExpr("features", "if(label = 1, null, label) as label")),
     r"label column .label. has a null, NaN or infinite value in row \d+ of input partition \d+"),
    ("a single class", lambda df: cnn().fit(df.where("label = 0")), "single class"),
    ("empty DataFrame", lambda df: cnn().fit(df.limit(0)), "DataFrame is empty"),
    ("NaN features", lambda df: cnn(inputCol="arr").fit(df.selectExpr(
        "if(label = 2, array_union(slice(arr, 1, 15), array(double('NaN'))), arr) as arr", "label")),
     "NaN or infinite values in row .* handleInvalid='skip'"),
    ("rows of different sizes", lambda df: cnn(inputCol="arr").fit(df.selectExpr(
        "if(label = 2, slice(arr, 1, 9), arr) as arr", "label")), "has 9 values, expected 16"),
    ("not a square image", lambda df: cnn(inputCol="arr").fit(df.selectExpr("slice(arr, 1, 15) as arr", "label")),
     "15 values per row, which is not a square image; set imageShape"),
    ("imageShape that does not match", lambda df: cnn(imageShape=[1, 3, 3]).fit(df),
     r"imageShape \[1, 3, 3\] does not match the 16 values"),
    ("images too small for the conv/pool stack", lambda df: cnn(layers=[2, 2, 2, 2]).fit(df),
     "MaxPool2D: input of size 1x1 is smaller than its 2x2 window"),
    ("sequences for a CNN", lambda df: cnn(inputCol="seq").fit(df.selectExpr("array(arr, arr) as seq", "label")),
     "use RNNClassifier"),
    ("images for an RNN", lambda df: RNN(layers=[2], inputCol="img").fit(df.selectExpr(
        "named_struct('origin', '', 'height', 1, 'width', 1, 'nChannels', 1, 'mode', 0, 'data', binary('a')) "
        "as img", "label")), "use CNNClassifier"),
    ("no layers set", lambda df: CNN().fit(df), "set layers"),
    ("output column already there", lambda df: cnn().fit(df).transform(df.selectExpr("*", "1 as prediction")),
     "output column 'prediction' already exists"),
    ("model applied to another kind of features", lambda df: cnn().fit(df).setInputCol("seq").transform(
        df.selectExpr("array(arr, arr) as seq")), "holds seq data but the model was trained on vector"),
    ("validationIndicatorCol missing", lambda df: cnn(validationIndicatorCol="isVal").fit(df),
     "validationIndicatorCol 'isVal' is not in the DataFrame"),
    ("AutoEncoder on sequences", lambda df: AutoEncoder(layers=[2], inputCol="seq").fit(
        df.selectExpr("array(arr, arr) as seq")),
     "AutoEncoder needs vectors, numeric arrays or images in .seq.; it holds seq data"),
]


@pytest.mark.parametrize("name, action, message", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_a_clear_error(pixels, name, action, message):
    with pytest.raises(ValueError, match=message):
        action(pixels)


PARAM_CASES = [
    (dict(layers=[]), "layers must be a non-empty list of positive ints"),
    (dict(layers=[8, 0]), "layers must be a non-empty list of positive ints"),
    (dict(activation="gelu"), "activation must be one of"),
    (dict(optimizer="rmsprop"), "optimizer must be one of"),
    (dict(stepSize=0.0), "stepSize must be a number > 0"),
    (dict(numClasses=1), "numClasses must be an int >= 2"),
    (dict(batchSize=0), "batchSize must be an int >= 1"),
    (dict(maxIter=0), "maxIter must be an int >= 1"),
    (dict(validationSplit=1.0), r"validationSplit must be a number in \[0, 1\)"),
    (dict(handleInvalid="keep"), "handleInvalid must be one of"),
    (dict(kernelSize=4), "kernelSize must be an odd int"),
]


@pytest.mark.parametrize("kw, message", PARAM_CASES, ids=[next(iter(k)) + "=" + repr(next(iter(k.values())))
                                                          for k, _ in PARAM_CASES])
def test_bad_params_fail_when_set(kw, message):
    with pytest.raises(ValueError, match=message):
        CNN(**kw)


def test_skip_invalid_rows_drops_exactly_the_bad_rows(spark):
    """handleInvalid='skip' on a DataFrame that holds bad rows (NaN and infinite features, null
    labels) trains on exactly the other rows: bitwise as a fit of the DataFrame without them.
    The rows are dealt to the two partitions by position (row j of the one input partition to
    partition j mod 2, in order) before the bad ones are dropped, so the bad rows come in pairs
    at even positions: dropping a pair before the fit moves the later rows by 2, to the same
    partition and order, and both fits see the same blocks."""
    rng = np.random.default_rng(4)
    n = 40
    x, y = rng.random((n, 16)), np.arange(n) % 3
    bad = {6: "nan", 7: "inf", 20: "null label", 21: "null label"}
    rows = []
    for i in range(n):
        features, label = x[i].tolist(), float(y[i])
        if bad.get(i) == "nan":
            features[5] = float("nan")
        elif bad.get(i) == "inf":
            features[0] = float("-inf")
        elif bad.get(i) == "null label":
            label = None
        rows.append((features, label))

    def frame(keep):
        return spark.createDataFrame([rows[i] for i in keep], "arr array<double>, label double").coalesce(1)

    def fit(df, **kw):
        return cnn(inputCol="arr", numClasses=3, imageShape=[1, 4, 4], maxIter=2, localSteps=1, seed=2,
                   **kw).fit(df)

    # (the two partitions' tasks run side by side: either bad features row may be named first)
    with pytest.raises(ValueError, match=r"has NaN or infinite values in row [67] of input partition 0"):
        fit(frame(range(n)))
    skipped = fit(frame(range(n)), handleInvalid="skip")
    clean = fit(frame([i for i in range(n) if i not in bad]))
    assert skipped.weights.tobytes() == clean.weights.tobytes()
    assert skipped.summary.objectiveHistory == clean.summary.objectiveHistory
    # the comparison tells rows apart: dropping another pair of good rows gives other weights
    other = fit(frame([i for i in range(n) if i not in bad and i not in (8, 9)]))
    assert other.weights.tobytes() != clean.weights.tobytes()


def test_load_images_mixed_sizes(spark, tmp_path):
    for cls, size in (("a", 6), ("b", 8)):
        (tmp_path / cls).mkdir()
        for i in range(3):
            write_png_gray(str(tmp_path / cls / f"{i}.png"), np.full((size, size), 40 * i, np.uint8))
    with pytest.raises(ValueError, match=r"mixes image sizes/channels .*size=\(height, width\)"):
        ImageFeature.loadImages(str(tmp_path))
    df = ImageFeature.loadImages(str(tmp_path), size=(5, 7), grayscale=False)
    rows = df.collect()
    assert {(r.image.height, r.image.width, r.image.nChannels) for r in rows} == {(5, 7, 3)}
    # each file is one gray level, 40 i: resized and given 3 channels, every byte is that level
    assert sorted(bytes(r.image.data) for r in rows) == sorted(bytes([40 * int(r.image.origin[-5])]) * 5 * 7 * 3
                                                               for r in rows)
    assert sorted(r.label for r in rows) == [0, 0, 0, 1, 1, 1]
    with pytest.raises(ValueError, match="does not exist"):
        ImageFeature.loadImages(str(tmp_path / "missing"))
