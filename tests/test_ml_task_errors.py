"""Errors raised in tasks, as the driver sees them (spark_nn.ml.training.errors): a task's
ValueError comes back with its own message, a lost resident block as ResidentBlockLost, other
errors unchanged. The errors are real ones, raised in tasks of the test session and delivered
however this Spark delivers them: a PythonException (Spark 4 DataFrame and RDD actions), a
Py4JJavaError whose text holds the traceback (RDD actions on Spark 3.5), or Spark Connect's
PythonException (CI runs this file in all three)."""
import pyarrow as pa
import pytest
from py4j.protocol import Py4JJavaError
from pyspark.errors import PythonException

from spark_nn.ml.training.errors import RESIDENT_LOST, ResidentBlockLost, unwrap_errors
from conftest import CONNECT

try:  # Spark Connect's own exception classes (pyspark[connect])
    from pyspark.errors.exceptions.connect import PythonException as ConnectPythonException
except ImportError:  # pragma: no cover - pyspark without Connect
    ConnectPythonException = PythonException

SPARK_TASK_ERRORS = (PythonException, Py4JJavaError, ConnectPythonException)


def dataframe_action(spark, error):
    """A DataFrame action whose task (partition 1 of 2) raises the error built by error()."""
    def fail(batches):
        from pyspark import TaskContext

        for b in batches:
            if TaskContext.get().partitionId() == 1:
                raise error()
            yield pa.RecordBatch.from_arrays([pa.array([0], pa.int32())], names=["ok"])

    return spark.range(0, 4, 1, 2).mapInArrow(fail, "ok int").collect


def rdd_action(spark, error):
    def fail(i, rows):
        if i == 1:
            raise error()
        return rows

    return spark.sparkContext.parallelize(range(4), 2).mapPartitionsWithIndex(fail).collect


ACTIONS = pytest.mark.parametrize("action", [
    dataframe_action, pytest.param(rdd_action, marks=pytest.mark.classic_only)], ids=["dataframe", "rdd"])

MESSAGE = "features column 'x' has NaN or infinite values in row 2 of input partition 0 (1 such rows)"


@ACTIONS
def test_task_value_errors_come_back_with_their_own_message(spark, action):
    with pytest.raises(ValueError) as info:
        unwrap_errors(action(spark, lambda: ValueError(MESSAGE)))
    assert str(info.value) == MESSAGE and type(info.value) is ValueError


@ACTIONS
def test_task_floating_point_errors_come_back_as_value_errors(spark, action):
    with pytest.raises(ValueError) as info:
        unwrap_errors(action(spark, lambda: FloatingPointError("overflow encountered in exp")))
    assert str(info.value) == "overflow encountered in exp"


@ACTIONS
def test_lost_resident_blocks_are_recognized(spark, action):
    def lost():
        from spark_nn.ml.training.errors import ResidentBlockLost

        return ResidentBlockLost(f"{RESIDENT_LOST}: /tmp/part-00001.x is gone")

    with pytest.raises(ResidentBlockLost) as info:
        unwrap_errors(action(spark, lost))
    assert str(info.value).endswith(f"{RESIDENT_LOST}: /tmp/part-00001.x is gone")


@ACTIONS
def test_other_errors_pass_through_unchanged(spark, action):
    raised = []

    def run():
        try:
            action(spark, lambda: RuntimeError("not ours to translate"))()
        except BaseException as e:
            raised.append(e)
            raise

    with pytest.raises(SPARK_TASK_ERRORS) as info:
        unwrap_errors(run)
    assert info.value is raised[0] and "RuntimeError: not ours to translate" in str(info.value)
    assert unwrap_errors(lambda a, b=0: a + b, 2, b=3) == 5


def test_the_errors_came_from_this_kind_of_session(spark):
    """Which form the errors above had (so a run shows which branch of unwrap_errors it tried)."""
    with pytest.raises(SPARK_TASK_ERRORS) as info:
        dataframe_action(spark, lambda: ValueError(MESSAGE))()
    assert isinstance(info.value, ConnectPythonException if CONNECT else PythonException)
    assert f"ValueError: {MESSAGE}" in str(info.value)
