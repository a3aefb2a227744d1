"""A real Spark standalone cluster on 127.0.0.1: a master and two workers started with
pyspark's own launcher classes, executors whose Python does not have spark_nn, the wheel
shipped as a Spark archive (spark_nn.ml.shipping); a CNN fit through them must reach a sane
accuracy with tasks on both workers. Every process started here is stopped, also on failure
(benchmarks/standalone.py starts them; benchmarks/executors.py uses it too)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from standalone import StandaloneCluster, cluster_env  # noqa: E402


@pytest.fixture
def cluster():
    c = StandaloneCluster()
    yield c
    c.stop()


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


@pytest.mark.timeout(600)  # a wheel build, a cluster of three JVMs and a fit: about 1.5 minutes here
def test_standalone_cluster_with_shipped_wheel(tmp_path, cluster):
    wheel_dir = tmp_path / "dist"
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheel_dir)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    wheel = str(next(wheel_dir.glob("spark_nn-*.whl")))

    executor_python = executor_python_without_spark_nn(tmp_path)
    probe = subprocess.run([executor_python, "-c", "import numpy, pyarrow; import spark_nn"], capture_output=True,
                           text=True, cwd=str(tmp_path))
    assert "No module named 'spark_nn'" in probe.stderr, probe.stderr  # executors can't import it by themselves

    url = cluster.start(str(tmp_path), workers=2, cores=1, memory="1g")
    env = cluster_env()
    driver_env = dict(env, PYSPARK_PYTHON=executor_python)
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "cluster_job.py"), url, wheel,
                          executor_python, str(tmp_path / "staging")], capture_output=True, text=True,
                         timeout=420, env=driver_env, cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-5000:]
    result = json.loads(run.stdout.strip().splitlines()[-1])
    print("cluster result:", result)
    # cluster_job.py's fit (digits_split's fixed split, 360 test images) measured in a local[2]
    # session on the same two partitions, at fit seeds 0, 1, 2: 0.8917, 0.9083, 0.9250 (mean 0.9083,
    # standard error of the mean 0.0096, mean - 3 SE 0.8795): the bar, 0.85, is below it
    assert result["accuracy"] > 0.85, result
    assert len(result["tasks_per_executor"]) == 2 and all(n > 0 for n in result["tasks_per_executor"].values()), \
        result
    # the kernels the executors ran came from the shipped wheel, unpacked in their work dirs
    assert result["origins"] and all("/spark_nn_wheel/spark_nn/" in o and str(tmp_path) in o
                                     for o in result["origins"]), result
