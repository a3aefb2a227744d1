"""Distributed training: the data are converted once into cached per-partition float32 blocks;
each step broadcasts the flat weights, every partition computes ``loss_and_grad`` on its share
of the minibatch, and ``treeAggregate`` sums (loss, gradient, count, correct) for the driver's
optimizer. Nothing else travels.

Sampling depends only on (seed, epoch, partition) and the step: each epoch every partition
draws a permutation of its rows from a generator keyed by (seed, epoch, partition) and takes
consecutive slices of it, so every row is used once per epoch and a retried task computes
exactly the same thing.
"""
import json
import logging
import math
import os
import signal
import sys
import time

import numpy as np
import pyarrow as pa
from pyspark import StorageLevel, TaskContext
from pyspark.sql import functions as F
from pyspark.sql.types import BinaryType, IntegerType, StructField, StructType

import spark_nn
from spark_nn.ml import checkpoint
from spark_nn.ml.columns import arrow_to_block, feature_expr
from spark_nn.nn.model import Sequential
from spark_nn.nn.optimizers import Schedule, make_optimizer, optimizer_from_config

log = logging.getLogger("spark_nn")

_WORKER_MODELS = {}  # per Python worker process: model config JSON -> Sequential


def worker_model(config_json, threads):
    """The model for this config in this process, built once (workers are reused across tasks)."""
    if threads:
        spark_nn.set_num_threads(threads)
    model = _WORKER_MODELS.get(config_json)
    if model is None:
        if len(_WORKER_MODELS) > 8:
            _WORKER_MODELS.clear()
        model = Sequential.from_config(json.loads(config_json))
        _WORKER_MODELS[config_json] = model
    return model


FAULT_PROPERTY = "spark_nn.test.killWorkerAt"


def _maybe_fail(epoch, step, partition):
    """Test-only switch: when the job's local property spark_nn.test.killWorkerAt is
    'epoch:step:partition:flagfile' and flagfile does not exist yet, create it and SIGKILL this
    Python worker, once, so Spark's task retry can be checked."""
    ctx = TaskContext.get()
    spec = ctx.getLocalProperty(FAULT_PROPERTY) if ctx else None
    if not spec:
        return
    e, s, p, flag = spec.split(":", 3)
    if (int(e), int(s), int(p)) == (epoch, step, partition) and not os.path.exists(flag):
        with open(flag, "w") as f:
            f.write(f"killed attempt {ctx.attemptNumber()}\n")
        os.kill(os.getpid(), signal.SIGKILL)


def unwrap_errors(fn, *args, **kwargs):
    """Runs a Spark action; a ValueError raised in a task comes back as a ValueError with the
    task's own message instead of a Java stack trace."""
    from pyspark.errors import PythonException

    try:
        return fn(*args, **kwargs)
    except PythonException as e:
        text = str(e)
        for line in reversed(text.splitlines()):
            if line.startswith(("ValueError: ", "FloatingPointError: ")):
                raise ValueError(line.split(": ", 1)[1]) from None
        raise


BLOCK_SCHEMA = StructType([StructField("x", BinaryType()), StructField("y", BinaryType()),
                           StructField("n", IntegerType())])


