"""Forecasting rows from long time series: TimeSeriesWindows turns one row per (key, time) into
one row per window of past steps, with the value to forecast some steps ahead."""
import numpy as np
import pandas as pd
from pyspark import keyword_only
from pyspark.ml import Transformer
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable
from pyspark.sql import functions as F
from pyspark.sql.types import (ArrayType, DateType, DoubleType, NumericType, StructField, StructType,
                               TimestampNTZType, TimestampType)

from spark_nn.ml.params import HANDLE_INVALID, _check, _in, with_accessors
from spark_nn.ml.persistence import ParamsWritable

GAP_POLICIES = ("break", "error")
_PREFIX = "__spark_nn_ts_"
_TIME = _PREFIX + "t"  # the time as a number: timeCol's own units, microseconds, or days
_FLAT = _PREFIX + "window"  # a window flat (steps x features), shaped by Spark SQL afterwards


def _name(col):
    """A column reference that takes col as one name (dots and backticks included)."""
    return F.col("`" + col.replace("`", "``") + "`")


def _time_units(t):
    """For a timeCol of Spark type t: (function column name -> the time as a number, that
    number's units per unit of timeStep, timeStep's unit), or None when t cannot be a time."""
    if isinstance(t, TimestampType):
        return (lambda c: F.unix_micros(_name(c))), 1e6, " seconds"
    if isinstance(t, TimestampNTZType):
        return (lambda c: F.expr("timestampdiff(MICROSECOND, TIMESTAMP_NTZ'1970-01-01 00:00:00', `"
                                 + c.replace("`", "``") + "`)")), 1e6, " seconds"
    if isinstance(t, DateType):
        return (lambda c: F.datediff(_name(c), F.lit("1970-01-01").cast("date"))), 1.0, " days"
    if isinstance(t, NumericType):
        return (lambda c: _name(c).cast("double")), 1.0, ""
    return None


def window_starts(gaps, window, horizon, step, bad_inputs=None, bad_targets=None):
    """Row indices (into one key's time-sorted rows) where kept windows start.

    gaps: bool (n-1,), True where rows i and i+1 are not one timeStep apart; a window's span
    (its window rows and its target row, horizon rows after its last) never holds one. Windows
    start `step` rows apart counted from each gap-free segment's first row. bad_inputs /
    bad_targets: bool (n,), rows whose inputs / targets are invalid: windows reading them are
    dropped without moving the others."""
    n = len(gaps) + 1
    m = n - window - horizon + 1
    if m <= 0:
        return np.zeros(0, dtype=np.int64)
    seg = np.concatenate([[0], np.cumsum(gaps)])
    first = np.flatnonzero(np.concatenate([[True], gaps]))  # each segment's first row
    starts = np.arange(m)
    target = starts + window - 1 + horizon
    ok = (seg[starts] == seg[target]) & ((starts - first[seg[starts]]) % step == 0)
    if bad_inputs is not None and bad_inputs.any():
        count = np.concatenate([[0], np.cumsum(bad_inputs)])
        ok &= count[starts + window] == count[starts]
    if bad_targets is not None and bad_targets.any():
        ok &= ~bad_targets[target]
    return starts[ok]


