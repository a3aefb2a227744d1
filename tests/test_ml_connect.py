"""Training on Spark Connect: the result rows' encoding and sum, the executor-side tree, and a
Connect fit bitwise equal to a classic fit of the same data (the Connect run's tests use the
classic session that serves the local Connect server, in the same JVM)."""

import numpy as np
import pytest

from spark_nn.ml.classification import CNNClassifier
from spark_nn.ml.training.connect_rounds import ROUNDS_TAG, decode, encode, fold
from spark_nn.ml.training.round_result import FIELDS, ZERO, RoundResult
from conftest import CONNECT, resident_files

connect_only = pytest.mark.skipif(not CONNECT, reason="needs a Spark Connect session (SPARK_NN_TEST_CONNECT=1)")


def results(rng, n, size=7):
    def ids():
        return np.unique(rng.integers(0, 50, size=6)).astype(np.int32)

    return [(pid, RoundResult(loss=float(rng.normal()),
                              vec=rng.normal(size=size).astype(np.float32) if pid != 1 else None,
                              n=int(rng.integers(1, 9)), metrics=rng.integers(0, 5, size=2).astype(np.float64),
                              seconds=float(rng.random()), vloss=float(rng.normal()), vn=int(rng.integers(0, 4)),
                              vmetrics=rng.integers(0, 4, size=2).astype(np.float64) if pid != 0 else None,
                              rows=ids() if pid != 2 else None, next_rows=ids() if pid % 2 else None))
            for pid in range(n)]


