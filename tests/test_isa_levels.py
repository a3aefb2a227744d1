"""The kernels at every vector instruction level this CPU has (SPARK_NN_ISA caps it): the
kernel tests pass at each, our elementwise loops compute the same bits at each, and the
recurrent kernels (whose packed GEMM uses FMA where the level has it) agree closely."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from gradcheck import assert_close
from spark_nn import _kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVELS = ["baseline", "avx2", "avx512"][: _kernels.isa_level() + 1]  # the ones this CPU runs

# one run of the recurrent cells (with padding), the Adam update, the sum of squares, the
# uint8 minibatch gather, batch norm (plane layout with a remainder, column layout, (N, C)), the
# activations after relu (special values included: NaN compares equal to NaN in
# assert_array_equal), average pooling, global average pooling and depthwise convolutions
# (forward and backward)
PROBE = """
import sys, numpy as np, spark_nn
from spark_nn import kernels as K, _kernels
assert spark_nn.isa() == sys.argv[2], (spark_nn.isa(), sys.argv[2])
rng = np.random.default_rng(0)
n, t, d, h = 37, 7, 5, 19
x = rng.standard_normal((n, t, d)).astype(np.float32)
dhs = rng.standard_normal((n, t, h)).astype(np.float32)
spans = np.stack([rng.integers(0, 3, n), rng.integers(4, t + 1, n)], 1).astype(np.int32)
out = {}
for kind, g in (("rnn", 1), ("lstm", 4), ("gru", 3)):
    w = [(rng.standard_normal(s) * 0.4).astype(np.float32) for s in ((g * h, d), (g * h, h), (g * h,), (g * h,))]
    if kind == "rnn":
        hs = K.rnn_forward(x, *w, activation="relu", spans=spans); saved = ()
        grads = K.rnn_backward(x, w[0], w[1], hs, dhs, activation="relu", spans=spans)
    elif kind == "lstm":
        hs, *saved = K.lstm_forward(x, *w, spans=spans)
        grads = K.lstm_backward(x, w[0], w[1], hs, *saved, dhs, spans=spans)
    else:
        hs, *saved = K.gru_forward(x, *w, spans=spans)
        grads = K.gru_backward(x, w[0], w[1], hs, *saved, dhs, spans=spans)
    out[kind + "_hs"] = hs
    out.update({f"{kind}_{k}": v for k, v in grads.items() if v is not None})
p, g, m, v = (rng.standard_normal(100003).astype(np.float32) for _ in range(4))
v = np.abs(v)
_kernels.adam_upd(p, g, m, v, 1e-3, 0.9, 0.999, 1e-8, 0.01, 1.0)
out.update(p=p, m=m, v=v, sumsq=np.array(_kernels.sum_sq(g)))
pixels = rng.integers(0, 256, (300, 3, 17, 13), dtype=np.uint8)
out["gather"] = K.gather_scaled(pixels, rng.integers(0, 300, 200))
for i, shape in enumerate(((5, 3, 7, 5), (6, 20, 3, 3), (33, 300), (8, 4, 50, 41))):
    xb = (rng.standard_normal(shape) * 2 + 1).astype(np.float32)
    dyb = rng.standard_normal(shape).astype(np.float32)
    c = shape[1]
    gb, bb, rmb = (rng.standard_normal(c).astype(np.float32) for _ in range(3))
    rvb = rng.uniform(0.5, 2, c).astype(np.float32)
    for training in (True, False):
        y, mean, invstd = K.batchnorm_forward(xb, gb, bb, rmb, rvb, training)
        grads = K.batchnorm_backward(xb, gb, mean, invstd, dyb, training)
        tag = f"bn{i}{'t' if training else 'e'}"
        out.update({f"{tag}_{k}": v for k, v in zip(("y", "mean", "invstd", "dx", "dgamma", "dbeta"),
                                                   (y, mean, invstd) + grads)})
    out[f"bn{i}_running"] = np.concatenate([rmb, rvb])
xa = np.concatenate([3 * rng.standard_normal(40000), np.linspace(-30, 30, 20001),
                     [0, -0.0, 1e-30, 88.5, -88.5, 1e30, -1e30, np.nan, np.inf, -np.inf]]).astype(np.float32)
ga = rng.standard_normal(xa.shape).astype(np.float32)
for name in ("relu6", "leaky_relu", "silu", "gelu", "gelu_tanh"):
    ya = K.activation_forward(xa, name)
    out["act_" + name] = ya
    out["dact_" + name] = K.activation_backward(ya, ga, name, x=xa)
xp = rng.standard_normal((3, 5, 29, 23)).astype(np.float32)
for k, s, p in ((2, 2, 0), (3, 2, 1), (3, 1, 1), ((4, 3), 3, (2, 1))):
    for inc in (True, False):
        key = f"avgpool{k}_{s}_{p}_{inc}".replace(" ", "")
        yp = K.avgpool2d_forward(xp, k, s, p, inc)
        out[key] = yp
        out["d" + key] = K.avgpool2d_backward(np.cos(yp), xp.shape, k, s, p, inc)
