"""PySpark 3.5's Python worker re-reads Spark's archives before every task; this makes it stat them.

PySpark 3.5.9's worker calls `importlib.invalidate_caches()` at the start of every task (4.3.0's
only when a task adds to sys.path; the versions between were not checked here). On Python
3.10-3.12 that makes every `zipimporter` in `sys.path_importer_cache` read its archive's
directory again at once (3.13 reads it lazily, at the next import through it). Spark puts its
spark-core jar (5,221 entries in 3.5.9) and pyspark.zip on the workers' path, and every package
imported from pyspark.zip adds an importer of its own. On this project's CI machine that was
110-210 ms of CPU per task, and a synchronous step of a small network took 254 ms on Spark 3.5.9
against 71 ms on 4.3.0; with the swap, 113 ms (benchmarks/RESULTS.md).

`read_archives_on_change` turns those importers into ones that read the directory again only
when the archive's file changed (one stat instead), from the second task of a worker process
on. An archive replaced while the worker runs is still read again; nothing else changes for
imports. Where the worker does not invalidate the caches, the swap costs a scan of the cache.
"""
import os
import sys
import zipimport

_UNREAD = object()  # the stamp of an importer not read since its swap: the next invalidation reads


def _archive_stamp(path):
    """What changes when the archive's file is replaced or rewritten (None: it is gone)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev


class ArchiveReadOnChange(zipimport.zipimporter):
    """A zipimporter whose invalidate_caches reads the archive's directory only if its file
    changed since the last read (always the first time after the swap: the directory it holds
    may be older than the stamp it would take now)."""

    _stamp = _UNREAD

    def invalidate_caches(self):
        stamp = _archive_stamp(self.archive)  # before the read: a change during it is seen next time
        if stamp is None or stamp != self._stamp:
            super().invalidate_caches()
            self._stamp = stamp


def read_archives_on_change():
    """Turn this process's plain zipimporters into ArchiveReadOnChange ones, in place (the
    loaders of modules imported through them stay the same objects). Returns how many."""
    swapped = 0
    for finder in list(sys.path_importer_cache.values()):
        if type(finder) is zipimport.zipimporter:
            finder.__class__ = ArchiveReadOnChange
            swapped += 1
    return swapped
