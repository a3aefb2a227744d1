"""In-process training reaches the accuracies the layer graph promises (digits from
scikit-learn; the memory task is generated here)."""
import numpy as np
import pytest

from spark_nn.datasets import digits_split
from spark_nn.nn import builders


def recall_task(n, steps=8, vocab=8, seed=0):
    """Label 1 when the first token appears again in one of the last two positions; it never
    appears in between, so a model must carry it across the whole sequence."""
    rng = np.random.default_rng(seed)
    x = rng.integers(1, vocab, (n, steps))
    y = rng.integers(0, 2, n)
    for i in range(n):
        key, rest = x[i, 0], x[i, 1:]
        rest[rest == key] = key % (vocab - 1) + 1
        if y[i]:
            x[i, steps - 1 - rng.integers(0, 2)] = key
    return x, y


def test_digits_cnn_reaches_98_percent():
    # speed is measured, not asserted: benchmarks/compare_torch.py times this CNN's epoch
    # against torch (a wall-time bar here failed on a loaded machine, not on slower code)
    xtr, xte, ytr, yte = digits_split()
    model = builders.cnn([32, 64, 10], 10, (1, 8, 8), seed=0)
    epochs, batch = 30, 32
    model.fit(xtr, ytr, epochs=epochs, batch_size=batch, optimizer="adamw", lr=3e-3, weight_decay=0.05,
              schedule={"kind": "cosine", "total_steps": epochs * -(-len(xtr) // batch)})
    accuracy = model.evaluate(xte, yte)[1]
    # on the 360 test images at model seeds 0, 1, 2 (digits_split's fixed split): 0.9917, 0.9917,
    # 0.9861 (mean 0.9898, standard error of the mean 0.0019): the bar, 0.98, is below mean - 3 SE
    # = 0.9843 (seeds 3, 4, 5, run as a check: 0.9833, 0.9889, 0.9889)
    assert accuracy >= 0.98, accuracy


# measured on the 1000 held-out rows at model seeds 0, 1, 2: lstm 0.980, 0.998, 0.999 (mean 0.9923,
# standard error of the mean 0.0062, mean - 3 SE 0.9738: bar 0.95); gru 0.998, 0.998, 0.993 (mean
# 0.9963, SE 0.0017, mean - 3 SE 0.9913: bar 0.9); rnn 0.933, 0.780, 0.867 (mean 0.8600, SE 0.0443,
# mean - 3 SE 0.7271: bar 0.7; 0.85 failed seed 1)
@pytest.mark.parametrize("cell,bound", [("lstm", 0.95), ("gru", 0.9), ("rnn", 0.7)])
def test_recurrent_nets_learn_a_task_that_needs_memory(cell, bound):
    xtr, ytr = recall_task(3000, seed=0)
    xte, yte = recall_task(1000, seed=1)
    model = builders.rnn([32, 2], 2, (8,), cell=cell, vocab_size=8, embedding_dim=16, seed=0)
    model.fit(xtr, ytr, epochs=30, batch_size=32, optimizer="adam", lr=3e-3, clip_norm=5.0)
    accuracy = model.evaluate(xte, yte)[1]
    assert accuracy >= bound, accuracy  # chance is 0.5


def test_dense_autoencoder_reconstructs_digits():
    xtr, xte, _, _ = digits_split()
    xtr, xte = xtr.reshape(len(xtr), -1), xte.reshape(len(xte), -1)
    model, code_index = builders.autoencoder(64, [32, 16], activation="relu", output_activation="sigmoid", seed=0)
    model.fit(xtr, xtr, epochs=40, batch_size=32, optimizer="adam", lr=3e-3)
    mse = model.evaluate(xte, xte)[0]
    baseline = float(np.mean((xte - xtr.mean(0)) ** 2))  # predicting the mean image: 0.074
    # test mse at model seeds 0, 1, 2: 0.0145, 0.0139, 0.0116 (mean 0.0133, standard error of the
    # mean 0.0009, mean + 3 SE 0.0159): the bar, 0.02, is above it
    assert mse < 0.02 < baseline, (mse, baseline)
    assert model.layers[code_index].output_shape == (16,)
