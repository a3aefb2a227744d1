"""benchmarks/large_data.py at a small size, in a Spark session of its own (the Python workers'
memory cap is a static setting): the memory assertions its 1M-row run is judged by."""
import json
import os
import subprocess
import sys

import pytest

from conftest import clean_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.once
def test_training_memory_stays_bounded_and_no_files_are_left(tmp_path):
    out = tmp_path / "large.json"
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "large_data.py"), "--rows", "3000",
                           "12000", "--pyspark-memory", "750m", "--test-rows", "1000", "--json", str(out)],
                          capture_output=True, text=True, timeout=900, env=clean_env())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    result = json.loads(out.read_text())
    limit = result["limit"]
    assert limit == 750 * 2 ** 20  # Spark applied the cap to its Python workers
    small, large = result["runs"]
    for run in (small, large):
        assert run["left"] == 0  # every resident file is gone after the fit
        assert 0 < run["worker_peak"] < limit
        assert run["disk_peak"] >= run["rows"] * 0.7 * 784  # the blocks were on disk (80 % of rows train)
        assert run["accuracy"] > 0.3
    # the driver never holds the data: 4x the rows, no growth beyond noise
    assert large["driver_after"] - small["driver_after"] < 60 * 2 ** 20
    compact, wide = result["passes"]["True"], result["passes"]["False"]
    assert wide[1] > 3.9 * compact[1]  # bytes on disk
    assert "uint8 pass" in proc.stdout and "epoch time" in proc.stdout
