"""The README's first command: the demo job, end to end in its own process (1 epoch)."""
import os
import subprocess
import sys

from conftest import CONNECT, clean_env


def test_demo_trains_reports_and_saves(tmp_path):
    out = tmp_path / "demo"
    # the Connect run checks the demo's --remote, as a client of this process's Connect server
    # (a second local server could not take its port)
    remote = ["--remote", "sc://localhost:15002"] if CONNECT else []
    proc = subprocess.run([sys.executable, "-m", "spark_nn.demo", "--epochs", "2", "--output", str(out), "--quiet"]
                          + remote, capture_output=True, text=True, timeout=600, env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    acc = float(text.split("test accuracy: ")[1].split()[0])
    # 2 epochs on digits_split's fixed split (360 test images), measured at --seed 0, 1, 2: 0.9306,
    # 0.9194, 0.9444 (mean 0.9315, standard error of the mean 0.0072, mean - 3 SE 0.9098): the bar,
    # 0.8, keeps its margin (also well over 3 binomial standard errors, 0.014, below the lowest)
    assert acc > 0.8, text
    assert "fit time:" in text and "wall time:" in text
    assert ("through Spark Connect (sc://localhost:15002)" in text) == CONNECT
    assert (out / "model" / "data" / "weights.npz").exists()
    assert (out / "training_curves.png").stat().st_size > 10_000


def test_missing_java_is_a_clear_error(tmp_path):
    env = clean_env(JAVA_HOME=str(tmp_path / "no-java"), PATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "spark_nn.demo", "--epochs", "1", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "spark_nn needs Java 17 (or newer) for Spark" in proc.stderr
    assert "JAVA_HOME" in proc.stderr


def test_source_tree_without_built_kernels_says_so(tmp_path):
    """A source tree whose extension is not built (a non-editable install shadowed by the
    repository's own spark_nn/) must say what is wrong, not raise a 'circular import' puzzle."""
    import shutil

    import spark_nn

    tree = tmp_path / "clone"
    shutil.copytree(os.path.dirname(spark_nn.__file__), tree / "spark_nn",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    # -S: no site-packages, so neither an installed nor an editable spark_nn can stand in
    proc = subprocess.run([sys.executable, "-S", "-c", "import spark_nn"], cwd=tree,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: spark_nn's compiled kernels (spark_nn._kernels) are not built in "
                           f"{tree / 'spark_nn'}"), last
    assert "pip install -e ." in last