def make_blocks(df, feature_col, label_col, spec, handle_invalid="error", num_partitions=None):
    """RDD with one (x block, y block) pair per partition, persisted (unpersist when done).

    Inputs with more partitions than num_partitions (default: spark.default.parallelism; the
    image source makes one per few files) are coalesced, so a step runs one task per core
    rather than dozens of tiny ones; inputs with fewer (a small file is one partition) are
    repartitioned once, so every core takes a share of each step.

    x: float32 (n,)+shape (int64 token ids for 'ids'); y: float64 labels (None without label_col).
    NaN/infinite features: an error naming the row, or the rows are skipped."""
    cols = [feature_expr(feature_col, spec["kind"]).alias("x")]
    if label_col is not None:
        cols.append(F.col(label_col).cast("double").alias("y"))
    selected = df.select(*cols)
    target = num_partitions or df.sparkSession.sparkContext.defaultParallelism
    have = selected.rdd.getNumPartitions()
    if have > target:
        selected = selected.coalesce(target)
    elif have < target:
        selected = selected.repartition(target)
    has_label = label_col is not None
    dtype = np.int64 if spec["kind"] == "ids" else np.float32
    shape = tuple(spec["shape"])

    def to_arrow_blocks(batches):
        base = 0
        pid = TaskContext.get().partitionId() if TaskContext.get() else 0
        for b in batches:
            try:
                x = arrow_to_block(b.column(0), spec, feature_col, base)
            except ValueError as e:
                raise ValueError(f"{e} [partition {pid}]") from None
            y = b.column(1).to_numpy(zero_copy_only=False).astype(np.float64) if has_label \
                else np.zeros(len(x))
            if dtype == np.float32:
                ok = np.isfinite(x.reshape(len(x), -1)).all(axis=1)
                if not ok.all():
                    if handle_invalid == "error":
                        first = int(np.flatnonzero(~ok)[0])
                        raise ValueError(f"features column {feature_col!r} has NaN or infinite values in row "
                                         f"{base + first} of partition {pid} ({int((~ok).sum())} such rows in "
                                         "this batch); set handleInvalid='skip' to drop them")
                    x, y = x[ok], y[ok]
            base += b.num_rows
            yield pa.RecordBatch.from_arrays(
                [pa.array([np.ascontiguousarray(x, dtype=dtype).tobytes()], pa.binary()),
                 pa.array([y.tobytes()], pa.binary()), pa.array([len(x)], pa.int32())], schema=pa.schema(
                    [("x", pa.binary()), ("y", pa.binary()), ("n", pa.int32())]))

    def concat(rows):
        xs, ys = [], []
        for r in rows:
            xs.append(np.frombuffer(r.x, dtype=dtype).reshape((r.n,) + shape))
            ys.append(np.frombuffer(r.y, dtype=np.float64))
        if xs:
            yield np.concatenate(xs), (np.concatenate(ys) if has_label else None)
        else:
            yield np.zeros((0,) + shape, dtype=dtype), (np.zeros(0) if has_label else None)

    blocks = selected.mapInArrow(to_arrow_blocks, BLOCK_SCHEMA).rdd.mapPartitions(concat)
    return blocks.persist(StorageLevel.MEMORY_AND_DISK)


def partition_sizes(blocks):
    return unwrap_errors(lambda: blocks.map(lambda b: len(b[0])).collect())


class StepSampler:
    """Which rows of a partition form its share of a step."""

    def __init__(self, seed, sizes, batch_size):
        self.seed, self.sizes = int(seed), list(sizes)
        total = sum(self.sizes)
        self.steps_per_epoch = max(1, math.ceil(total / batch_size))

    def rows(self, partition, epoch, step):
        n = self.sizes[partition]
        per_step = math.ceil(n / self.steps_per_epoch)
        perm = np.random.default_rng([self.seed, epoch, partition]).permutation(n)
        return perm[step * per_step:(step + 1) * per_step]


def _add(a, b):
    """Sum of two (loss, vector or None, count, correct) tuples; None is an absent vector."""
    vec = b[1] if a[1] is None else (a[1] if b[1] is None else a[1] + b[1])
    return (a[0] + b[0], vec, a[2] + b[2], a[3] + b[3])


def _correct(out, yb, classification):
    return int(np.sum(np.argmax(out, axis=1) == yb)) if classification else 0


def _minibatch_step(model, params, x, y, sampler, seed, epoch, step, partition, classification):
    """(loss sum, gradient sum, rows, correct) of this partition's share of a step, or None
    when it has no rows in that step. Dropout is seeded by (seed, epoch, step, partition)."""
    rows = sampler.rows(partition, epoch, step)
    if len(rows) == 0:
        return None
    rng = np.random.default_rng([seed, epoch, step, partition, 1])
    yb = y[rows].astype(np.int64) if classification else x[rows]
    loss, grad, n = model.loss_and_grad(params, x[rows], yb, rng)
    return loss, grad, n, _correct(model.last_output, yb, classification)


