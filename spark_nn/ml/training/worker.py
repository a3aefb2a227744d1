"""What a fit's tasks run on the executors; they return a round_result.RoundResult.

A round's task gets the shipped payload (the flat float32 weights as raw bytes, and for a
local round the optimizer state), opens its partition's block and computes, for steps
first_step .. first_step + k - 1 of an epoch, either one step's gradient sum (k = 1) or k
optimizer steps of its own (k > 1), optionally after scoring the shipped weights on its
validation rows.

Sampling depends only on (seed, epoch, partition) and the step: each epoch every partition
draws a permutation of its rows from a generator keyed by (seed, epoch, partition) and takes
consecutive slices of it, so every row is used once per epoch and a retried task computes
exactly the same thing.
"""
import gc
import json
import math
import time
from functools import lru_cache

import numpy as np

from spark_nn.ml.training.blocks import batch_rows, delete_block, labels_and_weights, open_block
from spark_nn.ml.training.faults import delete_now, maybe_kill_executor, maybe_kill_worker
from spark_nn.ml.training.round_result import RoundResult
from spark_nn.ml.training.worker_imports import read_archives_on_change
from spark_nn.nn.model import Sequential
from spark_nn.nn.optimizers import optimizer_from_config
from spark_nn.threads import set_num_threads

_WORKER_MODELS = {}  # per Python worker process: model config JSON -> Sequential


def worker_model(config_json, threads):
    """The model for this config in this process, built once (workers are reused across tasks)."""
    read_archives_on_change()  # Spark 3.5 (and maybe 4.0-4.1) re-reads its jar before each task (worker_imports)
    if threads:
        set_num_threads(threads)
    model = _WORKER_MODELS.get(config_json)
    if model is None:
        if not _WORKER_MODELS and not gc.get_freeze_count():
            # the worker's ~100k objects (pyspark, numpy, ...) outlive every task: frozen, the
            # cyclic GC no longer walks them in each full collection (measured on the 60k set:
            # 1.1 s of GC per worker and epoch before, 0.01 s after)
            gc.freeze()
        if len(_WORKER_MODELS) > 8:
            _WORKER_MODELS.clear()
        model = Sequential.from_config(json.loads(config_json))
        _WORKER_MODELS[config_json] = model
    return model


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


def table_rows(model, x, sampler, epoch, first_step, k, partition):
    """Sorted int32 ids of the table rows that steps first_step .. first_step+k-1 of a partition
    touch (ids outside the table are left to the layer's own error)."""
    rows = [sampler.rows(partition, epoch, step) for step in range(first_step, first_step + k)]
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    ids = np.unique(batch_rows(x, np.sort(rows)).astype(np.int64)) if len(rows) else np.zeros(0, np.int64)
    return ids[(ids >= 0) & (ids < model.table[1])].astype(np.int32)


def minibatch(loss, x, y, sampler, seed, epoch, step, partition, weight_scale=None):
    """(inputs, targets (the loss's), row weights or None, dropout rng) of this partition's share
    of a step, or None when it has no rows in that step. Dropout is seeded by (seed, epoch,
    step, partition). weight_scale: the rows carry weights (times this), else None."""
    rows = sampler.rows(partition, epoch, step)
    if len(rows) == 0:
        return None
    xb = batch_rows(x, rows)
    yb, wb = labels_and_weights(y[rows], weight_scale)
    return xb, loss.targets(xb, yb), wb, np.random.default_rng([seed, epoch, step, partition, 1])


def minibatch_step(model, params, x, y, sampler, seed, epoch, step, partition, weight_scale=None):
    """The RoundResult (loss sum, gradient sum as vec, rows, metric sums, the table rows it touched)
    of this partition's share of a step; zero when it has no rows in that step. The table rows
    are the layer's own record of its backward, not a second read of the minibatch rows."""
    batch = minibatch(model.loss, x, y, sampler, seed, epoch, step, partition, weight_scale)
    if batch is None:
        return RoundResult()
    xb, yb, wb, rng = batch
    loss, grad, n = model.loss_and_grad(params, xb, yb, rng, weight=wb)
    touched = None if model.table is None else model.layers[0].touched.astype(np.int32)
    return RoundResult(loss=loss, vec=grad, n=n, metrics=model.loss.metric_sums(model.last_output, yb, wb),
                       rows=touched)


