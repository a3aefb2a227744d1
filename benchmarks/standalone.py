"""A Spark standalone cluster on 127.0.0.1 for tests and benchmarks: a master and workers
started with pyspark's own launcher classes (bin/spark-class), each in a process group of its
own so that stop() ends them and everything they started."""
import os
import signal
import socket
import subprocess
import time

import pyspark

from spark_nn.ml.session import RECOMMENDED_CONF

SPARK_HOME = os.path.dirname(os.path.abspath(pyspark.__file__))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, proc, log, timeout=90):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"process exited early:\n{open(log).read()[-3000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on {port}:\n{open(log).read()[-3000:]}")


def cluster_env():
    env = dict(os.environ, SPARK_HOME=SPARK_HOME, SPARK_LOCAL_IP="127.0.0.1", SPARK_NO_DAEMONIZE="1")
    env.pop("PYTHONPATH", None)
    return env


# The JVMs without their optimizing compiler (C2), as RECOMMENDED_CONF has the driver's: a cluster
# here is a master, workers, a driver and executors on 2 cores, and C2's compile threads in each
# JVM took the cores from the others. A session on a fresh 2-worker cluster took 26-31 s to start
# and 34-42 s to finish a first job with C2, 16-19 s and 22-27 s without it; the executor-loss
# test's driver program 186 -> 112 s. Jobs on such a cluster pass it on to their driver and
# executors with java_conf().
JAVA_OPTS = RECOMMENDED_CONF["spark.driver.extraJavaOptions"]


def java_conf():
    """The JVM options of a session's driver and executors on a cluster started here."""
    return {"spark.driver.extraJavaOptions": JAVA_OPTS, "spark.executor.extraJavaOptions": JAVA_OPTS}


class StandaloneCluster:
    """start(workdir, workers, cores, memory) -> the master's URL; stop() ends every process."""

    def __init__(self):
        self.processes = []

    def launch(self, args, log, env):
        with open(log, "w") as f:
            p = subprocess.Popen([os.path.join(SPARK_HOME, "bin", "spark-class")] + args, stdout=f,
                                 stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.processes.append(p)
        return p

    def start(self, workdir, workers=2, cores=1, memory="1g"):
        env = dict(cluster_env(), SPARK_DAEMON_JAVA_OPTS=JAVA_OPTS)
        port = free_port()
        master_log = os.path.join(workdir, "master.log")
        master = self.launch(["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                              "--webui-port", str(free_port())], master_log, env)
        wait_for_port(port, master, master_log)
        url = f"spark://127.0.0.1:{port}"
        for i in range(workers):
            work = os.path.join(workdir, f"worker{i}")
            os.makedirs(work, exist_ok=True)
            # the executors' local directories (blocks, spark_nn's resident files) under workdir too
            local = os.path.join(workdir, f"local{i}")
            os.makedirs(local, exist_ok=True)
            self.launch(["org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", str(cores),
                         "--memory", memory, "--work-dir", work, "--webui-port", str(free_port())],
                        os.path.join(workdir, f"worker{i}.log"), dict(env, SPARK_LOCAL_DIRS=local))
        return url

    def stop(self):
        for p in self.processes:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.processes:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.processes = []
