"""Arrow's memory pool for a run's process: one that gives freed memory back.

pyarrow's default pool (mimalloc in current wheels) keeps what each thread freed for reuse;
with the bulk sender threads a run's resident memory ends up about 60 MB higher than with
jemalloc, which returns it (measured with bench/, 1,000,000 lines). Set
ARROW_DEFAULT_MEMORY_POOL (jemalloc, mimalloc or system) to choose another.
"""

import os
import resource

import pyarrow as pa


def use_returning_memory_pool() -> str:
    """Switch to jemalloc (else the system allocator) unless the environment chose a pool."""
    if not os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
        try:
            pa.set_memory_pool(pa.jemalloc_memory_pool())
        except NotImplementedError:  # a pyarrow built without jemalloc
            pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name


def peak_rss_mb() -> int:
    """The peak resident memory of this process so far: a step's own in a job run, where each
    step has a process of its own (Dagster's multiprocess executor)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
