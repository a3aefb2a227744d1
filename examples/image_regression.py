"""Image regression with CNNRegressor: each 8x8 digit image (scikit-learn's digits, shipped with
spark_nn.datasets) labelled with its digit as a number (0.0 to 9.0), predicted from the pixels:
a reading off an image, as a count or a gauge would be.

    python examples/image_regression.py

Prints the test RMSE and r2 against predicting the training mean (RMSE = the label's spread,
r2 = 0). EPOCHS in the environment overrides maxIter.
"""
import os

from pyspark.ml.linalg import Vectors
from pyspark.sql import SparkSession

from spark_nn.datasets import digits_split
from spark_nn.ml.regression import CNNRegressor

spark = SparkSession.builder.appName("image regression").getOrCreate()
x_train, x_test, y_train, y_test = digits_split()  # float32 (n, 1, 8, 8) in [0, 1], digits 0-9


def frame(x, y):
    return spark.createDataFrame([(Vectors.dense(a.ravel()), float(b)) for a, b in zip(x, y)], ["features", "value"])


train, test = frame(x_train, y_train), frame(x_test, y_test)
cnn = CNNRegressor(layers=[16, 32], imageShape=[1, 8, 8], labelCol="value", maxIter=int(os.environ.get("EPOCHS", 30)))
model = cnn.fit(train)
metrics = model.evaluate(test)
spread = test.selectExpr("stddev_pop(value)").first()[0]
print(f"CNN test RMSE: {metrics['rmse']:.4f}, r2: {metrics['r2']:.3f} (the label's spread: {spread:.4f})")
