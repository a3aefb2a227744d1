"""Embedding rounds: a local round ships and returns only the table rows that its minibatches
touch (the round before reports which), the optimizer updates only those (lazy), and this
gives the same bits as shipping every row, also after a killed worker or deleted resident files."""
import numpy as np
import pytest

from spark_nn.ml.classification import RNNClassifier
from spark_nn.ml.training.faults import DELETE_PROPERTY, KILL_PROPERTY
from spark_nn.ml.training.trainer import DistributedTrainer
from spark_nn.nn import builders
from conftest import fit_under_fault

VOCAB, STEPS, SEEN = 2000, 6, 300  # ids 1..SEEN-1 occur (0 pads); the other rows never do


@pytest.fixture(scope="module")
def tokens(spark):
    rng = np.random.default_rng(11)
    ids = rng.integers(1, SEEN, size=(160, STEPS))
    ids[rng.random(160) < 0.3, :2] = 0
    y = (ids[:, -1] < SEEN // 2).astype(float)
    rows = [(r.tolist(), float(b)) for r, b in zip(ids, y)]
    return spark.createDataFrame(rows, "tokens array<int>, label double").repartition(2).cache()


def est(**kw):
    # 10 steps an epoch: rounds of 4, 4 and 2 steps, the next round's rows known in each
    return RNNClassifier(**dict(dict(layers=[8], numClasses=2, inputCol="tokens", vocabSize=VOCAB, embeddingDim=4,
                                     maxIter=3, batchSize=16, stepSize=0.02, seed=3, localSteps=4,
                                     learningRateSchedule="constant"), **kw))


def test_rounds_ship_the_touched_rows_only_and_give_the_bits_of_shipping_every_row(tokens, monkeypatch):
    sparse = est().fit(tokens)
    monkeypatch.setattr(DistributedTrainer, "SHIP_TOUCHED_ROWS", False)
    dense = est().fit(tokens)
    assert sparse.weights.tobytes() == dense.weights.tobytes()
    assert sparse.summary.objectiveHistory == dense.summary.objectiveHistory
    # the first round of the fit ships every row; after it, at most the SEEN of VOCAB rows
    for s, d in zip(sparse.summary.epochs[1:], dense.summary.epochs[1:]):
        assert s["rounds"] == d["rounds"] == 3
        assert s["payload_mb"] < 0.2 * d["payload_mb"]


def test_rows_no_minibatch_touches_keep_their_initial_values(tokens):
    model = est(localSteps=1, maxIter=1).fit(tokens)  # synchronous rounds: the driver's step is lazy too
    local = est(maxIter=2).fit(tokens)
    init = builders.rnn([8], 2, (STEPS,), vocab_size=VOCAB, embedding_dim=4, seed=3).params
    off, _, dim = builders.rnn([8], 2, (STEPS,), vocab_size=VOCAB, embedding_dim=4).table
    unseen = slice(off + SEEN * dim, off + VOCAB * dim)
    for fitted in (model, local):
        assert fitted.weights[unseen].tobytes() == init[unseen].tobytes()
        assert not np.array_equal(fitted.weights[off:off + SEEN * dim], init[off:off + SEEN * dim])


@pytest.mark.parametrize("fault", [pytest.param(KILL_PROPERTY, marks=pytest.mark.task_retries), DELETE_PROPERTY])
def test_a_sparse_round_after_a_fault_computes_the_same_bits(spark, tokens, tmp_path, fault):
    reference = est().fit(tokens).weights
    # epoch 1 (0-based), the round of steps 4..7, partition 1
    recovered = fit_under_fault(spark, fault, "1:5:1", tmp_path / "fired", lambda: est().fit(tokens).weights)
    assert recovered.tobytes() == reference.tobytes()
