"""Step time vs parameter count and number of workers, and a cost model fitted to it.

    python benchmarks/scaling.py [--sizes 10000,100000,1000000,10000000] [--reps 5]

In Spark local[2] (one core per task) or on a cluster (--master, 1-core executors), with the
training data in 1 or 2 partitions (1 or 2 workers or executors), for dense networks of 10k to
10M parameters: the median time of one synchronous training step (batch 256 over all
partitions), of a bare broadcast + treeAggregate of a vector
of that size, and of the same step's compute in one process. Fits

    step(P, W) = c0 + c1 * P + compute(P) / W

(c0: fixed cost of a Spark job, c1: broadcast + aggregate cost per parameter) and prints the
fit and its projection to 10 and 100 workers; docs/scaling.md discusses it.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import print_table  # noqa: E402


def median_s(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def measure(spark, params, partitions, reps, batch=256, features=64, rows=4096):
    from pyspark.ml.linalg import Vectors

    import spark_nn
    from spark_nn.ml.training.blocks import TrainingData
    from spark_nn.ml.training.trainer import DistributedTrainer
    from spark_nn.nn import builders

    sc = spark.sparkContext
    hidden = max(1, (params - 10) // (features + 1 + 10))
    net = builders.from_specs([{"type": "Dense", "units": hidden, "activation": "relu"},
                               {"type": "Dense", "units": 10}], (features,), seed=0)
    rng = np.random.default_rng(0)
    x = rng.random((rows, features)).astype(np.float32)
    y = rng.integers(0, 10, rows)
    df = spark.createDataFrame([(Vectors.dense(a.tolist()), float(b)) for a, b in zip(x, y)], ["features", "label"])
    data = TrainingData(df, "features", "label", {"kind": "vector", "shape": [features]},
                        num_partitions=partitions)
    trainer = DistributedTrainer(sc, net.config(), data, epochs=1, batch_size=batch, optimizer="sgd",
                                 step_size=0.01, seed=0, local_steps=1)
    w = net.params.copy()
    step = median_s(lambda: trainer.gradient(w, 0, 0), reps)

    cached = sc.parallelize(range(partitions), partitions).cache()
    cached.count()

    def add(a, b):
        return b if a is None else (a if b is None else a + b)

    def bare():
        b = sc.broadcast(w)

        def part(it):
            for _ in it:
                pass
            yield b.value.copy()

        cached.mapPartitions(part).treeAggregate(None, add, add, depth=2)
        b.destroy()

    bare_s = median_s(bare, reps)
    data.release()
    cached.unpersist()
    # the same step's compute in one process on one thread: one partition's share
    spark_nn.set_num_threads(1)
    share = -(-batch // partitions)
    compute = median_s(lambda: net.loss_and_grad(w, x[:share], y[:share]), reps)
    spark_nn.set_num_threads(os.cpu_count() or 1)
    return net.num_params, step, bare_s, compute


def fit_model(results):
    """Least squares for step - compute = c0 + c1 * P over all measurements."""
    a = np.array([[1.0, p] for p, _, _, _, _ in results])
    b = np.array([step - compute for _, _, step, _, compute in results])
    (c0, c1), *_ = np.linalg.lstsq(a, b, rcond=None)
    return float(c0), float(c1)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10000,100000,1000000,10000000")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--master", default="local[2]",
                    help="e.g. spark://host:7077 with 1-core executors: then 1 and 2 partitions are 1 and 2 executors")
    args = ap.parse_args(argv)
    from spark_nn.ml.session import local_session

    spark = local_session(args.master, "spark_nn scaling")
    try:
        spark.sparkContext.setLogLevel("ERROR")
        results = []
        for partitions in (1, 2):
            for p in [int(s) for s in args.sizes.split(",")]:
                n, step, bare, compute = measure(spark, p, partitions, args.reps)
                results.append((n, partitions, step, bare, compute))
                print(f"workers {partitions} params {n}: step {step * 1e3:.1f} ms, bare {bare * 1e3:.1f} ms, "
                      f"compute {compute * 1e3:.1f} ms", flush=True)
    finally:
        spark.stop()
    c0, c1 = fit_model(results)
    rows = []
    for n, w, step, bare, compute in results:
        model = c0 + c1 * n + compute
        rows.append([w, n, f"{step * 1e3:.1f}", f"{bare * 1e3:.1f}", f"{compute * 1e3:.1f}", f"{model * 1e3:.1f}"])
    print()
    print_table(["workers", "params", "step ms", "bare bcast+agg ms", "compute ms (1 thread)", "model ms"], rows)
    print(f"\nfit: step = {c0 * 1e3:.1f} ms + {c1 * 1e9:.1f} ms per million parameters + compute / workers")
    return results, (c0, c1)


if __name__ == "__main__":
    main()
