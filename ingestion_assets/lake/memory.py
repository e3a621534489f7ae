"""The Arrow memory pool rows are written with: one that gives freed memory back at once.

A load streams batches through the source's parser, the month files' encoders and the key
audit, each allocating and freeing buffers of a few MB many times. pyarrow's default allocator
(mimalloc) keeps freed pages for reuse, so the process's resident size followed everything
that was ever allocated at once, not what was live. Measured on the benchmark's full load
(bench `project-backfill`, 2,000,000 rows over 1,096 days, Arrow's live allocations peaking at
about 60 MB; peak RSS of the process, imports included): mimalloc 476 MB, the system allocator
418 MB, mimalloc with `MIMALLOC_PURGE_DELAY=0` (only settable before the process starts)
359 MB, jemalloc with its dirty-page decay at 0 (freed pages returned at once) 335 MB, in the
same wall time within the machine's noise. So the lake switches the default pool to jemalloc
with decay 0 before it reads, where pyarrow was built with jemalloc (Linux wheels), unless the
operator chose a pool: `ARROW_DEFAULT_MEMORY_POOL`, or a default pool of another backend than
mimalloc set before the first write (`pa.set_memory_pool`)."""

from __future__ import annotations

import os
import threading

import pyarrow as pa

_lock = threading.Lock()
_chosen = False


def return_freed_memory() -> None:
    """Make Arrow's default pool jemalloc with freed pages returned at once (once a process;
    nothing when a pool was chosen or pyarrow has no jemalloc)."""
    global _chosen
    with _lock:
        if _chosen:
            return
        _chosen = True
        if os.environ.get("ARROW_DEFAULT_MEMORY_POOL"):
            return
        if pa.default_memory_pool().backend_name != "mimalloc":
            return
        try:
            pool = pa.jemalloc_memory_pool()
        except NotImplementedError:
            return
        pa.jemalloc_set_decay_ms(0)
        pa.set_memory_pool(pool)
