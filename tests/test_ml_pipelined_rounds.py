"""Pipelined rounds (pipelineRounds=True): round r+1 is submitted before round r returns, so it
starts from weights without round r's change, which is added when round r returns. The
staleness is one round whatever the timing: a fit is bitwise reproducible, also after a killed
worker or deleted resident files, and an Embedding fit gives the same bits shipping touched
rows only as shipping every row."""
import threading

import numpy as np
import pytest

from spark_nn.ml.classification import CNNClassifier, RNNClassifier
from spark_nn.ml.training.faults import DELETE_PROPERTY, KILL_PROPERTY
from spark_nn.ml.training.trainer import DistributedTrainer
from spark_nn.ml.training.round_result import RoundResult
from conftest import fit_under_fault


# ------------------------------------------------------------ the schedule, without Spark
class _Data:
    sizes, connect, spark, has_validation = [40, 40], True, None, False


class _FakeRounds:
    """A backend whose 'tasks' move every weight to 0.5 w + 1 over a round (a change that
    depends on the shipped weights) and keep the optimizer state; it records what each round
    was shipped and how many rounds were in flight when it was submitted."""

    def __init__(self, optimizer):
        self.optimizer, self.shipped, self.in_flight, self.open = optimizer, [], [], 0
        self.lock = threading.Lock()

    def _result(self, task, payload):
        w = np.frombuffer(payload["w"], dtype=np.float32)
        n = 80
        arrays = [np.float32(0.5) * w + np.float32(1.0)]
        arrays += [np.zeros_like(w) for _ in self.optimizer.state_keys()]
        vec = np.concatenate(arrays) * np.float32(n)
        return RoundResult(loss=1.0, vec=vec, n=n, seconds=0.001)

    def run(self, task, payload):
        self.shipped.append((task.epoch, task.first_step, np.frombuffer(payload["w"], np.float32).copy()))
        return self._result(task, payload)

    def close(self):
        pass

    def start(self, task, payload, text):
        with self.lock:
            self.open += 1
            self.in_flight.append(self.open)
        rounds, value = self, self.run(task, payload)

        class Running:
            def result(self):
                with rounds.lock:
                    rounds.open -= 1
                return value
        return Running()

    def describe(self, text):
        pass

    def cancel(self):
        pass


def _trainer(pipeline, epochs=2):
    t = DistributedTrainer({"layers": [{"type": "Dense"}]}, _Data(), epochs=epochs, batch_size=10, optimizer="sgd",
                           step_size=0.1, momentum=0.0, seed=0, local_steps=2, pipeline=pipeline)
    t.rounds = _FakeRounds(t.optimizer)
    return t


def _f(w):
    return np.float32(0.5) * w + np.float32(1.0)


@pytest.mark.parametrize("pipeline", [False, True])
def test_rounds_are_shipped_with_a_staleness_of_exactly_one_round_when_pipelined(pipeline):
    w0 = np.arange(6, dtype=np.float32)
    trainer = _trainer(pipeline)
    final = trainer.run(w0)
    # 8 steps an epoch in rounds of 2: 4 rounds an epoch, 2 epochs
    bases, g = [], w0.copy()
    for epoch in range(2):
        if not pipeline:
            for _ in range(4):
                bases.append(g.copy())
                g = _f(g)
            continue
        # two in flight: rounds 0 and 1 leave from the same weights; each later round leaves
        # when the round two before it has returned; each return adds that round's change and
        # GAMMA of the change it missed (what was applied since it left)
        ship = [g.copy(), g.copy()]
        for r in range(4):
            b = ship[r]
            g = g + (_f(b) - b) - np.float32(1 - DistributedTrainer.GAMMA) * (g - b)
            if r + 2 < 4:
                ship.append(g.copy())
        bases.extend(ship)
    shipped = [w for _, _, w in trainer.rounds.shipped]
    assert [(e, s) for e, s, _ in trainer.rounds.shipped] == [(e, s) for e in range(2) for s in (0, 2, 4, 6)]
    assert len(shipped) == len(bases)
    for got, want in zip(shipped, bases):
        np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(final, g, rtol=1e-6)
    if pipeline:
        assert max(trainer.rounds.in_flight) == 2
        # the second round of each epoch ships the first one's weights: the staleness is real
        assert np.array_equal(shipped[0], shipped[1]) and np.array_equal(shipped[4], shipped[5])
    # the optimizer's step count (Adam's bias correction, the learning rate schedule) is the
    # rounds' first step, counting the rounds still in flight
    assert trainer.optimizer.t == 16 and trainer._ahead == 0


