"""The seed's CNN program (section 4.1), with pyspark.ml replaced by spark_nn.ml in the imports.

    python examples/cnn_images.py [path/to/images]

path/to/images holds a folder per class (the folder name is the class). Without an argument
the program writes scikit-learn's bundled digits there as PNG files first. Two things differ
from the seed besides the imports: where the data come from, and the accuracy, which the seed
computed wrongly (it summed predictions); here it is the fraction of test rows predicted right.
EPOCHS in the environment overrides maxIter (the tests run this at small settings).
"""
import os
import sys
import tempfile

from spark_nn.ml.classification import CNN
from spark_nn.ml.feature import ImageFeature
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

path = sys.argv[1] if len(sys.argv) > 1 else None
if path is None:
    from spark_nn.datasets import write_digits_folders

    path = os.path.join(tempfile.mkdtemp(prefix="spark_nn_digits_"), "images")
    write_digits_folders(path)

spark = SparkSession.builder.appName("CNN").getOrCreate()

# Load and preprocess the image data
images = ImageFeature.loadImages(path)

# Split the data into training and test sets
(train, test) = images.randomSplit([0.8, 0.2], seed=0)

# Create the CNN model
cnn = CNN(layers=[32, 64, 10], activation="relu", inputCol="image", outputCol="label", numClasses=10)
cnn.setMaxIter(int(os.environ.get("EPOCHS", cnn.getMaxIter())))

# Train the model
model = cnn.fit(train)

# Evaluate the model
predictions = model.transform(test)
accuracy = predictions.where(F.col("label") == F.col("prediction")).count() / predictions.count()
print("Accuracy: %.3f" % accuracy)
