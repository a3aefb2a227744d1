"""Layer graph, losses and optimizers on the spark_nn kernels: numpy only, usable without Spark."""
from spark_nn.nn import builders
from spark_nn.nn.layers import (GRU, LSTM, Activation, AvgPool2D, BatchNorm1D, BatchNorm2D, Conv2D, Dense, Dropout,
                                Embedding, Flatten, GlobalAvgPool2D, MaxPool2D, Residual, SimpleRNN, Standardize)
from spark_nn.nn.losses import BinaryCrossEntropy, MeanSquaredError, SoftmaxCrossEntropy
from spark_nn.nn.model import Sequential
from spark_nn.nn.optimizers import SGD, Adam, AdamW, Schedule, make_optimizer
from spark_nn.nn.persist import load_model, save_model

__all__ = ["Activation", "Adam", "AdamW", "AvgPool2D", "BatchNorm1D", "BatchNorm2D", "BinaryCrossEntropy", "Conv2D",
           "Dense", "Dropout", "Embedding", "Flatten", "GRU", "GlobalAvgPool2D", "LSTM", "MaxPool2D", "MeanSquaredError",
           "Residual", "SGD", "Schedule", "Sequential", "SimpleRNN", "SoftmaxCrossEntropy", "Standardize", "builders",
           "load_model", "make_optimizer", "save_model"]
