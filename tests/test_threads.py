import multiprocessing
import os
import subprocess
import sys

import numpy as np
from threadpoolctl import threadpool_info

import spark_nn
from spark_nn import kernels as K
from spark_nn.threads import _scipy_blas_controllers, threads_in_use


def _conv_in_child(seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((16, 3, 20, 20)).astype(np.float32)
    w = rng.standard_normal((8, 3, 3, 3)).astype(np.float32)
    y = K.conv2d_forward(x, w, padding=1)
    return os.getpid(), float(np.abs(y).sum()), threads_in_use()


def test_kernels_run_in_a_forked_child_after_the_parent_used_openmp(threads):
    """A child of a process that already ran OpenMP teams must neither hang nor compute
    differently; it runs on one thread (GNU OpenMP cannot start teams there)."""
    threads(2)
    _, parent_sum, parent_threads = _conv_in_child(0)
    assert parent_threads == 2
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(1) as pool:
        pid, child_sum, child_threads = pool.apply_async(_conv_in_child, (0,)).get(timeout=60)
    assert pid != os.getpid()
    assert child_sum == parent_sum
    assert child_threads == 1


FORK_BEFORE_USE = """
import os, sys
import numpy as np
import spark_nn
from spark_nn import kernels as K
spark_nn.set_num_threads(2)
pid = os.fork()
if pid == 0:
    x = np.ones((8, 2, 12, 12), np.float32); w = np.ones((4, 2, 3, 3), np.float32)
    K.conv2d_forward(x, w)
    print("child threads", spark_nn.threads.threads_in_use(), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_child_forked_before_any_kernel_keeps_its_threads():
    """The PySpark case: workers are forked from a daemon that never ran a kernel."""
    out = subprocess.run([sys.executable, "-c", FORK_BEFORE_USE], capture_output=True, text=True,
                         timeout=60)
    assert "child threads 2" in out.stdout, out.stdout + out.stderr


def test_scipy_blas_is_pinned_to_one_thread_after_a_kernel_call():
    K.dense_forward(np.ones((4, 4), np.float32), np.ones((4, 4), np.float32))
    controllers = _scipy_blas_controllers()
    assert controllers, threadpool_info()
    assert all(c.num_threads == 1 for c in controllers)


def test_set_num_threads_round_trips(threads):
    threads(3)
    assert spark_nn.get_num_threads() == 3


def test_kernels_flush_denormals_to_zero_and_leave_the_callers_setting_alone():
    """FTZ/DAZ inside every kernel call, restored on return; SPARK_NN_DENORMALS=keep turns it off."""
    from spark_nn.threads import flush_denormals

    tiny = np.full(16, 1e-39, dtype=np.float32)  # denormal in float32
    assert np.all(tiny != 0) and np.all(tiny * np.float32(1.0) != 0)
    try:
        assert flush_denormals(True)
        assert np.all(K.activation_forward(tiny, "relu") == 0)  # read as zero (DAZ)
        assert np.all(tiny * np.float32(1.0) != 0)  # numpy in this thread is not affected
        flush_denormals(False)
        assert np.all(K.activation_forward(tiny, "relu") == tiny)
    finally:
        flush_denormals(True)
    probe = ("import numpy as np; from spark_nn import kernels as K; "
             "print(bool(K.activation_forward(np.full(4, 1e-39, np.float32), 'relu')[0] == 0))")
    for env, flushed in (({}, "True"), ({"SPARK_NN_DENORMALS": "keep"}, "False")):
        out = subprocess.run([sys.executable, "-c", probe], env=dict(os.environ, **env), capture_output=True,
                             text=True, check=True).stdout.strip()
        assert out == flushed, (env, out)
