"""Which kind of SparkSession a DataFrame belongs to, and the few facts a fit asks of it,
answered for either kind.

A classic session has a SparkContext in this process (RDDs, broadcasts, job descriptions). A
Spark Connect session (``SparkSession.builder.remote(...)``, shared and serverless platforms)
has only DataFrame queries, ``spark.conf``, tags and interrupts; everything spark_nn does there
goes through those. The kind is read from the session object itself, not from the process's
mode, so the answer is right for the DataFrame at hand.
"""
from pyspark.sql import functions as F

_PARALLELISM = {}  # Connect session id -> default parallelism (asked once per session)


def is_connect(obj):
    """True when obj (a DataFrame or SparkSession) belongs to a Spark Connect session."""
    session = getattr(obj, "sparkSession", obj)
    return type(session).__module__.startswith("pyspark.sql.connect")


def spark_conf(spark, key, default=None):
    """A Spark setting as the session sees it (SparkContext conf in classic, spark.conf in Connect)."""
    if is_connect(spark):
        try:
            value = spark.conf.get(key, None)
        except Exception:  # a setting the server will not show
            value = None
        return default if value is None else value
    return spark.sparkContext.getConf().get(key, default)


def default_parallelism(spark):
    """The cores Spark gives a job by default: sc.defaultParallelism in classic; in Connect the
    partitions of spark.range (which Spark sizes by the same default), asked once per session."""
    if not is_connect(spark):
        return spark.sparkContext.defaultParallelism
    key = getattr(spark, "session_id", id(spark))
    if key not in _PARALLELISM:
        configured = spark_conf(spark, "spark.default.parallelism")
        if configured:
            _PARALLELISM[key] = int(configured)
        else:
            _PARALLELISM[key] = num_partitions(spark.range(0, 1 << 16))
    return _PARALLELISM[key]


def num_partitions(df):
    """The DataFrame's partitions: df.rdd.getNumPartitions() in classic. Connect has no RDDs,
    so a query finds the largest partition index (it reads no column, only row counts); empty
    partitions at the end are not counted."""
    if not is_connect(df):
        return df.rdd.getNumPartitions()
    top = df.select(F.spark_partition_id().alias("p")).agg(F.max("p")).first()[0]
    return 0 if top is None else int(top) + 1


def application_id(spark):
    if is_connect(spark):
        return spark_conf(spark, "spark.app.id", "connect")
    return spark.sparkContext.applicationId
