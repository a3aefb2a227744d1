"""Reliability of a fit: a killed worker is retried to the same result (in a session that
retries tasks, started here for every test that needs one), checkpoints resume exactly, a
diverging fit says where and what to do, and model files are loaded safely."""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from spark_nn.ml.classification import CNNClassificationModel, CNNClassifier
from spark_nn.ml.training.faults import KILL_PROPERTY as FAULT_PROPERTY
from conftest import CONNECT, KILLED_AND_RETRIED, TASK_RETRIES, clean_env, fit_under_fault

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(bright_pixels):
    return bright_pixels


def est(**kw):
    return CNNClassifier(**dict(dict(layers=[4], numClasses=3, imageShape=[1, 6, 6], maxIter=3, batchSize=16,
                                     stepSize=0.02, seed=9, localSteps=1,
                                     learningRateSchedule="constant"), **kw))


@pytest.mark.task_retries
@pytest.mark.parametrize("local_steps", [1, 4])
def test_killed_worker_is_retried_to_bitwise_equal_weights(spark, data, tmp_path, local_steps):
    reference = est(localSteps=local_steps).fit(data).weights
    flag = tmp_path / "killed"  # epoch 1 (0-based), step 2, partition 1
    retried = fit_under_fault(spark, FAULT_PROPERTY, "1:2:1", flag,
                              lambda: est(localSteps=local_steps).fit(data).weights)
    assert flag.read_text().splitlines() == KILLED_AND_RETRIED  # killed at attempt 0; attempt 1 ran, no other
    np.testing.assert_array_equal(retried, reference)


@pytest.mark.timeout(900)  # a session, and each test in it under its own limit (pyproject's): about 30 s here
def test_the_tests_that_need_task_retries_pass_in_a_session_that_retries(tmp_path):
    """The tests marked task_retries (skipped in the shared session, which retries no task) in a
    session with one retry of a failed task, local[2,2] (on Spark Connect too where this run is
    on it): one pytest subprocess, one more session, for all of them."""
    if TASK_RETRIES:
        pytest.skip("this session retries tasks itself: the task_retries tests run in it")
    if CONNECT:
        # a second Spark Connect server for the subprocess sat idle until the time limit in CI
        # (2026-12-06; not understood yet): the retries are Spark's scheduler's, the same for
        # both kinds, and run in the classic and Spark 3.5 passes
        pytest.skip("the task_retries tests run in the classic passes (a second Connect server hung in CI)")
    # only the files that hold such tests are collected (collecting every test file imports torch,
    # onnxruntime and the rest for nothing)
    files = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "tests", "test_*.py"))
                   if "mark.task_retries" in Path(p).read_text(encoding="utf-8"))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                          str(tmp_path / "pytest"), "-m", "task_retries", *files], cwd=ROOT,
                         env=clean_env(SPARK_NN_TEST_TASK_RETRIES="1"), capture_output=True, text=True, timeout=840)
    out = run.stdout + run.stderr
    assert run.returncode == 0, out[-8000:]
    summary = out.strip().splitlines()[-1]
    print(summary)
    assert re.search(r"\b[1-9]\d* passed", summary) and "skipped" not in summary, out[-8000:]


@pytest.mark.parametrize("local_steps", [1, 3])
def test_resume_from_checkpoint_equals_uninterrupted_run(data, tmp_path, local_steps):
    def est(**kw):
        return globals()["est"](localSteps=local_steps, **kw)

    full = est(maxIter=4, checkpointDir=str(tmp_path / "a")).fit(data)
    ckpt = tmp_path / "a"
    assert (ckpt / "latest").read_text().strip() == "epoch-00004"
    assert sorted(p.name for p in ckpt.iterdir() if p.name.startswith("epoch-")) == ["epoch-00003", "epoch-00004"]
    # a fit stopped after epoch 2 (as if interrupted), then the same fit again for 4 epochs
    first = est(maxIter=2, checkpointDir=str(tmp_path / "b")).fit(data)
    assert len(first.summary.epochs) == 2
    resumed = est(maxIter=4, checkpointDir=str(tmp_path / "b")).fit(data)
    np.testing.assert_array_equal(resumed.weights, full.weights)
    assert [e["epoch"] for e in resumed.summary.epochs] == [1, 2, 3, 4]
    assert resumed.summary.objectiveHistory == full.summary.objectiveHistory
    # a different fit refuses the directory instead of mixing runs
    with pytest.raises(ValueError, match="different fit"):
        est(maxIter=4, seed=10, checkpointDir=str(tmp_path / "b")).fit(data)
    state = json.loads((tmp_path / "b" / "epoch-00004" / "state.json").read_text())
    assert state["epoch"] == 4 and "fingerprint" in state


