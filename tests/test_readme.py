"""The README's "Models in and out" snippets run as written, in order, in one namespace."""
import os
import re
import subprocess
import sys

import pytest

from conftest import clean_env

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _section_snippets(title):
    text = open(README).read()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)


def _run_section(title, count):
    """Runs a section's snippets in order in one namespace (in the current directory) and
    returns the namespace."""
    snippets = _section_snippets(title)
    assert len(snippets) == count
    scope = {}
    for code in snippets:
        exec(compile(code, README, "exec"), scope)
    return scope


def test_models_in_and_out_snippets_run(spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = _run_section("Models in and out (PyTorch, ONNX)", 3)
    assert scope["logits"].shape == (4, 10)
    assert scope["probability"].shape == (4, 10)
    assert set(scope["state"]) == set(scope["torch_net"].state_dict())
    assert os.path.exists(tmp_path / "digits_cnn.onnx")


def test_on_spark_connect_snippet_runs(tmp_path):
    """The snippet starts a local Spark Connect server, so it runs in a process of its own."""
    pytest.importorskip("grpc")
    (code,) = _section_snippets("On Spark Connect")
    code += "\nprint('ACCURACY', accuracy)\n"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=clean_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    accuracy = float(proc.stdout.split("ACCURACY ")[1].split()[0])
    assert accuracy > 0.9, proc.stdout


def test_your_own_network_snippets_run(spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = _run_section("Your own network, and transfer learning", 3)
    model, net = scope["model"], scope["pretrained"]
    # the frozen body came over frozen: only the new head (64*8*8*10 + 10) trains
    assert model.network.num_params == 64 * 8 * 8 * 10 + 10
    assert scope["accuracy"] > 0.5, scope["accuracy"]  # chance is 0.1
    assert scope["features"].schema["embedding"] is not None
    assert scope["features"].first().embedding.size == 64 * 8 * 8
    assert scope["scratch"].network.buffers.size == 2 * (16 + 16 + 16)


def test_regression_and_forecasting_snippet_runs(spark, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    scope = _run_section("Regression and forecasting", 1)
    from pyspark.sql import functions as F

    test = scope["test"]
    metrics = scope["model"].evaluate(test)
    last = F.col("window")[11][0]
    persistence = test.select(F.sqrt(F.avg((last - F.col("target")) ** 2))).first()[0]
    assert metrics["rmse"] < persistence, (metrics, persistence)
    assert metrics["r2"] > 0.9
