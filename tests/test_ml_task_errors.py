"""Errors raised in tasks, as the driver sees them (spark_nn.ml.training.errors), in both forms
Spark delivers a task's traceback: a PythonException (Spark 4) and a Py4JJavaError whose text
holds it (RDD actions on Spark 3.5), and Spark Connect's PythonException. No Spark session needed: the texts are Spark's shapes."""
import pytest
from py4j.protocol import Py4JJavaError
from pyspark.errors import PythonException

from spark_nn.ml.training.errors import RESIDENT_LOST, ResidentBlockLost, unwrap_errors

PY_TRACE = ('Traceback (most recent call last):\n  File "/x/worker.py", line 1, in main\n'
            "{line}\n")
JAVA_TEXT = ("An error occurred while calling z:org.apache.spark.api.python.PythonRDD.collectAndServe.\n"
             ": org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 3.0 failed 1 "
             "times, most recent failure: Lost task 0.0 in stage 3.0 (TID 7) (127.0.0.1 executor driver): "
             "org.apache.spark.api.python.PythonException: " + PY_TRACE +
             "\n\tat org.apache.spark.api.python.BasePythonRunner$ReaderIterator.handlePythonException(x.scala:1)\n")


class JavaError(Py4JJavaError):
    """A Py4JJavaError with a fixed text (a real one asks the JVM for it)."""

    def __init__(self, text):
        Exception.__init__(self, text)
        self.text = text

    def __str__(self):
        return self.text


def connect_error(text):
    """A task's error as a Spark Connect client receives it."""
    connect = pytest.importorskip("pyspark.errors.exceptions.connect")
    return connect.PythonException(message=text)


FORMS = pytest.mark.parametrize("wrap", [lambda t: PythonException(message=t), JavaError, connect_error],
                                ids=["spark4", "py4j", "connect"])


def raising(error):
    def action():
        raise error
    return action


@FORMS
def test_task_value_errors_come_back_with_their_own_message(wrap):
    line = "ValueError: features column 'x' has NaN or infinite values in row 2"
    with pytest.raises(ValueError) as info:
        unwrap_errors(raising(wrap((JAVA_TEXT if wrap is JavaError else PY_TRACE).format(line=line))))
    assert str(info.value) == "features column 'x' has NaN or infinite values in row 2"


@FORMS
def test_lost_resident_blocks_are_recognized(wrap):
    line = f"spark_nn.ml.training.errors.ResidentBlockLost: {RESIDENT_LOST}: /tmp/part-00001.x is gone"
    with pytest.raises(ResidentBlockLost, match="part-00001.x is gone"):
        unwrap_errors(raising(wrap((JAVA_TEXT if wrap is JavaError else PY_TRACE).format(line=line))))


def test_other_errors_pass_through_unchanged():
    error = JavaError(JAVA_TEXT.format(line="MemoryError"))
    with pytest.raises(JavaError) as info:
        unwrap_errors(raising(error))
    assert info.value is error
    assert unwrap_errors(lambda a, b=0: a + b, 2, b=3) == 5
