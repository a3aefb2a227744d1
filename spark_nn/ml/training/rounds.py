"""A round: ship the payload, map a RoundTask over the partitions' resident blocks, sum their
results in a tree. ``Rounds`` holds what both backends share: a lost resident block makes the
data be materialized again and the round run again (a round's result depends only on the
weights, seed, epoch, step and partition, so the retry computes the same). ``RDDRounds`` is the
classic session's backend (RDD treeAggregate); connect_rounds.ConnectRounds is Spark Connect's."""
import logging

import numpy as np
from pyspark import Broadcast

from spark_nn.ml.training.errors import ResidentBlockLost, unwrap_errors
from spark_nn.ml.training.worker import ZERO, add_results

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

    def run(self, task, payload):
        """The sum over the partitions of task(partition, blocks, payload)'s results."""
        for attempt in range(3):
            try:
                return unwrap_errors(self._sum, task, payload)
            except ResidentBlockLost as e:
                if attempt == 2:
                    raise
                log.warning("%s: %s; materializing the training data again", self.description, e)
                self.data.rematerialize()
                if list(self.data.sizes) != self.sizes:
                    raise RuntimeError("the training data changed when it was read again (partition sizes "
                                       f"{self.sizes} -> {self.data.sizes}); the input must be deterministic, "
                                       "e.g. cache it") from None

    def _sum(self, task, payload):
        raise NotImplementedError

    def describe(self, text):
        """What the rounds that follow are (None: the fit is over)."""


class RDDRounds(Rounds):
    """Rounds with RDD treeAggregate on a classic session."""

    def __init__(self, data, depth, description):
        super().__init__(data, depth, description)
        self.sc = data.spark.sparkContext
        self._inline_limit = None

    def _sum(self, task, payload):
        shipped = self._ship(payload)
        try:
            return self.data.rdd.mapPartitionsWithIndex(lambda i, blocks: task(i, blocks, shipped.value)) \
                .treeAggregate(ZERO, add_results, add_results, depth=self.depth)
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
        if payload_bytes(payload) <= self._inline_limit:
            return Inline(payload)
        return self.sc.broadcast(payload)

    def describe(self, text):
        """The Spark job description of the rounds that follow (None clears it)."""
        self.sc.setJobDescription(text)
