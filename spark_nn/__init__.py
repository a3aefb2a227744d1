"""spark_nn: CNN, RNN/LSTM/GRU and autoencoders as Spark ML estimators on C/OpenMP kernels."""
from spark_nn._native import isa
from spark_nn.threads import get_num_threads, set_num_threads

__version__ = "0.1.0"
__all__ = ["get_num_threads", "isa", "set_num_threads", "__version__"]
