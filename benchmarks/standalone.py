"""A Spark standalone cluster on 127.0.0.1 for tests and benchmarks: a master and workers
started with pyspark's own launcher classes (bin/spark-class), each in a process group of its
own so that stop() ends them and everything they started."""
import os
import signal
import socket
import subprocess
import time

import pyspark

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
        env = cluster_env()
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
