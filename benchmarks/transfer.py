"""Transfer learning on Spark: a network trained elsewhere (in torch), its body frozen and a new
head fit with NetworkClassifier, against the same network fit from scratch, in one run.

    python benchmarks/transfer.py [--scenario new-data|new-classes] [--width 16] [--source-rows 6000]
                                  [--target-rows 200] [--epochs 8]

Source task: 3x32x32 colour digits (compare_peers.colour_digits of datasets.digits_28), trained
in torch (ResNet-18 layout from tests/torchvision_models.py, CIFAR stem, base width --width).
Target task, a small training set (--target-rows) and 1000 test images:
- new-data (default): the same ten classes drawn from the other half of the source digits
  (other people's handwriting: datasets.digits_split never shares a source image between its
  halves), coloured with other tints: a pretrained body meeting the user's own data;
- new-classes: source digits 0-4, target digits 5-9: features for other classes.
Contenders on Spark local[2], each at NetworkClassifier's defaults for --epochs epochs, the test
rows as validation data: (a) the torch network imported, every parameter frozen but a new
Linear head (requires_grad False); (b) the same architecture from scratch (fresh torch init,
all trainable). Printed: test accuracy after each epoch, seconds per epoch, and the first epoch
at which each reaches the accuracy the scratch fit ends with; then the in-process train-step
time of the frozen and the unfrozen network (ms, median of 5), which is what the frozen body
saves per step.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))
from compare_peers import colour_digits, pixel_parquet  # noqa: E402
from timing import print_table  # noqa: E402


def task(n, split, classes, seed):
    """n colour digits images of the given classes (from digits_split's half named by split),
    labels renumbered 0.."""
    from spark_nn.datasets import digits_28

    x, y = digits_28(4 * n if len(classes) < 10 else n, split, seed=seed)
    keep = np.isin(y, classes)
    x, y = x[keep][:n], y[keep][:n]
    return colour_digits(x, seed), np.searchsorted(classes, y).astype(np.int64)


def pretrain(x, y, width, epochs, classes, threads=2):
    """The source network, trained in torch (Adam 3e-3, batch 64); returns it and its seconds."""
    import torch
    import torchvision_models as tv

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    net = tv.resnet18(num_classes=classes, width=width, cifar_stem=True)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    t0 = time.perf_counter()
    net.train()
    for epoch in range(epochs):
        perm = torch.randperm(len(xt), generator=torch.Generator().manual_seed(epoch))
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx]).backward()
            opt.step()
    return net.eval(), time.perf_counter() - t0


def fit(network, train, epochs):
    from spark_nn.ml.classification import NetworkClassifier

    clf = NetworkClassifier(network=network, imageShape=[3, 32, 32], inputCol="pixels", outputCol="label",
                            validationIndicatorCol="isTest", maxIter=epochs, seed=0)
    t0 = time.perf_counter()
    model = clf.fit(train)
    wall = time.perf_counter() - t0
    return model, wall


def step_ms(net, x, y, runs=5):
    from spark_nn.nn.optimizers import make_optimizer

    opt = make_optimizer("adam", lr=1e-3)
    net.train_step(opt, x, y)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        net.train_step(opt, x, y)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--source-rows", type=int, default=6000)
    ap.add_argument("--source-epochs", type=int, default=3)
    ap.add_argument("--scenario", choices=["new-data", "new-classes"], default="new-data")
    ap.add_argument("--target-rows", type=int, default=200)
    ap.add_argument("--epochs", type=int, default=8)
    args = ap.parse_args(argv)
    import torch

    from spark_nn.ml.session import local_session
    from spark_nn.nn import Sequential
    import torchvision_models as tv

    if args.scenario == "new-classes":
        source_classes, target_classes, target_split = list(range(5)), list(range(5, 10)), "train"
    else:
        source_classes, target_classes, target_split = list(range(10)), list(range(10)), "test"
    k_src, k = len(source_classes), len(target_classes)
    xs, ys = task(args.source_rows, "train", source_classes, 0)
    source, seconds = pretrain(xs, ys, args.width, args.source_epochs, k_src)
    # the source's own held-out images: its half of the digits, other draws
    xst, yst = task(1000, "train", source_classes, 1)
    with torch.no_grad():
        src_acc = float((source(torch.from_numpy(xst)).argmax(1).numpy() == yst).mean())
    print(f"source: ResNet-18 width {args.width}, digits {source_classes}, {len(xs)} images, {args.source_epochs} "
          f"epochs in torch: {seconds:.1f} s, accuracy on 1000 other draws of its images {src_acc:.4f}", flush=True)

    frozen = source
    for p in frozen.parameters():
        p.requires_grad_(False)
    frozen.fc = torch.nn.Linear(frozen.fc.in_features, k)
    torch.manual_seed(1)
    scratch = tv.resnet18(num_classes=k, width=args.width, cifar_stem=True)

    xt, yt = task(args.target_rows, target_split, target_classes, 2)
    xv, yv = task(1000, target_split, target_classes, 3)
    spark = local_session("local[2]", "spark_nn transfer", conf={"spark.driver.memory": "4g"})
    rows, curves = [], {}
    try:
        with tempfile.TemporaryDirectory(prefix="spark_nn_transfer_") as workdir:
            data = pixel_parquet(spark, os.path.join(workdir, "target.parquet"), np.concatenate([xt, xv]),
                                 np.concatenate([yt, yv]), 512,
                                 extra={"isTest": np.r_[np.zeros(len(xt), bool), np.ones(len(xv), bool)]})
            for name, net in (("frozen body + new head", frozen), ("from scratch", scratch)):
                model, wall = fit(net, data, args.epochs)
                acc = [e["val_accuracy"] for e in model.summary.epochs]
                secs = [e["seconds"] for e in model.summary.epochs]
                curves[name] = acc
                rows.append([name, model.network.num_params, f"{wall:.1f}", f"{np.mean(secs):.2f}",
                             " ".join(f"{a:.3f}" for a in acc)])
                print(f"{name}: wall {wall:.1f} s, accuracy per epoch {[round(a, 4) for a in acc]}", flush=True)
    finally:
        spark.stop()
    print()
    print(f"## transfer ({args.scenario}): digits {target_classes} from {len(xt)} images, test on {len(xv)}, "
          f"{args.epochs} epochs on Spark local[2]")
    print()
    print_table(["fit", "trainable params", "wall s", "s/epoch", "test accuracy after each epoch"], rows)
    target = curves["from scratch"][-1]
    for name, acc in curves.items():
        first = next((i + 1 for i, a in enumerate(acc) if a >= target), None)
        print(f"{name}: first epoch at >= {target:.4f} (the scratch fit's last): {first}")
    net_frozen = Sequential.from_torch(frozen, (3, 32, 32))
    net_full = Sequential.from_torch(scratch, (3, 32, 32))
    xb, yb = xt[:64], yt[:64]
    a, b = step_ms(net_frozen, xb, yb), step_ms(net_full, xb, yb)
    print(f"\nin-process train step, batch 64, 2 threads: frozen body {a:.1f} ms, all trainable {b:.1f} ms "
          f"({b / a:.1f}x)")


if __name__ == "__main__":
    main()
