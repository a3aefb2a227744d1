"""Where a Spark training step's time goes, and whether it grows with the data.

    python benchmarks/step_cost.py [--rows 6000 60000] [--steps 40]

1. Step vs data size: a tiny CNN (layers=[4, 10], batch 64) on MNIST-sized rows (1x28x28),
   6k and 60k rows, synchronous steps, with resident blocks (memory-mapped files in the
   executors' local dirs, the default) and with blocks cached in Spark's block manager;
   also the setup (the one pass that writes the blocks).
2. Fixed cost: a synchronous step at ~100k parameters (a dense net on 64 features, batch 64,
   tiny compute) against a trivial PySpark job with the same task count in the same session
   (a mapPartitions + treeAggregate over 2 partitions), and the step's parts: the job
   (shipping the weights in the task closure, scheduling, Python workers, compute, the
   gradients back), the tasks' own compute, the driver's optimizer step.
3. A local round's cost at the payloads that occur (Adam: weights and two moments; 0.4 MB is
   the seed CNN on 28x28, 1.3 MB a ~100k-parameter net, 12.7 MB the seed RNN program's
   embedding on real text), taken apart with the fit's own backend (rounds.RDDRounds):
   the driver building the payload and pickling the task closure, an empty round (Spark's
   floor: job submission, task launch, Python workers, treeAggregate of empty results), the
   same round shipping the payload (its shipping and the workers' unpickling), a round
   returning a result vector of the payload's size (result serialization and the
   treeAggregate merges), and the driver's averaging of that result.
Spark local[2], one session, medians.
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import print_table, tiny_sync_trainer  # noqa: E402


def mnist_sized(spark, rows, partitions=2):
    """rows x (1x28x28 float pixels, label), generated inside Spark and cached, like a user's
    prepared training set."""
    import pyarrow as pa

    def gen(batches):
        for b in batches:
            ids = b.column(0).to_numpy()
            if len(ids) == 0:
                continue
            rng = np.random.default_rng(int(ids[0]))
            x = rng.random((len(ids), 784), dtype=np.float32)
            y = (ids % 10).astype(np.float64)
            offsets = pa.array(np.arange(0, (len(ids) + 1) * 784, 784, dtype=np.int32))
            yield pa.RecordBatch.from_arrays([pa.ListArray.from_arrays(offsets, pa.array(x.ravel())), pa.array(y)],
                                             names=["features", "label"])

    df = spark.range(rows, numPartitions=partitions).mapInArrow(gen, "features array<float>, label double")
    df = df.cache()
    df.count()
    return df


def median_s(fn, n):
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:] if n > 4 else times))


def step_vs_data(spark, rows_list, steps):
    from spark_nn.ml.training.blocks import TrainingData
    from spark_nn.ml.training.trainer import DistributedTrainer
    from spark_nn.nn import builders

    net = builders.cnn([4, 10], 10, (1, 28, 28), seed=0)
    out, per_step = [], {}
    for rows in rows_list:
        df = mnist_sized(spark, rows)
        for resident in (True, False):
            t0 = time.perf_counter()
            data = TrainingData(df, "features", "label", {"kind": "array", "shape": [1, 28, 28]}, resident=resident)
            setup = time.perf_counter() - t0
            try:
                trainer = DistributedTrainer(net.config(), data, epochs=1, batch_size=64, optimizer="sgd",
                                             step_size=0.01, seed=0, local_steps=1)
                w = net.params.copy()
                step = median_s(lambda i: trainer.gradient(w, 0, i % trainer.sampler.steps_per_epoch), steps)
            finally:
                data.release()
            per_step[(rows, resident)] = step
            out.append([f"{rows:,}", "resident" if resident else "cached", f"{setup:.2f}", f"{step * 1e3:.1f}"])
        df.unpersist()
    print("## Step time vs data size (tiny CNN layers=[4, 10], batch 64, 1x28x28, local[2], synchronous)")
    print()
    print_table(["rows", "blocks", "setup s", "step ms (median)"], out)
    lo, hi = min(rows_list), max(rows_list)
    for resident in (True, False):
        ratio = per_step[(hi, resident)] / per_step[(lo, resident)]
        print(f"{'resident' if resident else 'cached'}: step at {hi:,} rows / step at {lo:,} rows = {ratio:.2f}x")
    print()


def fixed_cost(spark, steps):
    sc = spark.sparkContext
    trainer, w, data = tiny_sync_trainer(spark, 1400)
    handles = sc.parallelize(range(2), 2).cache()
    handles.count()

    def trivial():
        handles.mapPartitions(lambda it: [sum(1 for _ in it)]).treeAggregate(0, lambda a, b: a + b,
                                                                             lambda a, b: a + b, depth=2)

    parts = {"job: ship weights, run tasks, treeAggregate": [], "tasks' own compute (max)": [],
             "driver optimizer step": [], "step": [], "trivial PySpark job, 2 tasks": []}
    try:
        for i in range(steps + 5):  # alternating, so both see the same machine state
            t0 = time.perf_counter()
            result = trainer.gradient(w, 0, i % trainer.sampler.steps_per_epoch)
            grad, n, task_s = result.vec, result.n, result.seconds
            t1 = time.perf_counter()
            trainer.optimizer.step(w, grad / np.float32(n))
            t2 = time.perf_counter()
            trivial()
            t3 = time.perf_counter()
            if i < 5:  # warm-up
                continue
            parts["job: ship weights, run tasks, treeAggregate"].append(t1 - t0)
            parts["tasks' own compute (max)"].append(task_s)
            parts["driver optimizer step"].append(t2 - t1)
            parts["step"].append(t2 - t0)
            parts["trivial PySpark job, 2 tasks"].append(t3 - t2)
    finally:
        data.release()
        handles.unpersist()
    med = {k: float(np.median(v)) * 1e3 for k, v in parts.items()}
    print(f"## Fixed cost of a synchronous step ({w.size:,} parameters, batch 64, local[2], 2 tasks)")
    print()
    print_table(["part", "ms (median)"], [[k, f"{v:.2f}"] for k, v in med.items()])
    print(f"step / trivial job = {med['step'] / med['trivial PySpark job, 2 tasks']:.2f}x")
    print()


ROUND_PARTS = ("empty round ms", "ship payload ms", "return vector ms")


def jvm_cpu_s(spark):
    """CPU seconds the driver's JVM has used so far, summed over its threads (schedstat: ns, not
    /proc's 10 ms ticks); None when this process did not launch the JVM."""
    proc = getattr(spark.sparkContext._gateway, "proc", None)
    if proc is None:
        return None
    total = 0
    for tid in os.listdir(f"/proc/{proc.pid}/task"):
        try:
            with open(f"/proc/{proc.pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):  # a thread that ended meanwhile
            pass
    return total / 1e9


def round_parts(spark, params_list, repeat):
    """Table 3 of the docstring, one dict per payload size: each part's median ms, measured
    with the fit's own backend over a tiny fit's partitions (as many as the session's cores).
    "<part> driver CPU ms": the median CPU time the driver (its Python process and its JVM)
    spent in one such round: with executors in JVMs of their own (executors.py) it is the
    driver's term alone, whatever the executors' contention for cores does to the wall time."""
    import cloudpickle

    from spark_nn.ml.training.rounds import RDDRounds
    from spark_nn.ml.training.round_result import RoundResult
    from spark_nn.nn.optimizers import make_optimizer

    trainer, _, data = tiny_sync_trainer(spark, 64)
    rounds = RDDRounds(data, 2, "round breakdown")
    out = []
    try:
        for params in params_list:
            opt = make_optimizer("adam", lr=1e-3)
            w = np.zeros(params, dtype=np.float32)
            opt.step(w, np.ones(params, dtype=np.float32))  # the moments exist
            vec_len = 3 * params

            def build():
                return {"w": w.tobytes(), "state": opt.state_dict()}

            # both read their partition's input to the end, as RoundTask does: a Python worker
            # that leaves input unread is not reused, and the next task starts a new one
            def empty(i, blocks, payload):
                for _ in blocks:
                    pass
                yield RoundResult()

            def returning(i, blocks, payload, n=vec_len):
                for _ in blocks:
                    pass
                yield RoundResult(vec=np.ones(n, dtype=np.float32), n=1)

            payload = build()
            parts = {"build ms": build, "pickle ms": lambda: cloudpickle.dumps((empty, payload)),
                     "empty round ms": lambda: rounds.run(empty, {}),
                     "round shipping ms": lambda: rounds.run(empty, payload),
                     "round returning ms": lambda: rounds.run(returning, {})}
            med = {"parameters": params, "payload MB": 3 * len(payload["w"]) / 1e6,
                   "partitions": len(data.sizes)}
            for name, fn in parts.items():
                fn()
                times, cpu = [], []
                for _ in range(repeat):
                    j0 = jvm_cpu_s(spark)
                    c0, t0 = time.process_time(), time.perf_counter()
                    fn()
                    t1, c1 = time.perf_counter(), time.process_time()
                    j1 = jvm_cpu_s(spark)
                    times.append((t1 - t0) * 1e3)
                    cpu.append((c1 - c0 + (j1 - j0 if j0 is not None else 0.0)) * 1e3)
                med[name] = float(np.median(times))
                med[name.replace(" ms", " driver CPU ms")] = float(np.median(cpu))
            result = rounds.run(returning, {})
            trainer.optimizer = opt  # the fit's own averaging of weights and Adam's moments
            t0 = time.perf_counter()
            for _ in range(repeat):
                trainer._average_round(w, result, 1, None)
            med["driver average ms"] = (time.perf_counter() - t0) * 1e3 / repeat
            med["ship payload ms"] = med.pop("round shipping ms") - med["empty round ms"]
            med["return vector ms"] = med.pop("round returning ms") - med["empty round ms"]
            out.append(med)
    finally:
        data.release()
    return out


def round_breakdown(spark, params_list, repeat):
    rows = round_parts(spark, params_list, repeat)
    print("## A local round's cost by part (Adam payload: weights + 2 moments; local[2], 2 tasks, medians;")
    print("## ship and return: the round's time beyond the empty round's)")
    print()
    print_table(["parameters", "payload MB", "build ms", "pickle ms", "empty round ms", "ship payload ms",
                 "return vector ms", "driver average ms"],
                [[f"{r['parameters']:,}", f"{r['payload MB']:.1f}", f"{r['build ms']:.1f}", f"{r['pickle ms']:.1f}",
                  f"{r['empty round ms']:.1f}", f"{r['ship payload ms']:+.1f}", f"{r['return vector ms']:+.1f}",
                  f"{r['driver average ms']:.1f}"] for r in rows])
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[6000, 60000])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--skip-data", action="store_true")
    ap.add_argument("--round-params", type=int, nargs="+", default=[35_000, 108_000, 1_060_000],
                    help="parameter counts of the round breakdown (Adam payloads of 0.4, 1.3, 12.7 MB)")
    args = ap.parse_args(argv)
    from spark_nn.ml.session import local_session

    spark = local_session("local[2]", "spark_nn step cost", conf={"spark.driver.memory": "4g"})
    try:
        fixed_cost(spark, args.steps)
        round_breakdown(spark, args.round_params, max(5, args.steps // 4))
        if not args.skip_data:
            step_vs_data(spark, args.rows, args.steps)
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
