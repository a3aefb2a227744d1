"""Spark 3.5's Python worker re-reads Spark's archives before every task; this makes it stat them.

PySpark 3.5's worker calls `importlib.invalidate_caches()` at the start of every task (4.0
calls it only when a task adds to sys.path). In Python 3.10 and 3.11 that makes every
`zipimporter` in `sys.path_importer_cache` read its archive's directory again. Spark puts its
spark-core jar (5,221 entries in 3.5.9) and pyspark.zip on the workers' path, and every package
imported from pyspark.zip adds an importer of its own. On this project's CI machine that was
110-210 ms of CPU per task, and a synchronous step of a small network took 254 ms on Spark
3.5.9 against 71 ms on 4.3; with the swap, 113 ms (benchmarks/RESULTS.md).

`read_archives_on_change` swaps those importers for ones that read the directory again only
when the archive's size or modification time changed (one stat instead). An archive replaced
while the worker runs is still read again; nothing else changes for imports.
"""
import os
import sys
import zipimport


def _stamp(path):
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


class ArchiveReadOnChange(zipimport.zipimporter):
    """A zipimporter whose invalidate_caches reads the archive's directory only if it changed."""

    def __init__(self, path):
        super().__init__(path)
        self._stamp = _stamp(self.archive)

    def invalidate_caches(self):
        stamp = _stamp(self.archive)
        if stamp != self._stamp or stamp is None:
            self._stamp = stamp
            super().invalidate_caches()


def _needed():
    """Only Spark 3's worker invalidates the caches on every task."""
    pyspark = sys.modules.get("pyspark")
    version = getattr(pyspark, "__version__", "") if pyspark else ""
    return version.startswith("3.")


def read_archives_on_change(force=False):
    """Swap this process's plain zipimporters for ArchiveReadOnChange ones (Spark 3 workers
    only, unless force). Cheap when there is nothing to swap: a scan of the cache's entries."""
    if not (force or _needed()):
        return 0
    swapped = 0
    for key, finder in list(sys.path_importer_cache.items()):
        if type(finder) is not zipimport.zipimporter:
            continue
        try:
            sys.path_importer_cache[key] = ArchiveReadOnChange(key)
        except (zipimport.ZipImportError, OSError):
            continue
        swapped += 1
    return swapped
