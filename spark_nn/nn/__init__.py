"""Layer graph, losses and optimizers on the spark_nn kernels: numpy only, usable without Spark."""
from spark_nn.nn import builders
from spark_nn.nn.layers import (GRU, LSTM, Activation, Conv2D, Dense, Dropout, Embedding, Flatten, MaxPool2D,
                                SimpleRNN)
from spark_nn.nn.losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy
from spark_nn.nn.model import Sequential
from spark_nn.nn.optimizers import SGD, Adam, AdamW, Schedule, make_optimizer
from spark_nn.nn.persist import load_model, save_model

__all__ = ["Activation", "Adam", "AdamW", "BinaryCrossEntropy", "Conv2D", "Dense", "Dropout", "Embedding",
           "Flatten", "GRU", "LSTM", "MaxPool2D", "MeanSquaredError", "SGD", "Schedule", "Sequential", "SimpleRNN",
           "SoftmaxCrossEntropy", "builders", "load_model", "make_optimizer", "save_model"]
