"""The README's first command: the demo job, end to end in its own process (1 epoch)."""
import os
import subprocess
import sys


def test_demo_trains_reports_and_saves(tmp_path):
    out = tmp_path / "demo"
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-m", "spark_nn.demo", "--epochs", "2", "--output", str(out), "--quiet"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = proc.stdout
    acc = float(text.split("test accuracy: ")[1].split()[0])
    assert acc > 0.8, text
    assert "fit time:" in text and "wall time:" in text
    assert (out / "model" / "data" / "weights.npz").exists()
    assert (out / "training_curves.png").stat().st_size > 10_000


def test_missing_java_is_a_clear_error(tmp_path):
    env = dict(os.environ, JAVA_HOME=str(tmp_path / "no-java"), PATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "spark_nn.demo", "--epochs", "1", "--output", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2
    assert "spark_nn needs Java 17 (or newer) for Spark" in proc.stderr
    assert "JAVA_HOME" in proc.stderr