class TrainingSummary:
    """What a fit did: per-step mean loss (objectiveHistory), per-epoch metrics and timings."""

    def __init__(self):
        self.objectiveHistory = []
        self.epochs = []  # dicts: epoch, loss, accuracy, val_loss, val_accuracy, seconds, steps
        self.totalIterations = 0
        self.stoppedEarly = False
        self.bestEpoch = None

    @property
    def trainingLoss(self):
        return [e["loss"] for e in self.epochs]

    @property
    def validationLoss(self):
        return [e["val_loss"] for e in self.epochs if e.get("val_loss") is not None]

    def asDict(self):
        return {"objectiveHistory": self.objectiveHistory, "epochs": self.epochs,
                "totalIterations": self.totalIterations, "stoppedEarly": self.stoppedEarly,
                "bestEpoch": self.bestEpoch}

    def plot(self, path=None):
        """Loss per step and per-epoch accuracy curves (matplotlib, the 'plot' extra); saved as a
        PNG when path is given. Returns the matplotlib Figure."""
        try:
            import matplotlib

            if path is not None:
                matplotlib.use("Agg", force=False)
            import matplotlib.pyplot as plt
        except ImportError:
            raise ImportError("TrainingSummary.plot needs matplotlib: pip install 'spark_nn[plot]'") from None
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
        ax1.plot(range(1, len(self.objectiveHistory) + 1), self.objectiveHistory, lw=0.8, label="step loss")
        if self.epochs:
            ends = np.cumsum([e["steps"] for e in self.epochs])
            ax1.plot(ends, self.trainingLoss, "o-", label="epoch loss")
            if self.validationLoss:
                ax1.plot(ends[:len(self.validationLoss)], self.validationLoss, "s-", label="validation loss")
        ax1.set_xlabel("step")
        ax1.set_ylabel("loss")
        ax1.set_yscale("log")
        ax1.legend()
        epochs = [e["epoch"] for e in self.epochs]
        for key, label in (("accuracy", "train"), ("val_accuracy", "validation")):
            vals = [e.get(key) for e in self.epochs]
            if any(v is not None for v in vals):
                ax2.plot(epochs, vals, "o-", label=label)
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("accuracy")
        ax2.legend()
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=100)
            plt.close(fig)
        return fig

    def __repr__(self):
        last = self.epochs[-1] if self.epochs else {}
        return f"TrainingSummary(epochs={len(self.epochs)}, iterations={self.totalIterations}, last={last})"


class Progress:
    """A one-line progress bar on the driver's stderr: steps, loss, elapsed time and ETA."""

    def __init__(self, total, label, enabled, stream=None):
        self.total, self.label, self.enabled = max(int(total), 1), label, enabled
        self.stream = stream or sys.stderr
        self.done, self.t0, self.shown = 0, time.perf_counter(), 0.0
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, steps, text=""):
        self.done = min(self.done + steps, self.total)
        now = time.perf_counter()
        # redraw at most twice a second, and only on a terminal (logs get the per-epoch lines)
        if not (self.enabled and self.tty) or (now - self.shown < 0.5 and self.done < self.total):
            return
        self.shown = now
        elapsed = now - self.t0
        eta = elapsed / self.done * (self.total - self.done)
        filled = int(24 * self.done / self.total)
        bar = "#" * filled + "." * (24 - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} {text} "
                          f"{elapsed:.0f}s elapsed, ETA {eta:.0f}s ")
        self.stream.flush()

    def message(self, text):
        if self.enabled:
            self.stream.write("\r" + text + " " * 20 + "\n")
            self.stream.flush()


