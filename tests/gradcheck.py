"""Shared checks for the kernel tests.

Tolerances, and why:
- against torch in float64 (the exact answer up to float64 rounding): rtol 1e-4 as the issue
  asks, plus atol 1e-5 x the largest reference magnitude. Our float32 sums of K terms carry
  relative errors of about 6e-8 * sqrt(K) (< 5e-6 for every K used here), so the bound has a
  20x margin, while any indexing or formula mistake gives errors of order 1.
- finite differences: central differences of our own float32 forward, accumulated in float64,
  along random directions; the actual (float32-rounded) perturbation is used, and the bound
  is 1e-3 relative plus the forward's rounding noise.
"""
import numpy as np

RTOL = 1e-4
ATOL_SCALE = 1e-5


def assert_close(name, ours, ref, rtol=RTOL, atol_scale=ATOL_SCALE):
    ref = np.asarray(ref, dtype=np.float64)
    ours = np.asarray(ours, dtype=np.float64)
    assert ours.shape == ref.shape, f"{name}: shape {ours.shape} != {ref.shape}"
    scale = max(float(np.abs(ref).max()), 1e-30)
    np.testing.assert_allclose(ours, ref, rtol=rtol, atol=atol_scale * scale, err_msg=name)


def t64(a, grad=True):
    import torch

    return torch.tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64, requires_grad=grad)


def check_directional(loss, arrays, grads, rng, eps=1e-2, trials=2, rtol=1e-3):
    """For each named float32 array (perturbed in place), compare
    loss(a + e v) - loss(a - e v) with <grad, (a + e v) - (a - e v)>."""
    for name, a in arrays.items():
        g = np.asarray(grads[name], dtype=np.float64)
        for _ in range(trials):
            v = rng.standard_normal(a.shape)
            v /= np.linalg.norm(v)
            orig = a.copy()
            plus = (orig + eps * v).astype(np.float32)
            minus = (orig - eps * v).astype(np.float32)
            a[...] = plus
            lp = loss()
            a[...] = minus
            lm = loss()
            a[...] = orig
            step = plus.astype(np.float64) - minus.astype(np.float64)
            analytic = float(np.sum(g * step))
            numeric = lp - lm
            noise = 1e-6 * (abs(lp) + abs(lm))
            assert abs(numeric - analytic) <= rtol * abs(analytic) + noise, (
                f"{name}: finite difference {numeric:.8g} vs gradient {analytic:.8g}")


def weighted_sum(out, r):
    return float(np.sum(np.asarray(out, dtype=np.float64) * r))


def both_paths(fn):
    """(fast result, scalar reference result) of fn(): the same call with the kernels' reference
    mode (plain loops, one thread) switched on for the second."""
    from spark_nn import _kernels

    fast = fn()
    _kernels.set_reference(True)
    try:
        slow = fn()
    finally:
        _kernels.set_reference(False)
    return fast, slow
