"""TimeSeriesWindows: long time series -> (window, target) rows for forecasting, checked against a
plain Python loop over the same rows and against hand-worked values."""
import datetime as dt

import numpy as np
import pytest
from pyspark.ml import Pipeline, PipelineModel
from pyspark.sql.types import (ArrayType, DateType, DoubleType, LongType, StringType, StructField, StructType,
                               TimestampType)

from spark_nn.ml.feature import TimeSeriesWindows
from spark_nn.ml.timeseries import window_starts

SCHEMA = StructType([StructField("store", StringType()), StructField("t", LongType()),
                     StructField("sales", DoubleType()), StructField("temp", DoubleType())])


def _rows():
    """Four stores: a regular, b with a gap after t=4, c sampled every 2 steps, d a single row;
    shuffled, so the transformer has to sort."""
    rows = [("a", t, 10.0 * t + 1, -float(t)) for t in range(10)]
    rows += [("b", t, 100.0 + t, 0.25 * t) for t in [0, 1, 2, 3, 4, 6, 7, 8, 9, 10, 11, 12]]
    rows += [("c", t, 500.0 + t, 7.0 - t) for t in [0, 2, 4, 6, 8]]
    rows += [("d", 0, 1.0, 2.0)]
    order = np.random.default_rng(3).permutation(len(rows))
    return [rows[i] for i in order]


def reference(rows, inputs, targets, window, horizon, step, time_step):
    """The windows by hand: per store, sort by time, cut where consecutive times are not
    time_step apart (None: the store's smallest difference), then walk each piece."""
    col = {"sales": 2, "temp": 3}
    out = []
    for store in sorted({r[0] for r in rows}):
        series = sorted((r for r in rows if r[0] == store), key=lambda r: r[1])
        if len(series) < 2:
            continue
        spacing = time_step or min(b[1] - a[1] for a, b in zip(series, series[1:]))
        pieces = [[series[0]]]
        for prev, row in zip(series, series[1:]):
            if row[1] - prev[1] == spacing:
                pieces[-1].append(row)
            else:
                pieces.append([row])
        for piece in pieces:
            i = 0
            while i + window - 1 + horizon < len(piece):
                last, ahead = piece[i + window - 1], piece[i + window - 1 + horizon]
                x = [[r[col[c]] for c in inputs] for r in piece[i:i + window]]
                y = ahead[col[targets[0]]] if len(targets) == 1 else [ahead[col[c]] for c in targets]
                out.append((store, last[1], x, y))
                i += step
    return sorted(out)


def _collected(df, key="store", time="t"):
    return sorted((r[key], r[time], r["window"], r["target"]) for r in df.collect())


@pytest.mark.parametrize("inputs, targets, window, horizon, step, time_step", [
    (["sales", "temp"], None, 1, 1, 1, 1),
    (["temp", "sales"], ["temp", "sales"], 3, 2, 2, None),
    (["sales"], ["temp"], 2, 3, 3, 1.0),
])
def test_windows_match_a_python_loop(spark, inputs, targets, window, horizon, step, time_step):
    rows = _rows()
    df = spark.createDataFrame(rows, SCHEMA)
    tw = TimeSeriesWindows(keyCols=["store"], timeCol="t", inputCols=inputs, targetCols=targets, window=window,
                           horizon=horizon, step=step, timeStep=time_step)
    expected = reference(rows, inputs, targets or inputs[:1], window, horizon, step, time_step)
    got = _collected(tw.transform(df))
    assert got == expected
    assert {r[0] for r in got} >= {"a", "b"}  # something to compare in the two main stores
    if time_step is None:
        assert any(r[0] == "c" for r in got)  # c's own spacing (2) is its step: no gaps there
    else:
        assert not any(r[0] in ("c", "d") for r in got)


