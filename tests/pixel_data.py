"""Small learnable image data for the Spark trainer tests."""
import numpy as np


def bright_pixel_rows(rng, n, size=6, classes=3):
    """(x, y): n noise images of size x size (flattened float32), each with one bright pixel
    that says its class, so a tiny CNN learns them in a few epochs."""
    x = rng.standard_normal((n, size * size)).astype(np.float32)
    y = rng.integers(0, classes, n)
    x[np.arange(n), y] += 3.0
    return x, y