def _group_windows(plan):
    """applyInPandas function: one key's rows -> its windows (keys, time, flat window, target)."""
    keys, time = plan["keys"], plan["time"]
    values, in_idx, tg_idx = plan["values"], plan["in_idx"], plan["tg_idx"]
    window, horizon, step = plan["window"], plan["horizon"], plan["step"]
    time_step, gap_policy, invalid = plan["timeStep"], plan["gapPolicy"], plan["handleInvalid"]
    value_cols = [f"{_PREFIX}v{i}" for i in range(len(values))]
    single = len(tg_idx) == 1
    out_cols = keys + [time, _FLAT, plan["targetCol"]]

    def fn(pdf):
        where = ("key " + ", ".join(f"{k}={pdf[k].iloc[:1].tolist()[0]!r}" for k in keys) if keys and len(pdf)
                 else "the series")
        t = pdf[_TIME].to_numpy(dtype=np.float64)
        if np.isnan(t).any():
            if invalid == "error":
                raise ValueError(f"TimeSeriesWindows: timeCol {time!r} is null in a row of {where}; drop such rows "
                                 "or set handleInvalid='skip'")
            pdf, t = pdf[~np.isnan(t)], t[~np.isnan(t)]
        order = np.argsort(t, kind="stable")
        pdf, t = pdf.iloc[order], t[order]
        times = pdf[time]
        d = np.diff(t)
        if (d == 0).any():
            i = int(np.flatnonzero(d == 0)[0])
            raise ValueError(f"TimeSeriesWindows: {where} has more than one row at {time}={times.iloc[i]}; times "
                             "must be unique within a key")
        v = pdf[value_cols].to_numpy(dtype=np.float64)
        bad = ~np.isfinite(v)
        if invalid == "error" and bad.any():
            r, c = np.argwhere(bad)[0]
            raise ValueError(f"TimeSeriesWindows: column {values[c]!r} is null, NaN or infinite at {where}, "
                             f"{time}={times.iloc[r]}; drop or fill such rows, or set handleInvalid='skip' to drop "
                             "the windows that read them")
        if len(t) >= 2:
            expected = d.min() if time_step is None else time_step
            gaps = ~np.isclose(d, expected, rtol=1e-6, atol=0)
            if gap_policy == "error" and gaps.any():
                i = int(np.flatnonzero(gaps)[0])
                raise ValueError(f"TimeSeriesWindows: {where} has a gap: {time}={times.iloc[i]} is followed by "
                                 f"{time}={times.iloc[i + 1]}, {d[i] / plan['perUnit']:g}{plan['unit']} apart, not "
                                 f"timeStep {expected / plan['perUnit']:g}{plan['unit']}; set gapPolicy='break' to "
                                 "treat the parts as separate series")
            starts = window_starts(gaps, window, horizon, step, bad[:, in_idx].any(axis=1),
                                   bad[:, tg_idx].any(axis=1))
        else:
            starts = np.zeros(0, dtype=np.int64)
        ends = starts + (window - 1)
        out = pdf[keys + [time]].iloc[ends].reset_index(drop=True)
        flat = np.zeros((len(starts), window * len(in_idx)))
        if len(starts):
            views = np.lib.stride_tricks.sliding_window_view(v[:, in_idx], window, axis=0)  # (n-window+1, F, window)
            flat[:] = views[starts].transpose(0, 2, 1).reshape(len(starts), -1)  # each row: steps x features
        out[_FLAT] = pd.Series(list(flat), dtype=object)
        y = v[ends + horizon][:, tg_idx]
        out[plan["targetCol"]] = y[:, 0] if single else pd.Series(list(y), dtype=object)
        return out[out_cols]

    return fn


