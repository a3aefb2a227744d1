"""Freed memory kept for the next training step (glibc's malloc).

A training step allocates its activations and gradients and frees them when it ends; the next
step allocates the same again. glibc hands a freed heap top back to the kernel once it exceeds
a trim threshold that follows its mmap threshold (128 KB, rising to 32 MB with the largest
block freed), so each step maps those pages again and the kernel zeroes them one by one. On
the seed CNN (batch 32, 2 threads) that was 1700 page faults and 3.7 ms of system time in a
6.1 ms step; with freed memory kept the step takes 3.5 ms (benchmarks/RESULTS.md).

keep_freed_memory() sets glibc's thresholds once per process: arrays up to HEAP_BLOCK_BYTES
come from the heap and up to KEEP_BYTES of freed heap stay with the process. It then holds
the peak of a step's arrays between steps, which the next step needs again anyway. Sequential
calls it when it is built, so the processes that train or score do (a Spark task's worker
builds its network). SPARK_NN_MALLOC=system leaves the allocator as it is; with other C
libraries (musl, macOS) there is nothing to set.
"""
import ctypes
import os

HEAP_BLOCK_BYTES = 32 << 20  # M_MMAP_THRESHOLD: glibc's largest on 64-bit
KEEP_BYTES = 1 << 30  # M_TRIM_THRESHOLD
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_state = {"pid": None, "kept": False}


def keep_freed_memory():
    """Sets glibc's malloc to keep freed memory (see the module); once per process. Returns
    whether it is set."""
    if _state["pid"] == os.getpid():
        return _state["kept"]
    _state["pid"], _state["kept"] = os.getpid(), False
    if os.environ.get("SPARK_NN_MALLOC", "").strip().lower() == "system":
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # glibc only: mallopt's parameters are glibc's
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _state["kept"] = bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BLOCK_BYTES)) and bool(mallopt(_M_TRIM_THRESHOLD, KEEP_BYTES))
    return _state["kept"]
