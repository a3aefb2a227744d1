"""A round's cost vs the number of executors: the driver term that docs/scaling.md projects.

    python benchmarks/executors.py [--executors 2 4 8 16] [--params 35000 108000 1060000]

A Spark standalone cluster on this machine (benchmarks/standalone.py): one worker offering
--worker-cores cores (more than the machine has: oversubscribed, so compute is not what is
measured), and for each count W a session with W executors of one core each and a tiny fit's
data in W partitions. For each Adam payload (weights + 2 moments: 0.4, 1.3, 12.7 MB) it takes
a round apart as step_cost.py does (rounds.RDDRounds, medians): the empty round (job
submission, W task launches, W Python workers, the treeAggregate of empty results), what
shipping the payload adds, and what returning a vector of the payload's size from every
partition adds (serialization, treeAggregate's merges on the executors, the driver's inbound
bytes). It ends with a least-squares line of each part in W.

On a machine with fewer cores than executors the wall times measure the executors' contention
for the cores, not the driver. So it also measures the driver's CPU time per round (its
Python process and its JVM, whose threads' times /proc gives in ns): the executors run in
JVMs and Python workers of their own, so that is the driver's term alone, and its line in W
is what docs/scaling.md's projection needs.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from standalone import StandaloneCluster, java_conf  # noqa: E402
from step_cost import ROUND_PARTS, round_parts  # noqa: E402
from timing import print_table  # noqa: E402


def session(url, executors, memory):
    """A session with W one-core executors, our recommended settings (spark_nn.ml.session), and
    the executors' JVMs without C2 too: on a 2-core machine C2's compiler threads in W executor
    JVMs and the driver's took the cores the measurement needs."""
    from pyspark.sql import SparkSession

    from spark_nn.ml.session import RECOMMENDED_CONF

    builder = SparkSession.builder
    for key, value in {**RECOMMENDED_CONF, **java_conf()}.items():
        builder = builder.config(key, value)
    spark = (builder.master(url).appName(f"spark_nn executors {executors}")
             .config("spark.executor.cores", "1").config("spark.cores.max", str(executors))
             .config("spark.executor.memory", memory).config("spark.default.parallelism", str(executors))
             .config("spark.pyspark.python", sys.executable).config("spark.pyspark.driver.python", sys.executable)
             .config("spark.ui.showConsoleProgress", "false")
             .config("spark.driver.memory", "2g").getOrCreate())
    sc = spark.sparkContext
    sc.setLogLevel("ERROR")
    deadline = time.time() + 240
    while sc._jsc.sc().getExecutorMemoryStatus().size() < executors + 1 and time.time() < deadline:
        time.sleep(0.5)
    got = sc._jsc.sc().getExecutorMemoryStatus().size() - 1
    if got < executors:
        spark.stop()
        raise RuntimeError(f"only {got} of {executors} executors registered")
    return spark


def by_executors(results, args, title, parts, headers):
    """A table of parts (keys of round_parts' rows) by payload and executor count."""
    print(f"## {title}")
    print()
    table = []
    for params in args.params:
        for w in args.executors:
            r = results[(w, params)]
            table.append([f"{r['payload MB']:.1f}", w, r["partitions"]] + [f"{r[k]:.1f}" for k in parts])
    print_table(["payload MB", "executors", "partitions", *headers], table)
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--executors", type=int, nargs="+", default=[2, 4, 8, 16])
    ap.add_argument("--params", type=int, nargs="+", default=[35_000, 108_000, 1_060_000])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--worker-cores", type=int, default=16)
    ap.add_argument("--executor-memory", default="512m")
    args = ap.parse_args(argv)
    os.environ["PYSPARK_PYTHON"] = sys.executable
    results = {}
    cluster = StandaloneCluster()
    with tempfile.TemporaryDirectory(prefix="spark_nn_executors_") as workdir:
        try:
            url = cluster.start(workdir, workers=1, cores=max(args.worker_cores, max(args.executors)),
                                memory=f"{max(args.executors) * 600}m")
            for w in args.executors:
                spark = session(url, w, args.executor_memory)
                try:
                    for row in round_parts(spark, args.params, args.repeat):
                        results[(w, row["parameters"])] = row
                        print(f"executors {w}, {row['payload MB']:.1f} MB: " + ", ".join(
                            f"{k} {row[k]:.1f}" for k in ROUND_PARTS)
                              + f", driver CPU ms {row['empty round driver CPU ms']:.1f} (empty round)", flush=True)
                finally:
                    spark.stop()
        finally:
            cluster.stop()
    print()
    cpu_parts = ("empty round driver CPU ms", "round shipping driver CPU ms", "round returning driver CPU ms")
    by_executors(results, args, "A round's parts vs executors (one core each, oversubscribed on this machine; "
                 "medians, ms)", ROUND_PARTS, ROUND_PARTS)
    by_executors(results, args, "The driver's CPU time per round (its Python process + its JVM; medians, ms)",
                 cpu_parts, ("empty round", "round shipping the payload", "round returning a vector of its size"))
    print("## Least-squares lines in the executor count W (ms = a + b W)")
    print()
    lines = []
    ws = np.array(args.executors, dtype=float)
    for params in args.params:
        for part in ROUND_PARTS + cpu_parts:
            ys = np.array([results[(w, params)][part] for w in args.executors])
            b, a = np.polyfit(ws, ys, 1) if len(ws) > 1 else (0.0, ys[0])
            lines.append([f"{results[(args.executors[0], params)]['payload MB']:.1f}", part, f"{a:.1f}",
                          f"{b:.2f}", f"{a + 100 * b:.0f}"])
    print_table(["payload MB", "part", "a ms", "b ms per executor", "at W = 100 ms"], lines)
    print()


if __name__ == "__main__":
    main()
