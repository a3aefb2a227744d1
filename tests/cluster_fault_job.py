"""Driver program of tests/test_cluster_faults.py (run in its own process): on a standalone
cluster of three one-core workers with spark.cores.max=2 (the third takes over a lost
executor), fits a CNN once undisturbed and then once per phase with an executor's JVM
SIGKILLed (spark_nn.ml.training.faults' killExecutorAt), and prints one JSON line: per phase
whether the weights equal the undisturbed fit's bit for bit, what the flag file recorded, and
the resident files left under the living executors' local directories."""
import glob
import json
import os
import sys
import time

import numpy as np
from pyspark.ml.linalg import Vectors
from pyspark.sql import SparkSession

from spark_nn.datasets import digits_split
from spark_nn.ml.classification import CNN
from spark_nn.ml.training.faults import KILL_EXECUTOR_PROPERTY

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from standalone import java_conf  # noqa: E402

master, local_root, flags = sys.argv[1:4]
phases = json.loads(sys.argv[4])  # {name: "epoch:step:partition"}
builder = (SparkSession.builder.master(master).appName("spark_nn executor loss")
           .config("spark.executor.cores", "1").config("spark.cores.max", "2").config("spark.executor.memory", "640m")
           .config("spark.pyspark.python", sys.executable).config("spark.ui.port", "0")
           .config("spark.ui.showConsoleProgress", "false"))
for key, value in java_conf().items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
sc = spark.sparkContext
sc.setLogLevel("ERROR")
deadline = time.time() + 120
while sc._jsc.sc().getExecutorMemoryStatus().size() < 3 and time.time() < deadline:  # driver + 2 executors
    time.sleep(0.5)

xtr, _, ytr, _ = digits_split()
# the input as two Parquet files: read again after a loss, each partition gives its rows in the
# same order. (A shuffled input does not: `repartition(2)` of the same rows, recomputed after
# the executor holding some of its map outputs was lost, concatenates them in another fetch
# order, the positions the pass deals rows by change, and so do the blocks and the fit; see
# docs/errors.md.)
path = os.path.join(local_root, "train.parquet")
spark.createDataFrame([(Vectors.dense(a.ravel().tolist()), float(b)) for a, b in zip(xtr[:600], ytr[:600])],
                      ["features", "label"]).repartition(2).write.parquet(path)
train = spark.read.parquet(path)
# an int localSteps (rounds of 4 steps), a validation split (rounds that validate), 3 epochs
cnn = CNN(layers=[8, 10], numClasses=10, maxIter=3, batchSize=64, seed=0, localSteps=4, validationSplit=0.2)


def resident():
    return sorted(p for p in glob.glob(os.path.join(local_root, "**", "spark_nn", "*", "*"), recursive=True))


reference = cnn.fit(train).weights
out = {"steps": None, "phases": {}, "left_after_reference": resident()}
for name, at in phases.items():
    flag = os.path.join(flags, name)
    sc.setLocalProperty(KILL_EXECUTOR_PROPERTY, f"{at}:{flag}")
    try:
        model = cnn.fit(train)
    finally:
        sc.setLocalProperty(KILL_EXECUTOR_PROPERTY, None)
    out["phases"][name] = {"same": model.weights.tobytes() == reference.tobytes(),
                           "max_diff": float(np.abs(model.weights - reference).max()),
                           "flag": open(flag).read().splitlines() if os.path.exists(flag) else None,
                           "lost_dir": open(flag + ".dir").read() if os.path.exists(flag + ".dir") else None,
                           "left": resident()}
    out["steps"] = model.summary.totalIterations
spark.stop()
print(json.dumps(out), flush=True)