xg = rng.standard_normal((7, 9, 13, 11)).astype(np.float32)
out["gap"] = K.global_avgpool_forward(xg)
out["dgap"] = K.global_avgpool_backward(out["gap"], xg.shape)
for name, (c, m, k, s) in {"s1": (5, 1, 3, 1), "s2": (6, 2, 3, 2), "k5": (3, 1, 5, 2)}.items():  # depthwise
    xc = rng.standard_normal((3, c, 17, 13)).astype(np.float32)
    wc = rng.standard_normal((c * m, 1, k, k)).astype(np.float32)
    yc = K.conv2d_forward(xc, wc, wc[:, 0, 0, 0].copy(), s, k // 2, groups=c)
    dxc, dwc, dbc = K.conv2d_backward(xc, wc, rng.standard_normal(yc.shape).astype(np.float32), s, k // 2, groups=c)
    out.update({f"depthwise_{name}_y": yc, f"depthwise_{name}_dx": dxc, f"depthwise_{name}_dw": dwc,
                f"depthwise_{name}_db": dbc})
np.savez(sys.argv[1], **out)
"""


def _env(level, **extra):
    # scipy's OpenBLAS keeps one kernel set, so any difference comes from our loops
    return dict(os.environ, SPARK_NN_ISA=level, OPENBLAS_CORETYPE="Prescott", **extra)


def test_levels_compute_the_same_results(tmp_path):
    results = {}
    for level in LEVELS:
        path = str(tmp_path / f"{level}.npz")
        run = subprocess.run([sys.executable, "-c", PROBE, path, level], env=_env(level), capture_output=True,
                             text=True, cwd=ROOT, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        results[level] = dict(np.load(path))
    first = results[LEVELS[0]]
    for level in LEVELS[1:]:
        for key, value in first.items():
            if key.split("_")[0] in ("rnn", "lstm", "gru"):
                # the recurrent steps' packed GEMM fuses multiply-adds where the level has FMA
                assert_close(f"{key} at {level}", results[level][key], value)
            else:  # elementwise loops: the same operations in the same order at every level
                np.testing.assert_array_equal(results[level][key], value, err_msg=f"{key} at {level}")


# Kernel test files whose results cannot depend on the level, not rerun at the lower levels:
# the C files they exercise (besides common.c's BLAS call, whose kernels OpenBLAS picks for
# itself) have no per-level code, and the argument checks are the Cython layer's. Every other
# test_kernels_* file is rerun, a new one too.
SAME_AT_EVERY_LEVEL = {
    "test_kernels_dense.py": ("dense.c", "loss.c"),  # and activation.c's sigmoid/tanh/relu, compiled once
    "test_kernels_validation.py": (),
}
# what marks per-level code in csrc/: a clone per level (NN_MULTI, target attributes), a branch
# on the level, or a call into gemm_packed.c's micro-kernels (FMA where the level has it)
PER_LEVEL = re.compile(r'NN_MULTI|target\("avx|nn_isa\(\)|nn_gate_tiles|nn_gemm_(packed|offsets|gates)\(')


def test_kernel_files_left_out_of_the_reruns_have_no_per_level_code():
    for test, sources in SAME_AT_EVERY_LEVEL.items():
        assert os.path.exists(os.path.join(ROOT, "tests", test)), test
        for source in sources:
            text = open(os.path.join(ROOT, "csrc", source)).read()
            assert not PER_LEVEL.search(text), f"{source} has per-level code: rerun {test} at every level"
    # the pattern does find per-level code (in every other kernel file but common.c and isa.c)
    assert all(PER_LEVEL.search(open(os.path.join(ROOT, "csrc", f)).read()) for f in
               ("activation.c", "batchnorm.c", "conv.c", "convert.c", "gemm_packed.c", "gru.c", "lstm.c", "optim.c",
                "pool.c", "rnn.c"))


@pytest.mark.parametrize("level", [lv for lv in LEVELS if lv != LEVELS[-1]])
def test_kernel_tests_pass_at_lower_levels(level):
    """The CPU's own level runs in the main test process; each lower one runs the kernel tests
    whose results can depend on the level again, in a subprocess (the AVX2 path on an AVX-512
    machine, the baseline on both)."""
    tests = sorted(os.path.join("tests", f) for f in os.listdir(os.path.join(ROOT, "tests"))
                   if f.startswith("test_kernels_") and f not in SAME_AT_EVERY_LEVEL)
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                         env=dict(os.environ, SPARK_NN_ISA=level), capture_output=True, text=True, cwd=ROOT,
                         timeout=900)
    assert run.returncode == 0, (run.stdout + run.stderr)[-5000:]
    assert " passed" in run.stdout
