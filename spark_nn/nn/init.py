"""Deterministic weight initialisers: each takes a numpy Generator and a shape."""
import numpy as np


def zeros(rng, shape):
    return np.zeros(shape, dtype=np.float32)


def he_normal(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def glorot_uniform(rng, shape, fan_in, fan_out):
    limit = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape).astype(np.float32)


def orthogonal(rng, n):
    """An n x n orthogonal matrix (QR of a Gaussian, signs fixed so it is unique)."""
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    return (q * np.sign(np.diag(r))).astype(np.float32)


def dense_kernel(rng, shape, fan_in, fan_out, scheme):
    if scheme == "he":
        return he_normal(rng, shape, fan_in)
    if scheme == "glorot":
        return glorot_uniform(rng, shape, fan_in, fan_out)
    raise ValueError(f"kernel_init must be 'he' or 'glorot', got {scheme!r}")
