"""The same fits on a classic session and on Spark Connect, in one run.

    python benchmarks/connect_vs_classic.py [--epochs N]

Each mode runs in a process of its own (a process holds one kind of session), one after the
other on the same machine, Spark local[2] (Connect: a local Connect server on local[2], started
by SparkSession.builder.remote("local[2]")):

1. the seed CNN program on digits (scikit-learn's, 1437 training and 360 test images of 8x8;
   CNN(layers=[32, 64, 10], activation="relu") with its defaults, localSteps 'auto'): fit
   time, test accuracy, the k that auto chose;
2. the same fit with an int localSteps (4): the weights' SHA-256 in each mode (equal: the two
   backends compute the same bits);
3. the fixed cost of a round: a synchronous step of a tiny dense net (medians), and a trivial
   2-task query in the same session.
Prints one table with the Connect / classic ratios.
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import print_table, tiny_sync_trainer  # noqa: E402


def _session(mode):
    from spark_nn.ml.session import local_session, remote_session

    if mode == "connect":
        return remote_session("local", "local[2]", "spark_nn connect vs classic")
    return local_session("local[2]", "spark_nn connect vs classic")


def _digits(spark):
    from pyspark.ml.linalg import Vectors

    from spark_nn.datasets import digits_split

    xtr, xte, ytr, yte = digits_split(seed=0)

    def frame(x, y):
        return spark.createDataFrame([(Vectors.dense(a.ravel().tolist()), float(b)) for a, b in zip(x, y)],
                                     ["features", "label"])

    return frame(xtr, ytr).cache(), frame(xte, yte).cache()


def _round_cost(spark, steps=30):
    """(synchronous step ms, trivial query ms): medians, alternating."""
    import pyarrow as pa

    trainer, w, data = tiny_sync_trainer(spark, 64)

    def count(batches):
        yield pa.RecordBatch.from_arrays([pa.array([sum(b.num_rows for b in batches)])], names=["n"])

    trivial = spark.range(0, 2, 1, 2)
    step_ms, trivial_ms = [], []
    try:
        for i in range(steps + 5):
            t0 = time.perf_counter()
            trainer.gradient(w, 0, i % trainer.sampler.steps_per_epoch)
            t1 = time.perf_counter()
            trivial.mapInArrow(count, "n long").collect()
            t2 = time.perf_counter()
            if i >= 5:
                step_ms.append((t1 - t0) * 1e3)
                trivial_ms.append((t2 - t1) * 1e3)
    finally:
        data.release()
    return float(np.median(step_ms)), float(np.median(trivial_ms))


def run_mode(mode, epochs):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    from spark_nn.ml.classification import CNN

    t0 = time.perf_counter()
    spark = _session(mode)
    start = time.perf_counter() - t0
    try:
        train, test = _digits(spark)
        out = {"mode": mode, "start_s": start}

        def seed_cnn(**kw):
            cnn = CNN(layers=[32, 64, 10], activation="relu", inputCol="features", outputCol="label",
                      numClasses=10, seed=0, **kw)
            return cnn.setMaxIter(epochs) if epochs else cnn

        seed_cnn(maxIter=1).fit(train)  # warm: Python workers, JIT
        t = time.perf_counter()
        model = seed_cnn().fit(train)
        out["fit_s"] = time.perf_counter() - t
        out["accuracy"] = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(test))
        out["auto_k"] = model.summary.epochs[-1]["local_steps"]
        fixed = seed_cnn(localSteps=4, maxIter=3).fit(train)
        out["int_k_sha256"] = hashlib.sha256(fixed.weights.tobytes()).hexdigest()[:16]
        out["step_ms"], out["trivial_ms"] = _round_cost(spark)
    finally:
        spark.stop()
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=None, help="maxIter of the seed fit (default: CNN's default)")
    ap.add_argument("--mode", choices=["classic", "connect"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.mode:
        print("RESULT " + json.dumps(run_mode(args.mode, args.epochs)))
        return
    results = {}
    for mode in ("classic", "connect"):
        cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode]
        if args.epochs:
            cmd += ["--epochs", str(args.epochs)]
        env = {k: v for k, v in os.environ.items() if k not in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE")}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(env, PYSPARK_PYTHON=sys.executable))
        line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode or not line:
            sys.exit(f"{mode} run failed:\n{proc.stderr[-3000:]}")
        results[mode] = json.loads(line[-1][7:])
    a, b = results["classic"], results["connect"]
    rows = [["session start s", f"{a['start_s']:.1f}", f"{b['start_s']:.1f}", f"{b['start_s'] / a['start_s']:.2f}"],
            ["seed CNN fit s (digits, defaults)", f"{a['fit_s']:.1f}", f"{b['fit_s']:.1f}",
             f"{b['fit_s'] / a['fit_s']:.2f}"],
            ["test accuracy", f"{a['accuracy']:.4f}", f"{b['accuracy']:.4f}", ""],
            ["auto's local steps k", str(a["auto_k"]), str(b["auto_k"]), ""],
            ["weights SHA-256, localSteps=4, 3 epochs", a["int_k_sha256"], b["int_k_sha256"],
             "equal" if a["int_k_sha256"] == b["int_k_sha256"] else "DIFFERENT"],
            ["synchronous step ms (tiny net, median)", f"{a['step_ms']:.1f}", f"{b['step_ms']:.1f}",
             f"{b['step_ms'] / a['step_ms']:.2f}"],
            ["trivial 2-task job ms (median)", f"{a['trivial_ms']:.1f}", f"{b['trivial_ms']:.1f}",
             f"{b['trivial_ms'] / a['trivial_ms']:.2f}"]]
    print("## Classic vs Spark Connect (local[2]; Connect: a local server on local[2])")
    print()
    print_table(["", "classic", "Connect", "Connect / classic"], rows)


if __name__ == "__main__":
    main()