def test_hand_worked_windows_and_schema(spark):
    df = spark.createDataFrame([(1, 1.0, 10.0), (2, 2.0, 20.0), (3, 3.0, 30.0), (4, 4.0, 40.0)], ["t", "x", "y"])
    out = TimeSeriesWindows(timeCol="t", inputCols=["y", "x"], window=2).transform(df)
    assert out.columns == ["t", "window", "target"]
    assert out.schema["t"].dataType == LongType()
    assert out.schema["window"].dataType.simpleString() == "array<array<double>>"
    assert out.schema["target"].dataType == DoubleType()
    assert sorted(tuple(r) for r in out.collect()) == [(2, [[10.0, 1.0], [20.0, 2.0]], 30.0),
                                                       (3, [[20.0, 2.0], [30.0, 3.0]], 40.0)]
    several = TimeSeriesWindows(timeCol="t", inputCols=["x"], targetCols=["y", "x"], window=2, outputCol="w",
                                targetCol="next").transform(df)
    assert several.columns == ["t", "w", "next"]
    assert several.schema["next"].dataType == ArrayType(DoubleType(), False)  # no job: the schema only


def test_gaps_duplicates_and_nulls_are_errors_naming_key_and_time(spark):
    gap = spark.createDataFrame([("a", t, float(t)) for t in range(4)] + [("b", t, 1.0) for t in (0, 1, 2, 4, 5)],
                                ["store", "t", "x"])
    tw = TimeSeriesWindows(keyCols=["store"], timeCol="t", inputCols=["x"], window=2, gapPolicy="error")
    with pytest.raises(Exception, match=r"key store='b' has a gap: t=2 is followed by t=4, 2 apart, not timeStep 1"):
        tw.transform(gap).collect()

    dup = spark.createDataFrame([("a", 1, 1.0), ("a", 2, 2.0), ("b", 3, 3.0), ("a", 2, 5.0)], ["store", "t", "x"])
    with pytest.raises(Exception, match=r"key store='a' has more than one row at t=2"):
        tw.setGapPolicy("break").transform(dup).collect()

    schema = StructType([StructField("store", StringType()), StructField("t", LongType()),
                         StructField("sales", DoubleType())])
    null = spark.createDataFrame([("a", 0, 1.0), ("a", 1, None), ("a", 2, 3.0)], schema)
    with pytest.raises(Exception, match=r"column 'sales' is null, NaN or infinite at key store='a', t=1"):
        TimeSeriesWindows(keyCols=["store"], timeCol="t", inputCols=["sales"], window=1).transform(null).collect()


def test_skip_drops_the_windows_that_read_a_null(spark):
    schema = StructType([StructField("t", LongType()), StructField("x", DoubleType())])
    rows = [(t, None if t == 3 else float(t)) for t in range(7)] + [(None, 9.0)]
    df = spark.createDataFrame(rows, schema)
    out = TimeSeriesWindows(timeCol="t", inputCols=["x"], window=2, handleInvalid="skip").transform(df)
    # windows ending at 1..5: the one whose target is t=3 and the two reading t=3 go; the row
    # without a time is dropped and moves nothing
    assert sorted(tuple(r) for r in out.collect()) == [(1, [[0.0], [1.0]], 2.0), (5, [[4.0], [5.0]], 6.0)]


def test_timestamp_and_date_time_columns(spark):
    hours = [0, 1, 2, 4, 5, 6]  # 03:00 missing
    ts = spark.createDataFrame([(dt.datetime(2024, 3, 9, h), float(h)) for h in hours], ["ts", "x"])
    out = TimeSeriesWindows(timeCol="ts", inputCols=["x"], window=2, timeStep=3600).transform(ts)
    assert out.schema["ts"].dataType == TimestampType()
    hourly = [(dt.datetime(2024, 3, 9, 1), [[0.0], [1.0]], 2.0), (dt.datetime(2024, 3, 9, 5), [[4.0], [5.0]], 6.0)]
    assert sorted(tuple(r) for r in out.collect()) == hourly
    # wall-clock time, the step taken from the data (the smallest difference: an hour)
    ntz = ts.select(ts["ts"].cast("timestamp_ntz").alias("ts"), "x")
    out = TimeSeriesWindows(timeCol="ts", inputCols=["x"], window=2).transform(ntz)
    assert out.schema["ts"].dataType.simpleString() == "timestamp_ntz"
    assert sorted(tuple(r) for r in out.collect()) == hourly

    start = dt.date(2024, 2, 27)  # over a leap day
    days = spark.createDataFrame([("s", start + dt.timedelta(days=i), float(i)) for i in (0, 1, 2, 3, 5)],
                                 ["k", "day", "x"])
    tw = TimeSeriesWindows(keyCols=["k"], timeCol="day", inputCols=["x"], window=1, horizon=2, timeStep=1)
    out = tw.transform(days)
    assert out.schema["day"].dataType == DateType()
    assert sorted(tuple(r) for r in out.collect()) == [("s", dt.date(2024, 2, 27), [[0.0]], 2.0),
                                                       ("s", dt.date(2024, 2, 28), [[1.0]], 3.0)]
    with pytest.raises(Exception, match=r"key k='s' has a gap: day=2024-03-01 is followed by day=2024-03-03, "
                                        r"2 days apart, not timeStep 1 days"):
        tw.setGapPolicy("error").transform(days).collect()


