"""Errors raised in a fit's tasks, as the driver sees them: a task's ValueError comes back as a
ValueError with the task's own message (not a Java stack trace), and a lost resident block as
ResidentBlockLost, which makes the trainer materialize the data again.

A task's Python traceback reaches the driver inside a PythonException (Spark 4) or, from RDD
actions on Spark 3.5, inside a Py4JJavaError whose text holds the same traceback; both are
read the same way."""
from py4j.protocol import Py4JJavaError
from pyspark.errors import PythonException

RESIDENT_LOST = "spark_nn: resident training block lost"


class ResidentBlockLost(RuntimeError):
    """A step found no file behind a resident block's handle (deleted, or its disk lost)."""


def unwrap_errors(fn, *args, **kwargs):
    """Runs a Spark action, translating the errors its tasks raised (see the module's doc)."""
    try:
        return fn(*args, **kwargs)
    except (PythonException, Py4JJavaError) as e:
        text = str(e)
        if RESIDENT_LOST in text:
            raise ResidentBlockLost(next(line for line in text.splitlines() if RESIDENT_LOST in line)) from None
        for line in reversed(text.splitlines()):
            if line.startswith(("ValueError: ", "FloatingPointError: ")):
                raise ValueError(line.split(": ", 1)[1]) from None
        raise
