"""The training loop on the driver: rounds of one synchronous step (the optimizer runs on the
driver over the gradient sum) or of k local steps (the driver averages the partitions' trained
weights and optimizer states), epochs with validation, early stopping and checkpoints. How a
round reaches the executors is the backend's business (rounds.RDDRounds on a classic session,
connect_rounds.ConnectRounds on Spark Connect, chosen by the data's session); what a task
computes is worker.RoundTask's.
"""
import collections
import json
import logging
import time
import uuid

import numpy as np

from spark_nn.ml.training import checkpoint
from spark_nn.ml.training.connect_rounds import ConnectRounds
from spark_nn.ml.training.local_steps import AutoLocalSteps, FixedLocalSteps
from spark_nn.ml.training.progress import Progress
from spark_nn.ml.training.round_result import RoundResult
from spark_nn.ml.training.rounds import RDDRounds, payload_bytes
from spark_nn.ml.training.summary import TrainingSummary
from spark_nn.ml.training.worker import RoundTask, StepSampler
from spark_nn.nn.losses import loss_from_config
from spark_nn.nn.model import Sequential
from spark_nn.nn.optimizers import Schedule, make_optimizer

log = logging.getLogger("spark_nn")


class DistributedTrainer:
    """Runs the optimizer on the driver over gradients summed by treeAggregate.

    In a local round of k > 1 steps, each partition instead takes k optimizer steps of its own
    from the driver's weights and optimizer state (the schedule's learning rate at each step),
    and the driver averages the resulting weights and optimizer states, weighted by rows: one
    job per k steps. local_steps: an int k, or 'auto' (AutoLocalSteps)."""

    # a local round of a model with an Embedding table ships only the table rows it touches
    # (False ships every row: the same bits, more bytes; tests compare the two)
    SHIP_TOUCHED_ROWS = True
    # pipelined rounds: the share of the change a returning round missed (applied since it
    # was shipped) that the weights keep (see _average_round; 1 oscillates at long rounds)
    GAMMA = 0.5

    def __init__(self, model_config, data, *, epochs, batch_size, optimizer, step_size, seed,
                 momentum=0.9, weight_decay=0.0, clip_norm=0.0, schedule="constant", aggregation_depth=2,
                 threads=1, tol=0.0, patience=0, verbose=False,
                 local_steps="auto", description="spark_nn fit", checkpoint_dir=None, checkpoint_interval=1,
                 pipeline=False, frozen=None, buffers=None, on_epoch=None):
        self.sizes = list(data.sizes)
        self.on_epoch = on_epoch  # called with each finished epoch's record (MLflow logging)
        self.config_json = json.dumps(model_config, sort_keys=True)
        self.epochs, self.batch_size, self.seed = int(epochs), int(batch_size), int(seed)
        self.sampler = StepSampler(seed, self.sizes, batch_size)
        total_steps = self.sampler.steps_per_epoch * self.epochs
        opt_args = {"lr": step_size, "weight_decay": weight_decay, "clip_norm": clip_norm or None,
                    "schedule": Schedule("cosine", total_steps=total_steps) if schedule == "cosine" else None}
        if optimizer == "sgd":
            opt_args["momentum"] = momentum
        self.optimizer = make_optimizer(optimizer, **opt_args)
        self.threads = int(threads)
        self.local_steps = (AutoLocalSteps(self.sampler.steps_per_epoch, total_steps) if local_steps == "auto"
                            else FixedLocalSteps(int(local_steps)))
        self.has_validation = bool(getattr(data, "has_validation", False))
        self.weight_scale = getattr(data, "weight_scale", None)  # rows weighted by weightCol
        self.tol, self.patience = float(tol), int(patience)
        self.verbose, self.description = verbose, description
        self.loss = loss_from_config(model_config.get("loss"))  # what the fit trains for (its accuracy)
        self.summary = TrainingSummary()
        self.checkpoint_dir, self.checkpoint_interval = checkpoint_dir or None, int(checkpoint_interval)
        self.fingerprint = checkpoint.fingerprint(self.config_json, seed, batch_size, self.sizes, local_steps)
        self.last_checkpoint = None
        self.resumed_from = None
        self.rounds = (ConnectRounds if data.connect else RDDRounds)(data, aggregation_depth, description)
        # pipelined rounds: the next round is submitted before this one returns (two in flight)
        self.pipeline = bool(pipeline)
        # a model with an Embedding table: which rows the next round touches, as the round before
        # it reported them ((epoch, first step, k), sorted int32 rows), so only those are shipped
        takes_ids = (model_config.get("layers") or [{}])[0].get("type") == "Embedding"
        self.net = Sequential.from_config(model_config) if takes_ids else None  # for its table's layout
        self.sparse_rounds = takes_ids
        self._following = {}  # (epoch, first step, k) of a later round -> its table rows
        self._ahead = 0  # steps of the rounds submitted and not yet applied (pipelined rounds)
        self.shipped_bytes = 0
        # a network's frozen parameters ship once per fit; its buffers (BatchNorm's running
        # statistics) ship with every round and come back rows-weighted, as a local round's
        # weights do: self.buffers holds the fit's current ones
        frozen = np.zeros(0, np.float32) if frozen is None else np.asarray(frozen, np.float32)
        self._frozen = (uuid.uuid4().hex, self.rounds.constant(frozen.copy())) if frozen.size else None
        self.buffers = np.array(np.zeros(0, np.float32) if buffers is None else buffers, dtype=np.float32)

    # ------------------------------------------------------------ one round
    def _prepare(self, weights, epoch, first_step, k, validate=False, next_round=None, keep_base=False):
        """(task, payload, table rows shipped or None, base) of one round, see _job. base (with
        keep_base, for a local round): the weights as shipped, from which the round's change is
        taken when rounds are pipelined."""
        task = RoundTask(self.config_json, self.threads, self.sampler, self.seed, self.optimizer.config(), epoch,
                         first_step, k, validate, next_round, self._frozen, self.weight_scale)
        rows = self._following.pop((epoch, first_step, k), None) if k > 1 and not validate else None
        # the round's first step: the optimizer has not yet counted the rounds still in flight
        t = np.array(self.optimizer.t + self._ahead, dtype=np.int64)
        base = None
        if rows is None:
            payload = {"w": weights.tobytes()}
            if k > 1:
                payload["state"] = dict(self.optimizer.state_dict(), t=t)
                base = weights.copy() if keep_base else None
        else:
            active = self.net.active_index(rows)
            self.optimizer.init_state(weights)
            state = {"t": t}
            for key in self.optimizer.state_keys():
                state[key] = getattr(self.optimizer, key)[active]
            shipped = weights[active]
            payload = {"w": shipped.tobytes(), "rows": rows.tobytes(), "state": state}
            base = shipped if keep_base else None
        if self.buffers.size:
            payload["buffers"] = self.buffers.tobytes()
        self.shipped_bytes += payload_bytes(payload)
        return task, payload, rows, base

    def _remember(self, next_round, result):
        """Keeps the table rows a round reported for the round next_round."""
        if next_round is not None and result.next_rows is not None:
            for planned in [p for p in self._following if p[:2] < next_round[:2]]:
                del self._following[planned]  # rounds that were not run as planned
            self._following[next_round] = result.next_rows

    def _job(self, weights, epoch, first_step, k, validate=False, next_round=None):
        """One round (a Spark job) summed over the partitions into a round_result.RoundResult, and
        the table rows it shipped (None: every parameter); see worker.RoundTask for what k and
        validate mean. next_round: the (epoch, first step, k) of a later round, whose table rows
        the tasks report so that that round ships only those."""
        task, payload, rows, _ = self._prepare(weights, epoch, first_step, k, validate, next_round)
        result = self.rounds.run(task, payload)
        self._remember(next_round, result)
        return result, rows

    def _next_round(self, epoch, step, k, ahead=1):
        """(epoch, first step, k) of the round ahead rounds after this one when it is a local
        round that can ship table rows only (not a validation round), for a model with a table;
        else None. Pipelined rounds look two ahead: the round after next is submitted when this
        one has returned."""
        if not (self.sparse_rounds and self.SHIP_TOUCHED_ROWS):
            return None
        steps = self.sampler.steps_per_epoch
        done = self.summary.totalIterations + self._ahead + k
        for _ in range(ahead):
            following = self.local_steps.peek(done)
            if following is None or following < 2:
                return None
            if step + k < steps:
                step, k = step + k, min(following, steps - step - k)
            elif epoch + 1 < self.epochs and not self.has_validation:
                epoch, step, k = epoch + 1, 0, min(following, steps)
            else:
                return None
            done += k
        return epoch, step, k

    def gradient(self, weights, epoch, step):
        """The RoundResult of one step's minibatch (loss sum, gradient sum as vec, rows, metric
        sums, task seconds), summed over the partitions."""
        return self._job(weights, epoch, step, 1)[0]

    def _sync_step(self, weights, result):
        """The driver's optimizer step on a synchronous round's gradient sum: lazy in the table
        (only the rows the minibatches touched), as Sequential.train_step is in one process."""
        vec, n = result.vec, result.n
        active = self.net.active_index(result.rows) if self.sparse_rounds else None
        if active is None:
            self.optimizer.step(weights, _mean(vec, n))
        else:
            self.optimizer.step(weights, vec[active] / np.float32(n), active=active)

    def _average_round(self, weights, result, k, shipped_rows, base=None):
        """Takes the rows-weighted mean of the partitions' weights and optimizer states. The
        vector covers every parameter, or model.active_index(shipped_rows); with a table, only
        the entries of the rows the round touched are written (the others did not change on
        any partition), so a round gives the same bits whichever way it was shipped.

        base: the weights the round was shipped (same cover), when rounds are pipelined: the
        weights then gain the round's change (mean - base) on top of the rounds applied since
        it was shipped (delayed averaging); the optimizer state is the round's mean."""
        mean = _mean(result.vec, result.n)
        cover = None if shipped_rows is None else self.net.active_index(shipped_rows)
        # shipped rows are the rows the round touched, so then cover is also what to update
        update = self.net.active_index(result.rows) if self.sparse_rounds and cover is None else None
        self.optimizer.init_state(weights)
        self.optimizer.t += k
        size = weights.size if cover is None else len(cover)
        targets = [weights] + [getattr(self.optimizer, key) for key in self.optimizer.state_keys()]
        for i, target in enumerate(targets):
            block = mean[size * i:size * (i + 1)]
            if i == 0 and base is not None:
                # w + (mean - base) - (1 - GAMMA) (w - base): the round's change, and GAMMA of the
                # change it missed (what the rounds applied since it was shipped did)
                idx = cover if cover is not None else update if update is not None else slice(None)
                b = base if cover is not None else base[idx]
                m = block if cover is not None else block[idx]
                w = target[idx]
                target[idx] = w + (m - b) - np.float32(1 - self.GAMMA) * (w - b)
                continue
            if cover is not None:
                target[cover] = block
            elif update is not None:
                target[update] = block[update]
            else:
                target[:] = block

    def _evaluate(self, weights):
        """The validation metrics of these weights (val_loss and the loss's own, e.g. val_accuracy),
        in a job of its own."""
        return self._validation_metrics(self._job(weights, 0, 0, 0, validate=True)[0])

    def _validation_metrics(self, result):
        n = result.vn
        metrics = self.loss.metrics(result.vmetrics, n)
        named = {"val_" + k: v if n else None for k, v in metrics.items()}
        return dict(val_loss=result.vloss / n if n else None, **named)

    # ------------------------------------------------------------ the loop
    def _epoch(self, weights, epoch, progress, pending=None):
        """Runs one epoch in place on weights. When pending holds the previous epoch's record,
        the epoch's first job also scores the weights it ships (the previous epoch's) on the
        validation rows, saving a job per epoch, and that epoch is finished before this one
        changes anything; if finishing it stops the fit, returns None. Otherwise returns (loss
        sum, rows, metric sums, largest k used).

        Pipelined (self.pipeline), two rounds are in flight: round r+1 is submitted before
        round r has returned, so it starts from weights without round r's change, and each
        round's change is added to the weights when it returns. The staleness is one round,
        always, whatever the timing, so a fit is reproducible. An epoch's last rounds are
        waited for before the next epoch (its validation, checkpoint and early stop see the
        epoch's final weights)."""
        steps = self.sampler.steps_per_epoch
        tot_loss, tot_n, tot_metrics, k_used = 0.0, 0, None, 1
        self._epoch_rounds, shipped_before = 0, self.shipped_bytes
        depth = 2 if self.pipeline else 1
        # (round in flight, first step, k, shipped rows, base, start time, next round, buffers shipped)
        flight = collections.deque()
        step, last_return = 0, 0.0
        try:
            while step < steps or flight:
                while step < steps and len(flight) < depth:
                    k = min(self.local_steps.next_round(self.summary.totalIterations + self._ahead), steps - step)
                    validate = pending is not None and step == 0
                    text = (f"{self.description}: epoch {epoch + 1}/{self.epochs}, step {step + 1}/{steps}"
                            + (f" (+{k - 1} local)" if k > 1 else "")
                            + (f", validation of epoch {epoch}" if validate else ""))
                    t0 = time.perf_counter()
                    task, payload, rows, base = self._prepare(weights, epoch, step, k, validate,
                                                              self._next_round(epoch, step, k, depth), depth > 1)
                    if depth > 1:
                        running = self.rounds.start(task, payload, text)
                    else:
                        self.rounds.describe(text)
                        running = _Returned(self.rounds.run(task, payload))
                    shipped_buffers = self.buffers.copy() if depth > 1 and self.buffers.size else None
                    flight.append((running, step, k, rows, base, t0, task.next_round, shipped_buffers))
                    self._ahead += k
                    step += k
                running, first, k, shipped_rows, base, t0, next_round, shipped_buffers = flight[0]
                result = running.result()
                flight.popleft()
                self._ahead -= k
                self._remember(next_round, result)
                loss, n, task_seconds = result.loss, result.n, result.seconds
                if first == 0 and pending is not None:
                    pending.update(self._validation_metrics(result))
                    stop = self._finish_epoch(pending, weights, progress)
                    pending = None
                    if stop:
                        return None
                self._check_loss(loss, n, epoch, first)
                if n and self.buffers.size:
                    # BatchNorm's running statistics: the rows-weighted mean of the tasks' own;
                    # pipelined, the round's change on top of the rounds applied since it left
                    mean = result.buffers / np.float32(n)
                    if shipped_buffers is None:
                        self.buffers[:] = mean
                    else:
                        self.buffers += mean - shipped_buffers
                if k == 1:
                    if n:
                        self._sync_step(weights, result)
                elif n:
                    self._average_round(weights, result, k, shipped_rows, base)
                else:
                    self.optimizer.t += k
                # a pipelined round costs the time since the one before it returned
                now = time.perf_counter()
                seconds, last_return = now - max(t0, last_return), now
                self.local_steps.observe(k, seconds, task_seconds)
                log.debug("%s: round of %d steps at epoch %d step %d: %.1f ms, tasks %.1f ms, %s table rows "
                          "shipped", self.description, k, epoch + 1, first + 1, seconds * 1e3, task_seconds * 1e3,
                          "all" if shipped_rows is None else len(shipped_rows))
                if n:
                    self.summary.objectiveHistory.append(loss / n)
                    self.summary.objectiveSteps.append(self.summary.totalIterations + k)
                    tot_loss, tot_n = tot_loss + loss, tot_n + n
                    if result.metrics is not None:
                        tot_metrics = result.metrics if tot_metrics is None else tot_metrics + result.metrics
                self.summary.totalIterations += k
                self._epoch_rounds += 1
                k_used = max(k_used, k)
                progress.update(k, f"epoch {epoch + 1}/{self.epochs} loss {loss / max(n, 1):.4f}")
        finally:
            if flight:  # an error or an early stop: the rounds still running are not needed
                self.rounds.cancel()
                for running, *_ in flight:
                    try:
                        running.result()
                    except Exception:  # noqa: BLE001 - cancelled, or failing after the error at hand
                        pass
                self._ahead = 0
        self._epoch_payload = (self.shipped_bytes - shipped_before) / max(self._epoch_rounds, 1)
        return tot_loss, tot_n, tot_metrics, k_used

    def _finish_epoch(self, record, weights, progress):
        """Records and logs a finished epoch, tracks the best weights, writes the checkpoint;
        True when early stopping ends the fit here. weights are the epoch's final weights."""
        self.summary.epochs.append(record)
        if self.on_epoch is not None:
            self.on_epoch(record)
        msg = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items()
                        if v is not None)
        log.info("%s: %s", self.description, msg)
        progress.message(f"{self.description}: {msg}")
        epoch = record["epoch"]
        monitored = record.get("val_loss") if record.get("val_loss") is not None else record["loss"]
        if monitored < self._best[0] - self.tol:
            self._best, self._since_best = (monitored, weights.copy(), epoch, self.buffers.copy()), 0
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
        if self.buffers.size:
            arrays.update(buffers=self.buffers, best_buffers=best[3])
        self.last_checkpoint = checkpoint.write(self.checkpoint_dir, epoch, state, arrays)

    def _resume(self, weights):
        """(first epoch to run, best, since_best) after loading the newest checkpoint, if any."""
        path = checkpoint.latest(self.checkpoint_dir) if self.checkpoint_dir else None
        if path is None:
            return 0, (np.inf, weights.copy(), -1, self.buffers.copy()), 0
        state, arrays = checkpoint.read(path, self.fingerprint)
        if arrays["weights"].shape != weights.shape:
            raise ValueError(f"checkpoint {path} holds {arrays['weights'].size} weights, the network has "
                             f"{weights.size}")
        weights[:] = arrays["weights"]
        if self.buffers.size:
            self.buffers[:] = arrays["buffers"]
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
        best = (best_metric, arrays["best_weights"].copy(), state["best_epoch"],
                arrays["best_buffers"].copy() if self.buffers.size else self.buffers.copy())
        return int(state["epoch"]), best, int(state["since_best"])

    def run(self, weights):
        """The trained weights (trainable parameters) from these; the buffers the fit ends with
        are self.buffers after it."""
        weights = np.array(weights, dtype=np.float32, copy=True)
        try:
            first, self._best, self._since_best = self._resume(weights)
            progress = Progress(self.sampler.steps_per_epoch * (self.epochs - first), self.description, self.verbose)
            pending = None
            for epoch in range(first, self.epochs):
                t0 = time.perf_counter()
                done = self._epoch(weights, epoch, progress, pending)
                pending = None
                if done is None:
                    break
                tot_loss, tot_n, tot_metrics, k_used = done
                record = {"epoch": epoch + 1, "loss": tot_loss / max(tot_n, 1),
                          **self.loss.metrics(tot_metrics, tot_n)}
                if self.has_validation:
                    record.update(self._validation_metrics(RoundResult()))  # the names, set when validated
                record.update(seconds=time.perf_counter() - t0, steps=self.sampler.steps_per_epoch,
                              local_steps=k_used, rounds=self._epoch_rounds,
                              payload_mb=self._epoch_payload / 1e6)
                if self.has_validation and epoch + 1 < self.epochs:
                    pending = record  # validated by the next epoch's first job
                    continue
                if self.has_validation:
                    self.rounds.describe(f"{self.description}: validation after epoch "
                                         f"{epoch + 1}/{self.epochs}")
                    record.update(self._evaluate(weights))
                if self._finish_epoch(record, weights, progress):
                    break
        finally:
            self.rounds.describe(None)
            self.rounds.close()
        self.summary.localStepsAuto = getattr(self.local_steps, "choice", None)
        if self.patience and self.has_validation:
            self.summary.bestEpoch = self._best[2]
            self.buffers = self._best[3]
            return self._best[1]
        return weights


def _mean(vec, n):
    """vec / n in place when vec is writable: a round's summed result is the driver's own once
    the round has returned, and a new array the size of the model would be pages mapped anew
    each round (134 MB for ResNet-18 with Adam)."""
    if not vec.flags.writeable:
        return vec / np.float32(n)
    return np.divide(vec, np.float32(n), out=vec)


class _Returned:
    """A round that ran in the driver's thread, as a RoundInFlight that has returned."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value
