"""Distributed training over the per-partition blocks of spark_nn.ml.blocks (written once per
fit, resident on the executors): each step ships the flat weights, every partition computes
``loss_and_grad`` on its share of the minibatch, and ``treeAggregate`` sums (loss, gradient,
count, correct) for the driver's optimizer; a local round ships weights and optimizer state and
sums the partitions' trained copies instead. Nothing else travels.

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

from functools import lru_cache

import numpy as np
from pyspark import Broadcast

import spark_nn
from spark_nn.ml import checkpoint
from spark_nn.ml.blocks import RESIDENT_LOST, ResidentBlockLost, maybe_delete, open_block, fault_switch
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
    """Test-only: SIGKILLs this Python worker, once, when the job's local property
    spark_nn.test.killWorkerAt names this step (see blocks.fault_switch), so Spark's task retry
    can be checked."""
    if fault_switch(FAULT_PROPERTY, "killed", epoch, step, partition):
        os.kill(os.getpid(), signal.SIGKILL)


def unwrap_errors(fn, *args, **kwargs):
    """Runs a Spark action; a ValueError raised in a task comes back as a ValueError with the
    task's own message instead of a Java stack trace."""
    from pyspark.errors import PythonException

    try:
        return fn(*args, **kwargs)
    except PythonException as e:
        text = str(e)
        if RESIDENT_LOST in text:
            raise ResidentBlockLost(next(line for line in text.splitlines() if RESIDENT_LOST in line)) from None
        for line in reversed(text.splitlines()):
            if line.startswith(("ValueError: ", "FloatingPointError: ")):
                raise ValueError(line.split(": ", 1)[1]) from None
        raise


class StepSampler:
    """Which rows of a partition form its share of a step."""

    def __init__(self, seed, sizes, batch_size):
        self.seed, self.sizes = int(seed), list(sizes)
        total = sum(self.sizes)
        self.steps_per_epoch = max(1, math.ceil(total / batch_size))

    def rows(self, partition, epoch, step):
        n = self.sizes[partition]
        per_step = math.ceil(n / self.steps_per_epoch)
        perm = _permutation(self.seed, epoch, partition, n)
        return perm[step * per_step:(step + 1) * per_step]


@lru_cache(maxsize=4)
def _permutation(seed, epoch, partition, n):
    """An epoch's order of a partition's rows, drawn once per worker process and epoch rather than
    once per step (Python workers are reused across a fit's tasks)."""
    perm = np.random.default_rng([seed, epoch, partition]).permutation(n)
    perm.setflags(write=False)
    return perm


ZERO = (0.0, None, 0, 0, 0.0, 0.0, 0, 0)


def _add(a, b):
    """Sum of two (loss, vector or None, count, correct, seconds, validation loss, validation
    count, validation correct) tuples; None is an absent vector; seconds (the tasks' compute
    time) combine by max, as parallel tasks do."""
    vec = b[1] if a[1] is None else (a[1] if b[1] is None else a[1] + b[1])
    return (a[0] + b[0], vec, a[2] + b[2], a[3] + b[3], max(a[4], b[4]), a[5] + b[5], a[6] + b[6], a[7] + b[7])


class Inline:
    """A task payload carried in the task's closure, read like a broadcast (.value)."""

    def __init__(self, value):
        self.value = value


def _weights(raw):
    """Flat float32 weights from the raw bytes a task is shipped (no pickled array header; a
    read-only view, no copy)."""
    return np.frombuffer(raw, dtype=np.float32)


def _payload_bytes(payload):
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    if isinstance(payload, np.ndarray):
        return payload.nbytes
    if isinstance(payload, dict):
        return sum(_payload_bytes(v) for v in payload.values())
    return 64


def _state_keys(optimizer):
    """The optimizer's per-parameter state arrays that a local round averages (Adam's moments,
    SGD's velocity), in a fixed order."""
    if optimizer.name in ("adam", "adamw"):
        return ["m", "v"]
    if optimizer.name == "sgd" and optimizer.momentum:
        return ["velocity"]
    return []


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


def _validation(model, weights, x, y, classification):
    """(loss sum, rows, correct) of these weights on a partition's validation rows."""
    if len(x) == 0:
        return 0.0, 0, 0
    model.set_params(weights)
    x = np.asarray(x)
    out = model.predict_output(x)
    yb = np.asarray(y).astype(np.int64) if classification else x
    loss, _ = model.loss(out, yb)
    return float(loss), len(x), _correct(out, yb, classification)


