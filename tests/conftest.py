import os
import sys
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


@pytest.fixture(scope="session")
def spark():
    """The one SparkSession every Spark test shares (started on first use): local[2,2] is
    local[2] (two cores) with one retry of a failed task, as a cluster would retry it."""
    from spark_nn.ml.session import require_java

    require_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (SparkSession.builder.master("local[2,2]").appName("spark_nn tests")
               .config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
               .config("spark.sql.shuffle.partitions", "2").config("spark.default.parallelism", "2")
               .config("spark.driver.memory", "2g")
               .config("spark.driver.extraJavaOptions", "-XX:TieredStopAtLevel=1")
               .config("spark.python.unix.domain.socket.enabled", "true").getOrCreate())
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="session")
def digits_dirs(tmp_path_factory):
    """scikit-learn's digits as PNG folders per class: (train dir, test dir), the digits_split halves."""
    from spark_nn.datasets import write_digits_folders

    root = tmp_path_factory.mktemp("digits")
    write_digits_folders(str(root / "train"), "train")
    write_digits_folders(str(root / "test"), "test")
    return str(root / "train"), str(root / "test")
