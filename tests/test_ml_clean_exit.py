"""A user's script that fits and ends prints no traceback (issue: PySpark's daemon printed a
BrokenPipeError for every probe of ours that stopped a Python worker mid-stream, as first() on a
DataFrame of local rows does)."""
import subprocess
import sys

import pytest

from conftest import clean_env

SCRIPT = """
from pyspark.sql import SparkSession
from pyspark.ml.linalg import Vectors
from spark_nn.datasets import digits_split
from spark_nn.ml.classification import CNN

spark = SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false").getOrCreate()
x, _, y, _ = digits_split()
train = spark.createDataFrame([(Vectors.dense(a.ravel()), float(b)) for a, b in zip(x[:400], y[:400])],
                              ["features", "label"])
print(CNN(layers=[4], numClasses=10, maxIter=1).fit(train).transform(train).count())
"""


@pytest.mark.once  # a script of its own, on a classic session of its own
def test_a_script_that_fits_local_rows_and_ends_prints_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("400")
    assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr[-3000:]
