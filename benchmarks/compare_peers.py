"""Ours against what a Spark user would pick instead, in one run and one local[2] session.

    python benchmarks/compare_peers.py [--sets digits mnist60k text resnet18] [--mnist-epochs 3]

Contenders, same architecture for the networks (3x3 conv 32 + ReLU + 2x2 max-pool, 3x3 conv 64 +
ReLU + 2x2 max-pool, dense over 10 classes):
- ours: the seed's program with default params (``CNN(layers=[32, 64, 10], activation="relu",
  ...)``), the test rows as validation data so the summary has test accuracy after each epoch;
- TorchDistributor: 2 processes (local mode, DDP over gloo, one thread each), Adam at 3e-3
  with a cosine decay (--torch-lr), batch 32 per process; every rank checks test accuracy
  after each epoch;
- torch in one process (2 threads), the same settings with batch 64;
- MLlib's MultilayerPerceptronClassifier (a dense net: MLlib has no convolutions; L-BFGS,
  300 iterations on digits; on the 60k set only with --mllib-60k-iter N: each iteration is a
  pass over 60k x 784 through Java BLAS (no native BLAS here), and the session runs the JVM
  without its C2 JIT (see spark_nn.ml.session), which slows MLlib's JVM-side math about 2x
  on digits and made 5 iterations on the 60k set take over 6 minutes);
- the limit: our own kernels in one process with the same 2 threads, no Spark (Sequential.fit);
- bf16 (where the CPU has AVX512_BF16): the limit and our Spark fit with precision='bf16'.
Data: (a) scikit-learn's digits as PNG folders through ImageFeature.loadImages, a random 80/20
split; (b) 60,000 + 10,000 MNIST-sized 1x28x28 images made from the digits
(spark_nn.datasets.digits_28), stored as Parquet and read by Spark.
ResNet-18 (--sets resnet18): torchvision's ResNet-18 with the CIFAR stem on 3x32x32 colour
images made from the digits (2048 training and 512 test images by default, Parquet), ours as
NetworkClassifier(network=<the torch module>) at defaults against the limit, TorchDistributor
and torch; a step of batch 64 costs about 100 GFLOP, so the set is small.
Text: text_rnn.py's Rotten Tomatoes snippets, the seed's RNN program (and LSTM cells) against
MLlib's Tokenizer + HashingTF + LogisticRegression, fit time and test accuracy.
Reported: wall time of each fit (ours and TorchDistributor include their start-up: the pass
over the data, the worker processes), seconds per epoch, final test accuracy, and the wall
time until the test accuracy first reaches a common target.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import print_table  # noqa: E402

TARGETS = {"digits": 0.985, "mnist60k": 0.97, "resnet18": 0.9}
TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")


# ---------------------------------------------------------------- torch (peers only)
def torch_net(kind="cnn"):
    """The seed's CNN, or (kind 'resnet18') torchvision's ResNet-18 with the CIFAR stem, as
    tests/torchvision_models.py writes it (torchvision's wheel does not import here)."""
    import torch
    import torch.nn as nn

    if kind == "resnet18":
        if TESTS not in sys.path:
            sys.path.insert(0, TESTS)
        import torchvision_models as tv

        torch.manual_seed(0)
        return tv.resnet18(num_classes=10, cifar_stem=True)
    return nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Flatten(), nn.LazyLinear(10))


