"""Timing helpers shared by the benchmark scripts."""
import time

import numpy as np


def median_ms(fn, repeat=15, warmup=3, min_time=0.0):
    """Median wall time of fn() in milliseconds (after warm-up calls)."""
    for _ in range(warmup):
        fn()
    times = []
    start = time.perf_counter()
    while len(times) < repeat or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def paired_median_ms(fa, fb, repeat=15, block=3):
    """Median wall times of fa() and fb() in milliseconds, measured in alternating blocks so
    that both see the same stretches of a noisy machine (this one drifts by 10-15 % over
    seconds). Each block starts with one untimed call: the other library's worker threads may
    still be spinning from its last call."""
    ta, tb = [], []
    while len(ta) < repeat:
        for fn, times in ((fa, ta), (fb, tb)):
            fn()
            for _ in range(block):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(ta)), float(np.median(tb))


def ratio_cell(ratios):
    """'median (min-max)' of a ratio measured in several runs, marked '~' when its min-max spans
    1.0: those runs cannot tell which side is faster."""
    lo, mid, hi = min(ratios), float(np.median(ratios)), max(ratios)
    if len(ratios) == 1:
        return f"{mid:.2f}"
    return f"{mid:.2f} ({lo:.2f}-{hi:.2f}){' ~' if lo < 1.0 < hi else ''}"


def sgemm_peak_gflops(n=1024, repeat=7):
    """Float32 matmul throughput numpy reaches on this machine (its BLAS, all its threads)."""
    a = np.random.default_rng(0).standard_normal((n, n)).astype(np.float32)
    b = a.T.copy()
    ms = median_ms(lambda: a @ b, repeat=repeat, warmup=2)
    return 2.0 * n ** 3 / (ms * 1e-3) / 1e9


def print_table(headers, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) for i, h in enumerate(headers)]
    line = "  ".join(str(h).ljust(w) for h, w in zip(headers, widths))
    print(line)
    print("-" * len(line))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))


def tiny_sync_trainer(spark, hidden, rows=2000):
    """(trainer, weights, data) for a one-hidden-layer dense net on `rows` random 64-wide rows,
    synchronous (localSteps=1): a round whose compute is small, so its time is Spark's fixed
    cost. The caller releases `data`."""
    from pyspark.ml.linalg import Vectors

    from spark_nn.ml.training.blocks import TrainingData
    from spark_nn.ml.training.trainer import DistributedTrainer
    from spark_nn.nn import builders

    net = builders.from_specs([{"type": "Dense", "units": hidden, "activation": "relu"},
                               {"type": "Dense", "units": 10}], (64,), seed=0)
    rng = np.random.default_rng(0)
    df = spark.createDataFrame([(Vectors.dense(rng.random(64).tolist()), float(i % 10)) for i in range(rows)],
                               ["features", "label"]).cache()
    data = TrainingData(df, "features", "label", {"kind": "vector", "shape": [64]})
    trainer = DistributedTrainer(net.config(), data, epochs=1, batch_size=64, optimizer="sgd", step_size=0.01,
                                 seed=0, local_steps=1)
    return trainer, net.params.copy(), data
