"""Our kernels vs PyTorch CPU, same shapes, same thread count, in one run.

    python benchmarks/compare_torch.py [--threads 2] [--repeat 15] [--runs 5] [--isa all|avx512|avx2]
                                       [--only BatchNorm,conv,bf16]

Where the CPU has AVX512_BF16, 'bf16' rows run ours with precision='bf16' against torch under
torch.autocast('cpu', dtype=torch.bfloat16) (oneDNN's bf16 kernels), with our fp32/bf16 speed-up.

Every op at each vector instruction level the CPU has (default), each level in its own process
with ours, torch/oneDNN and OpenBLAS capped to it.

Prints, per op, forward and forward+backward: our median ms, torch's median ms (measured in
alternating blocks, timing.paired_median_ms) and the ratio torch/ours (> 1: we are faster),
then the GFLOPS our convolutions reach against the float32 matmul peak numpy measures in the
same run. With --runs N every op is measured N times, the runs of one op spread over the whole
benchmark (each run goes through every op in turn), and the table gives the median of the N
times and the median ratio with its min-max; a ratio whose min-max spans 1.0 is marked '~'
(this shared machine swings by 10-40 % between runs: one run cannot tell a regression from
noise).
"""
import argparse
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import paired_median_ms, print_table, ratio_cell, sgemm_peak_gflops  # noqa: E402

import spark_nn  # noqa: E402
from spark_nn import kernels as K  # noqa: E402

# name: (N, C, H, W, OC, kernel, stride, padding, groups)
CONV_SHAPES = {"conv 64x1x28x28 -> 32, 3x3 p1": (64, 1, 28, 28, 32, 3, 1, 1, 1),
               "conv 64x32x14x14 -> 64, 3x3 p1": (64, 32, 14, 14, 64, 3, 1, 1, 1),
               "conv 64x64x16x16 -> 128, 1x1": (64, 64, 16, 16, 128, 1, 1, 0, 1),
               "conv 64x64x32x32 -> 128, 3x3/2 p1": (64, 64, 32, 32, 128, 3, 2, 1, 1),
               "depthwise 64x96x16x16, 3x3 p1": (64, 96, 16, 16, 96, 3, 1, 1, 96),
               "depthwise 64x144x16x16, 3x3/2 p1": (64, 144, 16, 16, 144, 3, 2, 1, 144),
               "depthwise 64x144x16x16, 3x3 p1": (64, 144, 16, 16, 144, 3, 1, 1, 144),
               "grouped 64x64x16x16 -> 64, 3x3 p1 g4": (64, 64, 16, 16, 64, 3, 1, 1, 4)}
# bf16 (precision='bf16' against torch.autocast('cpu', dtype=torch.bfloat16)), where the CPU has
# AVX512_BF16: these convolutions, and dense layers (name: (N, IN, OUT))
BF16_CONVS = ["conv 64x32x14x14 -> 64, 3x3 p1", "conv 64x64x16x16 -> 128, 1x1", "conv 64x64x32x32 -> 128, 3x3/2 p1"]
BF16_DENSE = {"dense 64x3136 -> 10": (64, 3136, 10), "dense 256x1024 -> 1024": (256, 1024, 1024)}
POOL_SHAPE = (64, 32, 28, 28)
BN_SHAPES = [(64, 64, 32, 32), (64, 256, 8, 8)]
SEQ = dict(N=64, T=50, D=64, H=128)


