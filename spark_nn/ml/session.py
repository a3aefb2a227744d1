"""Starting Spark: a clear error when Java is missing, and the sessions (classic, or Spark Connect)
the demo and examples use."""
import os
import shutil
import subprocess
import sys


# Spark settings that make training steps faster. Every step is one small Python job; over the
# default TCP sockets between the JVM and its Python workers, each task's end waits on a
# delayed ACK (measured here: 83 ms per tiny Python job, 43 ms over Unix domain sockets).
RECOMMENDED_CONF = {
    "spark.python.unix.domain.socket.enabled": "true",
    "spark.sql.shuffle.partitions": "4",
    # The JVM's optimizing JIT compiler (C2) keeps compiling in background threads and takes a
    # core from the Python workers on a small machine: a local round of training measured
    # 211 ms with it and 127 ms without (tasks' compute 134 -> 61 ms) in local[2] on 2 cores.
    # C1 alone compiles quickly and is fast enough for what the JVM does in a training step.
    "spark.driver.extraJavaOptions": "-XX:TieredStopAtLevel=1",
    # A task result above this size goes to the block manager and the driver fetches it in a
    # second trip; a local round's result (weights and Adam's moments) passes 1 MiB at about
    # 90k parameters. Returning 12.7 MB from 2 tasks: median 141 ms at 1m, 100 ms at 64m (4 runs
    # each, benchmarks/step_cost.py's round parts); a ResNet-18 round's 134 MB from 2 tasks,
    # beyond an empty job's 0.3 s: 0.5-1.1 s direct against 1.0-1.7 s through the block
    # manager (4 runs each, benchmarks/RESULTS.md).
    # A direct result rides in one RPC message, so the message limit is raised with it.
    "spark.task.maxDirectResultSize": "512m",
    "spark.rpc.message.maxSize": "512",
}


def require_java():
    """Raises RuntimeError saying what to install when no Java runtime is found (pyspark needs
    Java 17 or newer; without it SparkSession fails with an obscure gateway error)."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        raise RuntimeError("spark_nn needs Java 17 (or newer) for Spark, and no 'java' was found on PATH or in "
                           "JAVA_HOME. Install it, e.g. 'apt-get install openjdk-17-jre-headless', or set JAVA_HOME.")
    try:
        out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30).stderr
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"cannot run {java} -version ({e}); spark_nn needs Java 17 for Spark") from None
    for token in out.replace('"', " ").split():
        head = token.split(".")[0]
        if head.isdigit() and token[0].isdigit():
            major = int(token.split(".")[1]) if head == "1" else int(head)
            if major < 17:
                raise RuntimeError(f"{java} is Java {major}; pyspark 4 needs Java 17 or newer")
            return major
    return None


def local_session(master="local[2]", app_name="spark_nn", quiet=True, conf=None):
    """A SparkSession for the demo, examples and benchmarks (Java checked first); conf: more
    Spark settings."""
    require_java()
    # workers must run this interpreter (with spark_nn installed), not whatever python3 is on PATH
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in dict(RECOMMENDED_CONF, **(conf or {})).items():
        builder = builder.config(key, value)
    if quiet:
        builder = builder.config("spark.ui.showConsoleProgress", "false")
    spark = builder.getOrCreate()
    if quiet:
        spark.sparkContext.setLogLevel("ERROR")
    return spark


def remote_session(url, master="local[2]", app_name="spark_nn", conf=None, quiet=True):
    """A Spark Connect session. url: a Connect server ('sc://host:15002'), or 'local' for a local
    server started in this process on master (it needs Java, and pyspark's connect extra:
    pip install "spark_nn[connect]"); quiet: a local server without Spark's console progress
    bars, as local_session."""
    import importlib.util

    # pyspark's Connect client needs these, and says so obscurely when they are missing
    for name in ("grpc", "google.rpc"):
        try:
            found = importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            raise RuntimeError(f"Spark Connect needs pyspark's connect extra ({name} is missing): "
                               'pip install "spark_nn[connect]" (or "pyspark[connect]")')
    if url == "local" or url.startswith("local["):
        require_java()
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        url = master if url == "local" else url
    import warnings

    from pyspark.sql import SparkSession

    builder = SparkSession.builder.remote(url).appName(app_name)
    local = dict(RECOMMENDED_CONF, **({"spark.ui.showConsoleProgress": "false"} if quiet else {}))
    settings = dict(local, **(conf or {})) if url.startswith("local") else dict(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    with warnings.catch_warnings():  # a local server takes static settings at start; the client warns anyway
        warnings.simplefilter("ignore")
        return builder.getOrCreate()
