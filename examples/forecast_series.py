"""Forecasting a real monthly series with RNNRegressor: sea surface temperature in the Nino 1+2
region, 1950-2010 (statsmodels ships it: pip install statsmodels), one row per month in Spark.

    python examples/forecast_series.py

TimeSeriesWindows turns the long table (series, month, temperature) into windows of the past 24
months with the next month's temperature as the target; the last 20 % of the months are the
test rows. Prints the test RMSE of the LSTM against persistence (next month = this month).
EPOCHS in the environment overrides maxIter.
"""
import csv
import importlib.util
import os

from pyspark.sql import SparkSession, Window
from pyspark.sql import functions as F

from spark_nn.ml.feature import TimeSeriesWindows
from spark_nn.ml.regression import RNNRegressor


def nino12_months():
    spec = importlib.util.find_spec("statsmodels")
    if spec is None:
        raise SystemExit("this example reads statsmodels' elnino data set: pip install statsmodels")
    with open(os.path.join(os.path.dirname(spec.origin), "datasets", "elnino", "elnino.csv")) as f:
        rows = list(csv.reader(f))[1:]
    return [float(v) for r in rows for v in r[1:]]  # Jan 1950, Feb 1950, ...


spark = SparkSession.builder.appName("forecast").getOrCreate()
long = spark.createDataFrame([("nino12", month, temp) for month, temp in enumerate(nino12_months())],
                             "series string, month long, temperature double")

windows = TimeSeriesWindows(keyCols=["series"], timeCol="month", inputCols=["temperature"], window=24,
                            horizon=1).transform(long)
late = F.percent_rank().over(Window.partitionBy("series").orderBy("month")) >= 0.8
windows = windows.withColumn("test", late).cache()
train, test = windows.where(~F.col("test")), windows.where(F.col("test"))

lstm = RNNRegressor(layers=[32], cellType="lstm", featuresCol="window", labelCol="target",
                    maxIter=int(os.environ.get("EPOCHS", 30)))
model = lstm.fit(train)
rmse = model.evaluate(test)["rmse"]
last = F.col("window")[23][0]
persistence = test.select(F.sqrt(F.avg((last - F.col("target")) ** 2))).first()[0]
print(f"LSTM test RMSE: {rmse:.4f} degrees C (persistence: {persistence:.4f})")
