"""Small data sets that ship with packages, for the demo, examples, tests and benchmarks."""
import numpy as np


def digits_split(seed=0, test_size=0.2):
    """scikit-learn's bundled 8x8 digits as float32 NCHW images in [0, 1], with a fixed
    stratified split: (x_train, x_test, y_train, y_test)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images / 16.0).astype(np.float32)[:, None]
    return train_test_split(x, d.target, test_size=test_size, stratify=d.target, random_state=seed)
