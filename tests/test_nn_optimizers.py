import numpy as np
import pytest
import torch

from spark_nn.nn.optimizers import (SGD, Adam, AdamW, Schedule, clip_by_global_norm, make_optimizer,
                                    optimizer_from_config)

CASES = [
    (lambda: SGD(lr=0.1), lambda p: torch.optim.SGD(p, lr=0.1)),
    (lambda: SGD(lr=0.1, momentum=0.9), lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9)),
    (lambda: SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
     lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)),
    (lambda: Adam(lr=0.01), lambda p: torch.optim.Adam(p, lr=0.01)),
    (lambda: Adam(lr=0.01, weight_decay=0.1), lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
    (lambda: AdamW(lr=0.01, weight_decay=0.1), lambda p: torch.optim.AdamW(p, lr=0.01, weight_decay=0.1)),
]


@pytest.mark.parametrize("ours,theirs", CASES)
def test_optimizer_matches_torch(rng, ours, theirs):
    p0 = rng.standard_normal(50).astype(np.float32)
    grads = [rng.standard_normal(50).astype(np.float32) for _ in range(6)]
    opt, p = ours(), p0.copy()
    tp = torch.nn.Parameter(torch.from_numpy(p0.astype(np.float64)))
    topt = theirs([tp])
    for g in grads:
        opt.step(p, g)
        tp.grad = torch.from_numpy(g.astype(np.float64))
        topt.step()
    np.testing.assert_allclose(p, tp.detach().numpy(), rtol=1e-5, atol=1e-6)


def test_state_dict_round_trip_continues_identically(rng):
    grads = [rng.standard_normal(20).astype(np.float32) for _ in range(6)]
    a, pa = Adam(lr=0.01), np.ones(20, np.float32)
    for g in grads[:3]:
        a.step(pa, g)
    b = optimizer_from_config(a.config())
    b.load_state_dict({k: v.copy() for k, v in a.state_dict().items()})
    pb = pa.copy()
    for g in grads[3:]:
        a.step(pa, g)
        b.step(pb, g)
    np.testing.assert_array_equal(pa, pb)


def test_clip_by_global_norm(rng):
    g = np.array([3.0, 4.0], np.float32)
    assert clip_by_global_norm(g, 1.0) == pytest.approx(5.0)
    np.testing.assert_allclose(g, [0.6, 0.8], rtol=1e-6)
    g = np.array([0.3, 0.4], np.float32)
    clip_by_global_norm(g, 1.0)
    np.testing.assert_array_equal(g, np.array([0.3, 0.4], np.float32))


def test_clipping_inside_step_does_not_modify_callers_gradient():
    opt, p, g = SGD(lr=1.0, clip_norm=1.0), np.zeros(2, np.float32), np.array([3.0, 4.0], np.float32)
    opt.step(p, g)
    np.testing.assert_allclose(p, [-0.6, -0.8], rtol=1e-6)
    np.testing.assert_array_equal(g, [3.0, 4.0])
    assert opt.last_grad_norm == pytest.approx(5.0)


def test_schedules():
    assert Schedule("step", gamma=0.5, step_size=10)(1.0, 25) == 0.25
    assert Schedule("exponential", gamma=0.9)(1.0, 2) == pytest.approx(0.81)
    cos = Schedule("cosine", total_steps=100, min_lr=0.1)
    assert cos(1.0, 0) == 1.0 and cos(1.0, 100) == pytest.approx(0.1) and cos(1.0, 50) == pytest.approx(0.55)
    assert Schedule(warmup_steps=4)(1.0, 1) == 0.5
    opt, p = SGD(lr=1.0, schedule={"kind": "step", "gamma": 0.1, "step_size": 1}), np.zeros(1, np.float32)
    assert [opt.step(p, np.ones(1, np.float32)) for _ in range(3)] == pytest.approx([1.0, 0.1, 0.01])


@pytest.mark.parametrize("bad,match", [
    (lambda: make_optimizer("rmsprop"), "optimizer must be one of"),
    (lambda: SGD(lr=0), "must be > 0"),
    (lambda: SGD(lr=-1.0), "must be > 0"),
    (lambda: SGD(momentum=1.5), "momentum must be in"),
    (lambda: Adam(beta1=1.0), "beta1 must be in"),
    (lambda: SGD(clip_norm=0), "clip_norm must be > 0"),
    (lambda: Schedule("linear"), "schedule must be one of"),
])
def test_bad_optimizer_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        bad()


@pytest.mark.parametrize("name, args", [("adam", {}), ("adamw", dict(weight_decay=0.1)),
                                        ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=1e-4)),
                                        ("sgd", dict(momentum=0.9))])
def test_a_training_step_allocates_no_array_the_size_of_the_model(rng, name, args):
    """The step scales the gradient in place and the optimizer works in buffers it keeps: a new
    model-sized array each step is memory the kernel maps and zeroes anew (9.5 ms of system time
    in a 320 ms ResNet-18 step). numpy reports its arrays to tracemalloc."""
    import tracemalloc

    from spark_nn.nn import Dense, Sequential

    net = Sequential([Dense(256), Dense(10)], (2048,))  # 0.5M parameters, 2 MB
    x, y = rng.standard_normal((4, 2048)).astype(np.float32), rng.integers(0, 10, 4)
    opt = make_optimizer(name, lr=0.01, **args)
    net.train_step(opt, x, y)  # the optimizer's state and buffers
    before = net.params.copy()
    tracemalloc.start()
    try:
        net.train_step(opt, x, y)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not np.array_equal(net.params, before)
    assert peak < net.params.nbytes // 4, (peak, net.params.nbytes)


@pytest.mark.parametrize("name, args", [("adam", dict(weight_decay=0.1)), ("adamw", dict(weight_decay=0.1)),
                                        ("sgd", dict(momentum=0.9, nesterov=True, weight_decay=0.1))])
def test_a_step_leaves_the_callers_gradient_as_it_is(rng, name, args):
    """Without clipping Adam reads the caller's gradient in place (no copy), SGD works on its
    own copy (weight decay and Nesterov add into it): either way the caller's array is unchanged
    and the step is bitwise the one with a clip that never bites (which copies)."""
    g = rng.standard_normal(1000).astype(np.float32)
    kept = g.copy()
    p0 = rng.standard_normal(1000).astype(np.float32)
    runs = []
    for clip in (None, 1e30):
        opt, p = make_optimizer(name, lr=0.01, clip_norm=clip, **args), p0.copy()
        for _ in range(3):
            opt.step(p, g)
        runs.append(p)
        np.testing.assert_array_equal(g, kept)
    np.testing.assert_array_equal(runs[0], runs[1])
