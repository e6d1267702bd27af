"""Worker processes: ones that end with the run that started them, and independent model trainings side by side.

Small models (the tiny UNet of poisoning victims and opt-out models) use a second CPU thread poorly: two of them
trained at once on one thread each finish sooner than one after the other on two threads. Float rounding depends on
the number of torch threads, so a job's result depends on `threads`, never on `workers`: callers that want the same
models for any `workers` fix `threads`. Beyond one machine the cluster engine is Ray (`core/engine.py`); `run` is
only the local side-by-side run.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence

logger = logging.getLogger(__name__)


def die_with_parent() -> None:
    """In a multiprocessing worker: end it as soon as the process that started it ends, however that ends (a kill -9
    included), so that no orphan keeps writing into an output folder whose lock went with its parent. A no-op in a
    process not started by multiprocessing. Linux: PR_SET_PDEATHSIG; elsewhere a thread watching for re-parenting."""
    import multiprocessing
    import signal

    parent = multiprocessing.parent_process()
    if parent is None or parent.pid is None:
        return
    try:
        import ctypes

        armed = ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError, TypeError):
        armed = False
    if os.getppid() != parent.pid:  # the parent ended before the signal was armed
        os._exit(1)
    if armed:
        return

    def watch() -> None:
        while os.getppid() == parent.pid:
            threading.Event().wait(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


# --- trainings side by side ---------------------------------------------------------------------------------------

def resolve(workers: int, jobs: int) -> int:
    """Processes to use: `workers` (0 = one per CPU core), never more than the jobs."""
    n = workers or os.cpu_count() or 1
    return max(1, min(n, jobs))


def check(owner: str, workers: int, threads: int) -> None:
    """Clear errors for the two fields: both ≥ 0, and side-by-side workers need a fixed thread count."""
    for name, value in (("workers", workers), ("threads", threads)):
        if value < 0:
            raise ValueError(f"{owner}.{name}={value}: must be >= 0")
    if workers != 1 and threads == 0:
        raise ValueError(f"{owner}.workers={workers}: side-by-side trainings need threads >= 1 (torch threads per "
                         f"training; workers × threads should not exceed the cores)")


def _init(threads: int, level: int) -> None:
    import torch

    die_with_parent()
    logging.basicConfig(level=level, format="%(message)s")
    if threads:
        torch.set_num_threads(threads)


def run(fn: Callable, jobs: Sequence[tuple], workers: int = 1, threads: int = 0, what: str = "job") -> list:
    """`fn(*job)` for every job, results in job order. `workers` = 1: in this process, one after another, with
    `threads` torch threads (0 = torch's setting); else in that many spawned processes (0 = one per core), each with
    `threads` torch threads. `fn` must be importable (a module-level function) and its arguments picklable. A job's
    exception is raised here once the running jobs end."""
    if not jobs:
        return []
    n = resolve(workers, len(jobs))
    if n == 1:
        from mithridate.core.compute import torch_threads

        with torch_threads(threads):
            return [fn(*job) for job in jobs]
    logger.info("%d %ss on %d processes side by side (%d torch thread%s each)", len(jobs), what, n, threads,
                "" if threads == 1 else "s")
    ctx = multiprocessing.get_context("spawn")  # a fork would copy torch's OpenMP state
    with ProcessPoolExecutor(n, mp_context=ctx, initargs=(threads, logging.getLogger().getEffectiveLevel()),
                             initializer=_init) as pool:
        return list(pool.map(fn, *zip(*jobs)))