class DistributedTrainer:
    """Runs the optimizer on the driver over gradients summed by treeAggregate.

    With local_steps = k > 1, each partition instead takes k optimizer steps of its own from
    the broadcast weights (a fresh optimizer of the same kind, at the learning rate the schedule
    gives for that round) and the driver averages the resulting weights, weighted by rows:
    one broadcast and one aggregate per k steps."""

    def __init__(self, sc, model_config, blocks, sizes, *, epochs, batch_size, optimizer, step_size, seed,
                 momentum=0.9, weight_decay=0.0, clip_norm=0.0, schedule="constant", aggregation_depth=2,
                 threads=1, val_blocks=None, tol=0.0, patience=0, classification=True, verbose=False,
                 local_steps=1, description="spark_nn fit", checkpoint_dir=None, checkpoint_interval=1):
        self.sc, self.blocks, self.sizes = sc, blocks, sizes
        self.config_json = json.dumps(model_config, sort_keys=True)
        self.epochs, self.batch_size, self.seed = int(epochs), int(batch_size), int(seed)
        self.sampler = StepSampler(seed, sizes, batch_size)
        total_steps = self.sampler.steps_per_epoch * self.epochs
        opt_args = {"lr": step_size, "weight_decay": weight_decay, "clip_norm": clip_norm or None,
                    "schedule": Schedule("cosine", total_steps=total_steps) if schedule == "cosine" else None}
        if optimizer == "sgd":
            opt_args["momentum"] = momentum
        self.optimizer = make_optimizer(optimizer, **opt_args)
        self.depth, self.threads = int(aggregation_depth), int(threads)
        self.local_steps = int(local_steps)
        self.val_blocks, self.tol, self.patience = val_blocks, float(tol), int(patience)
        self.classification, self.verbose, self.description = classification, verbose, description
        self.summary = TrainingSummary()
        self.checkpoint_dir, self.checkpoint_interval = checkpoint_dir or None, int(checkpoint_interval)
        self.fingerprint = checkpoint.fingerprint(self.config_json, seed, batch_size, sizes, local_steps)
        self.last_checkpoint = None
        self.resumed_from = None

    # ------------------------------------------------------------ one step, as Spark jobs
    def _aggregate(self, fn, payload, blocks=None):
        """Broadcasts payload, maps fn(broadcast) over the partitions of blocks (default: the
        training blocks) and sums the (loss, vector, count, correct) tuples by treeAggregate."""
        bcast = self.sc.broadcast(payload)
        blocks = self.blocks if blocks is None else blocks
        try:
            return unwrap_errors(lambda: blocks.mapPartitionsWithIndex(fn(bcast)).treeAggregate(
                (0.0, None, 0, 0), _add, _add, depth=self.depth))
        finally:
            bcast.destroy()

    def gradient(self, weights, epoch, step):
        """(loss sum, gradient sum, row count, correct count) of one step's minibatch, summed over
        the partitions by treeAggregate."""
        config_json, threads, sampler, seed = self.config_json, self.threads, self.sampler, self.seed
        classification = self.classification

        def make(bcast):
            def compute(partition, blocks):
                _maybe_fail(epoch, step, partition)
                for x, y in blocks:
                    result = _minibatch_step(worker_model(config_json, threads), bcast.value, x, y, sampler, seed,
                                             epoch, step, partition, classification)
                    if result is not None:
                        yield result

            return compute

        return self._aggregate(make, weights)

    def local_round(self, weights, epoch, first_step, k, lr):
        """(loss sum, rows x locally trained weights summed, row count, correct) after each
        partition takes steps first_step .. first_step+k-1 of the epoch on its own."""
        config_json, threads, sampler, seed = self.config_json, self.threads, self.sampler, self.seed
        classification = self.classification
        opt_cfg = dict(self.optimizer.config(), lr=lr, schedule=None)

        def make(bcast):
            def compute(partition, blocks):
                for x, y in blocks:
                    model = worker_model(config_json, threads)
                    w = np.array(bcast.value, dtype=np.float32, copy=True)
                    opt = optimizer_from_config(opt_cfg)
                    loss_sum, rows_seen, correct = 0.0, 0, 0
                    for step in range(first_step, first_step + k):
                        result = _minibatch_step(model, w, x, y, sampler, seed, epoch, step, partition,
                                                 classification)
                        if result is None:
                            continue
                        loss, grad, n, c = result
                        opt.step(w, grad / np.float32(n))
                        loss_sum, rows_seen, correct = loss_sum + loss, rows_seen + n, correct + c
                    if rows_seen:
                        yield (loss_sum, w * np.float32(rows_seen), rows_seen, correct)

            return compute

        return self._aggregate(make, weights)

    def _evaluate(self, blocks, weights):
        """(mean loss, accuracy) over blocks with these weights."""
        config_json, threads, classification = self.config_json, self.threads, self.classification

        def make(bcast):
            def evaluate(partition, it):
                for x, y in it:
                    if len(x) == 0:
                        continue
                    model = worker_model(config_json, threads)
                    model.set_params(bcast.value)
                    out = model.predict_output(x)
                    yb = y.astype(np.int64) if classification else x
                    loss, _ = model.loss(out, yb)
                    yield (loss, None, len(x), _correct(out, yb, classification))

            return evaluate

        loss, _, n, correct = self._aggregate(make, weights, blocks)
        return (loss / n, correct / n if self.classification else None) if n else (None, None)

    # ------------------------------------------------------------ the loop
    def _epoch(self, weights, epoch, progress):
        """Runs one epoch in place on weights; returns (loss sum, rows, correct)."""
        steps = self.sampler.steps_per_epoch
        tot_loss, tot_n, tot_correct = 0.0, 0, 0
        step = 0
        while step < steps:
            k = min(self.local_steps, steps - step)
            self.sc.setJobDescription(f"{self.description}: epoch {epoch + 1}/{self.epochs}, "
                                      f"step {step + 1}/{steps}")
            if self.local_steps == 1:
                loss, grad, n, correct = self.gradient(weights, epoch, step)
                self._check_loss(loss, n, epoch, step)
                if n:
                    self.optimizer.step(weights, grad / np.float32(n))
            else:
                lr = float(self.optimizer.schedule(self.optimizer.lr, self.optimizer.t))
                loss, wsum, n, correct = self.local_round(weights, epoch, step, k, lr)
                self._check_loss(loss, n, epoch, step)
                if n:
                    weights[:] = wsum / np.float32(n)
                self.optimizer.t += k
            if n:
                self.summary.objectiveHistory.append(loss / n)
                tot_loss, tot_n, tot_correct = tot_loss + loss, tot_n + n, tot_correct + correct
            self.summary.totalIterations += k
            step += k
            progress.update(k, f"epoch {epoch + 1}/{self.epochs} loss {loss / max(n, 1):.4f}")
        return tot_loss, tot_n, tot_correct

    def _check_loss(self, loss, n, epoch, step):
        if n and not np.isfinite(loss):
            kept = (f"; the last good checkpoint is {self.last_checkpoint} (a fit with the same checkpointDir "
                    "resumes from it)" if self.last_checkpoint else "")
            raise ValueError(f"the training loss became {loss} at epoch {epoch + 1}, step {step + 1}; "
                             f"lower stepSize or set clipNorm{kept}")

    # ------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, epoch, weights, best, since_best):
        state = {"fingerprint": self.fingerprint, "summary": self.summary.asDict(), "best_metric": best[0],
                 "best_epoch": best[2], "since_best": since_best}
        arrays = dict(checkpoint.optimizer_arrays(self.optimizer), weights=weights, best_weights=best[1])
        self.last_checkpoint = checkpoint.write(self.checkpoint_dir, epoch, state, arrays)

    def _resume(self, weights):
        """(first epoch to run, best, since_best) after loading the newest checkpoint, if any."""
        path = checkpoint.latest(self.checkpoint_dir) if self.checkpoint_dir else None
        if path is None:
            return 0, (np.inf, weights.copy(), -1), 0
        state, arrays = checkpoint.read(path, self.fingerprint)
        if arrays["weights"].shape != weights.shape:
            raise ValueError(f"checkpoint {path} holds {arrays['weights'].size} weights, the network has "
                             f"{weights.size}")
        weights[:] = arrays["weights"]
        self.optimizer.load_state_dict(checkpoint.optimizer_state(arrays))
        s = state["summary"]
        self.summary.objectiveHistory = list(s["objectiveHistory"])
        self.summary.epochs = list(s["epochs"])
        self.summary.totalIterations = int(s["totalIterations"])
        self.last_checkpoint = self.resumed_from = path
        log.info("%s: resuming from %s (epoch %d done)", self.description, path, state["epoch"])
        best_metric = state["best_metric"] if state["best_metric"] is not None else np.inf
        return int(state["epoch"]), (best_metric, arrays["best_weights"].copy(), state["best_epoch"]), \
            int(state["since_best"])

    def run(self, weights):
        weights = np.array(weights, dtype=np.float32, copy=True)
        first, best, since_best = self._resume(weights)
        progress = Progress(self.sampler.steps_per_epoch * (self.epochs - first), self.description, self.verbose)
        try:
            for epoch in range(first, self.epochs):
                t0 = time.perf_counter()
                tot_loss, tot_n, tot_correct = self._epoch(weights, epoch, progress)
                record = {"epoch": epoch + 1, "loss": tot_loss / max(tot_n, 1),
                          "accuracy": tot_correct / max(tot_n, 1) if self.classification else None}
                if self.val_blocks is not None:
                    self.sc.setJobDescription(f"{self.description}: validation after epoch "
                                              f"{epoch + 1}/{self.epochs}")
                    record["val_loss"], record["val_accuracy"] = self._evaluate(self.val_blocks, weights)
                record["seconds"] = time.perf_counter() - t0
                record["steps"] = self.sampler.steps_per_epoch
                self.summary.epochs.append(record)
                msg = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                                if v is not None)
                log.info("%s: %s", self.description, msg)
                progress.message(f"{self.description}: {msg}")
                monitored = record.get("val_loss") if record.get("val_loss") is not None else record["loss"]
                if monitored < best[0] - self.tol:
                    best, since_best = (monitored, weights.copy(), epoch + 1), 0
                else:
                    since_best += 1
                stop = bool(self.patience and since_best >= self.patience)
                if self.checkpoint_dir and (stop or epoch + 1 == self.epochs
                                            or (epoch + 1) % self.checkpoint_interval == 0):
                    self._save_checkpoint(epoch + 1, weights, best, since_best)
                if stop:
                    self.summary.stoppedEarly = True
                    break
        finally:
            self.sc.setJobDescription(None)
        if self.patience and self.val_blocks is not None:
            self.summary.bestEpoch = best[2]
            return best[1]
        return weights
