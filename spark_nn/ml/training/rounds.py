"""A round: ship the payload, map a RoundTask over the partitions' resident blocks, sum their
results in a tree. ``Rounds`` holds what both backends share: a lost resident block makes the
data be materialized again and the round run again (a round's result depends only on the
weights, seed, epoch, step and partition, so the retry computes the same). ``RDDRounds`` is the
classic session's backend (RDD treeAggregate); connect_rounds.ConnectRounds is Spark Connect's."""
import logging
import operator
import threading
import uuid

import numpy as np
from pyspark import Broadcast

from spark_nn.ml.training.errors import ResidentBlockLost, unwrap_errors
from spark_nn.ml.training.round_result import ZERO, add_into

log = logging.getLogger("spark_nn")


class Inline:
    """A task payload carried in the task's closure, read like a broadcast (.value)."""

    def __init__(self, value):
        self.value = value


def payload_bytes(payload):
    if isinstance(payload, (bytes, bytearray)):
        return len(payload)
    if isinstance(payload, np.ndarray):
        return payload.nbytes
    if isinstance(payload, dict):
        return sum(payload_bytes(v) for v in payload.values())
    return 64


class Rounds:
    """Runs rounds over a TrainingData's blocks; a backend gives ``_sum(task, payload)`` (one
    attempt) and ``describe(text)``. depth: the tree's depth (aggregationDepth)."""

    def __init__(self, data, depth, description):
        self.data, self.depth, self.description = data, int(depth), description
        self.sizes = list(data.sizes)
        self._state = threading.Condition()  # rounds in flight together rematerialize the data once
        self._running, self._rematerializing, self._generation = 0, False, 0

    def run(self, task, payload):
        """The sum over the partitions of task(partition, blocks, payload)'s results. Rounds in
        flight together (pipelined) run their jobs side by side, but the data are materialized
        again only while no round's job runs: a job still running on the old blocks could
        otherwise recompute them by lineage after they were released, and leave files behind."""
        for attempt in range(3):
            with self._state:
                while self._rematerializing:
                    self._state.wait()
                self._running += 1
                generation = self._generation
            try:
                return unwrap_errors(self._sum, task, payload)
            except ResidentBlockLost as e:
                if attempt == 2:
                    raise
                lost = e
            finally:
                with self._state:
                    self._running -= 1
                    self._state.notify_all()
            with self._state:
                while self._generation == generation and (self._rematerializing or self._running):
                    self._state.wait()
                if self._generation != generation:
                    continue  # another round has materialized the data again meanwhile
                self._rematerializing = True
            try:
                log.warning("%s: %s; materializing the training data again", self.description, lost)
                self.data.rematerialize()
            finally:
                with self._state:
                    self._rematerializing = False
                    self._generation += 1
                    self._state.notify_all()
            if list(self.data.sizes) != self.sizes:
                raise RuntimeError("the training data changed when it was read again (partition sizes "
                                   f"{self.sizes} -> {self.data.sizes}); the input must be deterministic, "
                                   "e.g. cache it") from None

    def _thread_settings(self):
        """What a round's thread takes over from the driver's thread (given to _in_thread)."""

    def start(self, task, payload, text):
        """Starts run(task, payload) as a job from a thread of its own, so that the driver can
        prepare the next round meanwhile (pipelined rounds); returns the RoundInFlight. text:
        the job's description."""
        return RoundInFlight(self, task, payload, text)

    def _in_thread(self, text, settings):
        """Called in a round's own thread before its job: the backend's per-thread settings."""

    def cancel(self):
        """Cancels the jobs of rounds in flight (the fit is ending with an error)."""

    def _sum(self, task, payload):
        raise NotImplementedError

    def describe(self, text):
        """What the rounds that follow are (None: the fit is over)."""

    def constant(self, value):
        """A handle (.value) to an array the fit's tasks read in every round but that never
        changes (frozen parameters): shipped once, not in each round's payload."""
        return Inline(value)

    def close(self):
        """Releases what constant() made (the fit is over)."""


class RoundInFlight:
    """A round running in a thread of its own; result() waits for it and returns its sum, or
    raises what the round raised."""

    def __init__(self, rounds, task, payload, text):
        self._rounds, self._value, self._error = rounds, None, None
        self._settings = rounds._thread_settings()
        self._thread = threading.Thread(target=self._body, args=(task, payload, text), daemon=True,
                                        name="spark_nn round")
        self._thread.start()

    def _body(self, task, payload, text):
        try:
            self._rounds._in_thread(text, self._settings)
            self._value = self._rounds.run(task, payload)
        except BaseException as e:  # handed to the driver's thread by result()
            self._error = e

    def result(self):
        while self._thread.is_alive():
            self._thread.join(0.25)  # a timed wait: Ctrl-C reaches the driver's thread meanwhile
        if self._error is not None:
            raise self._error
        return self._value


class RDDRounds(Rounds):
    """Rounds with RDD treeAggregate on a classic session."""

    def __init__(self, data, depth, description):
        super().__init__(data, depth, description)
        self.sc = data.spark.sparkContext
        self._tag = f"spark_nn-{uuid.uuid4().hex[:12]}"  # marks the jobs of pipelined rounds
        self._constants = []

    def _sum(self, task, payload):
        shipped = self._ship(payload)
        try:
            # within a task the results are summed apart (+); across tasks the sum owns them (add_into)
            return self.data.rdd.mapPartitionsWithIndex(lambda i, blocks: task(i, blocks, shipped.value)) \
                .treeAggregate(ZERO, operator.add, add_into, depth=self.depth)
        finally:
            if isinstance(shipped, Broadcast):
                shipped.destroy()

    # payloads up to this size ride in the task closure; larger ones in a broadcast
    INLINE_BYTES = 1 << 16

    def _ship(self, payload):
        """The payload inside the task's closure when it is small, else a broadcast. The
        closure goes from Python to the JVM through py4j, which carries bytes base64-encoded:
        0.4 MB of it took 18 ms here, and a synchronous step of the seed CNN (0.4 MB of weights)
        took 66-77 ms with the weights in the closure and 47-50 ms in a broadcast, which
        PySpark hands to the JVM as a file (benchmarks/RESULTS.md). A broadcast's own driver
        round trips cost a few ms, more than py4j takes for a small payload."""
        if payload_bytes(payload) <= self.INLINE_BYTES:
            return Inline(payload)
        return self.sc.broadcast(payload)

    def describe(self, text):
        """The Spark job description of the rounds that follow (None clears it)."""
        self.sc.setJobDescription(text)

    def constant(self, value):
        """A broadcast: each executor fetches it once, each Python worker reads it once."""
        handle = self.sc.broadcast(value)
        self._constants.append(handle)
        return handle

    def close(self):
        for handle in self._constants:
            handle.destroy()
        self._constants = []

    def _thread_settings(self):
        """The driver thread's local properties (the user's job group and pool, tests' fault
        switches), which a round's thread takes over as a child JVM thread would."""
        return self.sc._jsc.sc().getLocalProperties().clone()

    def _in_thread(self, text, settings):
        self.sc._jsc.sc().setLocalProperties(settings)
        self.sc.setJobDescription(text or self.description)
        self.sc.addJobTag(self._tag)  # a tag, not a job group: the user's job group still applies

    def cancel(self):
        self.sc.cancelJobsWithTag(self._tag)
