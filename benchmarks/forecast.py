"""Forecasting real series on Spark: RNNRegressor (each cell type, at its defaults) against
persistence (the last value) and MLlib's LinearRegression and GBTRegressor on the same lags, in
one run; then a regressor's round against a classifier's round of the same network.

    python benchmarks/forecast.py [--series elnino,sunspots,co2] [--window 24] [--units 32]
                                  [--part forecast,rounds]

Series (shipped by statsmodels as CSV files, read without importing it: pip install statsmodels):
- elnino: monthly sea surface temperature in the Nino 1+2 region, 1950-2010 (732 months);
- sunspots: yearly mean sunspot number, 1700-2008 (309 years);
- co2: weekly CO2 at Mauna Loa, 1958-2001 (2284 weeks; the 59 missing weeks interpolated).
All series go into one long DataFrame (series, t, value); TimeSeriesWindows makes the windows per
series (--window past values, the next one the target). The last 20 % of each series' windows (by
time) are the test rows. Contenders per series, fit on the training windows only:
persistence; LinearRegression and GBTRegressor (MLlib defaults) on the window's values as lag
columns through a VectorAssembler; RNNRegressor(layers=[--units], cellType=c) for c in rnn,
lstm, gru, every other param at its default. Printed: test RMSE and fit seconds.

Part "rounds": the same LSTM network (window of the elnino series, localSteps=1, 3 epochs) fit as
a regressor (the next value) and as a classifier (whether it rises), seconds per round (median
over rounds after the first epoch): a regressor's round is a classifier's with another loss.
"""
import argparse
import csv
import importlib.util
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from timing import print_table  # noqa: E402


def _csv(name):
    spec = importlib.util.find_spec("statsmodels")
    if spec is None:
        sys.exit("benchmarks/forecast.py reads statsmodels' datasets: pip install statsmodels")
    path = os.path.join(os.path.dirname(spec.origin), "datasets", name, f"{name}.csv")
    with open(path) as f:
        return list(csv.reader(f))


def load_series(name):
    """(times as ints, values as float64) of a series shipped by statsmodels."""
    rows = _csv(name)[1:]
    if name == "elnino":
        values = np.array([[float(v) for v in r[1:]] for r in rows]).ravel()
        return np.arange(len(values)), values
    if name == "sunspots":
        return np.array([int(float(r[0])) for r in rows]), np.array([float(r[1]) for r in rows])
    if name == "co2":
        values = np.array([float(r[1]) if r[1] else np.nan for r in rows])
        bad = np.isnan(values)
        values[bad] = np.interp(np.flatnonzero(bad), np.flatnonzero(~bad), values[~bad])
        return np.arange(len(values)), values
    raise ValueError(name)


def long_frame(spark, names):
    rows = []
    for name in names:
        t, v = load_series(name)
        rows += [(name, int(a), float(b)) for a, b in zip(t, v)]
    return spark.createDataFrame(rows, "series string, t long, value double")


def windows(spark, names, window):
    """The windows of every series, with the lag columns and a 'test' flag (the last 20 % by time)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from spark_nn.ml.feature import TimeSeriesWindows

    ts = TimeSeriesWindows(keyCols=["series"], timeCol="t", inputCols=["value"], window=window, horizon=1)
    w = ts.transform(long_frame(spark, names))
    rank = F.percent_rank().over(Window.partitionBy("series").orderBy("t"))
    w = w.withColumn("test", rank >= 0.8)
    for i in range(window):
        w = w.withColumn(f"lag{i}", F.col("window")[i][0])
    return w.cache()


def rmse_of(df, pred="prediction"):
    from pyspark.sql import functions as F

    r = df.select(F.sqrt(F.avg((F.col(pred) - F.col("target")) ** 2)).alias("rmse")).first()
    return float(r.rmse)


def forecast(spark, names, window, units):
    from pyspark.ml import Pipeline
    from pyspark.ml.feature import VectorAssembler
    from pyspark.ml.regression import GBTRegressor, LinearRegression
    from pyspark.sql import functions as F

    from spark_nn.ml.regression import RNNRegressor

    data = windows(spark, names, window)
    lags = [f"lag{i}" for i in range(window)]
    rows = []
    for name in names:
        one = data.where(F.col("series") == name)
        train, test = one.where(~F.col("test")).cache(), one.where(F.col("test")).cache()
        n_train, n_test = train.count(), test.count()
        results = [("persistence", rmse_of(test.withColumn("prediction", F.col(lags[-1]))), 0.0)]
        for label, est in (("MLlib LinearRegression", LinearRegression(labelCol="target")),
                           ("MLlib GBTRegressor", GBTRegressor(labelCol="target", seed=0))):
            pipe = Pipeline(stages=[VectorAssembler(inputCols=lags, outputCol="features"), est])
            t0 = time.perf_counter()
            model = pipe.fit(train)
            results.append((label, rmse_of(model.transform(test)), time.perf_counter() - t0))
        for cell in ("rnn", "lstm", "gru"):
            est = RNNRegressor(layers=[units], cellType=cell, featuresCol="window", labelCol="target")
            t0 = time.perf_counter()
            model = est.fit(train)
            results.append((f"RNNRegressor {cell}", rmse_of(model.transform(test)), time.perf_counter() - t0))
        best_mllib = min(r[1] for r in results if r[0].startswith("MLlib"))
        for label, rmse, seconds in results:
            rows.append((name, f"{n_train}/{n_test}", label, f"{rmse:.4f}", f"{rmse / best_mllib:.3f}",
                         f"{seconds:.1f}" if seconds else "-"))
        train.unpersist()
        test.unpersist()
        print(f"{name} done", flush=True)
    print()
    print_table(["series", "train/test windows", "model", "test RMSE", "vs best MLlib", "fit s"], rows)


def rounds(spark, window, units, epochs=3):
    from pyspark.sql import functions as F

    from spark_nn.ml.classification import RNNClassifier
    from spark_nn.ml.regression import RNNRegressor

    data = windows(spark, ["elnino"], window).withColumn(
        "rises", (F.col("target") > F.col(f"lag{window - 1}")).cast("double"))
    common = dict(layers=[units], cellType="lstm", featuresCol="window", maxIter=epochs, localSteps=1, seed=0)
    rows = []
    for label, est in (("RNNRegressor (squaredError)", RNNRegressor(labelCol="target", **common)),
                       ("RNNClassifier (2 classes)", RNNClassifier(labelCol="rises", **common))):
        model = est.fit(data)
        per_round = [e["seconds"] / e["rounds"] for e in model.summary.epochs[1:]]
        rows.append((label, len(model.summary.objectiveHistory), f"{np.median(per_round) * 1e3:.1f}"))
    print()
    print_table(["fit", "rounds", "ms per round (median of epochs 2..)"], rows)
    ratio = float(rows[0][2]) / float(rows[1][2])
    print(f"regressor / classifier time per round: {ratio:.3f}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--series", default="elnino,sunspots,co2")
    ap.add_argument("--window", type=int, default=24)
    ap.add_argument("--units", type=int, default=32)
    ap.add_argument("--part", default="forecast,rounds")
    args = ap.parse_args(argv)
    from spark_nn.ml.session import local_session

    spark = local_session("local[2]", "spark_nn forecast", conf={"spark.driver.memory": "4g"})
    try:
        parts = args.part.split(",")
        if "forecast" in parts:
            forecast(spark, args.series.split(","), args.window, args.units)
        if "rounds" in parts:
            rounds(spark, args.window, args.units)
    finally:
        spark.stop()


if __name__ == "__main__":
    main()
