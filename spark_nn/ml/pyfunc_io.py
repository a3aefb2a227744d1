"""Scoring a pandas DataFrame with a network, without Spark: what an MLflow pyfunc model of a
spark_nn model does (spark_nn/ml/mlflow_model.py). The input column is read as the model's
transform reads it (spark_nn.ml.columns.arrow_to_block, from an Arrow array of the pandas
values), so a row checks and converts the same in both."""
import numpy as np
import pandas as pd
import pyarrow as pa

from spark_nn.ml.columns import arrow_to_block


def _cell(value):
    if hasattr(value, "toArray"):  # a pyspark.ml vector
        return value.toArray().tolist()
    if isinstance(value, np.ndarray):
        return [_cell(v) for v in value] if value.dtype == object else value.tolist()
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
        return [v.tolist() for v in value]
    return value


def frame_block(df, spec):
    """The network input block of the pyfunc model's input column in df."""
    col = spec["inputCol"]
    if col not in df.columns:
        raise ValueError(f"the input DataFrame has no column {col!r} (columns: {list(df.columns)})")
    kind = spec["inputSpec"]["kind"]
    values = [_cell(v) for v in df[col]]
    arr = pa.array(values)
    return arrow_to_block(arr, dict(spec["inputSpec"], kind="array" if kind == "vector" else kind), col)


def predict_frame(net, spec, df):
    """A pandas DataFrame of predictions for df: a classifier's prediction (class index),
    probability and, with class names, predictedLabel; a regressor's prediction (a number, or a
    list for several targets)."""
    x = frame_block(df, spec)
    out = np.asarray(net.predict_proba(x), dtype=np.float64)
    if spec["task"] == "regression":
        pred = out[:, 0] if spec.get("labelSize") is None else list(out)
        return pd.DataFrame({"prediction": pred})
    index = np.argmax(out, axis=1)
    frame = pd.DataFrame({"prediction": index.astype(np.float64), "probability": list(out)})
    if spec.get("classNames"):
        frame["predictedLabel"] = [spec["classNames"][i] for i in index]
    return frame