@with_accessors
class TimeSeriesWindows(Transformer, DefaultParamsReadable, ParamsWritable):
    """Long time series -> forecasting rows: a window of the last ``window`` steps of inputCols
    and the targetCols' value ``horizon`` steps after the window's last step.

    Input: one row per key (keyCols; none: the whole DataFrame is one series) and time (timeCol:
    numeric, date, timestamp or timestamp_ntz). Output: one row per window, the other columns
    dropped, with

    - the key columns;
    - ``timeCol``: the time of the window's last step (same name and type as the input's);
    - ``outputCol`` (default 'window'): array<array<double>>, ``window`` steps x len(inputCols)
      values, oldest step first, features in inputCols' order (RNN's numeric sequence input);
    - ``targetCol`` (default 'target'): with one target column, a double, its value ``horizon``
      steps after the window's last step (horizon=1: the next step); with several, an
      array<double> of their values at that step, in targetCols' order. targetCols defaults to
      [inputCols[0]].

    Within a key, windows start ``step`` steps apart, the first at the key's first row (each
    gap-free segment's first row under gapPolicy='break'); windows never mix keys.

    Time spacing: ``timeStep`` is the expected difference between consecutive times, in
    timeCol's units when it is numeric, in seconds for timestamps (elapsed time; for
    timestamp_ntz, wall-clock time) and in days for dates. Unset, each key's smallest
    difference between consecutive times is its step (set it when a key could be sampled more
    coarsely than the others throughout: unset, that key's windows would span its own spacing
    without a gap). Two consecutive rows whose times differ by
    anything else are a gap: gapPolicy 'break' (default) never lets a window or its target span
    one (each gap-free part is a separate series); 'error' raises naming the key and both times.

    Two rows with the same key and time are always an error naming them. A null, NaN or
    infinite value in inputCols or targetCols, or a null time: handleInvalid 'error' (default)
    raises naming the column, key and time; 'skip' drops the windows that read such a value (a
    window's inputs, its target's targetCols) and rows without a time, and keeps the step grid of
    the others.

    Per key, the rows are sorted and cut into windows with numpy in one Spark task
    (groupBy(keyCols).applyInPandas); nothing is collected to the driver. Parameter and column
    errors are raised by transform before any Spark job; those that need the data (duplicates,
    nulls, gaps) when the result is computed. Row order in the output is not defined."""

    keyCols = Param(Params._dummy(), "keyCols", "columns naming a series (empty: the whole DataFrame is one series)",
                    typeConverter=TypeConverters.toListString)
    timeCol = Param(Params._dummy(), "timeCol", "time column (numeric, date, timestamp or timestamp_ntz); in the "
                    "output, the time of each window's last step", typeConverter=TypeConverters.toString)
    inputCols = Param(Params._dummy(), "inputCols", "numeric columns read into each window, in this order",
                      typeConverter=TypeConverters.toListString)
    targetCols = Param(Params._dummy(), "targetCols", "numeric columns whose value horizon steps ahead is the target "
                       "(default: [inputCols[0]])", typeConverter=TypeConverters.toListString)
    outputCol = Param(Params._dummy(), "outputCol", "output column of the windows, array<array<double>> (steps x "
                      "inputCols)", typeConverter=TypeConverters.toString)
    targetCol = Param(Params._dummy(), "targetCol", "output column of the targets: double with one target column, "
                      "array<double> with several", typeConverter=TypeConverters.toString)
    window = Param(Params._dummy(), "window", "steps in each window (>= 1)",
                   typeConverter=_check("window", lambda v: v >= 1, "an int >= 1"))
    horizon = Param(Params._dummy(), "horizon", "steps from a window's last step to its target (>= 1)",
                    typeConverter=_check("horizon", lambda v: v >= 1, "an int >= 1"))
    step = Param(Params._dummy(), "step", "steps between the starts of consecutive windows of a key (>= 1)",
                 typeConverter=_check("step", lambda v: v >= 1, "an int >= 1"))
    timeStep = Param(Params._dummy(), "timeStep", "expected difference between consecutive times (> 0): timeCol's "
                     "units if numeric, seconds for timestamps, days for dates; unset: each key's smallest "
                     "difference", typeConverter=_check("timeStep", lambda v: v > 0 and v < float("inf"),
                                                        "a number > 0"))
    gapPolicy = Param(Params._dummy(), "gapPolicy", "consecutive times not timeStep apart: 'break' (windows never "
                      "span them) or 'error'", typeConverter=_in("gapPolicy", GAP_POLICIES))
    handleInvalid = Param(Params._dummy(), "handleInvalid", "null/NaN/infinite values or null times: 'error' or "
                          "'skip' (drop the windows that read them)",
                          typeConverter=_in("handleInvalid", HANDLE_INVALID))

    @keyword_only
    def __init__(self, *, keyCols=None, timeCol=None, inputCols=None, window=None, horizon=None, step=None,
                 targetCols=None, outputCol=None, targetCol=None, gapPolicy=None, timeStep=None, handleInvalid=None):
        super().__init__()
        self._setDefault(keyCols=[], outputCol="window", targetCol="target", horizon=1, step=1, gapPolicy="break",
                         handleInvalid="error")
        self.setParams(**self._input_kwargs)

    @keyword_only
    def setParams(self, *, keyCols=None, timeCol=None, inputCols=None, window=None, horizon=None, step=None,
                  targetCols=None, outputCol=None, targetCol=None, gapPolicy=None, timeStep=None, handleInvalid=None):
        """Sets the given params (None leaves a param as it is; clear(param) unsets one)."""
        return self._set(**{k: v for k, v in self._input_kwargs.items() if v is not None})

    def getTargetCols(self):
        """The target columns in effect: targetCols if set, else [inputCols[0]]."""
        if self.isDefined(self.targetCols):
            return self.getOrDefault(self.targetCols)
        return self.getOrDefault(self.inputCols)[:1]

    def _plan(self, schema):
        """Checks the params against the input schema (no Spark job); returns the time as a number
        (a column) and what each key's task computes."""
        who = type(self).__name__
        for p in (self.timeCol, self.inputCols, self.window):
            if not self.isDefined(p):
                raise ValueError(f"{who}: set {p.name}")
        keys, time = self.getOrDefault(self.keyCols), self.getOrDefault(self.timeCol)
        inputs, targets = self.getOrDefault(self.inputCols), self.getTargetCols()
        out, target = self.getOrDefault(self.outputCol), self.getOrDefault(self.targetCol)
        if not inputs:
            raise ValueError(f"{who}: inputCols is empty")
        if not targets:
            raise ValueError(f"{who}: targetCols is empty")
        columns = schema.fieldNames()
        for param, cols in (("keyCols", keys), ("timeCol", [time]), ("inputCols", inputs), ("targetCols", targets)):
            if len(set(cols)) < len(cols):
                raise ValueError(f"{who}: {param} names a column twice: {cols}")
            for c in cols:
                if c not in columns:
                    raise ValueError(f"{who}: {param} column {c!r} is not in the DataFrame; its columns are {columns}")
            if param in ("inputCols", "targetCols"):
                for c in cols:
                    t = schema[c].dataType
                    if not isinstance(t, NumericType):
                        raise ValueError(f"{who}: {param} column {c!r} has type {t.simpleString()}; expected a "
                                         "numeric type")
                    if c in keys:
                        raise ValueError(f"{who}: column {c!r} is both a key and in {param}")
        t = schema[time].dataType
        units = _time_units(t)
        if units is None:
            raise ValueError(f"{who}: timeCol {time!r} has type {t.simpleString()}; expected a numeric, date, "
                             "timestamp or timestamp_ntz type")
        if time in keys:
            raise ValueError(f"{who}: timeCol {time!r} is also a key column")
        for name, value in (("outputCol", out), ("targetCol", target)):
            if value in keys or value == time:
                raise ValueError(f"{who}: {name} {value!r} would replace a key or time column of the output")
        if out == target:
            raise ValueError(f"{who}: outputCol and targetCol are both {out!r}")
        expr, per_unit, unit_name = units
        time_step = self.getOrDefault(self.timeStep) if self.isDefined(self.timeStep) else None
        if time_step is not None:
            time_step = time_step * per_unit
            if isinstance(t, (TimestampType, TimestampNTZType, DateType)):  # whole microseconds or days
                if abs(time_step - round(time_step)) > 1e-6 * max(1.0, time_step):
                    raise ValueError(f"{who}: timeStep {self.getOrDefault(self.timeStep)} is not a whole number of "
                                     f"{'days' if isinstance(t, DateType) else 'microseconds'}, the unit of "
                                     f"timeCol {time!r}")
                time_step = float(round(time_step))
        values = list(dict.fromkeys(inputs + targets))  # each column travels once
        plan = {"keys": keys, "time": time, "values": values,
                "in_idx": [values.index(c) for c in inputs], "tg_idx": [values.index(c) for c in targets],
                "window": self.getOrDefault(self.window), "horizon": self.getOrDefault(self.horizon),
                "step": self.getOrDefault(self.step), "timeStep": time_step, "perUnit": per_unit,
                "unit": unit_name, "gapPolicy": self.getOrDefault(self.gapPolicy),
                "handleInvalid": self.getOrDefault(self.handleInvalid), "outputCol": out, "targetCol": target}
        return expr(time), plan

    def _transform(self, dataset):
        time_number, plan = self._plan(dataset.schema)
        keys, time, values = plan["keys"], plan["time"], plan["values"]
        columns = ([_name(k) for k in keys] + [_name(time), time_number.alias(_TIME)]
                   + [_name(c).cast("double").alias(f"{_PREFIX}v{i}") for i, c in enumerate(values)])
        target_type = DoubleType() if len(plan["tg_idx"]) == 1 else ArrayType(DoubleType(), False)
        schema = StructType([dataset.schema[k] for k in keys] + [dataset.schema[time]]
                            + [StructField(_FLAT, ArrayType(DoubleType(), False), False),
                               StructField(plan["targetCol"], target_type, False)])
        rows = dataset.select(*columns).groupBy(*[_name(k) for k in keys]).applyInPandas(_group_windows(plan), schema)
        steps, width = plan["window"], len(plan["in_idx"])
        shaped = F.transform(F.sequence(F.lit(0), F.lit(steps - 1)),
                             lambda i: F.slice(_name(_FLAT), i * width + 1, width))
        return rows.select(*[_name(k) for k in keys], _name(time), shaped.alias(plan["outputCol"]),
                           _name(plan["targetCol"]))


__all__ = ["TimeSeriesWindows", "window_starts"]
