"""Our CNN vs MLlib's MultilayerPerceptronClassifier on the same digits split, Spark local[2],
plus our per-step overhead vs a bare broadcast + treeAggregate of a vector of the same size.

    python benchmarks/compare_mllib.py [--epochs 15] [--mlp-iter 300]

Prints test accuracy, fit time, the time we need to reach MLlib's final accuracy (our fit's
setup plus the epochs until the test accuracy, checked after every epoch, first reaches it;
the per-epoch checking is counted against us), and the step-time ratio at ~100k parameters.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import print_table  # noqa: E402


def session():
    from spark_nn.ml.session import local_session

    return local_session("local[2]", "spark_nn vs MLlib")


def digits_frames(spark):
    from pyspark.ml.linalg import Vectors

    from spark_nn.datasets import digits_split

    xtr, xte, ytr, yte = digits_split(seed=0)

    def frame(x, y, val):
        return spark.createDataFrame([(Vectors.dense(a.ravel().tolist()), float(b), val) for a, b in zip(x, y)],
                                     ["features", "label", "isVal"])

    return frame(xtr, ytr, False).repartition(2).cache(), frame(xte, yte, True).repartition(2).cache()


def run_mllib(train, test, max_iter):
    from pyspark.ml.classification import MultilayerPerceptronClassifier
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    mlp = MultilayerPerceptronClassifier(layers=[64, 128, 10], maxIter=max_iter, blockSize=128, seed=0)
    t0 = time.perf_counter()
    model = mlp.fit(train)
    seconds = time.perf_counter() - t0
    acc = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(test))
    return acc, seconds


def run_ours(train, test, epochs, with_validation, local_steps=1, batch_size=64):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    from spark_nn.ml.classification import CNN

    data = train.unionByName(test).repartition(2) if with_validation else train
    cnn = CNN(layers=[32, 64, 10], inputCol="features", outputCol="label", numClasses=10, maxIter=epochs,
              batchSize=batch_size, stepSize=4e-3, optimizer="adamw", weightDecay=0.05,
              learningRateSchedule="cosine", seed=0, localSteps=local_steps,
              validationIndicatorCol="isVal" if with_validation else None)
    t0 = time.perf_counter()
    model = cnn.fit(data)
    seconds = time.perf_counter() - t0
    acc = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(test))
    return acc, seconds, model.summary


def step_overhead(spark, repeat=30):
    """Median ms of one of our training steps on a ~100k-parameter dense net (batch 64, tiny
    compute) and of a bare broadcast + treeAggregate of a float32 vector of that size."""
    from pyspark.ml.linalg import Vectors

    from spark_nn.ml.training.blocks import TrainingData
    from spark_nn.ml.training.trainer import DistributedTrainer
    from spark_nn.nn import builders

    sc = spark.sparkContext
    net = builders.from_specs([{"type": "Dense", "units": 1400, "activation": "relu"},
                               {"type": "Dense", "units": 10}], (64,), seed=0)
    rng = np.random.default_rng(0)
    df = spark.createDataFrame([(Vectors.dense(rng.random(64).tolist()), float(i % 10)) for i in range(2000)],
                               ["features", "label"])
    data = TrainingData(df, "features", "label", {"kind": "vector", "shape": [64]})
    trainer = DistributedTrainer(net.config(), data, epochs=1, batch_size=64, optimizer="sgd",
                                 step_size=0.01, seed=0, local_steps=1)
    weights = net.params.copy()
    n_params = weights.size

    def ours(step):
        trainer.gradient(weights, 0, step % trainer.sampler.steps_per_epoch)

    cached = sc.parallelize(range(2), 2).map(lambda i: i).cache()
    cached.count()

    def add(a, b):
        return b if a is None else (a if b is None else a + b)

    def bare(_):
        b = sc.broadcast(weights)

        def part(it):
            for _ in it:  # a worker that leaves its input unread makes Spark wait on it
                pass
            yield b.value.copy()

        cached.mapPartitions(part).treeAggregate(None, add, add, depth=2)
        b.destroy()

    def median(fn):
        for i in range(3):
            fn(i)
        times = []
        for i in range(repeat):
            t0 = time.perf_counter()
            fn(i)
            times.append((time.perf_counter() - t0) * 1e3)
        return float(np.median(times))

    ours_ms, bare_ms = median(ours), median(bare)
    ours_ms, bare_ms = min(ours_ms, median(ours)), min(bare_ms, median(bare))  # interleaved second pass
    data.release()
    return n_params, ours_ms, bare_ms


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--mlp-iter", type=int, default=300)
    args = ap.parse_args(argv)
    spark = session()
    try:
        train, test = digits_frames(spark)
        train.count(), test.count()

        mlp_acc, mlp_s = run_mllib(train, test, args.mlp_iter)
        run_ours(train, test, 1, with_validation=False)  # warm-up: Python workers, JIT of the JVM paths
        rows = [[f"MLlib MLP 64-128-10, maxIter {args.mlp_iter}", f"{mlp_acc:.4f}", f"{mlp_s:.1f}", f"{mlp_s:.1f}", "1.00"]]
        results = {"mlp": (mlp_acc, mlp_s)}
        for local_steps in (1, 4):
            acc, fit_s, _ = run_ours(train, test, args.epochs, with_validation=False, local_steps=local_steps)
            # the same fit again, with the test rows as validation data checked after every epoch
            _, val_fit_s, summary = run_ours(train, test, args.epochs, with_validation=True, local_steps=local_steps)
            elapsed = val_fit_s - sum(e["seconds"] for e in summary.epochs)  # setup: checks, blocks
            to_target = None
            for e in summary.epochs:
                elapsed += e["seconds"]
                if e["val_accuracy"] >= mlp_acc:
                    to_target = (elapsed, e["epoch"])
                    break
            label = f"spark_nn CNN [32, 64, 10], {args.epochs} epochs" + (
                ", synchronous" if local_steps == 1 else f", localSteps {local_steps}")
            rows.append([label, f"{acc:.4f}", f"{fit_s:.1f}",
                         f"{to_target[0]:.1f} (epoch {to_target[1]})" if to_target else "not reached",
                         f"{mlp_s / to_target[0]:.2f}" if to_target else "-"])
            results[f"ours_local{local_steps}"] = (acc, fit_s, to_target)
        print(f"digits, stratified 80/20 split ({train.count()} / {test.count()}), Spark local[2], "
              f"Spark {spark.version}")
        print_table(["model", "test accuracy", "fit s", f"s to MLlib's {mlp_acc:.4f}", "speed vs MLlib"], rows)
        n_params, ours_ms, bare_ms = step_overhead(spark)
        print()
        print_table(["per step, local[2]", "params", "median ms"], [
            ["spark_nn training step (batch 64)", n_params, f"{ours_ms:.1f}"],
            ["bare broadcast + treeAggregate", n_params, f"{bare_ms:.1f}"]])
        print(f"step overhead ratio: {ours_ms / bare_ms:.2f}x the bare aggregate (target <= 1.5)")
    finally:
        spark.stop()
    results["step"] = (n_params, ours_ms, bare_ms)
    return results


if __name__ == "__main__":
    main()
