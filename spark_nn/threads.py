"""Thread control for the kernels.

Our OpenMP threads do all the parallel work and call sgemm inside their regions, so the BLAS
library behind scipy.linalg.cython_blas is pinned to one thread; otherwise OpenMP x BLAS threads
would multiply. The pinning happens lazily, in the process that runs kernels (PySpark forks its
Python workers, and nothing here starts a thread pool at import time).
"""
import os
import threading

from spark_nn._native import _kernels

_pinned_pid = None
_lock = threading.Lock()


def set_num_threads(n):
    """Number of OpenMP threads every kernel uses (default: $OMP_NUM_THREADS, else all cores)."""
    n = int(n)
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _kernels.set_num_threads(n)


def get_num_threads():
    """The thread count set (or the default). See threads_in_use() for the one kernels use."""
    return _kernels.get_num_threads()


def threads_in_use():
    """Threads the kernels use now: 1 in a process forked after its parent ran multi-threaded
    kernels, since GNU OpenMP cannot start thread teams there."""
    return _kernels.threads_now()


def _scipy_blas_controllers():
    from threadpoolctl import ThreadpoolController

    blas = ThreadpoolController().select(user_api="blas").lib_controllers
    # pip wheels: scipy ships its own OpenBLAS (scipy.libs/ or scipy_openblas32/), separate from
    # numpy's; elsewhere (conda, distro builds) both share one library and we pin that one.
    own = [c for c in blas if "scipy" in os.path.dirname(c.filepath)]
    return own or blas


def ensure_blas_pinned():
    """Pin scipy's BLAS to one thread in this process (once per process, fork-aware)."""
    global _pinned_pid
    pid = os.getpid()
    if _pinned_pid == pid:
        return
    with _lock:
        if _pinned_pid == pid:
            return
        try:
            for c in _scipy_blas_controllers():
                c.set_num_threads(1)
        except Exception:  # threadpoolctl cannot see the library: only speed is at stake
            pass
        _pinned_pid = pid


def flush_denormals(on=True):
    """Whether the kernels treat denormal floats (below 1.2e-38) as zero (x86 FTZ/DAZ; on by
    default, as in oneDNN): on x86 each operation on a denormal takes a microcode assist, which
    made the backward pass of a recurrent net 4x slower. Each kernel call sets it in the calling
    thread and restores that thread's setting on return (numpy and Python there are not
    affected); the kernels' OpenMP threads keep it. SPARK_NN_DENORMALS=keep turns it off for a
    process. Returns whether the CPU has the switch."""
    return _kernels.flush_denormals(bool(on))