# ------------------------------------------------------------ on Spark
@pytest.fixture(scope="module")
def pixels(bright_pixels):
    return bright_pixels


def cnn(**kw):
    # 6 steps an epoch: rounds of 2 steps, 3 an epoch
    return CNNClassifier(**dict(dict(layers=[4], numClasses=3, imageShape=[1, 6, 6], maxIter=3, batchSize=16,
                                     stepSize=0.02, seed=9, localSteps=2, pipelineRounds=True,
                                     learningRateSchedule="constant"), **kw))


def test_a_pipelined_fit_is_reproducible_and_not_the_unpipelined_one(pixels):
    first, second = cnn().fit(pixels), cnn().fit(pixels)
    assert first.weights.tobytes() == second.weights.tobytes()
    assert first.summary.objectiveHistory == second.summary.objectiveHistory
    plain = cnn(pipelineRounds=False).fit(pixels)
    assert not np.array_equal(first.weights, plain.weights)
    assert [e["rounds"] for e in first.summary.epochs] == [3, 3, 3]
    # it learns: the last epoch's loss is below the first's
    assert first.summary.epochs[-1]["loss"] < first.summary.epochs[0]["loss"]


@pytest.mark.parametrize("fault", [pytest.param(KILL_PROPERTY, marks=pytest.mark.task_retries), DELETE_PROPERTY])
def test_a_pipelined_fit_after_a_fault_gives_the_same_bits(spark, pixels, tmp_path, fault):
    reference = cnn().fit(pixels).weights
    # epoch 1 (0-based), the round of steps 2..3, partition 1: a round submitted from a thread of its own
    recovered = fit_under_fault(spark, fault, "1:2:1", tmp_path / "fired", lambda: cnn().fit(pixels).weights)
    assert recovered.tobytes() == reference.tobytes()


def test_pipelined_embedding_rounds_ship_touched_rows_to_the_same_bits(spark, monkeypatch):
    rng = np.random.default_rng(11)
    ids = rng.integers(1, 300, size=(160, 6))
    y = (ids[:, -1] < 150).astype(float)
    tokens = spark.createDataFrame([(r.tolist(), float(b)) for r, b in zip(ids, y)],
                                   "tokens array<int>, label double").repartition(2)
    est = RNNClassifier(layers=[8], numClasses=2, inputCol="tokens", vocabSize=2000, embeddingDim=4, maxIter=3,
                        batchSize=16, stepSize=0.02, seed=3, localSteps=2, pipelineRounds=True,
                        learningRateSchedule="constant")
    sparse = est.fit(tokens)
    monkeypatch.setattr(DistributedTrainer, "SHIP_TOUCHED_ROWS", False)
    dense = est.fit(tokens)
    assert sparse.weights.tobytes() == dense.weights.tobytes()
    # after the first two rounds of the fit (shipped whole), rounds ship the rows reported two
    # rounds before them: 300 of 2000 rows at most
    assert sparse.summary.epochs[-1]["payload_mb"] < 0.3 * dense.summary.epochs[-1]["payload_mb"]


def test_a_pipelined_fit_with_validation_and_early_stopping_is_reproducible(pixels):
    # each epoch's validation rides in the next epoch's first round, which is in flight
    # together with that epoch's second round
    est = cnn(validationSplit=0.25, earlyStoppingPatience=1, maxIter=4, stepSize=0.5)
    first, second = est.fit(pixels), est.fit(pixels)
    assert first.weights.tobytes() == second.weights.tobytes()
    assert all(e["val_loss"] is not None for e in first.summary.epochs)
    drop = ("seconds",)
    assert [{k: v for k, v in e.items() if k not in drop} for e in first.summary.epochs] == \
        [{k: v for k, v in e.items() if k not in drop} for e in second.summary.epochs]
    assert first.summary.bestEpoch is not None
