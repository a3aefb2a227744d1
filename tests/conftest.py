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