VALIDATION_CHUNK = 4096  # rows scored at once: a worker's memory does not grow with the validation rows


def validation(model, weights, x, y, weight_scale=None):
    """The RoundResult (vloss, vn, vmetrics) of these weights on a partition's validation rows,
    scored in chunks of VALIDATION_CHUNK rows (summed in row order)."""
    n = len(x)
    if n == 0:
        return RoundResult()
    model.set_params(weights)
    loss_sum, sums = 0.0, None
    for start in range(0, n, VALIDATION_CHUNK):
        rows = np.arange(start, min(n, start + VALIDATION_CHUNK))
        xb = batch_rows(x, rows)
        out = model.predict_output(xb)
        yb, wb = labels_and_weights(np.asarray(y[rows]), weight_scale)
        yb = model.loss.targets(xb, yb)
        loss, _ = model.loss(out, yb) if wb is None else model.loss(out, yb, wb)
        loss_sum, sums = loss_sum + float(loss), _add(sums, model.loss.metric_sums(out, yb, wb))
    return RoundResult(vloss=loss_sum, vn=n, vmetrics=sums)


def _add(total, sums):
    return sums if total is None else (total if sums is None else total + sums)


def local_steps(model, weights, state, opt_cfg, x, y, sampler, seed, epoch, first_step, k, partition,
                shipped_rows=None, weight_scale=None):
    """The RoundResult (loss sum, rows x [trained weights, optimizer state arrays] as vec, rows,
    metric sums, table rows the steps touched) after k steps of this partition's own from the given
    weights and optimizer state (in place on the model's parameters: Sequential.train_step, lazy
    in an Embedding table).

    shipped_rows: None when weights and state cover every parameter; else the sorted table rows
    shipped, weights and state then covering model.active_index(shipped_rows): the only
    entries the steps may read, and the only ones returned."""
    opt = optimizer_from_config(opt_cfg)
    active = None if shipped_rows is None else model.active_index(shipped_rows)
    if active is None:
        model.set_params(weights)
        opt.load_state_dict(state)
    else:
        model.params[active] = weights  # the other table rows are stale; no step reads them
        full = {"t": state["t"]}
        for key in opt.state_keys():
            full[key] = np.zeros(model.num_params, dtype=np.float32)
            full[key][active] = state[key]
        opt.load_state_dict(full)
        shipped = np.zeros(model.table[1], dtype=bool)
        shipped[shipped_rows] = True
    loss_sum, rows_seen, sums, touched = 0.0, 0, None, []
    for step in range(first_step, first_step + k):
        batch = minibatch(model.loss, x, y, sampler, seed, epoch, step, partition, weight_scale)
        if batch is None:
            continue
        xb, yb, wb, rng = batch
        if active is not None and not shipped[xb.astype(np.int64).clip(0, len(shipped) - 1)].all():
            raise RuntimeError(f"partition {partition}, epoch {epoch + 1}, step {step + 1}: the round's "
                               "minibatch reads embedding rows that were not shipped to it")
        loss, n = model.train_step(opt, xb, yb, rng, weight=wb)
        loss_sum, rows_seen = loss_sum + loss, rows_seen + n
        sums = _add(sums, model.loss.metric_sums(model.last_output, yb, wb))
        if model.table is not None:
            touched.append(model.layers[0].touched)
    if not rows_seen:
        return RoundResult()
    arrays = [model.params] + [getattr(opt, key) for key in opt.state_keys()]
    if active is not None:
        arrays = [a[active] for a in arrays]
    rows = np.unique(np.concatenate(touched)).astype(np.int32) if touched else None
    vec = np.concatenate(arrays)
    vec *= np.float32(rows_seen)  # in place: a second array of the round's size is pages mapped anew
    return RoundResult(loss=loss_sum, vec=vec, n=rows_seen, metrics=sums, rows=rows)


