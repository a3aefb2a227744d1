"""The seed's programs train from a Delta table (issue 30): images as encoded bytes and as pixel
arrays, written to Delta and read back into a fit. Delta Lake's Spark side is a jar
(io.delta:delta-spark) that Spark fetches from Maven at session start; the test runs where that
jar is on this machine (Ivy's cache, or DELTA_JARS naming it) and skips, saying why, where it
cannot be had offline. It runs in a session of its own (a jar joins a session only at its start)."""
import glob
import os
import subprocess
import sys

import pytest

from conftest import clean_env

SCRIPT = r"""
import io, sys
import numpy as np
from PIL import Image
from pyspark.sql import SparkSession
from spark_nn.datasets import digits_split
from spark_nn.ml.classification import CNN

jars, path = sys.argv[1], sys.argv[2]
spark = (SparkSession.builder.master("local[2]").config("spark.jars", jars)
         .config("spark.sql.extensions", "io.delta.sql.DeltaSparkSessionExtension")
         .config("spark.sql.catalog.spark_catalog", "org.apache.spark.sql.delta.catalog.DeltaCatalog").getOrCreate())
x, xt, y, yt = digits_split()

def png(a):
    buf = io.BytesIO()
    Image.fromarray((a[0] * 255).astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()

rows = [(png(a), a.ravel().tolist(), float(b)) for a, b in zip(x, y)]
spark.createDataFrame(rows, "content binary, pixels array<double>, label double").write.format("delta").save(path)
table = spark.read.format("delta").load(path)
for col in ("content", "pixels"):
    model = CNN(layers=[8, 10], inputCol=col, outputCol="label", numClasses=10, maxIter=3, grayscale=True,
                imageShape=[1, 8, 8]).fit(table)
    print(col, model.evaluate(table)["accuracy"])
"""


def _delta_jars():
    named = os.environ.get("DELTA_JARS")
    if named:
        return named
    found = sorted(glob.glob(os.path.expanduser("~/.ivy2*/jars/io.delta_delta-*.jar")))
    return ",".join(found) if any("delta-spark" in f for f in found) else None


@pytest.mark.once  # a session of its own
def test_the_seed_cnn_trains_from_a_delta_table(tmp_path):
    pytest.importorskip("PIL")
    jars = _delta_jars()
    if jars is None:
        pytest.skip("Delta Lake's jars (io.delta:delta-spark and delta-storage) are not on this machine, and "
                    "Maven Central cannot be reached offline to fetch them; set DELTA_JARS to their paths to run")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, jars, str(tmp_path / "digits_delta")], capture_output=True,
                          text=True, timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = dict(line.split() for line in proc.stdout.strip().splitlines()[-2:])
    assert float(accuracy["content"]) > 0.5 and float(accuracy["pixels"]) > 0.5, accuracy
