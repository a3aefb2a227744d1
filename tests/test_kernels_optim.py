"""The optimizer kernels (csrc/optim.c): the fused Adam update and the sum of squares behind
gradient-norm clipping."""
import numpy as np
import pytest


@pytest.mark.parametrize("name,kw", [("adam", {}), ("adam", {"weight_decay": 0.01}), ("adamw", {"weight_decay": 0.05})])
@pytest.mark.parametrize("n", [1, 13, (1 << 20) + 3])  # the last one runs on a thread team
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


@pytest.mark.parametrize("n", [0, 1, 9, 16384, 16385, 100003, (1 << 20) + 5])
def test_sum_of_squares_kernel(rng, n, threads):
    from spark_nn import _kernels

    x = rng.standard_normal(n).astype(np.float32)
    ref = float(np.sum(np.square(x, dtype=np.float64)))
    threads(1)
    one = _kernels.sum_sq(x)
    threads(2)
    assert _kernels.sum_sq(x) == one
    assert one == pytest.approx(ref, rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("l2,decay", [(0.0, 1.0), (0.01, 1.0), (0.0, 0.999)])
@pytest.mark.parametrize("n", [1, 300, 1_500_007])  # the last one: over 2^20 active entries, a thread team
def test_adam_at_the_active_entries_gives_the_dense_update_bits_there_and_nothing_elsewhere(rng, l2, decay, n,
                                                                                           threads):
    from spark_nn import kernels as K

    p, m, v = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    v = np.abs(v)
    g = rng.standard_normal(n).astype(np.float32)
    index = np.flatnonzero(rng.random(n) < 0.7).astype(np.int64) if n > 1 else np.array([0], np.int64)
    dense = [a.copy() for a in (p, m, v)]
    K.adam_update(dense[0], g, dense[1], dense[2], np.float32(1e-3), 0.9, 0.999, 1e-8, l2, decay)
    for nt in (1, 2):
        threads(nt)
        lazy = [a.copy() for a in (p, m, v)]
        K.adam_update_at(lazy[0], g[index], lazy[1], lazy[2], index, np.float32(1e-3), 0.9, 0.999, 1e-8, l2, decay)
        rest = np.ones(n, bool)  # the entries not in index (np.setdiff1d took 3.4 s at n = 1.5M)
        rest[index] = False
        for before, d, a in zip((p, m, v), dense, lazy):
            assert a[index].tobytes() == d[index].tobytes()
            assert a[rest].tobytes() == before[rest].tobytes()


@pytest.mark.parametrize("index,match", [(np.array([2, 1]), "sorted"), (np.array([0, 9]), r"\[0, 9\)"),
                                         (np.array([1.0]), "int64"), (np.array([-1, 3]), "sorted")])
def test_adam_at_refuses_bad_indices(index, match):
    from spark_nn import kernels as K

    p = np.zeros(9, np.float32)
    with pytest.raises(ValueError, match=match):
        K.adam_update_at(p, np.zeros(len(index), np.float32), p.copy(), p.copy(), index, np.float32(1e-3),
                         0.9, 0.999, 1e-8, 0.0, 1.0)
