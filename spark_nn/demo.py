"""The main job: train a CNN on scikit-learn's bundled digits with Spark and report.

    python -m spark_nn.demo [--master local[2]] [--epochs N] [--output spark_nn_demo]
    spark-nn --master spark://host:7077
    spark-nn --remote sc://host:15002        # a Spark Connect server
    spark-nn --remote local                  # a local Connect server on --master

Runs in local[2] by default (no cluster needed) with the CNN's default params: shows a progress
bar on the driver and Spark job descriptions ("spark_nn CNNClassifier.fit: epoch 3/30, step
..."), prints the test accuracy, the setup and epoch times and the wall time, saves the model
under --output and, when matplotlib is installed, the loss/accuracy curves (with the held-out
split's validation curve) as a PNG.
"""
import argparse
import os
import sys
import time


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="spark-nn", description=__doc__.split("\n\n")[0])
    p.add_argument("--master", default="local[2]", help="Spark master URL (default local[2])")
    p.add_argument("--remote", default=None,
                   help="run on Spark Connect: a server URL (sc://host:15002), or 'local' for a local server "
                        "on --master (needs pip install 'spark_nn[connect]')")
    # SPARK_NN_DEMO_EPOCHS shortens the run where the demo itself is under test (CI's quick-start run)
    epochs = os.environ.get("SPARK_NN_DEMO_EPOCHS")
    p.add_argument("--epochs", type=int, default=int(epochs) if epochs else None,
                   help="passes over the training data (default: the CNN's maxIter default)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="examples per step over all partitions (default: the CNN's batchSize default)")
    p.add_argument("--output", default="spark_nn_demo", help="folder for the saved model and the curves PNG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    t_start = time.perf_counter()
    from spark_nn.ml.session import local_session, remote_session

    try:
        spark = (remote_session(args.remote, args.master, "spark_nn demo") if args.remote
                 else local_session(args.master, "spark_nn demo"))
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    # the session stops on every way out (an error, Ctrl-C), before the interpreter exits: its
    # Python workers then go with it instead of finding their sockets closed under them
    with spark:
        return _train_and_report(spark, args, t_start)


def _train_and_report(spark, args, t_start):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.linalg import Vectors

    from spark_nn.datasets import digits_split
    from spark_nn.ml.classification import CNN

    xtr, xte, ytr, yte = digits_split(seed=0)
    print(f"spark_nn demo: digits (scikit-learn), {len(xtr)} training and {len(xte)} test images of 8x8, "
          f"Spark {spark.version} at {args.master}"
          + (f" through Spark Connect ({args.remote})" if args.remote else ""))

    def frame(x, y, held_out):
        rows = [(Vectors.dense(a.ravel().tolist()), float(b), held_out) for a, b in zip(x, y)]
        return spark.createDataFrame(rows, ["features", "label", "heldOut"])

    # the held-out split is the fit's validation data (a validation curve in the summary and the
    # PNG) and the test set the accuracy is reported on
    test = frame(xte, yte, True).cache()
    data = frame(xtr, ytr, False).unionByName(test).cache()
    cnn = CNN(layers=[32, 64, 10], activation="relu", inputCol="features", outputCol="label", numClasses=10,
              validationIndicatorCol="heldOut", seed=args.seed, verbose=not args.quiet)
    if args.epochs is not None:
        cnn.setMaxIter(args.epochs)
    if args.batch_size is not None:
        cnn.setBatchSize(args.batch_size)
    t_fit = time.perf_counter()
    model = cnn.fit(data)
    fit_seconds = time.perf_counter() - t_fit
    accuracy = MulticlassClassificationEvaluator(metricName="accuracy").evaluate(model.transform(test))
    epochs = model.summary.epochs
    epoch_seconds = sum(e["seconds"] for e in epochs)

    os.makedirs(args.output, exist_ok=True)
    model_path = os.path.join(args.output, "model")
    model.write().overwrite().save(model_path)
    plot_path = os.path.join(args.output, "training_curves.png")
    try:
        model.summary.plot(plot_path)
    except ImportError:
        plot_path = None
    print(f"test accuracy: {accuracy:.4f}")
    print(f"fit time: {fit_seconds:.1f} s = setup {fit_seconds - epoch_seconds:.1f} s (one pass over the data, "
          f"worker start-up) + {len(epochs)} epochs {epoch_seconds:.1f} s ({epoch_seconds / len(epochs):.2f} s per "
          f"epoch, {model.summary.totalIterations} steps, local steps per round {epochs[-1]['local_steps']}); "
          f"wall time: {time.perf_counter() - t_start:.1f} s")
    print(f"model saved to {model_path}")
    print(f"training curves: {plot_path}" if plot_path else
          "training curves: install matplotlib (pip install 'spark_nn[plot]') for the PNG")
    return 0


if __name__ == "__main__":
    sys.exit(main())
