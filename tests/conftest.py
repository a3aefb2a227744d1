import faulthandler
import os
import sys
import warnings
import zlib

import numpy as np
import pytest

import spark_nn
from spark_nn import _kernels


@pytest.fixture
def rng(request):
    # one stream per test, stable across runs and independent of test order
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))


@pytest.fixture
def reference_mode():
    _kernels.set_reference(True)
    yield
    _kernels.set_reference(False)


@pytest.fixture
def threads():
    """Set the kernel thread count inside a test and restore it afterwards."""
    before = spark_nn.get_num_threads()
    yield spark_nn.set_num_threads
    spark_nn.set_num_threads(before)


# SPARK_NN_TEST_CONNECT=1 runs the Spark tests on a Spark Connect session (a local Connect
# server started in this process from pyspark[connect]); tests that need a classic session's
# SparkContext are marked classic_only and skipped there.
CONNECT = os.environ.get("SPARK_NN_TEST_CONNECT", "") not in ("", "0")

# Task retries. The shared session retries no task (local[2]): a task that fails fails its job,
# so a one-off task failure cannot hide behind a silent retry. The tests that need Spark to retry
# a task (a killed Python worker) are marked task_retries: they run in a session of their own with
# one retry (local[2,2]), in the pytest subprocess that test_ml_reliability.py starts for all of
# them with SPARK_NN_TEST_TASK_RETRIES=1, and are skipped in the shared session.
TASK_RETRIES = int(os.environ.get("SPARK_NN_TEST_TASK_RETRIES", "0"))
MASTER = f"local[2,{1 + TASK_RETRIES}]" if TASK_RETRIES else "local[2]"
RETRIES_LAUNCHER = "tests/test_ml_reliability.py::test_the_tests_that_need_task_retries_pass_in_a_session_that_retries"

# What a fault's flag file says (spark_nn.ml.training.faults): which tasks reached the step it
# named, by attempt number
KILLED_AND_RETRIED = ["killed attempt 0", "ran attempt 1"]  # Spark retried the task, once
# the round's job failed (the retries a session with retries makes fail too: the files are
# gone) and ran again, as a new job, on the data materialized again
DELETED_AND_RUN_AGAIN = (["deleted attempt 0"] + [f"ran attempt {n}" for n in range(1, 1 + TASK_RETRIES)]
                         + ["ran attempt 0"])


def clean_env(**extra):
    """This environment without the marks a Spark Connect session leaves in it (a child process
    would otherwise take its classic builder for a Connect one), its workers on this Python."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_CONNECT_MODE_ENABLED", "SPARK_REMOTE", "SPARK_LOCAL_REMOTE")}
    return dict(env, PYSPARK_PYTHON=sys.executable, **extra)


_SPARK_CONF = {
    "spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "2", "spark.default.parallelism": "2", "spark.driver.memory": "2g",
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    "spark.python.unix.domain.socket.enabled": "true", "spark.task.maxDirectResultSize": "512m",
    "spark.rpc.message.maxSize": "512",
}


def pytest_configure(config):
    config.addinivalue_line("markers", "classic_only: needs a classic session's SparkContext (skipped with "
                                       "SPARK_NN_TEST_CONNECT=1)")
    # CI runs the Spark tests three times (classic 4.x, Connect, classic 3.5); a test whose
    # proof does not depend on the session's kind or Spark's version (learning quality, block
    # layout, a benchmark in a session of its own) runs in the first only: the others pass
    # -m "not once"
    config.addinivalue_line("markers", "once: proves nothing that depends on the session's kind or Spark's "
                                       "version (the Connect and Spark 3.5 runs deselect it)")
    config.addinivalue_line("markers", "task_retries: needs Spark to retry a failed task; runs in a session "
                                       f"with one retry, started by {RETRIES_LAUNCHER} (skipped elsewhere)")


_STDERR = []  # the run's own stderr, kept before output capture takes the descriptor over


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session):
    _STDERR.append(os.fdopen(os.dup(2), "w"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """The backstop behind pytest-timeout's signal method, whose SIGALRM handler runs only when
    the main thread gets back to Python: a test still running a minute past its limit (stuck in
    native code) ends the run with every thread's stack, as the thread method would."""
    limit = None
    if item.config.pluginmanager.hasplugin("timeout") and _STDERR:
        from pytest_timeout import _get_item_settings

        limit = _get_item_settings(item).timeout
    if limit:
        faulthandler.dump_traceback_later(limit + 60, exit=True, file=_STDERR[0])
    try:
        yield
    finally:
        if limit:
            faulthandler.cancel_dump_traceback_later()


def pytest_collection_modifyitems(config, items):
    if CONNECT:
        skip = pytest.mark.skip(reason="needs a classic SparkSession (SPARK_NN_TEST_CONNECT=1)")
        for item in items:
            if "classic_only" in item.keywords:
                item.add_marker(skip)
    if not TASK_RETRIES:
        skip = pytest.mark.skip(reason=f"needs task retries: runs in a session that retries, started by "
                                       f"{RETRIES_LAUNCHER} (or: SPARK_NN_TEST_TASK_RETRIES=1 pytest -m task_retries)")
        for item in items:
            if "task_retries" in item.keywords:
                item.add_marker(skip)