def torch_train(path, epochs, batch_size, lr, threads, distributed, kind="cnn"):
    """Trains on the arrays in path (npz: xtr, ytr, xte, yte); returns [(epoch seconds, test
    accuracy)] (accuracy checked after every epoch by every rank, counted in its time)."""
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    rank, world = 0, 1
    if distributed:
        import torch.distributed as dist

        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
    d = np.load(path)
    xtr, ytr = torch.from_numpy(d["xtr"][rank::world]), torch.from_numpy(d["ytr"][rank::world])
    xte, yte = torch.from_numpy(d["xte"]), torch.from_numpy(d["yte"])
    torch.manual_seed(0)
    model = torch_net(kind)
    model.eval()
    model(xtr[:1])  # materialize the lazy layer before DDP wraps it
    if distributed:
        model = torch.nn.parallel.DistributedDataParallel(model)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = -(-len(xtr) // batch_size)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps)
    gen = torch.Generator().manual_seed(rank)
    history = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        for i in range(steps):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            opt.zero_grad()
            F.cross_entropy(model(xtr[idx]), ytr[idx]).backward()
            opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            # every rank scores: TorchDistributor in local mode returns one rank's output, not always rank 0's
            acc = float((model(xte).argmax(1) == yte).float().mean())
        history.append((time.perf_counter() - t0, acc))
    if distributed:
        import torch.distributed as dist

        dist.destroy_process_group()
    return history


def _distributed_entry(path, epochs, batch_size, lr, kind):
    return torch_train(path, epochs, batch_size, lr, threads=1, distributed=True, kind=kind)


def run_torch_distributor(path, epochs, lr, kind="cnn"):
    from pyspark.ml.torch.distributor import TorchDistributor

    t0 = time.perf_counter()
    history = TorchDistributor(num_processes=2, local_mode=True, use_gpu=False).run(
        _distributed_entry, path, epochs, 32, lr, kind)
    return time.perf_counter() - t0, history


def run_torch_single(path, epochs, lr, kind="cnn"):
    t0 = time.perf_counter()
    history = torch_train(path, epochs, 64, lr, threads=2, distributed=False, kind=kind)
    return time.perf_counter() - t0, history


def run_limit(path, epochs, threads=2, kind="cnn", precision="fp32"):
    """The yardstick: our kernels in one process, same threads, no Spark (Sequential.fit: the
    seed's network, Adam at CNN's default 3e-3 without its cosine decay, batch 32), test
    accuracy after each epoch. [(epoch seconds, test accuracy)]. Scoring the test rows after an
    epoch counts in the next epoch's seconds, as in our Spark fit, whose validation of an epoch
    rides in the next epoch's first job (and the last epoch's in the fit's wall time only):
    both then do the same work in the same seconds (10k rows: about 0.6 s here)."""
    from spark_nn.ml.classification import CNN
    from spark_nn.nn.optimizers import make_optimizer
    from spark_nn.threads import set_num_threads

    data = np.load(path)
    xtr, ytr, xte, yte = data["xtr"], data["ytr"], data["xte"], data["yte"]
    if kind == "resnet18":
        from spark_nn.nn import Sequential

        net = Sequential.from_torch(torch_net(kind), xtr.shape[1:])
    else:
        net = CNN(layers=[32, 64, 10], activation="relu", numClasses=10)._network({"shape": list(xtr.shape[1:])},
                                                                                 10)
    set_num_threads(threads)
    opt = make_optimizer("adam", lr=3e-3)
    history, scoring = [], 0.0
    t0 = time.perf_counter()
    for epoch in range(epochs):
        seconds = net.fit(xtr, ytr, epochs=1, batch_size=32, optimizer=opt, seed=epoch,
                          precision=precision)["seconds"][0]
        t1 = time.perf_counter()
        accuracy = net.evaluate(xte, yte)[1]
        history.append((seconds + scoring, accuracy))
        scoring = time.perf_counter() - t1
    return time.perf_counter() - t0, history


# ---------------------------------------------------------------- Spark contenders
def bf16_available():
    from spark_nn import kernels

    return kernels.bf16_available()


def run_ours(train, test, epochs, input_col, kind="cnn", **params):
    """The seed's CNN at default params (or with params), or (kind 'resnet18') NetworkClassifier
    with the torch ResNet-18 at default params; the test rows ride along as validation data."""
    from pyspark.sql import functions as F

    from spark_nn.ml.classification import CNN, NetworkClassifier

    data = train.withColumn("isTest", F.lit(False)).unionByName(test.withColumn("isTest", F.lit(True)))
    common = dict(inputCol=input_col, outputCol="label", validationIndicatorCol="isTest",
                  verbose=params.pop("verbose", True), **params)
    if kind == "resnet18":
        cnn = NetworkClassifier(network=torch_net(kind), imageShape=[3, 32, 32], **common)
    else:
        cnn = CNN(layers=[32, 64, 10], activation="relu", numClasses=10, **common)
    if epochs:
        cnn.setMaxIter(epochs)
    t0 = time.perf_counter()
    model = cnn.fit(data)
    wall = time.perf_counter() - t0
    epochs_s = [e["seconds"] for e in model.summary.epochs]
    setup = wall - sum(epochs_s)
    history = [(s, e["val_accuracy"]) for s, e in zip(epochs_s, model.summary.epochs)]
    return wall, history, setup, [e["local_steps"] for e in model.summary.epochs]


def run_mllib(train, test, features, max_iter):
    from pyspark.ml.classification import MultilayerPerceptronClassifier
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.functions import array_to_vector

    def vec(df):
        return df.select(array_to_vector("pixels").alias("features"), "label")

    mlp = MultilayerPerceptronClassifier(layers=[features, 128, 10], maxIter=max_iter, blockSize=128, seed=0)
    t0 = time.perf_counter()
    model = mlp.fit(vec(train))
    wall = time.perf_counter() - t0
    acc = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(vec(test)))
    return wall, acc