class RoundTask:
    """One round's work on a partition, shipped to the executors inside the job's closure:
    - validate: first scores the shipped weights on the partition's validation rows (so the
      validation after an epoch rides in the next epoch's first job);
    - k = 0: nothing else (a validation job);
    - k = 1: one synchronous step: the vector is the gradient sum of the step's minibatch;
    - k > 1: a local round: steps first_step .. first_step+k-1 of the epoch on its own, from the
      shipped weights and optimizer state; the vector is rows x [its weights, its state arrays]."""

    def __init__(self, config_json, threads, sampler, seed, opt_cfg, epoch, first_step, k, validate=False,
                 next_round=None, frozen=None, weight_scale=None):
        self.config_json, self.threads, self.sampler, self.seed = config_json, threads, sampler, seed
        self.opt_cfg = opt_cfg
        self.epoch, self.first_step, self.k, self.validate = epoch, first_step, k, validate
        self.next_round = next_round  # (epoch, first step, k) of the round that follows, or None
        # (key, handle whose .value is the frozen parameters) shipped once per fit, or None
        self.frozen = frozen
        self.weight_scale = weight_scale  # the rows carry weights (weightCol), times this; None: unweighted

    def __call__(self, partition, blocks, payload):
        """Yields the partition's RoundResult; payload: {"w": raw float32 bytes[, "state": dict]
        [, "rows": raw int32 table rows][, "buffers": raw float32 bytes]}: with "rows", w and the
        state arrays hold only the entries of model.active_index(rows). With buffers (BatchNorm's
        running statistics), the result carries rows x the buffers after the round's steps, which
        the driver averages as it does a local round's weights."""
        t0 = time.perf_counter()
        epoch, first, k = self.epoch, self.first_step, self.k
        steps = range(first, first + k)
        for step in steps:
            maybe_kill_worker(epoch, step, partition)
            maybe_kill_executor(epoch, step, partition)
        for block in blocks:
            for step in steps:
                if delete_now(epoch, step, partition):
                    delete_block(block)
            x, y, xv, yv = open_block(block)
            model = worker_model(self.config_json, self.threads)
            # the weights as shipped: a read-only view of the raw bytes, no pickled array, no copy
            w = np.frombuffer(payload["w"], dtype=np.float32)
            self._load_constants(model, payload)
            rows = payload.get("rows")
            rows = None if rows is None else np.frombuffer(rows, dtype=np.int32)
            ws = self.weight_scale
            val = validation(model, w, xv, yv, ws) if self.validate else RoundResult()
            if k == 1:
                result = minibatch_step(model, w, x, y, self.sampler, self.seed, epoch, first, partition, ws)
            elif k > 1:
                result = local_steps(model, w, payload["state"], self.opt_cfg, x, y, self.sampler, self.seed, epoch,
                                     first, k, partition, rows, ws)
            else:
                result = RoundResult()
            if model.buffers.size and result.n:
                result += RoundResult(buffers=model.buffers * np.float32(result.n))
            following = None
            if model.table is not None and self.next_round is not None:
                following = table_rows(model, x, self.sampler, *self.next_round, partition)
            # the parts are disjoint fields: their sum only puts them together
            yield result + val + RoundResult(seconds=time.perf_counter() - t0, next_rows=following)

    def _load_constants(self, model, payload):
        """The frozen parameters (once per worker process and fit: the model keeps the key of
        the ones it holds) and the round's buffers into the worker's model."""
        if self.frozen is not None and getattr(model, "frozen_key", None) != self.frozen[0]:
            model.frozen[:] = self.frozen[1].value
            model.frozen_key = self.frozen[0]
        if "buffers" in payload:
            model.set_buffers(np.frombuffer(payload["buffers"], dtype=np.float32))