def same(a, b):
    """Two results are equal field by field, arrays bitwise (dtype included)."""
    for f in FIELDS:
        x, y = getattr(a, f.name), getattr(b, f.name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert x is not None and y is not None and x.dtype == y.dtype and x.tobytes() == y.tobytes(), f.name
        else:
            assert type(x) is type(y) and x == y, f.name
    return a == b


def test_result_fields_combine_by_their_kind():
    a = RoundResult(loss=1.5, vec=np.ones(3, np.float32), n=2, seconds=3.0, rows=np.array([1, 4], np.int32))
    b = RoundResult(loss=0.25, vec=np.full(3, 2, np.float32), n=5, seconds=1.0, vn=1,
                    rows=np.array([2, 4], np.int32), next_rows=np.array([7], np.int32))
    total = ZERO + a + b
    assert (total.loss, total.n, total.seconds, total.vn) == (1.75, 7, 3.0, 1)  # seconds: the max
    assert total.vec.tolist() == [3, 3, 3] and total.rows.tolist() == [1, 2, 4] and total.next_rows.tolist() == [7]
    assert total.rows.dtype == np.int32 and ZERO + a == a and a != b


def test_add_into_is_the_sum_written_into_the_left_results_arrays(rng):
    from spark_nn.ml.training.round_result import add_into

    a, b, c = (r for _, r in results(rng, 3))  # b has no vec; a no vmetrics
    expected = a + b + c
    keep_c = c.vec.copy()
    left_vec = a.vec
    total = add_into(add_into(a, b), c)
    assert same(total, expected)
    assert total.vec is left_vec  # written into a's own array, no new one
    assert c.vec.tobytes() == keep_c.tobytes()  # added from, not written
    # a read-only left (decoded from bytes) is never written: a new array, as +
    frozen = RoundResult(vec=np.frombuffer(np.ones(7, np.float32).tobytes(), np.float32), n=1)
    summed = add_into(frozen, c)
    assert frozen.vec.tolist() == [1.0] * 7 and summed.vec is not frozen.vec
    assert same(summed, frozen + c)
    assert add_into(ZERO, c) == c and ZERO.vec is None


def test_result_rows_round_trip_and_sum_in_partition_order(rng):
    rows = results(rng, 5)
    back = decode(encode(rows[::-1]))
    assert [pid for pid, _ in back] == [4, 3, 2, 1, 0]
    for (pid, r), (pid2, r2) in zip(rows[::-1], back):
        assert pid == pid2 and same(r, r2)
    # the sum, field by field in numpy, in partition order (as the classic backend's
    # treeAggregate over few partitions adds them), whatever order the rows came in
    first, total = fold(back)
    parts = [r for _, r in rows]
    assert first == 0
    loss = 0.0
    for r in parts:
        loss += r.loss
    assert total.loss == loss and total.vloss == sum_in_order([r.vloss for r in parts])
    assert (total.n, total.vn) == (sum(r.n for r in parts), sum(r.vn for r in parts))
    assert total.seconds == max(r.seconds for r in parts)
    vec = np.zeros(7, np.float32)
    for r in parts:
        if r.vec is not None:
            vec = vec + r.vec
    assert total.vec.dtype == np.float32 and total.vec.tobytes() == vec.tobytes()
    assert total.metrics.tolist() == np.sum([r.metrics for r in parts], axis=0).tolist()
    assert total.vmetrics.tolist() == np.sum([r.vmetrics for r in parts if r.vmetrics is not None], axis=0).tolist()
    for name in ("rows", "next_rows"):
        sets = [getattr(r, name) for r in parts if getattr(r, name) is not None]
        assert getattr(total, name).dtype == np.int32
        assert getattr(total, name).tolist() == sorted(set(np.concatenate(sets).tolist()))
    assert total.buffers is None
    # the order is seen in the bits: these float32 vectors summed from the last partition down
    # differ (so a fold in arrival order would not pass the check above)
    backwards = np.zeros(7, np.float32)
    for r in parts[::-1]:
        if r.vec is not None:
            backwards = backwards + r.vec
    assert backwards.tobytes() != vec.tobytes()
    assert fold([]) == (0, ZERO)
    assert decode(encode([])) == []


def sum_in_order(values):
    total = 0.0
    for v in values:
        total += v
    return total


def est(**kw):
    return CNNClassifier(**dict(dict(layers=[4], numClasses=3, imageShape=[1, 6, 6], maxIter=2, batchSize=16,
                                     stepSize=0.05, seed=7, localSteps=1, validationSplit=0.2), **kw))


def frame(spark):
    """The same rows in the same two partitions in either kind of session (no shuffle)."""
    return spark.range(0, 150, 1, 2).selectExpr(
        "transform(sequence(0, 35), i -> cast(((id * 31 + i * 17) % 13) as double) / 12.0) as features",
        "cast(id % 3 as double) as label")


@connect_only
@pytest.mark.parametrize("local_steps", [1, 3])
def test_connect_fit_equals_classic_fit_bitwise(spark, monkeypatch, local_steps):
    from pyspark.sql import SparkSession

    classic = SparkSession._instantiatedSession  # the session that serves the local Connect server
    assert classic is not None and classic is not spark
    on_connect = est(localSteps=local_steps).fit(frame(spark))
    # pyspark decides by this variable whether its functions build Connect or classic columns
    monkeypatch.delenv("SPARK_CONNECT_MODE_ENABLED", raising=False)
    on_classic = est(localSteps=local_steps).fit(frame(classic))
    np.testing.assert_array_equal(on_connect.weights, on_classic.weights)
    assert on_connect.summary.objectiveHistory == on_classic.summary.objectiveHistory
    assert on_connect.summary.epochs[-1]["val_loss"] == on_classic.summary.epochs[-1]["val_loss"]


@connect_only
def test_many_partitions_are_summed_in_a_tree_on_the_executors(spark):
    from spark_nn.ml.training.connect_rounds import RESULT_SCHEMA, ConnectRounds

    rows = results(np.random.default_rng(3), 9)
    parts = spark.range(0, 9, 1, 9)

    def emit(batches):
        for b in batches:
            for pid in b.column(0).to_pylist():
                yield encode([rows[pid]])

    class Data:  # what ConnectRounds asks of the training data
        sizes = [1] * 9

    Data.spark = spark
    rounds = ConnectRounds(Data(), 2, "test")
    query = rounds.tree(parts.mapInArrow(emit, RESULT_SCHEMA), 9)
    got = decode(query.toArrow())
    # as treeAggregate at depth 2: the driver gets at most 3 level sums (rows hashed by pid % 3
    # to 3 tasks, some of which may get none), not 9 rows
    assert 1 <= len(got) <= 3
    _, total = fold(got)
    _, flat = fold(rows)
    assert total.loss == pytest.approx(flat.loss)
    assert (total.n, total.vn) == (flat.n, flat.vn)
    for name in ("metrics", "vmetrics"):  # whole counts in float64: exact in any order
        assert getattr(total, name).tolist() == getattr(flat, name).tolist()
    np.testing.assert_allclose(total.vec, flat.vec, rtol=1e-6, atol=1e-6)
    for name in ("rows", "next_rows"):  # table rows: unions, the same whatever the tree's grouping
        assert getattr(total, name).tobytes() == getattr(flat, name).tobytes()


@connect_only
def test_an_interrupted_connect_fit_stops_and_leaves_no_files(spark, local_dirs):
    """What Ctrl-C does on the driver (ConnectRounds interrupts the running round's tag), here
    from another thread by the tag every round carries: the round's query stops, the fit
    raises, the resident files go. (Between two rounds no query runs, so it is asked again.)"""
    import threading
    import time

    from pyspark.errors.exceptions.connect import SparkConnectException

    outcome = {}

    def fit():
        try:
            est(maxIter=500, validationSplit=0.0).fit(frame(spark))
            outcome["result"] = "finished"
        except Exception as e:  # what the interrupt raises is Spark's
            outcome["result"] = e

    worker = threading.Thread(target=fit)
    worker.start()
    deadline = time.monotonic() + 120
    while worker.is_alive() and time.monotonic() < deadline:
        spark.interruptTag(ROUNDS_TAG)
        worker.join(0.2)
    assert not worker.is_alive()
    # the interrupt, as Spark Connect reports a canceled operation (not another error)
    error = outcome["result"]
    assert isinstance(error, SparkConnectException), outcome
    assert "[OPERATION_CANCELED] Operation has been canceled" in str(error), str(error)[:2000]
    assert resident_files(local_dirs, depth=1) == []
