"""Executor loss on a real cluster, at every phase (issue 32, item 5): a standalone master and
three one-core workers on 127.0.0.1 (spark.cores.max=2, so the third worker takes over), a
CNN fit with an int localSteps and a validation split, and an executor JVM SIGKILLed in the
setup pass, in a round, in a round that validates and in the last round. Each fit must finish
with weights equal to the undisturbed fit's bit for bit, the kill must have fired in a task that
then ran again, and no resident file may be left but the lost executor's own (its directory is
gone with it on a real cluster; here the worker keeps it until the application ends)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from standalone import StandaloneCluster, cluster_env  # noqa: E402

# 480 training rows, batch 64: 8 steps an epoch, rounds of 4 (steps 0-3, 4-7), 3 epochs; the
# first round of an epoch also validates the epoch before
PHASES = {"pass": "-1:-1:0", "round": "0:4:1", "validation": "1:0:0", "last_round": "2:4:1"}


@pytest.fixture
def cluster():
    c = StandaloneCluster()
    yield c
    c.stop()


@pytest.mark.once
@pytest.mark.timeout(900)  # three worker JVMs, five fits and four executor replacements: about 2 minutes here
def test_an_executor_lost_at_any_phase_changes_no_bit(tmp_path, cluster):
    url = cluster.start(str(tmp_path), workers=3, cores=1, memory="1g")
    flags = tmp_path / "flags"
    flags.mkdir()
    env = dict(cluster_env(), PYTHONPATH=ROOT)  # the executors import spark_nn from this checkout
    run = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "cluster_fault_job.py"), url, str(tmp_path),
                          str(flags), json.dumps(PHASES)], capture_output=True, text=True, timeout=840, env=env,
                         cwd=str(tmp_path))
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-5000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    print("executor loss:", json.dumps(out, indent=1))
    assert out["left_after_reference"] == []
    lost = []  # the local directories of the executors lost so far
    for name, got in out["phases"].items():
        assert got["flag"] and got["flag"][0] == "killed executor attempt 0", (name, got)
        assert len(got["flag"]) >= 2, (name, got)  # the step ran again after the loss
        assert got["same"], (name, got["max_diff"])
        assert got["lost_dir"], (name, got)
        lost.append(got["lost_dir"])
        assert all(any(p.startswith(d) for d in lost) for p in got["left"]), (name, lost, got["left"])
        assert any(p.startswith(got["lost_dir"]) for p in got["left"]), (name, got)  # the check can see files
