"""The CPU threads each test process of a parallel run may use.

Under ``pytest -n N`` every worker (and every child it starts: the zygote's forks, ComfyUI servers) runs
torch's eager CPU ops with one OpenMP thread per core by default, N workers on the same cores. An
OpenMP thread that waits for a busy core spins: measured on this 2-core machine with 2 workers, one
``test_sampling_path`` child took 180 s of CPU with 2 threads and 100 s with 1 (the same tests, results
and counts; an eager 6-step tiny-UNet run 1.74 -> 0.25 s of CPU). Each process gets its share of the cores
instead. A value the caller set is kept.
"""
from __future__ import annotations

import os
from typing import Optional

THREADS_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def threads_per_worker(cpus: int, workers: int) -> int:
    """The cores each of ``workers`` processes gets (at least one)."""
    return max(1, cpus // max(1, workers))


def share_cores_between_workers(environ=os.environ) -> Optional[int]:
    """In an xdist worker (``PYTEST_XDIST_WORKER_COUNT`` set by xdist), default the thread counts to the
    worker's share of the cores, for the processes it starts (torch reads them when it is imported).
    Returns the count this process should set itself (torch is already imported here: the pack's
    ``__init__`` imports it before the conftest), or None outside a worker."""
    workers = environ.get("PYTEST_XDIST_WORKER_COUNT")
    if not workers or not workers.isdigit():
        return None
    share = str(threads_per_worker(os.cpu_count() or 1, int(workers)))
    for name in THREADS_ENV:
        environ.setdefault(name, share)
    return int(environ["OMP_NUM_THREADS"])
