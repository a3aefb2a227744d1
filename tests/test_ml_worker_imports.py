"""PySpark 3.5's workers re-read every archive on sys.path before each task; ours stat them
instead (spark_nn/ml/training/worker_imports.py)."""
import importlib
import sys
import zipfile
import zipimport

import pytest

from spark_nn.ml.training.worker_imports import ArchiveReadOnChange, read_archives_on_change

# Python 3.13's zipimporter drops its directory on invalidation and reads it at the next import
LAZY = sys.version_info >= (3, 13)


@pytest.fixture
def archive_on_path(tmp_path, monkeypatch):
    """A zip of modules on sys.path with its importer cached and one module imported through
    it; the process's zipimporters' classes and the zip's modules as they were afterwards."""
    path = str(tmp_path / "mods.zip")

    def write(**sources):
        with zipfile.ZipFile(path, "w") as z:
            for name, text in sources.items():
                z.writestr(f"{name}.py", text)

    write(zmod_a="VALUE = 1\n", zmod_c="VALUE = 3\n")
    monkeypatch.syspath_prepend(path)
    classes = {}
    try:
        importlib.import_module("zmod_a")
        assert type(sys.path_importer_cache[path]) is zipimport.zipimporter
        classes = {id(f): (f, type(f)) for f in sys.path_importer_cache.values()
                   if isinstance(f, zipimport.zipimporter)}
        yield path, write
    finally:
        for finder, cls in classes.values():
            finder.__class__ = cls
        for key in [k for k in sys.path_importer_cache if k.startswith(path)]:
            del sys.path_importer_cache[key]
        for name in ("zmod_a", "zmod_b", "zmod_c", "zpkg.sub", "zpkg"):
            sys.modules.pop(name, None)


@pytest.fixture
def reads(monkeypatch):
    """The archives whose directory zipimport reads from now on."""
    seen = []
    real = zipimport._read_directory
    monkeypatch.setattr(zipimport, "_read_directory", lambda archive: seen.append(archive) or real(archive))
    return seen


def test_an_unchanged_archive_is_read_once_after_the_swap_and_a_changed_one_again(archive_on_path, reads):
    path, write = archive_on_path
    finder = sys.path_importer_cache[path]
    assert read_archives_on_change() >= 1
    assert sys.path_importer_cache[path] is finder and isinstance(finder, ArchiveReadOnChange)
    importlib.invalidate_caches()  # what PySpark 3.5's worker does before each task
    first = reads.count(path)
    assert first == (0 if LAZY else 1)  # the first after the swap reads: its directory may be old
    for _ in range(3):
        importlib.invalidate_caches()
    assert reads.count(path) == first  # unchanged: not read again
    assert importlib.import_module("zmod_c").VALUE == 3  # not imported before: through the swapped importer
    write(zmod_a="VALUE = 1\n", zmod_b="VALUE = 2\n")
    before = reads.count(path)
    importlib.invalidate_caches()
    assert importlib.import_module("zmod_b").VALUE == 2
    assert reads.count(path) == before + 1


def test_a_plain_importer_reads_its_archive_on_every_invalidation(archive_on_path, reads):
    """The cost the swap removes (the control for the test above)."""
    if LAZY:
        pytest.skip("Python 3.13+ reads a zip's directory at the next import, not at invalidation")
    path, _ = archive_on_path
    for _ in range(3):
        importlib.invalidate_caches()
    assert reads.count(path) == 3


def test_an_importer_inside_an_archive_and_a_deleted_archive(archive_on_path, reads, tmp_path):
    path, write = archive_on_path
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("zpkg/__init__.py", "")
        z.writestr("zpkg/sub.py", "VALUE = 4\n")
    importlib.invalidate_caches()
    assert importlib.import_module("zpkg.sub").VALUE == 4
    inner = sys.path_importer_cache[path + "/zpkg"]  # the package's own importer, prefix zpkg/
    assert type(inner) is zipimport.zipimporter
    read_archives_on_change()
    assert isinstance(inner, ArchiveReadOnChange) and inner.prefix == "zpkg" + "/"
    (tmp_path / "mods.zip").unlink()
    importlib.invalidate_caches()  # gone: as stock Python, no error
    write(zmod_a="VALUE = 1\n", zmod_b="VALUE = 5\n")
    importlib.invalidate_caches()
    assert importlib.import_module("zmod_b").VALUE == 5
