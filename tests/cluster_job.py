"""Driver program of the standalone-cluster test (run by tests/test_cluster.py in its own
process): fits a CNN on digits through a Spark standalone cluster whose executors import
spark_nn only from the shipped wheel, then prints one JSON line with what it saw."""
import json
import os
import sys
import time
import urllib.request

from pyspark.ml.evaluation import MulticlassClassificationEvaluator
from pyspark.ml.linalg import Vectors
from pyspark.sql import SparkSession

from spark_nn.datasets import digits_split
from spark_nn.ml.classification import CNN
from spark_nn.ml.shipping import executor_wheel_conf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
from standalone import java_conf  # noqa: E402

master, wheel, executor_python, staging = sys.argv[1:5]
builder = (SparkSession.builder.master(master).appName("spark_nn cluster test")
           .config("spark.executor.cores", "1").config("spark.cores.max", "2").config("spark.executor.memory", "768m")
           .config("spark.pyspark.python", executor_python).config("spark.pyspark.driver.python", sys.executable)
           .config("spark.python.unix.domain.socket.enabled", "true").config("spark.ui.port", "0")
           .config("spark.ui.showConsoleProgress", "false"))
for key, value in {**executor_wheel_conf(wheel, staging), **java_conf()}.items():
    builder = builder.config(key, value)
spark = builder.getOrCreate()
sc = spark.sparkContext
sc.setLogLevel("ERROR")
deadline = time.time() + 120
while sc._jsc.sc().getExecutorMemoryStatus().size() < 3 and time.time() < deadline:  # driver + 2 executors
    time.sleep(0.5)

# where spark_nn comes from on the executors
origins = sorted(set(sc.parallelize(range(4), 4).map(
    lambda _: __import__("importlib").import_module("spark_nn._kernels").__file__).collect()))

xtr, xte, ytr, yte = digits_split()
train = spark.createDataFrame([(Vectors.dense(a.ravel().tolist()), float(b)) for a, b in zip(xtr, ytr)],
                              ["features", "label"]).repartition(2)
test = spark.createDataFrame([(Vectors.dense(a.ravel().tolist()), float(b)) for a, b in zip(xte, yte)],
                             ["features", "label"])
model = CNN(layers=[16, 10], numClasses=10, maxIter=4, batchSize=64, stepSize=4e-3, seed=0).fit(train)
acc = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(test))

app = sc.applicationId
with urllib.request.urlopen(f"{sc.uiWebUrl}/api/v1/applications/{app}/executors") as r:
    executors = json.load(r)
tasks = {e["id"]: e["totalTasks"] for e in executors if e["id"] != "driver"}
print(json.dumps({"accuracy": acc, "tasks_per_executor": tasks, "origins": origins,
                  "steps": model.summary.totalIterations}), flush=True)
spark.stop()
