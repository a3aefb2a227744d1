"""A real Spark standalone cluster on 127.0.0.1: a master and two workers started with
pyspark's own launcher classes, executors whose Python does not have spark_nn, the wheel
shipped as a Spark archive (spark_nn.ml.shipping); a CNN fit through them must reach a sane
accuracy with tasks on both workers. Every process started here is stopped, also on failure."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pyspark
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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


@pytest.fixture
def processes():
    started = []
    yield started
    for p in started:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGTERM)
    for p in started:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def launch(processes, args, log, env):
    with open(log, "w") as f:
        p = subprocess.Popen([os.path.join(SPARK_HOME, "bin", "spark-class")] + args, stdout=f,
                             stderr=subprocess.STDOUT, env=env, start_new_session=True)
    processes.append(p)
    return p


def executor_python_without_spark_nn(tmp_path):
    """A virtual environment that sees this environment's packages (numpy, pyarrow, ...) through
    a .pth file but not spark_nn (its editable-install hook is a .pth that is not processed
    when reached that way)."""
    import sysconfig

    venv = tmp_path / "executor_venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    exe = str(venv / "bin" / "python")
    purelib = subprocess.run([exe, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]
    with open(os.path.join(purelib, "driver_packages.pth"), "w") as f:
        f.write(ours + "\n")
    return exe


def test_standalone_cluster_with_shipped_wheel(tmp_path, processes):
    wheel_dir = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = str(next(wheel_dir.glob("spark_nn-*.whl")))

    executor_python = executor_python_without_spark_nn(tmp_path)
    probe = subprocess.run([executor_python, "-c", "import numpy, pyarrow; import spark_nn"], capture_output=True,
                           text=True, cwd=str(tmp_path))
    assert "No module named 'spark_nn'" in probe.stderr, probe.stderr  # executors can't import it by themselves

    env = dict(os.environ, SPARK_HOME=SPARK_HOME, SPARK_LOCAL_IP="127.0.0.1", SPARK_NO_DAEMONIZE="1")
    env.pop("PYTHONPATH", None)
    port = free_port()
    master = launch(processes, ["org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                                "--webui-port", str(free_port())], str(tmp_path / "master.log"), env)
    wait_for_port(port, master, str(tmp_path / "master.log"))
    url = f"spark://127.0.0.1:{port}"
    for i in range(2):
        work = tmp_path / f"worker{i}"
        work.mkdir()
        launch(processes, ["org.apache.spark.deploy.worker.Worker", url, "--host", "127.0.0.1", "--cores", "1",
                           "--memory", "1g", "--work-dir", str(work), "--webui-port", str(free_port())],
               str(tmp_path / f"worker{i}.log"), env)

    driver_env = dict(env, PYSPARK_PYTHON=executor_python)
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "cluster_job.py"), url, wheel,
                          executor_python, str(tmp_path / "staging")], capture_output=True, text=True,
                         timeout=420, env=driver_env, cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-5000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print("cluster result:", result)
    assert result["accuracy"] > 0.85, result
    assert len(result["tasks_per_executor"]) == 2 and all(n > 0 for n in result["tasks_per_executor"].values()), \
        result
    # the kernels the executors ran came from the shipped wheel, unpacked in their work dirs
    assert result["origins"] and all("/spark_nn_wheel/spark_nn/" in o and str(tmp_path) in o
                                     for o in result["origins"]), result
