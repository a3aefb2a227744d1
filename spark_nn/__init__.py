"""spark_nn: CNN, RNN/LSTM/GRU and autoencoders as Spark ML estimators on C/OpenMP kernels."""
import os as _os

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

__version__ = "0.1.0"
__all__ = ["get_num_threads", "set_num_threads", "__version__"]