def _local_steps(model, weights, state, opt_cfg, x, y, sampler, seed, epoch, first_step, k, partition,
                 classification):
    """(loss sum, rows x [trained weights, optimizer state arrays] or None, rows, correct) after
    k steps of this partition's own from the given weights and optimizer state."""
    w = weights.copy()
    opt = optimizer_from_config(opt_cfg)
    opt.load_state_dict(state)
    loss_sum, rows_seen, correct = 0.0, 0, 0
    for step in range(first_step, first_step + k):
        result = _minibatch_step(model, w, x, y, sampler, seed, epoch, step, partition, classification)
        if result is None:
            continue
        loss, grad, n, c = result
        opt.step(w, grad / np.float32(n))
        loss_sum, rows_seen, correct = loss_sum + loss, rows_seen + n, correct + c
    if not rows_seen:
        return 0.0, None, 0, 0
    state = [w] + [opt.state_dict()[key] for key in _state_keys(opt)]
    return loss_sum, np.concatenate(state) * np.float32(rows_seen), rows_seen, correct


class TrainingSummary:
    """What a fit did: the mean loss of each round (objectiveHistory: one entry per synchronous
    step, or per local round of k steps, which ends at step objectiveSteps[i]), per-epoch
    metrics, timings and local steps."""

    def __init__(self):
        self.objectiveHistory = []
        self.objectiveSteps = []
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
        return {"objectiveHistory": self.objectiveHistory, "objectiveSteps": self.objectiveSteps,
                "epochs": self.epochs,
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
        from matplotlib.ticker import MaxNLocator

        steps = self.objectiveSteps or range(1, len(self.objectiveHistory) + 1)
        ax1.plot(steps, self.objectiveHistory, lw=0.8, label="round loss")
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
        ax2.xaxis.set_major_locator(MaxNLocator(integer=True))
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


class FixedLocalSteps:
    """localSteps = k: every round takes k steps (1: synchronous, one treeAggregate per step)."""

    def __init__(self, k):
        self.k = int(k)

    def next_round(self, done_steps):
        return self.k

    def observe(self, k, seconds, task_seconds):
        pass

    def state(self):
        return None

    def load_state(self, state):
        pass


class AutoLocalSteps:
    """localSteps = 'auto' (post-local SGD): synchronous warm-up steps, which also measure what a
    round costs beyond its tasks' compute (Spark's fixed cost F: scheduling, broadcast, result
    transfer, the driver's update) and the compute C of one step; then, for the rest of the fit,
    local rounds of k steps with k the smallest power of two for which F is at most a quarter of
    a round: F / (F + k C) <= 1/4, i.e. k >= 3 F / C, at most the steps of an epoch. k is chosen
    once, so the rest of the fit does not depend on timing noise, and a checkpoint keeps it."""

    FIXED_SHARE = 0.25

    def __init__(self, steps_per_epoch, total_steps=None):
        self.steps_per_epoch = int(steps_per_epoch)
        total = int(total_steps or steps_per_epoch)
        # warm-up: at least 10 steps to measure, 1% of the fit for convergence, at most an epoch
        # (on digits, 10 synchronous steps end as accurate as a whole synchronous first epoch)
        self.warmup = min(self.steps_per_epoch, max(10, total // 100))
        self.samples = []  # (fixed seconds, compute seconds per step) of synchronous steps
        self.k = None

    def next_round(self, done_steps):
        if self.k is None and done_steps >= self.warmup and self.samples:
            self.k = self.choose()
        return self.k or 1

    def choose(self):
        # medians: the first steps include worker start-up and one-off costs
        fixed = float(np.median([f for f, _ in self.samples]))
        compute = max(float(np.median([c for _, c in self.samples])), 1e-6)
        need = (1 - self.FIXED_SHARE) / self.FIXED_SHARE * fixed / compute
        k = 1 << max(0, math.ceil(math.log2(max(need, 1.0))))
        log.info("spark_nn: localSteps auto: fixed cost %.1f ms, compute %.1f ms per step -> k = %d",
                 fixed * 1e3, compute * 1e3, min(k, self.steps_per_epoch))
        return max(1, min(k, self.steps_per_epoch))

    def observe(self, k, seconds, task_seconds):
        if k == 1:
            self.samples.append((max(seconds - task_seconds, 0.0), task_seconds))

    def state(self):
        return {"k": self.k}

    def load_state(self, state):
        if state and state.get("k"):
            self.k = int(state["k"])


class DistributedTrainer:
    """Runs the optimizer on the driver over gradients summed by treeAggregate.

    In a local round of k > 1 steps, each partition instead takes k optimizer steps of its own
    from the driver's weights and optimizer state (the schedule's learning rate at each step),
    and the driver averages the resulting weights and optimizer states, weighted by rows: one
    job per k steps. local_steps: an int k, or 'auto' (AutoLocalSteps)."""

    def __init__(self, sc, model_config, data, *, epochs, batch_size, optimizer, step_size, seed,
                 momentum=0.9, weight_decay=0.0, clip_norm=0.0, schedule="constant", aggregation_depth=2,
                 threads=1, tol=0.0, patience=0, classification=True, verbose=False,
                 local_steps="auto", description="spark_nn fit", checkpoint_dir=None, checkpoint_interval=1):
        self.sc, self.data, self.sizes = sc, data, list(data.sizes)
        self.config_json = json.dumps(model_config, sort_keys=True)
        self.epochs, self.batch_size, self.seed = int(epochs), int(batch_size), int(seed)
        self.sampler = StepSampler(seed, self.sizes, batch_size)
        total_steps = self.sampler.steps_per_epoch * self.epochs
        opt_args = {"lr": step_size, "weight_decay": weight_decay, "clip_norm": clip_norm or None,
                    "schedule": Schedule("cosine", total_steps=total_steps) if schedule == "cosine" else None}
        if optimizer == "sgd":
            opt_args["momentum"] = momentum
        self.optimizer = make_optimizer(optimizer, **opt_args)
        self.depth, self.threads = int(aggregation_depth), int(threads)
        self.local_steps = (AutoLocalSteps(self.sampler.steps_per_epoch, total_steps) if local_steps == "auto"
                            else FixedLocalSteps(int(local_steps)))
        self.has_validation = bool(getattr(data, "has_validation", False))
        self.tol, self.patience = float(tol), int(patience)
        self.classification, self.verbose, self.description = classification, verbose, description
        self.summary = TrainingSummary()
        self.checkpoint_dir, self.checkpoint_interval = checkpoint_dir or None, int(checkpoint_interval)
        self.fingerprint = checkpoint.fingerprint(self.config_json, seed, batch_size, self.sizes, local_steps)
        self.last_checkpoint = None
        self.resumed_from = None
        self._inline_limit = None

    # ------------------------------------------------------------ one step, as Spark jobs
    def _aggregate(self, make, payload):
        """Ships payload to the tasks, maps make(shipped) over the partitions' blocks and sums the
        (loss, vector, count, correct, seconds) tuples by treeAggregate; a task reads the payload
        as shipped.value. A resident block found lost makes the data be materialized again and
        the job run again (a step's result depends only on weights, seed, epoch, step and
        partition, so the retry computes the same)."""
        shipped = self._ship(payload)
        try:
            for attempt in range(3):
                rdd = self.data.rdd
                try:
                    return unwrap_errors(lambda: rdd.mapPartitionsWithIndex(make(shipped)).treeAggregate(
                        ZERO, _add, _add, depth=self.depth))
                except ResidentBlockLost as e:
                    if attempt == 2:
                        raise
                    log.warning("%s: %s; materializing the training data again", self.description, e)
                    self.data.rematerialize()
                    if list(self.data.sizes) != self.sizes:
                        raise RuntimeError("the training data changed when it was read again (partition sizes "
                                           f"{self.sizes} -> {self.data.sizes}); the input must be deterministic, "
                                           "e.g. cache it") from None
        finally:
            if isinstance(shipped, Broadcast):
                shipped.destroy()

    def _ship(self, payload):
        """The payload inside the task's closure when it is small: Spark already ships every
        task's function to the executors, so a separate broadcast would add its own driver round
        trips (about 12 ms a step here); a broadcast above Spark's own threshold for shipping
        functions (spark.broadcast.UDFCompressionThreshold, 1 MiB), which is then cheaper."""
        if self._inline_limit is None:
            self._inline_limit = int(self.sc._jvm.PythonUtils.getBroadcastThreshold(self.sc._jsc))
        if _payload_bytes(payload) <= self._inline_limit:
            return Inline(payload)
        return self.sc.broadcast(payload)

    def _job(self, weights, epoch, first_step, k, validate=False):
        """One Spark job over the partitions' blocks, summed by treeAggregate into (loss sum,
        vector sum, rows, correct, task seconds, validation loss sum, validation rows,
        validation correct):
        - validate: first scores the shipped weights on each partition's validation rows (so
          the validation after an epoch rides in the next epoch's first job);
        - k = 0: nothing else (a validation job);
        - k = 1: one synchronous step: the vector is the gradient sum of the step's minibatch;
        - k > 1: a local round: each partition takes steps first_step .. first_step+k-1 of the
          epoch on its own, starting from the driver's weights and optimizer state, and the
          vector is rows x [its weights, its optimizer state arrays]."""
        config_json, threads, sampler, seed = self.config_json, self.threads, self.sampler, self.seed
        classification = self.classification
        opt_cfg = self.optimizer.config()
        payload = {"w": weights.tobytes()}
        if k > 1:
            payload["state"] = self.optimizer.state_dict()

        def make(shipped):
            def compute(partition, blocks):
                t0 = time.perf_counter()
                for step in range(first_step, first_step + k):
                    _maybe_fail(epoch, step, partition)
                for block in blocks:
                    for step in range(first_step, first_step + k):
                        maybe_delete(block, epoch, step, partition)
                    x, y, xv, yv = open_block(block)
                    model = worker_model(config_json, threads)
                    w = _weights(shipped.value["w"])
                    val = _validation(model, w, xv, yv, classification) if validate else (0.0, 0, 0)
                    if k == 1:
                        result = _minibatch_step(model, w, x, y, sampler, seed, epoch, first_step, partition,
                                                 classification) or (0.0, None, 0, 0)
                    elif k > 1:
                        result = _local_steps(model, w, shipped.value["state"], opt_cfg, x, y, sampler, seed,
                                              epoch, first_step, k, partition, classification)
                    else:
                        result = (0.0, None, 0, 0)
                    yield result + (time.perf_counter() - t0,) + val

            return compute

        return self._aggregate(make, payload)

    def gradient(self, weights, epoch, step):
        """(loss sum, gradient sum, row count, correct count, task seconds) of one step's
        minibatch, summed over the partitions by treeAggregate."""
        return self._job(weights, epoch, step, 1)[:5]

    def _average_round(self, weights, vec, n, k):
        """Takes the rows-weighted mean of the partitions' weights and optimizer states."""
        mean = vec / np.float32(n)
        size = weights.size
        weights[:] = mean[:size]
        state = self.optimizer.state_dict()
        state["t"] = np.array(int(state["t"]) + k, dtype=np.int64)
        keys = _state_keys(self.optimizer)
        for i, key in enumerate(keys):
            state[key] = mean[size * (i + 1):size * (i + 2)].copy()
        self.optimizer.load_state_dict(state)

    def _evaluate(self, weights):
        """(mean loss, accuracy) over the validation rows with these weights, in a job of its own."""
        return self._validation_metrics(self._job(weights, 0, 0, 0, validate=True))

    def _validation_metrics(self, result):
        loss, n, correct = result[5:8]
        return (loss / n, correct / n if self.classification else None) if n else (None, None)

    # ------------------------------------------------------------ the loop
    def _epoch(self, weights, epoch, progress, pending=None):
        """Runs one epoch in place on weights. When pending holds the previous epoch's record,
        the epoch's first job also scores the weights it ships (the previous epoch's) on the
        validation rows, saving a job per epoch, and that epoch is finished before this one
        changes anything; if finishing it stops the fit, returns None. Otherwise returns (loss
        sum, rows, correct, largest k used)."""
        steps = self.sampler.steps_per_epoch
        tot_loss, tot_n, tot_correct, k_used = 0.0, 0, 0, 1
        step = 0
        while step < steps:
            k = min(self.local_steps.next_round(self.summary.totalIterations), steps - step)
            self.sc.setJobDescription(f"{self.description}: epoch {epoch + 1}/{self.epochs}, "
                                      f"step {step + 1}/{steps}" + (f" (+{k - 1} local)" if k > 1 else "")
                                      + (f", validation of epoch {epoch}" if pending else ""))
            t0 = time.perf_counter()
            result = self._job(weights, epoch, step, k, validate=pending is not None)
            loss, vec, n, correct, task_seconds = result[:5]
            if pending is not None:
                pending["val_loss"], pending["val_accuracy"] = self._validation_metrics(result)
                stop = self._finish_epoch(pending, weights, progress)
                pending = None
                if stop:
                    return None
            self._check_loss(loss, n, epoch, step)
            if k == 1:
                if n:
                    self.optimizer.step(weights, vec / np.float32(n))
            elif n:
                self._average_round(weights, vec, n, k)
            else:
                self.optimizer.t += k
            self.local_steps.observe(k, time.perf_counter() - t0, task_seconds)
            if n:
                self.summary.objectiveHistory.append(loss / n)
                self.summary.objectiveSteps.append(self.summary.totalIterations + k)
                tot_loss, tot_n, tot_correct = tot_loss + loss, tot_n + n, tot_correct + correct
            self.summary.totalIterations += k
            k_used = max(k_used, k)
            step += k
            progress.update(k, f"epoch {epoch + 1}/{self.epochs} loss {loss / max(n, 1):.4f}")
        return tot_loss, tot_n, tot_correct, k_used

    def _finish_epoch(self, record, weights, progress):
        """Records and logs a finished epoch, tracks the best weights, writes the checkpoint;
        True when early stopping ends the fit here. weights are the epoch's final weights."""
        self.summary.epochs.append(record)
        msg = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                        if v is not None)
        log.info("%s: %s", self.description, msg)
        progress.message(f"{self.description}: {msg}")
        epoch = record["epoch"]
        monitored = record.get("val_loss") if record.get("val_loss") is not None else record["loss"]
        if monitored < self._best[0] - self.tol:
            self._best, self._since_best = (monitored, weights.copy(), epoch), 0
        else:
            self._since_best += 1
        stop = bool(self.patience and self._since_best >= self.patience)
        if self.checkpoint_dir and (stop or epoch == self.epochs or epoch % self.checkpoint_interval == 0):
            self._save_checkpoint(epoch, weights, self._best, self._since_best)
        if stop:
            self.summary.stoppedEarly = True
        return stop

    def _check_loss(self, loss, n, epoch, step):
        if n and not np.isfinite(loss):
            kept = (f"; the last good checkpoint is {self.last_checkpoint} (a fit with the same checkpointDir "
                    "resumes from it)" if self.last_checkpoint else "")
            raise ValueError(f"the training loss became {loss} at epoch {epoch + 1}, step {step + 1}; "
                             f"lower stepSize or set clipNorm{kept}")

    # ------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, epoch, weights, best, since_best):
        state = {"fingerprint": self.fingerprint, "summary": self.summary.asDict(), "best_metric": best[0],
                 "best_epoch": best[2], "since_best": since_best, "local_steps": self.local_steps.state()}
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
        self.summary.objectiveSteps = list(s.get("objectiveSteps", []))
        self.summary.epochs = list(s["epochs"])
        self.summary.totalIterations = int(s["totalIterations"])
        self.local_steps.load_state(state.get("local_steps"))
        self.last_checkpoint = self.resumed_from = path
        log.info("%s: resuming from %s (epoch %d done)", self.description, path, state["epoch"])
        best_metric = state["best_metric"] if state["best_metric"] is not None else np.inf
        return int(state["epoch"]), (best_metric, arrays["best_weights"].copy(), state["best_epoch"]), \
            int(state["since_best"])

    def run(self, weights):
        weights = np.array(weights, dtype=np.float32, copy=True)
        first, self._best, self._since_best = self._resume(weights)
        progress = Progress(self.sampler.steps_per_epoch * (self.epochs - first), self.description, self.verbose)
        pending = None
        try:
            for epoch in range(first, self.epochs):
                t0 = time.perf_counter()
                done = self._epoch(weights, epoch, progress, pending)
                pending = None
                if done is None:
                    break
                tot_loss, tot_n, tot_correct, k_used = done
                record = {"epoch": epoch + 1, "loss": tot_loss / max(tot_n, 1),
                          "accuracy": tot_correct / max(tot_n, 1) if self.classification else None}
                if self.has_validation:
                    record["val_loss"] = record["val_accuracy"] = None
                record.update(seconds=time.perf_counter() - t0, steps=self.sampler.steps_per_epoch,
                              local_steps=k_used)
                if self.has_validation and epoch + 1 < self.epochs:
                    pending = record  # validated by the next epoch's first job
                    continue
                if self.has_validation:
                    self.sc.setJobDescription(f"{self.description}: validation after epoch "
                                              f"{epoch + 1}/{self.epochs}")
                    record["val_loss"], record["val_accuracy"] = self._evaluate(weights)
                if self._finish_epoch(record, weights, progress):
                    break
        finally:
            self.sc.setJobDescription(None)
        if self.patience and self.has_validation:
            self.summary.bestEpoch = self._best[2]
            return self._best[1]
        return weights
