"""Allocators for a run's process: ones that give freed memory back to the system.

pyarrow's default pool (mimalloc in current wheels) keeps what each thread freed for reuse;
with the bulk sender threads a run's resident memory ends up about 60 MB higher than with
jemalloc, which returns it, and choosing the pool when pyarrow loads rather than switching
later saves another 10-15 MB (measured with bench/, 1,000,000 lines). glibc's malloc, which
holds Python's request bodies, raises its mmap threshold after the first large block is
freed and then keeps such blocks in its heaps; a fixed threshold returns them at once.
Set ARROW_DEFAULT_MEMORY_POOL (jemalloc, mimalloc or system) to choose another Arrow pool.
And pandas, which pyarrow would import only to ask whether a list is a pandas object, stays
unloaded.
"""

import contextlib
import ctypes
import os
import resource
import sys

_WANTED_POOL = "jemalloc"
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter; setting it also fixes the threshold
_MMAP_THRESHOLD_BYTES = 256 * 1024


def prefer_returning_allocators() -> None:
    """Run when the package is imported, before pyarrow is: Arrow reads the variable once."""
    os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", _WANTED_POOL)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):  # not glibc: its own defaults
            ctypes.CDLL(None).mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_BYTES)


def keep_pandas_unloaded() -> None:
    """pyarrow imports pandas (about 30 MB resident) the first time it converts a Python
    sequence, only to ask whether it is a pandas object; the pipeline never hands it one.

    Letting that first probe fail makes pyarrow remember "no pandas" for its probes in this
    process. pandas stays importable, and pyarrow still imports it when asked for pandas
    output (`to_pandas`), which tries again.
    """
    if "pandas" in sys.modules:  # already paid for
        return
    import pyarrow as pa

    sys.meta_path.insert(0, _NoPandas)
    try:
        pa.array([0])
    finally:
        sys.meta_path.remove(_NoPandas)


class _NoPandas:
    """An import finder that refuses pandas, for the moment of pyarrow's first probe."""

    @staticmethod
    def find_spec(name: str, path: object = None, target: object = None) -> None:
        if name == "pandas":
            raise ImportError("pandas is kept out of pyarrow's probe", name=name)


def use_returning_memory_pool() -> str:
    """The Arrow pool in use; switched to jemalloc (else the system allocator) now when
    pyarrow was loaded before this package could choose, unless the environment chose."""
    import pyarrow as pa

    backend = pa.default_memory_pool().backend_name
    if os.environ.get("ARROW_DEFAULT_MEMORY_POOL") == _WANTED_POOL and backend != _WANTED_POOL:
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name


def peak_rss_mb() -> int:
    """The peak resident memory of this process so far: a step's own in a job run, where each
    step has a process of its own (Dagster's multiprocess executor)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
