"""bf16 GEMM with fp32 sums (csrc/gemm_bf16.c, issue 31): against float64 products of the
bf16-rounded operands (each bf16 product is exact in fp32, so the only error is fp32 summation:
a tight bound), odd shapes, B transposed, accumulation, the scalar reference path, thread
counts, and a clear error where the CPU (or SPARK_NN_ISA) leaves AVX512_BF16 out. Skipped, with
the reason, on CPUs without the instruction."""
import os
import subprocess
import sys

import numpy as np
import pytest

import spark_nn
from gradcheck import both_paths
from spark_nn import _kernels
from spark_nn import kernels as K

needs_bf16 = pytest.mark.skipif(not K.bf16_available(),
                                reason="this CPU lacks AVX512_BF16 (or SPARK_NN_ISA caps it): no bf16 kernels to test")

SHAPES = [(1, 1, 1), (1, 17, 3), (7, 5, 2), (9, 33, 31), (13, 16, 64), (64, 48, 288), (130, 70, 257)]


def _reference(a, b):
    return K.round_bf16(a).astype(np.float64) @ K.round_bf16(b).astype(np.float64)


def _bound(a, b):
    """fp32 summation of K exact products: |error| <= K u sum |a_k b_k| (u = 2^-24), per element."""
    k = a.shape[1]
    return k * 2.0 ** -24 * (np.abs(K.round_bf16(a)).astype(np.float64) @ np.abs(K.round_bf16(b)).astype(np.float64))


def test_round_bf16_is_round_to_nearest_even():
    x = np.array([1.0, 1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, 1.0 + 2 ** -9, -2.5, 1.0 + 2 ** -7 + 2 ** -9, np.inf, -0.0],
                 np.float32)
    # bf16 keeps 7 fraction bits: 1 + 2^-8 is halfway between 1 and 1 + 2^-7, ties go to the even
    # mantissa (1); 1 + 3 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6; below
    # halfway rounds down
    expected = [1.0, 1.0, 1.0 + 2 ** -6, 1.0, -2.5, 1.0 + 2 ** -7, np.inf, -0.0]
    np.testing.assert_array_equal(K.round_bf16(x), np.array(expected, np.float32))
    assert np.isnan(K.round_bf16(np.array([np.nan], np.float32)))[0]


@needs_bf16
@pytest.mark.parametrize("m, n, k", SHAPES)
@pytest.mark.parametrize("trans_b", [False, True])
def test_gemm_bf16_matches_exact_products_with_fp32_sums(rng, m, n, k, trans_b):
    a = rng.standard_normal((m, k)).astype(np.float32)
    b = rng.standard_normal((k, n)).astype(np.float32)
    given = np.ascontiguousarray(b.T) if trans_b else b

    def run():
        return K.gemm_bf16(a, given, trans_b=trans_b)

    fast, reference = both_paths(run)
    for got in (fast, reference):
        assert got.dtype == np.float32 and got.shape == (m, n)
        assert (np.abs(got - _reference(a, b)) <= _bound(a, b) + 1e-30).all()
    # far from the fp32 product: bf16 keeps 8 bits (so the test would see an fp32 fallback)
    if k >= 31:
        assert np.abs(fast - a.astype(np.float64) @ b.astype(np.float64)).max() > 1e-3


@needs_bf16
def test_gemm_bf16_accumulates_and_writes_only_its_output(rng):
    a = rng.standard_normal((11, 21)).astype(np.float32)
    b = rng.standard_normal((21, 19)).astype(np.float32)
    c = rng.standard_normal((11, 19)).astype(np.float32)
    got = K.gemm_bf16(a, b, out=c.copy(), accumulate=True)
    assert (np.abs(got - (c + _reference(a, b))) <= _bound(a, b) + 4e-7 * np.abs(c)).all()
    with pytest.raises(ValueError, match="a has 21 columns but b has 20 rows"):
        K.gemm_bf16(a, b[:20])
    with pytest.raises(ValueError, match="out must have shape"):
        K.gemm_bf16(a, b, out=np.zeros((11, 18), np.float32))


@needs_bf16
def test_gemm_bf16_does_not_depend_on_the_thread_count(rng, threads):
    a = rng.standard_normal((300, 130)).astype(np.float32)
    b = rng.standard_normal((130, 50)).astype(np.float32)
    threads(1)
    one = K.gemm_bf16(a, b)
    threads(2)
    assert K.gemm_bf16(a, b).tobytes() == one.tobytes()


def test_bf16_is_a_clear_error_where_the_isa_is_capped():
    """SPARK_NN_ISA='avx512' caps at AVX-512F: no bf16, and asking for it names the instruction;
    the scalar reference path still runs (tests on any CPU)."""
    code = ("import numpy as np\nfrom spark_nn import kernels as K, _kernels\n"
            "assert not K.bf16_available()\n"
            "try:\n    K.gemm_bf16(np.ones((2, 2), np.float32), np.ones((2, 2), np.float32))\n"
            "except RuntimeError as e:\n    assert 'AVX512_BF16' in str(e) and 'avx512' in str(e), e\n"
            "else:\n    raise SystemExit('no error')\n"
            "_kernels.set_reference(True)\n"
            "assert K.gemm_bf16(np.ones((2, 3), np.float32), np.ones((3, 2), np.float32)).tolist() == [[3, 3], [3, 3]]\n")
    env = dict(os.environ, SPARK_NN_ISA="avx512")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
