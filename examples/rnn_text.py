"""The seed's RNN program (section 4.2), with pyspark.ml replaced by spark_nn.ml in the imports.

    python examples/rnn_text.py [path/to/texts.tsv]

Each line of the text file is 'label<TAB>sentence' (label 1 positive, 0 negative). Without an
argument the program writes a generated review-like data set there first (spark_nn.datasets:
sentiment words with negation, so word order matters). Besides the imports, this differs from
the seed where the seed cannot run: it reads labels along with the texts (the seed's
flatMap lost them), keeps the label column through the pipeline, and computes the accuracy as
the fraction of test rows predicted right. EPOCHS in the environment overrides maxIter.
"""
import os
import sys
import tempfile

from spark_nn.ml.classification import RNN
from spark_nn.ml.feature import Tokenizer, SequenceAssembler
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

path = sys.argv[1] if len(sys.argv) > 1 else None
if path is None:
    from spark_nn.datasets import write_labelled_text

    path = os.path.join(tempfile.mkdtemp(prefix="spark_nn_texts_"), "texts.tsv")
    write_labelled_text(path, n=2000)

spark = SparkSession.builder.appName("RNN").getOrCreate()

# Load and preprocess the text data
parts = F.split(F.col("value"), "\t", 2)
texts = spark.read.text(path).select(parts[0].cast("double").alias("label"), parts[1].alias("text"))

# Tokenize the text data
tokenizer = Tokenizer(inputCol="text", outputCol="words")
words = tokenizer.transform(texts).select("words", "label")

# Assemble the sequences
assembler = SequenceAssembler(inputCol="words", outputCol="sequence", sequenceLength=10)
sequences = assembler.transform(words).select("sequence", "label")

# Split the data into training and test sets
(train, test) = sequences.randomSplit([0.8, 0.2], seed=0)

# Create the RNN model
rnn = RNN(layers=[64, 32, 16], activation="relu", inputCol="sequence", outputCol="label", numClasses=2)
rnn.setMaxIter(int(os.environ.get("EPOCHS", rnn.getMaxIter())))

# Train the model
model = rnn.fit(train)

# Evaluate the model
predictions = model.transform(test)
accuracy = predictions.where(F.col("label") == F.col("prediction")).count() / predictions.count()
print("Accuracy: %.3f" % accuracy)