def test_bad_params_and_columns_fail_before_any_job(spark):
    df = spark.createDataFrame([("a", 1, 1.0, "x")], ["store", "t", "sales", "name"])

    def transform(**kw):
        TimeSeriesWindows(**dict(dict(keyCols=["store"], timeCol="t", inputCols=["sales"], window=2), **kw)
                          ).transform(df)

    for kw, match in [({"window": 0}, "window must be an int >= 1"), ({"horizon": 0}, "horizon"),
                      ({"step": -1}, "step"), ({"timeStep": 0}, "timeStep"), ({"gapPolicy": "skip"}, "gapPolicy"),
                      ({"handleInvalid": "keep"}, "handleInvalid")]:
        with pytest.raises(ValueError, match=match):
            transform(**kw)
    for kw, match in [({"inputCols": ["sales", "price"]}, "inputCols column 'price' is not in the DataFrame"),
                      ({"keyCols": ["shop"]}, "keyCols column 'shop'"),
                      ({"inputCols": ["name"]}, "inputCols column 'name' has type string"),
                      ({"targetCols": ["name"]}, "targetCols column 'name' has type string"),
                      ({"timeCol": "name"}, "timeCol 'name' has type string"),
                      ({"inputCols": []}, "inputCols is empty"),
                      ({"outputCol": "store"}, "outputCol 'store'"),
                      ({"targetCol": "window"}, "both 'window'")]:
        with pytest.raises(ValueError, match=match):
            transform(**kw)
    with pytest.raises(ValueError, match="set window"):
        TimeSeriesWindows(timeCol="t", inputCols=["sales"]).transform(df)


def test_save_load_and_pipeline(spark, tmp_path):
    rows = _rows()
    df = spark.createDataFrame(rows, SCHEMA)
    tw = TimeSeriesWindows(keyCols=["store"], timeCol="t", inputCols=["temp", "sales"], targetCols=["sales"],
                           window=3, horizon=2, step=2, timeStep=1, handleInvalid="skip")
    tw.save(str(tmp_path / "tw"))
    loaded = TimeSeriesWindows.load(str(tmp_path / "tw"))
    assert {p.name: v for p, v in loaded.extractParamMap().items()} == \
        {p.name: v for p, v in tw.extractParamMap().items()}
    assert loaded.getTargetCols() == ["sales"] and loaded.getTimeStep() == 1.0

    model = Pipeline(stages=[tw]).fit(df)
    model.write().overwrite().save(str(tmp_path / "pipeline"))
    got = _collected(PipelineModel.load(str(tmp_path / "pipeline")).transform(df))
    assert got == reference(rows, ["temp", "sales"], ["sales"], 3, 2, 2, 1)


def test_window_starts_grid_restarts_after_a_gap():
    # 8 rows, a gap between rows 2 and 3: pieces [0..2] and [3..7]
    gaps = np.array([False, False, True, False, False, False, False])
    assert window_starts(gaps, 1, 1, 2).tolist() == [0, 3, 5]
    assert window_starts(gaps, 2, 1, 1).tolist() == [0, 3, 4, 5]
    bad = np.zeros(8, dtype=bool)
    bad[5] = True
    assert window_starts(gaps, 2, 1, 1, bad_inputs=bad).tolist() == [0, 3]
    assert window_starts(gaps, 2, 1, 1, bad_targets=bad).tolist() == [0, 4, 5]
    assert window_starts(gaps, 6, 1, 1).tolist() == []