def conv_cases(rng, torch, precision="fp32", names=None):
    """fp32: ours against torch; 'bf16': ours in bf16 against torch under autocast bf16."""
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if precision == "bf16" else None
    for name in names or CONV_SHAPES:
        n, c, h, w, oc, k, s, p, g = CONV_SHAPES[name]
        x = rng.standard_normal((n, c, h, w)).astype(np.float32)
        wt = (0.1 * rng.standard_normal((oc, c // g, k, k))).astype(np.float32)
        b = np.zeros(oc, np.float32)
        oh, ow = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        dy = rng.standard_normal((n, oc, oh, ow)).astype(np.float32)
        kw = {"groups": g} if g != 1 else {}
        if precision != "fp32":
            kw["precision"] = precision
        ours_f = lambda x=x, wt=wt, b=b, s=s, p=p, kw=kw: K.conv2d_forward(x, wt, b, s, p, **kw)  # noqa: E731

        def ours_fb(x=x, wt=wt, b=b, dy=dy, s=s, p=p, kw=kw):
            K.conv2d_forward(x, wt, b, s, p, **kw)
            K.conv2d_backward(x, wt, dy, s, p, **kw)

        conv = torch.nn.Conv2d(c, oc, k, stride=s, padding=p, groups=g)
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def torch_f(conv=conv, xt=xt):
            with torch.no_grad():
                if autocast:
                    with autocast():
                        conv(xt)
                else:
                    conv(xt)

        def torch_fb(conv=conv, xt=xt, dyt=dyt):
            conv.zero_grad(set_to_none=True)
            xt.grad = None
            if autocast:
                with autocast():
                    y = conv(xt)
                y.backward(dyt.to(y.dtype))
            else:
                conv(xt).backward(dyt)

        flops = 2.0 * n * oc * oh * ow * (c // g) * k * k
        yield name, ours_f, ours_fb, torch_f, torch_fb, flops


def bf16_cases(rng, torch):
    """bf16 rows: ours with precision='bf16', torch under autocast bf16 (its oneDNN kernels);
    none where the CPU (or SPARK_NN_ISA) lacks AVX512_BF16."""
    if not K.bf16_available():
        return
    for name, of, ofb, tf, tfb, _ in conv_cases(rng, torch, precision="bf16", names=BF16_CONVS):
        yield "bf16 " + name, of, ofb, tf, tfb, 0.0
    for name, (n, i, o) in BF16_DENSE.items():
        x = rng.standard_normal((n, i)).astype(np.float32)
        w = (0.05 * rng.standard_normal((o, i))).astype(np.float32)
        b = np.zeros(o, np.float32)
        dy = rng.standard_normal((n, o)).astype(np.float32)

        def ours_f(x=x, w=w, b=b):
            K.dense_forward(x, w, b, precision="bf16")

        def ours_fb(x=x, w=w, b=b, dy=dy):
            K.dense_forward(x, w, b, precision="bf16")
            K.dense_backward(x, w, dy, precision="bf16")

        lin = torch.nn.Linear(i, o)
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def torch_f(lin=lin, xt=xt):
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
                lin(xt)

        def torch_fb(lin=lin, xt=xt, dyt=dyt):
            lin.zero_grad(set_to_none=True)
            xt.grad = None
            with torch.autocast("cpu", dtype=torch.bfloat16):
                y = lin(xt)
            y.backward(dyt.to(y.dtype))

        yield "bf16 " + name, ours_f, ours_fb, torch_f, torch_fb, 0.0


def pool_case(rng, torch):
    x = rng.standard_normal(POOL_SHAPE).astype(np.float32)
    dy = rng.standard_normal((64, 32, 14, 14)).astype(np.float32)

    def ours_fb():
        _, idx = K.maxpool2d_forward(x, 2)
        K.maxpool2d_backward(dy, idx, x.shape, 2)

    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)

    def torch_f():
        with torch.no_grad():
            torch.nn.functional.max_pool2d(xt, 2)

    def torch_fb():
        xt.grad = None
        torch.nn.functional.max_pool2d(xt, 2).backward(dyt)

    yield "max-pool 2x2/2 on 64x32x28x28", lambda: K.maxpool2d_forward(x, 2), ours_fb, torch_f, torch_fb, None


def batchnorm_cases(rng, torch):
    """BatchNorm2d in training mode: batch statistics, running-stat update, and the backward pass
    through the batch statistics to x, gamma and beta."""
    for shape in BN_SHAPES:
        c = shape[1]
        x = rng.standard_normal(shape).astype(np.float32)
        dy = rng.standard_normal(shape).astype(np.float32)
        gamma, beta = np.ones(c, np.float32), np.zeros(c, np.float32)
        rm, rv = np.zeros(c, np.float32), np.ones(c, np.float32)

        def ours_f(x=x, gamma=gamma, beta=beta, rm=rm, rv=rv):
            K.batchnorm_forward(x, gamma, beta, rm, rv, True)

        def ours_fb(x=x, gamma=gamma, beta=beta, rm=rm, rv=rv, dy=dy):
            _, mean, invstd = K.batchnorm_forward(x, gamma, beta, rm, rv, True)
            K.batchnorm_backward(x, gamma, mean, invstd, dy, True)

        bn = torch.nn.BatchNorm2d(c).train()
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dy)

        def torch_f(bn=bn, xt=xt):
            with torch.no_grad():
                bn(xt)

        def torch_fb(bn=bn, xt=xt, dyt=dyt):
            bn.zero_grad(set_to_none=True)
            xt.grad = None
            bn(xt).backward(dyt)

        yield "BatchNorm2d train " + "x".join(map(str, shape)), ours_f, ours_fb, torch_f, torch_fb, None


AVGPOOL_SHAPE = (64, 32, 28, 28)
GAP_SHAPE = (64, 256, 7, 7)
ACT_SHAPE = (64, 128, 28, 28)


def avgpool_cases(rng, torch):
    """Average pooling 3x3/2 pad 1 (torch's default count_include_pad=True) and global average
    pooling (AdaptiveAvgPool2d(1) + flatten)."""
    x = rng.standard_normal(AVGPOOL_SHAPE).astype(np.float32)
    y = K.avgpool2d_forward(x, 3, 2, 1)
    dy = rng.standard_normal(y.shape).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)

    def ours_fb():
        K.avgpool2d_forward(x, 3, 2, 1)
        K.avgpool2d_backward(dy, x.shape, 3, 2, 1)

    def torch_f():
        with torch.no_grad():
            torch.nn.functional.avg_pool2d(xt, 3, 2, 1)

    def torch_fb():
        xt.grad = None
        torch.nn.functional.avg_pool2d(xt, 3, 2, 1).backward(dyt)

    yield (f"avg-pool 3x3/2 p1 on {'x'.join(map(str, AVGPOOL_SHAPE))}", lambda: K.avgpool2d_forward(x, 3, 2, 1),
           ours_fb, torch_f, torch_fb, None)

    g = rng.standard_normal(GAP_SHAPE).astype(np.float32)
    gdy = rng.standard_normal(GAP_SHAPE[:2]).astype(np.float32)
    gt = torch.from_numpy(g).requires_grad_(True)
    gdyt = torch.from_numpy(gdy)

    def ours_gfb():
        K.global_avgpool_forward(g)
        K.global_avgpool_backward(gdy, g.shape)

    def torch_gf():
        with torch.no_grad():
            torch.nn.functional.adaptive_avg_pool2d(gt, 1).flatten(1)

    def torch_gfb():
        gt.grad = None
        torch.nn.functional.adaptive_avg_pool2d(gt, 1).flatten(1).backward(gdyt)

    yield (f"global avg-pool {'x'.join(map(str, GAP_SHAPE))}", lambda: K.global_avgpool_forward(g), ours_gfb,
           torch_gf, torch_gfb, None)


def activation_cases(rng, torch):
    """SiLU and GELU (exact erf form) forward and backward: backward reads the input x."""
    x = rng.standard_normal(ACT_SHAPE).astype(np.float32)
    dy = rng.standard_normal(ACT_SHAPE).astype(np.float32)
    xt = torch.from_numpy(x).requires_grad_(True)
    dyt = torch.from_numpy(dy)
    for name, fn in (("silu", torch.nn.functional.silu), ("gelu", torch.nn.functional.gelu)):
        def ours_fb(name=name):
            y = K.activation_forward(x, name)
            K.activation_backward(y, dy, name, x=x)

        def torch_f(fn=fn):
            with torch.no_grad():
                fn(xt)

        def torch_fb(fn=fn):
            xt.grad = None
            fn(xt).backward(dyt)

        yield (f"{name} on {'x'.join(map(str, ACT_SHAPE))}", lambda name=name: K.activation_forward(x, name),
               ours_fb, torch_f, torch_fb, None)


def recurrent_cases(rng, torch):
    n, t, d, h = SEQ["N"], SEQ["T"], SEQ["D"], SEQ["H"]
    x = rng.standard_normal((n, t, d)).astype(np.float32)
    dhs = rng.standard_normal((n, t, h)).astype(np.float32)
    for kind, gates, mod_cls in (("RNN", 1, torch.nn.RNN), ("LSTM", 4, torch.nn.LSTM), ("GRU", 3, torch.nn.GRU)):
        mod = mod_cls(d, h, batch_first=True)
        w = [p.detach().numpy().copy() for p in mod.parameters()]
        if kind == "RNN":
            f = lambda w=w: K.rnn_forward(x, *w)  # noqa: E731

            def fb(w=w):
                hs = K.rnn_forward(x, *w)
                K.rnn_backward(x, w[0], w[1], hs, dhs)
        elif kind == "LSTM":
            f = lambda w=w: K.lstm_forward(x, *w)  # noqa: E731

            def fb(w=w):
                hs, cs, g = K.lstm_forward(x, *w)
                K.lstm_backward(x, w[0], w[1], hs, cs, g, dhs)
        else:
            f = lambda w=w: K.gru_forward(x, *w)  # noqa: E731

            def fb(w=w):
                hs, g, hn = K.gru_forward(x, *w)
                K.gru_backward(x, w[0], w[1], hs, g, hn, dhs)
        xt = torch.from_numpy(x).requires_grad_(True)
        dyt = torch.from_numpy(dhs)

        def torch_f(mod=mod, xt=xt):
            with torch.no_grad():
                mod(xt)

        def torch_fb(mod=mod, xt=xt, dyt=dyt):
            mod.zero_grad(set_to_none=True)
            xt.grad = None
            mod(xt)[0].backward(dyt)

        yield f"{kind} N{n} T{t} D{d} H{h}", f, fb, torch_f, torch_fb, None


def epoch_cases(torch, batch_sizes, precision="fp32"):
    """One training epoch of the digits CNN (seed layers [32, 64, 10]), ours vs the same torch
    model: same data, Adam, batch size and threads ('bf16': ours in bf16, torch under autocast)."""
    from spark_nn.datasets import digits_split
    from spark_nn.nn import builders

    xtr, _, ytr, _ = digits_split()
    for bs in batch_sizes:
        model = builders.cnn([32, 64, 10], 10, (1, 8, 8), seed=0)
        tnet = torch.nn.Sequential(
            torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Flatten(), torch.nn.Linear(256, 10))
        topt = torch.optim.Adam(tnet.parameters(), lr=1e-3)
        tx, ty = torch.from_numpy(xtr), torch.from_numpy(ytr)

        def torch_epoch(tnet=tnet, topt=topt, bs=bs):
            perm = torch.randperm(len(tx))
            for i in range(0, len(tx), bs):
                idx = perm[i:i + bs]
                topt.zero_grad()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                    out = tnet(tx[idx])
                loss = torch.nn.functional.cross_entropy(out.float(), ty[idx], reduction="sum") / len(idx)
                loss.backward()
                topt.step()

        def ours_epoch(model=model, bs=bs):
            model.fit(xtr, ytr, epochs=1, batch_size=bs, optimizer="adam", lr=1e-3, precision=precision)

        tag = "" if precision == "fp32" else f" {precision}"
        yield f"digits CNN epoch{tag}, batch {bs} ({len(xtr)} images)", ours_epoch, torch_epoch


def network_step_cases(torch, precision="fp32"):
    """One training step of a ResNet-18 (torchvision's BasicBlock layout, base width 64, the
    CIFAR stem: 3x3 stride-1 first convolution, no max-pool) on 3x32x32 images, batch 64, SGD
    with momentum, BatchNorm in training mode: ours (imported from the torch module by tracing,
    the same weights) vs torch."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    import torchvision_models as tv
    from spark_nn.nn import Sequential
    from spark_nn.nn.optimizers import make_optimizer

    torch.manual_seed(0)
    tnet = tv.resnet18(num_classes=10, cifar_stem=True).train()
    ours = Sequential.from_torch(tnet, (3, 32, 32))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, 64)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = make_optimizer("sgd", lr=0.01, momentum=0.9)
    topt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9)

    ours.precision = precision

    def torch_step():
        topt.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = tnet(xt)
        torch.nn.functional.cross_entropy(out.float(), yt).backward()
        topt.step()

    tag = "" if precision == "fp32" else f" {precision}"
    yield f"ResNet-18 train step{tag} (CIFAR stem, 3x32x32, batch 64)", lambda: ours.train_step(opt, x, y), torch_step


def measure(cases, runs, repeat, block=3):
    """{(case, column): [(ours ms, torch ms) per run]}; cases: (name, column, ours fn, torch fn).
    Each run goes through every case in turn, so one case's runs are spread over the benchmark."""
    out = {}
    for _ in range(runs):
        for name, col, ours, theirs in cases:
            out.setdefault((name, col), []).append(paired_median_ms(ours, theirs, repeat, block))
    return out


def cells(pairs, digits=2):
    """ours ms, torch ms (medians over the runs) and the torch/ours ratio cell."""
    return [f"{np.median([o for o, _ in pairs]):.{digits}f}", f"{np.median([t for _, t in pairs]):.{digits}f}",
            ratio_cell([t / o for o, t in pairs])]


# each level caps ours (SPARK_NN_ISA, which also sets scipy's OpenBLAS core type), numpy's
# OpenBLAS (the peak), PyTorch's own kernels and oneDNN alike
ISA_ENV = {"avx512": {"SPARK_NN_ISA": "avx512", "ATEN_CPU_CAPABILITY": "avx512", "ONEDNN_MAX_CPU_ISA": "AVX512_CORE"},
           "avx2": {"SPARK_NN_ISA": "avx2", "OPENBLAS_CORETYPE": "Haswell", "ATEN_CPU_CAPABILITY": "avx2",
                    "ONEDNN_MAX_CPU_ISA": "AVX2"}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--runs", type=int, default=5,
                    help="measure every op this many times, spread over the run (median and min-max ratio)")
    ap.add_argument("--isa", default="all",
                    help="'all' (every level this CPU has, each in its own process), 'avx512', 'avx2' or 'this' "
                         "(this process as it is)")
    ap.add_argument("--only", default="",
                    help="comma-separated parts of op names: measure only the ops (and training cases: "
                         "'epoch', 'ResNet') whose name contains one")
    args = ap.parse_args(argv)
    if args.isa != "this":
        import subprocess

        from spark_nn import _kernels

        have = ["avx2", "avx512"][: max(_kernels.isa_level(), 1)]
        levels = list(reversed(have)) if args.isa == "all" else [args.isa]
        for level in levels:
            print(f"=== ISA level {level} (SPARK_NN_ISA, ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA, OpenBLAS core) ===",
                  flush=True)
            cmd = [sys.executable, os.path.abspath(__file__), "--isa", "this", "--threads", str(args.threads),
                   "--repeat", str(args.repeat), "--runs", str(args.runs), "--only", args.only]
            subprocess.run(cmd, env=dict(os.environ, **ISA_ENV[level]), check=True)
            print(flush=True)
        return None
    import torch

    torch.set_num_threads(args.threads)
    spark_nn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    ops = [c for gen in (conv_cases, bf16_cases, pool_case, avgpool_cases, batchnorm_cases, activation_cases,
                         recurrent_cases)
           for c in gen(rng, torch)]
    only = [part for part in args.only.split(",") if part]
    if only:
        ops = [op for op in ops if any(part in op[0] for part in only)]
    cases = [(name, col, ours, theirs) for name, of, ofb, tf, tfb, _ in ops
             for col, ours, theirs in (("fwd", of, tf), ("fwd+bwd", ofb, tfb))]
    times = measure(cases, args.runs, args.repeat)
    rows = [[name] + cells(times[(name, "fwd")]) + cells(times[(name, "fwd+bwd")]) for name, *_ in ops]
    conv_rows = []
    for name, *_, flops in ops:
        if flops:
            o1, o2 = (float(np.median([o for o, _ in times[(name, c)]])) for c in ("fwd", "fwd+bwd"))
            conv_rows.append((name, flops / (o1 * 1e-3) / 1e9, 3 * flops / (o2 * 1e-3) / 1e9))
    peak = sgemm_peak_gflops()
    print(f"spark_nn {spark_nn.__version__} ({spark_nn.isa()}) vs torch {torch.__version__} "
          f"({torch.backends.cpu.get_cpu_capability()}), {args.threads} threads, "
          f"{platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"{args.runs} run{'s' if args.runs > 1 else ''}")
    if rows:
        print_table(["op", "fwd ours ms", "fwd torch ms", "fwd torch/ours", "fwd+bwd ours ms",
                     "fwd+bwd torch ms", "fwd+bwd torch/ours"], rows)
    if args.runs > 1:
        print("ratios: median of the runs (min-max); '~': the min-max spans 1.0")
    for name, *_ in ops:
        if name.startswith("bf16 ") and (name[5:], "fwd") in times:
            speed = [float(np.median([o for o, _ in times[(name[5:], c)]])) /
                     float(np.median([o for o, _ in times[(name, c)]])) for c in ("fwd", "fwd+bwd")]
            print(f"{name}: our fp32 / our bf16 = {speed[0]:.2f}x fwd, {speed[1]:.2f}x fwd+bwd")
    print(f"\nnumpy float32 matmul peak (1024^3, {args.threads if 'OMP_NUM_THREADS' in os.environ else 'default'} threads): {peak:.1f} GFLOPS")
    if conv_rows:
        print_table(["conv", "fwd GFLOPS", "fwd % of peak", "fwd+bwd GFLOPS", "fwd+bwd % of peak"],
                    [[n, f"{a:.1f}", f"{100 * a / peak:.0f}%", f"{b:.1f}", f"{100 * b / peak:.0f}%"]
                     for n, a, b in conv_rows])
    print()
    precisions = ("fp32", "bf16") if K.bf16_available() else ("fp32",)
    training = [(name, "epoch", ours, theirs, 7) for p in precisions for name, ours, theirs in
                epoch_cases(torch, (32, 128), p)] + \
        [(name, "epoch", ours, theirs, 3) for p in precisions for name, ours, theirs in network_step_cases(torch, p)]
    training = [t for t in training if not only or any(part in t[0] for part in only)]
    if training:
        times = {}
        for repeat in sorted({t[4] for t in training}):
            times.update(measure([t[:4] for t in training if t[4] == repeat], args.runs, repeat, block=1))
        print_table(["in-process training", "ours ms", "torch ms", "torch/ours"],
                    [[name] + cells(times[(name, "epoch")], 1) for name, *_ in training])
    return rows


if __name__ == "__main__":
    main()
