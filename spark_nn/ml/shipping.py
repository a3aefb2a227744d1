"""Shipping the compiled kernels to executors whose Python does not have spark_nn.

A wheel holds a compiled extension module, which Python cannot import from a zip file, so
``--py-files`` cannot carry it. What works: ship the wheel as a Spark *archive*. Spark unpacks
archives (by file extension: .zip, .tar.gz, .tgz, .tar, .jar) into each executor's working
directory under the alias after '#', and a relative ``PYTHONPATH`` in the executor environment
puts that directory on the Python workers' path:

    conf = executor_wheel_conf("dist/spark_nn-0.1.0-cp311-cp311-linux_x86_64.whl")
    builder = SparkSession.builder.master("spark://host:7077")
    for k, v in conf.items():
        builder = builder.config(k, v)

The executors' Python must match the wheel's tag (CPython version, platform) and have
spark_nn's dependencies (numpy, scipy, pyarrow, pandas, threadpoolctl), as any PySpark
executor needs numpy/pyarrow for Arrow; alternatively pip-install the wheel there.
"""
import os
import shutil
import tempfile

ALIAS = "spark_nn_wheel"


def executor_wheel_conf(wheel_path, staging_dir=None, alias=ALIAS):
    """Spark conf entries that ship wheel_path to every executor and put it on their Python
    path. The wheel is copied to '<staging_dir>/<alias>.zip' (Spark unpacks by extension)."""
    wheel_path = os.path.abspath(wheel_path)
    if not (wheel_path.endswith(".whl") and os.path.isfile(wheel_path)):
        raise ValueError(f"{wheel_path} is not a wheel file (build one with: pip wheel . --no-deps -w dist)")
    staging_dir = staging_dir or tempfile.mkdtemp(prefix="spark_nn_ship_")
    os.makedirs(staging_dir, exist_ok=True)
    archive = os.path.join(os.path.abspath(staging_dir), alias + ".zip")
    shutil.copyfile(wheel_path, archive)
    return {"spark.archives": f"file://{archive}#{alias}", "spark.executorEnv.PYTHONPATH": alias}