def test_diverging_fit_names_the_step_and_keeps_the_checkpoint(data, tmp_path):
    ckpt = tmp_path / "c"
    est(maxIter=1, checkpointDir=str(ckpt)).fit(data)
    with pytest.raises(ValueError, match=r"loss became (nan|inf) at epoch \d+, step \d+; lower stepSize or set "
                                         r"clipNorm; the last good checkpoint is .*epoch-00001"):
        est(maxIter=3, stepSize=1e12, optimizer="sgd", checkpointDir=str(ckpt)).fit(data)
    assert (ckpt / "latest").read_text().strip() == "epoch-00001"


@pytest.fixture(scope="module")
def saved(data, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("models") / "good")
    est(maxIter=1).fit(data).write().save(path)
    return path


def _copy(saved, tmp_path):
    path = str(tmp_path / "m")
    shutil.copytree(saved, path)
    return path


def test_load_refuses_a_truncated_weights_file(saved, tmp_path):
    path = _copy(saved, tmp_path)
    w = os.path.join(path, "data", "weights.npz")
    with open(w, "r+b") as f:
        f.truncate(os.path.getsize(w) // 2)
    with pytest.raises(ValueError, match="corrupted or truncated|cannot read weights file"):
        CNNClassificationModel.load(path)


def _replace_first_array(saved, tmp_path, new):
    """A copy of the saved model whose first weight array is new(old array)."""
    path = _copy(saved, tmp_path)
    w = os.path.join(path, "data", "weights.npz")
    with np.load(w) as z:
        arrays = {k: z[k] for k in z.files}
    key = sorted(arrays)[0]
    arrays[key] = new(arrays[key])
    np.savez(w, **arrays)  # np.savez pickles object arrays
    return path


def test_load_refuses_weights_of_other_shapes(saved, tmp_path):
    path = _replace_first_array(saved, tmp_path, lambda a: np.zeros(np.asarray(a.shape) + 1, np.float32))
    with pytest.raises(ValueError, match="shape"):
        CNNClassificationModel.load(path)


def test_load_refuses_pickled_arrays(saved, tmp_path):
    path = _replace_first_array(saved, tmp_path, lambda a: np.array([object()], dtype=object))
    with pytest.raises(ValueError, match="cannot read weights file"):  # the pickle is never run
        CNNClassificationModel.load(path)


def test_load_refuses_foreign_and_broken_directories(saved, tmp_path):
    with pytest.raises(ValueError, match="not a saved spark_nn model"):
        CNNClassificationModel.load(str(tmp_path))
    path = _copy(saved, tmp_path)
    with open(os.path.join(path, "data", "model.json"), "w") as f:
        f.write('{"format": "spark_nn.Seq')
    with pytest.raises(ValueError, match="cannot read data/model.json"):
        CNNClassificationModel.load(path)
    meta_dir = os.path.join(saved, "metadata")
    meta_file = [f for f in os.listdir(meta_dir) if f.startswith("part-")][0]
    meta = json.loads(open(os.path.join(meta_dir, meta_file)).read())
    other = str(tmp_path / "other")
    shutil.copytree(saved, other)
    meta["sparkNNFormatVersion"] = 99
    with open(os.path.join(other, "metadata", meta_file), "w") as f:
        f.write(json.dumps(meta))
    with pytest.raises(ValueError, match="cannot read the model's metadata"):  # Hadoop's checksum catches it
        CNNClassificationModel.load(other)
    os.remove(os.path.join(other, "metadata", f".{meta_file}.crc"))
    with pytest.raises(ValueError, match="format version 99 is not supported"):
        CNNClassificationModel.load(other)


def test_failed_save_leaves_nothing_behind(data, tmp_path, monkeypatch):
    model = est(maxIter=1).fit(data)
    target = tmp_path / "model"
    model.write().save(str(target))
    before = sorted(os.listdir(target / "data"))

    def broken(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("spark_nn.ml.persistence.write_arrays", broken)
    with pytest.raises(OSError, match="disk full"):
        model.write().overwrite().save(str(target))
    assert sorted(os.listdir(target / "data")) == before  # the old model is intact
    assert sorted(os.listdir(tmp_path)) == ["model"]  # and no temporary directory is left
    CNNClassificationModel.load(str(target))