# ---------------------------------------------------------------- data
def digits_set(spark, workdir):
    """The digits as PNG folders, loaded with ImageFeature.loadImages, random 80/20 split;
    numpy copies of the same split for the torch peers."""
    from pyspark.sql import functions as F

    from spark_nn.datasets import write_digits_folders
    from spark_nn.ml.feature import ImageFeature

    folder = os.path.join(workdir, "digits")
    write_digits_folders(folder)
    images = ImageFeature.loadImages(folder)
    train, test = images.randomSplit([0.8, 0.2], seed=0)
    train, test = train.cache(), test.cache()

    def arrays(df):
        rows = df.select(F.col("image.data").alias("d"), "label").collect()
        x = np.stack([np.frombuffer(r.d, dtype=np.uint8).reshape(1, 8, 8) for r in rows]).astype(np.float32) / 255
        return x, np.array([int(r.label) for r in rows], dtype=np.int64)

    (xtr, ytr), (xte, yte) = arrays(train), arrays(test)
    path = os.path.join(workdir, "digits.npz")
    np.savez(path, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    def pixel_frame(x, y):
        return spark.createDataFrame([(a.ravel().tolist(), float(b)) for a, b in zip(x, y)], ["pixels", "label"])

    return train, test, "image", path, pixel_frame(xtr, ytr), pixel_frame(xte, yte), 64


def pixel_parquet(spark, path, x, y, row_group_size, extra=None):
    """Images x (flattened) as a 'pixels' array column and labels y, written as Parquet at path
    and read back by Spark; extra: more columns ({name: values})."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    flat = x.reshape(len(x), -1)
    offsets = pa.array(np.arange(0, flat.size + 1, flat.shape[1], dtype=np.int32))
    columns = {"pixels": pa.ListArray.from_arrays(offsets, pa.array(flat.ravel())),
               "label": pa.array(y.astype(np.float64))}
    columns.update({k: pa.array(v) for k, v in (extra or {}).items()})
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return spark.read.parquet(path)


def mnist_set(spark, workdir, n_train=60000, n_test=10000):
    from spark_nn.datasets import digits_28

    xtr, ytr = digits_28(n_train, "train")
    xte, yte = digits_28(n_test, "test")
    path = os.path.join(workdir, "mnist60k.npz")
    np.savez(path, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    train = pixel_parquet(spark, os.path.join(workdir, "train.parquet"), xtr, ytr, 8192)
    test = pixel_parquet(spark, os.path.join(workdir, "test.parquet"), xte, yte, 8192)
    return train, test, "pixels", path, train, test, 784


# ---------------------------------------------------------------- report
def colour_digits(x, seed):
    """1x28x28 digits images as 3x32x32 colour ones: padded, each channel a random tint of the
    digit, plus a random background level and noise."""
    rng = np.random.default_rng(seed)
    x = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    tint = rng.uniform(0.3, 1.0, (len(x), 3, 1, 1)).astype(np.float32)
    noise = rng.normal(0, 0.1, (len(x), 3, 32, 32)).astype(np.float32)
    return np.clip(x * tint + noise + rng.uniform(0, 0.3, (len(x), 3, 1, 1)), 0, 1).astype(np.float32)


def resnet_set(spark, workdir, n_train=2048, n_test=512):
    """3x32x32 colour images made from the digits (digits_28, padded to 32x32, each channel a
    random tint of the digit plus noise), as Parquet read by Spark, and numpy copies."""
    from spark_nn.datasets import digits_28

    (xtr, ytr), (xte, yte) = digits_28(n_train, "train"), digits_28(n_test, "test")
    xtr, xte = colour_digits(xtr, 0), colour_digits(xte, 1)
    path = os.path.join(workdir, "resnet.npz")
    np.savez(path, xtr=xtr, ytr=ytr, xte=xte, yte=yte)
    train = pixel_parquet(spark, os.path.join(workdir, "rtrain.parquet"), xtr, ytr, 512)
    test = pixel_parquet(spark, os.path.join(workdir, "rtest.parquet"), xte, yte, 512)
    return train, test, "pixels", path, None, None, 0


def time_to(history, target, start=0.0):
    t = start
    for seconds, acc in history:
        t += seconds
        if acc is not None and acc >= target:
            return t
    return None


def report(name, rows, target):
    print(f"## {name}: wall time, accuracy, time to {target:.3f} test accuracy")
    print()
    table = []
    for label, wall, history, setup, note in rows:
        epochs = len(history) if history else None
        per_epoch = np.mean([s for s, _ in history]) if history else None
        final = history[-1][1] if history else note.get("acc")
        final = final if final is not None else float("nan")
        reach = time_to(history, target, setup) if history else None
        table.append([label, f"{wall:.1f}", f"{setup:.1f}" if history else "-", epochs or "-",
                      f"{per_epoch:.2f}" if per_epoch else "-", f"{final:.4f}",
                      f"{reach:.1f}" if reach else "not reached", note.get("text", "")])
    print_table(["contender", "wall s", "start-up s", "epochs", "s/epoch", "final acc", "s to target", "notes"],
                table)
    print()


def compare(spark, name, make, epochs_ours, epochs_torch, mlp_iter, workdir, only, lr, kind="cnn"):
    train, test, input_col, npz, pix_train, pix_test, features = make(spark, workdir)
    rows = []

    def done(row):
        rows.append(row)
        print(f"{name}: {row[0]}: wall {row[1]:.1f} s, per epoch {[round(s, 2) for s, _ in row[2] or []]}, "
              f"accuracy {[a for _, a in row[2] or []] or row[4].get('acc')}", flush=True)

    if "ours" in only:
        wall, hist, setup, ks = run_ours(train, test, epochs_ours, input_col, kind)
        done(("spark_nn (seed program, defaults)" if kind == "cnn" else "spark_nn (NetworkClassifier, defaults)", wall, hist, setup, {"text": f"k per epoch {sorted(set(ks))}"}))
    if "pipelined" in only and kind == "cnn":
        wall, hist, setup, ks = run_ours(train, test, epochs_ours, input_col, pipelineRounds=True)
        done(("spark_nn pipelined (seed program, pipelineRounds=True)", wall, hist, setup,
              {"text": f"k per epoch {sorted(set(ks))}"}))
    if "limit" in only:
        wall, hist = run_limit(npz, epochs_ours or epochs_torch, kind=kind)
        done(("limit: spark_nn in one process, 2 threads", wall, hist, 0.0, {"text": "no Spark; Adam 3e-3, batch 32"}))
    if "bf16" in only and bf16_available():
        wall, hist = run_limit(npz, epochs_ours or epochs_torch, kind=kind, precision="bf16")
        done(("limit bf16: spark_nn in one process, precision='bf16'", wall, hist, 0.0,
              {"text": "no Spark; Adam 3e-3, batch 32"}))
        if kind == "cnn":
            wall, hist, setup, ks = run_ours(train, test, epochs_ours, input_col, precision="bf16")
            done(("spark_nn bf16 (seed program, precision='bf16')", wall, hist, setup,
                  {"text": f"k per epoch {sorted(set(ks))}"}))
    if "torchdistributor" in only:
        wall, hist = run_torch_distributor(npz, epochs_torch, lr, kind)
        done(("TorchDistributor, 2 processes", wall, hist, wall - sum(s for s, _ in hist), {}))
    if "torch" in only:
        wall, hist = run_torch_single(npz, epochs_torch, lr, kind)
        done(("torch, one process, 2 threads", wall, hist, wall - sum(s for s, _ in hist), {}))
    if "mllib" in only and mlp_iter:
        wall, acc = run_mllib(pix_train, pix_test, features, mlp_iter)
        done((f"MLlib MLP [{features}, 128, 10], maxIter {mlp_iter}", wall, None, 0.0,
              {"acc": acc, "text": "dense net, no convolutions"}))
    print()
    report(name, rows, TARGETS[name])
    by = {row[0].split(":")[0].split(",")[0].split(" (")[0]: row for row in rows}

    def per_epoch(row):
        return np.mean([sec for sec, _ in row[2]])

    for fast, slow, what in (("limit bf16", "limit", "in-process"), ("spark_nn bf16", "spark_nn", "Spark")):
        a, b = by.get(fast), by.get(slow)
        if a and b and a[2] and b[2]:
            print(f"{name}: our {what} epoch fp32 / bf16 = {per_epoch(b) / per_epoch(a):.2f}x (final accuracy "
                  f"{b[2][-1][1]:.4f} fp32, {a[2][-1][1]:.4f} bf16)")
    for which, kind in (("spark_nn", "our Spark epoch"), ("spark_nn pipelined", "our pipelined Spark epoch")):
        ours = by.get(which)
        if not (ours and ours[2]):
            continue
        for label, peer in (("our in-process epoch (limit)", by.get("limit")),
                            ("TorchDistributor's", by.get("TorchDistributor"))):
            if peer and peer[2]:
                print(f"{name}: {kind} / {label} = {per_epoch(ours) / per_epoch(peer):.2f}x "
                      f"(wall {ours[1]:.1f} vs {peer[1]:.1f} s; final accuracy {ours[2][-1][1]:.4f} vs "
                      f"{peer[2][-1][1]:.4f})")
        print()


def compare_text(spark, epochs):
    """The text set (text_rnn.py's data and pipelines): the seed's RNN program at defaults, the
    same with LSTM cells, and MLlib's Tokenizer + HashingTF + LogisticRegression at defaults."""
    from text_rnn import fit_bag_of_words, fit_rnn, text_frames

    train, test = text_frames(spark)
    n_train = train.count()
    runs = [("spark_nn: seed RNN program, defaults", lambda: fit_rnn(train, test, epochs)),
            ("spark_nn: same, cellType='lstm'", lambda: fit_rnn(train, test, epochs, cellType="lstm")),
            ("MLlib HashingTF + LogisticRegression, defaults", lambda: fit_bag_of_words(train, test)),
            ("spark_nn: seed RNN program, maxIter=30 (the default before)", lambda: fit_rnn(train, test, 30))]
    table, fits = [], {}
    for name, fit in runs:
        acc, seconds = fit()
        fits[name] = (acc, seconds)
        table.append([name, f"{seconds:.1f}", f"{acc:.4f}"])
        print(f"text: {name}: fit {seconds:.1f} s, accuracy {acc:.4f}", flush=True)
    print()
    print(f"## text (Rotten Tomatoes snippets, {n_train} training rows): fit time and test accuracy")
    print()
    print_table(["contender", "fit s", "test accuracy"], table)
    seed, mllib = fits[runs[0][0]], fits[runs[2][0]]
    old = fits[runs[3][0]]
    print(f"text: seed RNN fit / MLlib pipeline fit = {seed[1] / mllib[1]:.2f}x (accuracy {seed[0]:.4f} vs "
          f"{mllib[0]:.4f}); at 30 epochs {old[1] / mllib[1]:.2f}x (accuracy {old[0]:.4f})")
    print()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", nargs="+", default=["digits", "mnist60k", "text"],
                    choices=["digits", "mnist60k", "text", "resnet18"])
    ap.add_argument("--resnet-epochs", type=int, default=2)
    ap.add_argument("--resnet-rows", type=int, default=2048, help="training images of the resnet18 set")
    ap.add_argument("--text-epochs", type=int, default=None, help="maxIter of the text networks (default: theirs)")
    ap.add_argument("--digits-torch-epochs", type=int, default=30)
    ap.add_argument("--mnist-epochs", type=int, default=3)
    ap.add_argument("--mnist-rows", type=int, default=60000)
    ap.add_argument("--mllib-60k-iter", type=int, default=0,
                    help="MLlib's L-BFGS iterations on the 60k set (0, the default: not run; 5 iterations did not "
                         "finish in 6 minutes here, see the docstring)")
    ap.add_argument("--torch-lr", type=float, default=3e-3,
                    help="Adam's learning rate for the torch peers (cosine decay; 3e-3 beat 1e-3 for them)")
    ap.add_argument("--only", nargs="+",
                    default=["ours", "pipelined", "limit", "bf16", "torchdistributor", "torch", "mllib"],
                    choices=["ours", "pipelined", "limit", "bf16", "torchdistributor", "torch", "mllib"],
                    help="contenders; 'bf16': ours in one process and on Spark with precision='bf16' (where the "
                         "CPU has AVX512_BF16)")
    args = ap.parse_args(argv)
    from spark_nn.ml.session import local_session

    spark = local_session("local[2]", "spark_nn vs peers", conf={"spark.driver.memory": "4g"})
    try:
        with tempfile.TemporaryDirectory(prefix="spark_nn_peers_") as workdir:
            if "digits" in args.sets:
                compare(spark, "digits", digits_set, None, args.digits_torch_epochs, 300, workdir, args.only,
                        args.torch_lr)
            if "mnist60k" in args.sets:
                compare(spark, "mnist60k", lambda sp, wd: mnist_set(sp, wd, args.mnist_rows), args.mnist_epochs,
                        args.mnist_epochs, args.mllib_60k_iter, workdir, args.only,
                        args.torch_lr)
            if "text" in args.sets:
                compare_text(spark, args.text_epochs)
            if "resnet18" in args.sets:
                compare(spark, "resnet18", lambda sp, wd: resnet_set(sp, wd, args.resnet_rows), args.resnet_epochs,
                        args.resnet_epochs, 0, workdir, args.only, args.torch_lr, kind="resnet18")
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