def _connect_session_on_a_server_of_its_own(builder):
    """A Spark Connect session on a Connect server started here, in this process's classic
    session (builder's), on a free port: remote("local[...]") would start one on the default
    port, which the parent pytest's own Connect server holds when this is its subprocess."""
    import socket

    from pyspark.sql.connect.session import SparkSession as RemoteSparkSession

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = (builder.config("spark.plugins", "org.apache.spark.sql.connect.SparkConnectPlugin")
              .config("spark.connect.grpc.binding.address", "127.0.0.1")
              .config("spark.connect.grpc.binding.port", str(port)).getOrCreate())
    server.sparkContext.setLogLevel("ERROR")
    os.environ["SPARK_CONNECT_MODE_ENABLED"] = "1"  # what pyspark's remote("local") sets: is_remote() is true
    return server, RemoteSparkSession.builder.remote(f"sc://127.0.0.1:{port}").getOrCreate()


@pytest.fixture(scope="session")
def spark():
    """The one SparkSession every Spark test shares (started on first use): local[2], two cores
    and no retry of a failed task (local[2,2], one retry, where SPARK_NN_TEST_TASK_RETRIES=1); a
    Spark Connect session on a local server of the same master when SPARK_NN_TEST_CONNECT=1."""
    from spark_nn.ml.session import require_java

    require_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    server = None
    if CONNECT and not TASK_RETRIES:
        builder = SparkSession.builder.remote(MASTER).appName("spark_nn tests (Connect)")
    else:
        builder = SparkSession.builder.master(MASTER).appName("spark_nn tests")
    for key, value in _SPARK_CONF.items():
        builder = builder.config(key, value)
    with warnings.catch_warnings():  # Connect warns that static settings cannot change at run time
        warnings.simplefilter("ignore")
        if CONNECT and TASK_RETRIES:
            server, session = _connect_session_on_a_server_of_its_own(builder)
        else:
            session = builder.getOrCreate()
    if not CONNECT:
        session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if server is not None:
        server.stop()


@pytest.fixture(scope="session")
def local_dirs(spark):
    """The Spark local directories the Python workers see (where resident blocks go)."""
    import pyarrow as pa

    def dirs_of(batches):
        yield pa.RecordBatch.from_arrays([pa.array([os.environ.get("SPARK_LOCAL_DIRS", "")])], names=["d"])

    rows = spark.range(0, 2, 1, 2).mapInArrow(dirs_of, "d string").collect()
    found = sorted({d for row in rows for d in row.d.split(",") if d})
    assert found, "Spark set no SPARK_LOCAL_DIRS for its Python workers"
    return found


def resident_files(local_dirs, depth=2):
    """What spark_nn keeps under the local dirs: fits' folders (depth 1) or their files (2)."""
    import glob

    return [p for d in local_dirs for p in glob.glob(os.path.join(d, "spark_nn", *["*"] * depth))]


def set_job_property(spark, key, value):
    """A property every task of the following jobs sees (TaskContext.getLocalProperty): a local
    property on a classic session; on Connect a session setting, which Spark SQL hands to its
    queries' tasks the same way (settings named spark*)."""
    if CONNECT:
        if value is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, value)
    else:
        spark.sparkContext.setLocalProperty(key, value)


@pytest.fixture(scope="session")
def bright_pixels(spark):
    """96 rows of 6x6 images (pixel_data.bright_pixel_rows, 3 classes) as ml Vectors, in 2
    partitions, cached: the small CNN data of the reliability and pipelining tests."""
    from pyspark.ml.linalg import Vectors

    from pixel_data import bright_pixel_rows

    x, y = bright_pixel_rows(np.random.default_rng(5), 96)
    rows = [(Vectors.dense(a.tolist()), float(b)) for a, b in zip(x, y)]
    return spark.createDataFrame(rows, ["features", "label"]).repartition(2).cache()


def fit_under_fault(spark, fault, at, flag, fit):
    """fit()'s result with the fault switch 'fault' (spark_nn.ml.training.faults) set to fire at
    at = 'epoch:step:partition' (0-based) once, flag being its file; it must have fired, and the
    tasks that reached the step must be those a killed worker (KILLED_AND_RETRIED) or deleted
    resident files (DELETED_AND_RUN_AGAIN) lead to: how many attempts ran, and which."""
    from spark_nn.ml.training.faults import DELETE_PROPERTY, KILL_PROPERTY

    expected = {KILL_PROPERTY: KILLED_AND_RETRIED, DELETE_PROPERTY: DELETED_AND_RUN_AGAIN}[fault]
    set_job_property(spark, fault, f"{at}:{flag}")
    try:
        result = fit()
    finally:
        set_job_property(spark, fault, None)
    assert flag.exists(), f"{fault} at {at} did not fire"
    assert flag.read_text().splitlines() == expected, flag.read_text()
    return result


@pytest.fixture(scope="session")
def digits_dirs(tmp_path_factory):
    """scikit-learn's digits as PNG folders per class: (train dir, test dir), the digits_split halves."""
    from spark_nn.datasets import write_digits_folders

    root = tmp_path_factory.mktemp("digits")
    write_digits_folders(str(root / "train"), "train")
    write_digits_folders(str(root / "test"), "test")
    return str(root / "train"), str(root / "test")
