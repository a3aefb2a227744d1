"""ResNet-18's convolutions one by one (CIFAR stem, 3x32x32 images, batch 64): ours vs PyTorch CPU
on the same threads, forward and backward, and their totals weighted by how many the network has.

    python benchmarks/resnet_convs.py [--threads 2] [--repeat 7] [--runs 3] [--precision fp32|bf16]

Each row: our median ms and torch's (measured in alternating blocks, timing.paired_median_ms) of
the forward, and of the backward (forward + backward less the forward, for both: torch's backward
runs under autograd). 'bf16': ours with precision='bf16' against torch under
torch.autocast('cpu', dtype=torch.bfloat16). With --runs N the medians are over N runs, each run
going through every shape in turn.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import paired_median_ms, print_table  # noqa: E402

from spark_nn import kernels as K  # noqa: E402

# (C, OC, plane, kernel, stride, how many ResNet-18 has); padding kernel // 2
SHAPES = [(3, 64, 32, 3, 1, 1), (64, 64, 32, 3, 1, 4), (64, 128, 32, 3, 2, 1), (64, 128, 32, 1, 2, 1),
          (128, 128, 16, 3, 1, 3), (128, 256, 16, 3, 2, 1), (128, 256, 16, 1, 2, 1), (256, 256, 8, 3, 1, 3),
          (256, 512, 8, 3, 2, 1), (256, 512, 8, 1, 2, 1), (512, 512, 4, 3, 1, 3)]


def cases(torch, precision, batch=64):
    rng = np.random.default_rng(0)
    autocast = precision == "bf16"
    for c, oc, h, k, s, count in SHAPES:
        p = k // 2
        x = rng.standard_normal((batch, c, h, h)).astype(np.float32)
        w = (0.05 * rng.standard_normal((oc, c, k, k))).astype(np.float32)
        dy = rng.standard_normal(K.conv2d_output_shape(x.shape, oc, (k, k), s, p)).astype(np.float32)
        need_dx = c != 3  # the stem's input needs no gradient
        kw = {"precision": precision} if precision != "fp32" else {}

        def ours_f(x=x, w=w, s=s, p=p, kw=kw):
            K.conv2d_forward(x, w, None, s, p, **kw)

        def ours_fb(x=x, w=w, dy=dy, s=s, p=p, kw=kw, need_dx=need_dx):
            K.conv2d_forward(x, w, None, s, p, **kw)
            K.conv2d_backward(x, w, dy, s, p, need_dx=need_dx, has_bias=False, **kw)

        conv = torch.nn.Conv2d(c, oc, k, stride=s, padding=p, bias=False)
        xt = torch.from_numpy(x).requires_grad_(need_dx)
        dyt = torch.from_numpy(dy)

        def torch_f(conv=conv, xt=xt):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                conv(xt)

        def torch_fb(conv=conv, xt=xt, dyt=dyt):
            conv.zero_grad(set_to_none=True)
            xt.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                y = conv(xt)
            y.backward(dyt.to(y.dtype))

        name = f"{c}->{oc} on {h}x{h}, {k}x{k}" + (f"/{s}" if s > 1 else "")
        yield name, count, ours_f, ours_fb, torch_f, torch_fb


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args(argv)
    import torch

    from spark_nn import threads
    threads.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    all_cases = list(cases(torch, args.precision))
    times = {}
    for _ in range(args.runs):
        for name, _, of, ofb, tf, tfb in all_cases:
            f = paired_median_ms(of, tf, args.repeat, 1)
            fb = paired_median_ms(ofb, tfb, args.repeat, 1)
            times.setdefault(name, []).append((f[0], f[1], fb[0] - f[0], fb[1] - f[1]))
    rows, total = [], np.zeros(4)
    for name, count, *_ in all_cases:
        med = np.median(np.array(times[name]), axis=0)
        total += count * med
        rows.append([name, count] + [f"{v:.2f}" for v in med] +
                    [f"{med[1] / med[0]:.2f}", f"{med[3] / med[2]:.2f}"])
    rows.append(["total, weighted by count", ""] + [f"{v:.1f}" for v in total] +
                [f"{total[1] / total[0]:.2f}", f"{total[3] / total[2]:.2f}"])
    print(f"ResNet-18's convolutions, batch 64, {args.threads} threads, {args.precision}, "
          f"medians of {args.runs} runs (ms; torch/ours > 1: we are faster)")
    print_table(["convolution", "x", "fwd ours", "fwd torch", "bwd ours", "bwd torch", "fwd torch/ours",
                 "bwd torch/ours"], rows)


if __name__ == "__main__":
    main()
