"""bf16 GEMM (csrc/gemm_bf16.c: operands rounded to bf16 and packed per call, AVX512_BF16's
vdpbf16ps, fp32 sums) against fp32 GEMMs and torch's bf16 matmul (oneDNN), same threads, on the
shapes of the convolutions and dense layers we train (M = output positions or rows, N = output
channels, K = inputs x kernel).

    python benchmarks/gemm_bf16.py [--threads 2] [--repeat 15]

Prints the minimum time of --repeat calls each (ms) and GFLOP/s; ours includes packing both
operands, torch's bf16 includes converting both from fp32 (as autocast does per op)."""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from timing import print_table  # noqa: E402

SHAPES = [(8192, 64, 288), (2048, 128, 576), (512, 128, 1152), (1024, 512, 512), (64, 512, 4608), (256, 10, 3136)]


def best_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args(argv)
    os.environ["OPENBLAS_NUM_THREADS"] = str(args.threads)
    import torch

    import spark_nn
    from spark_nn import kernels as K

    K.require_bf16("benchmarks/gemm_bf16.py")
    spark_nn.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    rows = []
    for m, n, k in SHAPES:
        a = rng.standard_normal((m, k)).astype(np.float32)
        b = rng.standard_normal((k, n)).astype(np.float32)
        out = np.empty((m, n), np.float32)
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        ours = best_ms(lambda: K.gemm_bf16(a, b, out=out), args.repeat)
        fp32 = best_ms(lambda: np.dot(a, b, out=out), args.repeat)
        t32 = best_ms(lambda: torch.mm(ta, tb), args.repeat)
        t16 = best_ms(lambda: torch.mm(ta.to(torch.bfloat16), tb.to(torch.bfloat16)), args.repeat)
        gf = 2 * m * n * k / 1e6
        rows.append((f"{m}x{n}x{k}", f"{ours:.3f} ({gf / ours:.0f})", f"{fp32:.3f} ({gf / fp32:.0f})",
                     f"{t32:.3f} ({gf / t32:.0f})", f"{t16:.3f} ({gf / t16:.0f})", f"{fp32 / ours:.2f}",
                     f"{t16 / ours:.2f}"))
    print(f"{args.threads} threads, best of {args.repeat}: ms (GFLOP/s)")
    print_table(["M x N x K", "ours bf16", "numpy fp32", "torch fp32", "torch bf16", "fp32/ours", "torch bf16/ours"],
                rows)


if __name__ == "__main__":
    main()
