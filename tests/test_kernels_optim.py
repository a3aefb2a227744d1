"""The optimizer kernels (csrc/optim.c): the fused Adam update and the sum of squares behind
gradient-norm clipping."""
import numpy as np
import pytest


@pytest.mark.parametrize("name,kw", [("adam", {}), ("adam", {"weight_decay": 0.01}), ("adamw", {"weight_decay": 0.05})])
@pytest.mark.parametrize("n", [1, 13, 70001])
def test_fused_adam_kernel_equals_the_numpy_reference_bitwise(rng, name, kw, n, threads):
    """csrc/optim.c's one-pass update against Adam._update_reference (numpy), for any thread count."""
    from spark_nn.nn.optimizers import make_optimizer

    results = []
    for nt, fused in ((1, True), (2, True), (1, False)):
        threads(nt)
        gen = np.random.default_rng(5)
        p = gen.standard_normal(n).astype(np.float32)
        opt = make_optimizer(name, lr=3e-3, clip_norm=1.0, **kw)
        if not fused:
            opt._update = opt._update_reference
        for _ in range(4):
            opt.step(p, gen.standard_normal(n).astype(np.float32))
        results.append((p, opt.m, opt.v, opt.last_grad_norm))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n", [0, 1, 9, 16384, 16385, 100003])
def test_sum_of_squares_kernel(rng, n, threads):
    from spark_nn import _kernels

    x = rng.standard_normal(n).astype(np.float32)
    ref = float(np.sum(np.square(x, dtype=np.float64)))
    threads(1)
    one = _kernels.sum_sq(x)
    threads(2)
    assert _kernels.sum_sq(x) == one
    assert one == pytest.approx(ref, rel=1e-12, abs=1e-300)
