"""The compiled kernels (spark_nn._kernels), loaded once, with the instruction-set cap applied
first and a clear error when they are not built. Every module that calls C imports them from
here; nothing here imports the rest of spark_nn.

SPARK_NN_ISA ('avx512bf16', 'avx512', 'avx2', 'baseline') caps the vector instructions of our
kernels ('avx512' leaves AVX512_BF16, the bf16 kernels' instruction, out);
scipy's OpenBLAS, which our convolutions and recurrent steps call, gets the matching cap when
it has not been loaded yet and OPENBLAS_CORETYPE is not set.
"""
import os

_ISA_CORETYPES = {"avx2": "Haswell", "baseline": "Prescott", "sse2": "Prescott", "none": "Prescott"}
_ISA_NAMES = {0: "baseline", 1: "avx2", 2: "avx512"}
_cap = os.environ.get("SPARK_NN_ISA", "").strip().lower()
if _cap in _ISA_CORETYPES:
    os.environ.setdefault("OPENBLAS_CORETYPE", _ISA_CORETYPES[_cap])

try:
    from spark_nn import _kernels  # noqa: F401  (the C kernels; everything else needs them)
except ImportError as _e:
    # Typically Python imported the repository's source tree (the current directory comes first
    # on sys.path, also in PySpark's Python workers) while the built extension lives elsewhere.
    _here = os.path.dirname(os.path.abspath(__file__))
    raise ImportError(
        f"spark_nn's compiled kernels (spark_nn._kernels) are not built in {_here}: Python imported this "
        "source tree instead of an installed spark_nn. Build them in place with 'pip install -e .' run in "
        f"{os.path.dirname(_here)}, or run Python from another directory so the installed package is used. "
        f"(import error: {_e})") from _e

if _kernels.isa_cap_level(_cap) < 0:
    raise ValueError(f"SPARK_NN_ISA={os.environ['SPARK_NN_ISA']!r} is not a known level; use 'avx512bf16', "
                     "'avx512', 'avx2' or 'baseline' (or leave it unset for the CPU's best)")


def isa():
    """The vector instruction level the kernels use: 'avx512', 'avx2' or 'baseline' (the
    CPU's best, capped by $SPARK_NN_ISA, read once per process)."""
    return _ISA_NAMES[_kernels.isa_level()]
