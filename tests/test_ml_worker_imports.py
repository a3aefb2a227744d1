"""Spark 3.5's workers re-read every archive on sys.path before each task; ours stat them instead
(spark_nn/ml/training/worker_imports.py)."""
import importlib
import sys
import zipfile
import zipimport

import pyspark
import pytest

from spark_nn.ml.training import worker_imports
from spark_nn.ml.training.worker_imports import ArchiveReadOnChange, read_archives_on_change


@pytest.fixture
def archive_on_path(tmp_path):
    """A zip of modules on sys.path with its importer cached; sys.path, the importer cache and
    sys.modules as they were afterwards."""
    path = str(tmp_path / "mods.zip")
    cache, modules = dict(sys.path_importer_cache), set(sys.modules)

    def write(**sources):
        with zipfile.ZipFile(path, "w") as z:
            for name, text in sources.items():
                z.writestr(f"{name}.py", text)

    write(zmod_a="VALUE = 1\n")
    sys.path.insert(0, path)
    importlib.import_module("zmod_a")
    assert type(sys.path_importer_cache[path]) is zipimport.zipimporter
    yield path, write
    sys.path.remove(path)
    sys.path_importer_cache.clear()
    sys.path_importer_cache.update(cache)
    for name in set(sys.modules) - modules:
        del sys.modules[name]


def test_an_unchanged_archive_is_not_read_again_and_a_changed_one_is(archive_on_path, monkeypatch):
    path, write = archive_on_path
    assert read_archives_on_change(force=True) >= 1
    assert isinstance(sys.path_importer_cache[path], ArchiveReadOnChange)
    reads = []
    real = zipimport._read_directory
    monkeypatch.setattr(zipimport, "_read_directory", lambda archive: reads.append(archive) or real(archive))
    importlib.invalidate_caches()  # what Spark 3.5's worker does before each task
    assert path not in reads
    assert importlib.import_module("zmod_a").VALUE == 1  # imports still go through it
    write(zmod_a="VALUE = 1\n", zmod_b="VALUE = 2\n")
    importlib.invalidate_caches()
    assert reads.count(path) == 1
    assert importlib.import_module("zmod_b").VALUE == 2


def test_a_plain_importer_reads_its_archive_on_every_invalidation(archive_on_path, monkeypatch):
    """The cost the swap removes (the control for the test above)."""
    path, _ = archive_on_path
    reads = []
    real = zipimport._read_directory
    monkeypatch.setattr(zipimport, "_read_directory", lambda archive: reads.append(archive) or real(archive))
    importlib.invalidate_caches()
    importlib.invalidate_caches()
    assert reads.count(path) == 2


def test_only_spark_3_workers_swap_their_importers(archive_on_path):
    """Spark 4's worker invalidates the caches only when a task adds to sys.path: nothing to do."""
    path, _ = archive_on_path
    spark_3 = pyspark.__version__.startswith("3.")
    assert worker_imports._needed() == spark_3
    assert (read_archives_on_change() >= 1) == spark_3
    assert isinstance(sys.path_importer_cache[path], ArchiveReadOnChange) == spark_3
