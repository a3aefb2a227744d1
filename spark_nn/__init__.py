"""spark_nn: CNN, RNN/LSTM/GRU and autoencoders as Spark ML estimators on C/OpenMP kernels."""
import os as _os

# SPARK_NN_ISA ('avx512', 'avx2', 'baseline') caps the vector instructions of our kernels;
# scipy's OpenBLAS, which our convolutions and recurrent steps call, gets the matching cap
# when it has not been loaded yet and OPENBLAS_CORETYPE is not set.
_ISA_CORETYPES = {"avx2": "Haswell", "baseline": "Prescott", "sse2": "Prescott", "none": "Prescott"}
if _os.environ.get("SPARK_NN_ISA", "").strip().lower() in _ISA_CORETYPES:
    _os.environ.setdefault("OPENBLAS_CORETYPE", _ISA_CORETYPES[_os.environ["SPARK_NN_ISA"].strip().lower()])

try:
    from spark_nn import _kernels  # noqa: F401  (the compiled C kernels; everything else needs them)
except ImportError as _e:
    # Typically Python imported the repository's source tree (the current directory comes first
    # on sys.path, also in PySpark's Python workers) while the built extension lives elsewhere.
    _here = _os.path.dirname(_os.path.abspath(__file__))
    raise ImportError(
        f"spark_nn's compiled kernels (spark_nn._kernels) are not built in {_here}: Python imported this "
        "source tree instead of an installed spark_nn. Build them in place with 'pip install -e .' run in "
        f"{_os.path.dirname(_here)}, or run Python from another directory so the installed package is used. "
        f"(import error: {_e})") from _e

from spark_nn.threads import get_num_threads, set_num_threads  # noqa: E402

_ISA_NAMES = {0: "baseline", 1: "avx2", 2: "avx512"}
if _kernels.isa_cap_level(_os.environ.get("SPARK_NN_ISA", "").strip().lower()) < 0:
    raise ValueError(f"SPARK_NN_ISA={_os.environ['SPARK_NN_ISA']!r} is not a known level; use 'avx512', 'avx2' or "
                     "'baseline' (or leave it unset for the CPU's best)")


def isa():
    """The vector instruction level the kernels use: 'avx512', 'avx2' or 'baseline' (the
    CPU's best, capped by $SPARK_NN_ISA, read once per process)."""
    return _ISA_NAMES[_kernels.isa_level()]


__version__ = "0.1.0"
__all__ = ["get_num_threads", "isa", "set_num_threads", "__version__"]
