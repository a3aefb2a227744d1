"""Spark ML face of spark_nn: estimators, models and feature stages (the only floor that imports pyspark)."""
