"""The seed's two programs (examples/) run as written, at small settings, in the shared session."""
import os
import re
import runpy
import sys

import pytest

from spark_nn.datasets import write_labelled_text

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def run_example(name, args, epochs, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [name] + args)
    monkeypatch.setenv("EPOCHS", str(epochs))
    runpy.run_path(os.path.join(EXAMPLES, name), run_name="__main__")
    out = capsys.readouterr().out
    m = re.search(r"Accuracy: (\d\.\d+)", out)
    assert m, out
    return float(m.group(1))


def test_seed_imports_only_changed_prefix():
    for name in ("cnn_images.py", "rnn_text.py"):
        src = open(os.path.join(EXAMPLES, name)).read()
        assert "from pyspark.ml" not in src
        assert re.search(r"^from spark_nn\.ml\.classification import (CNN|RNN)$", src, re.M)


# The programs' accuracy at the seed's settings does not depend on the session's kind or Spark's
# version; each of their steps (loadImages, Tokenizer, SequenceAssembler, fit, transform) runs on
# every kind and version in test_ml_cnn.py and test_ml_text.py: so once, in the first run only.
@pytest.mark.once
def test_cnn_example(spark, digits_dirs, monkeypatch, capsys):
    train_dir, _ = digits_dirs
    acc = run_example("cnn_images.py", [train_dir], 4, monkeypatch, capsys)
    # 4 epochs at the seed's default settings. Measured with the program's randomSplit seed and the
    # fit's seed both 0 (the test's), 1, 2: 0.9674, 0.9708, 0.9524 (273-276 test rows; mean 0.9635,
    # standard error of the mean 0.0057, mean - 3 SE 0.9465). The bar, 0.9, also sits 3 binomial
    # standard errors (0.013 on 273 rows) below the lowest value.
    assert acc > 0.9, acc


@pytest.mark.once
def test_rnn_example(spark, tmp_path, monkeypatch, capsys):
    path = str(tmp_path / "texts.tsv")
    write_labelled_text(path, n=800, seed=2)
    acc = run_example("rnn_text.py", [path], 10, monkeypatch, capsys)
    # majority class is about 0.5 (6 epochs stop near 0.75: ReLU cells that start at the identity
    # need more steps on this toy set than orthogonal ones). 10 epochs, measured with the program's
    # randomSplit seed and the fit's seed both 0 (the test's), 1, 2: 0.8827, 0.9860, 0.9408
    # (162, 143, 169 test rows; mean 0.9365, standard error of the mean 0.0299, mean - 3 SE
    # 0.8468): the bar, 0.84, is below it.
    assert acc > 0.84, acc


def _printed(pattern, capsys):
    out = capsys.readouterr().out
    m = re.search(pattern, out)
    assert m, out
    return [float(g) for g in m.groups()]


@pytest.mark.once  # the regressors' and TimeSeriesWindows' steps run on every kind in their own test files
def test_forecast_example(spark, monkeypatch, capsys):
    """The LSTM beats persistence on the real series (statsmodels' data; a test dependency)."""
    monkeypatch.setattr(sys, "argv", ["forecast_series.py"])
    monkeypatch.setenv("EPOCHS", "30")
    runpy.run_path(os.path.join(EXAMPLES, "forecast_series.py"), run_name="__main__")
    rmse, persistence = _printed(r"LSTM test RMSE: (\d+\.\d+) degrees C \(persistence: (\d+\.\d+)\)", capsys)
    # one run: 0.50 against persistence's 1.17 (benchmarks/RESULTS.md)
    assert rmse < 0.75 * persistence


@pytest.mark.once
def test_image_regression_example(spark, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["image_regression.py"])
    monkeypatch.setenv("EPOCHS", "10")
    runpy.run_path(os.path.join(EXAMPLES, "image_regression.py"), run_name="__main__")
    rmse, r2, spread = _printed(r"CNN test RMSE: (\d+\.\d+), r2: (-?\d+\.\d+) \(the label's spread: (\d+\.\d+)\)",
                                capsys)
    # 10 epochs: r2 0.795, rmse 1.30 of a spread of 2.86 (30 epochs: 0.841, 1.14); predicting the
    # mean is r2 0, rmse = the spread
    assert r2 > 0.65 and rmse < 0.6 * spread
