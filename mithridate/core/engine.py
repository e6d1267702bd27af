"""Where a stage's units of work run: in this process ("local") or on a Ray cluster ("ray").

Ray is an optional extra (`pip install "mithridate[ray]"`). The cluster is the one `RAY_ADDRESS` names (unset: a
local cluster started for this process). Usage statistics are off unless the user turned them on. The choice is a
runtime field of each stage's config: switching engine resumes the same folder, and both engines write the same files.
Tasks and actors get the driver's object-storage settings (`storage.task_env`: AWS_*, FSSPEC_*, …) in their runtime
environment, so an `s3://` folder means the same store on every node.
"""

from __future__ import annotations

import collections
import logging
import os
from typing import Literal

from mithridate.core import progress, storage

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
Engine = Literal[ENGINES]
EXTRA = 'pip install "mithridate[ray]"'
# Task results under this size go back inline to the owner, the driver, and stay in its memory while referenced. Ray's
# default (100 KiB) let the filter's group-bys grow the driver by ~150 MiB from 100k to 1M key rows; at 16 KiB it
# stays flat (bench/scale.py). Set on a local cluster started here; on a real one, each `ray start` reads it from the
# environment (README "Scaling out").
INLINE_BYTES = 16 << 10


def check(engine: str) -> None:
    """A clear error for an unknown engine, or for "ray" without Ray installed (naming the extra)."""
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}: allowed values are {', '.join(ENGINES)}")
    if engine == "ray":
        try:
            import ray  # noqa: F401
        except ImportError:
            raise ValueError(f"engine='ray' needs Ray, which is not installed: {EXTRA}") from None


def ray_init(num_cpus: int | None = None):
    """Connect to the cluster `RAY_ADDRESS` names, or start a local one (`num_cpus` caps it; None: all cores). Reuses a
    connection this process already has. Returns the `ray` module."""
    check("ray")
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        address = os.environ.get("RAY_ADDRESS") or None
        if not address:
            os.environ.setdefault("RAY_max_direct_call_object_size", str(INLINE_BYTES))
        kwargs = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
        ray.init(log_to_driver=False, logging_level=logging.WARNING, **kwargs)
        logger.info("ray: %s (%s CPUs)", address or "local cluster", ray.cluster_resources().get("CPU"))
    return ray


def remote_options(**options) -> dict:
    """Ray options (`num_cpus`, `runtime_env`, …) with the driver's object-storage settings added to the runtime
    environment's variables (`storage.task_env`; the options' own variables win)."""
    env = storage.task_env()
    if not env:
        return options
    runtime = dict(options.get("runtime_env") or {})
    runtime["env_vars"] = {**env, **runtime.get("env_vars", {})}
    return {**options, "runtime_env": runtime}


# --- units of work on the cluster ---------------------------------------------------------------------------------


class ShardsFailed(RuntimeError):
    """Units of work (shards) that failed on every try: `failed` maps each one's name to its last error."""

    def __init__(self, stage: str, failed: dict[str, str], tries: int):
        self.failed = dict(sorted(failed.items()))
        shown = "; ".join(f"{k}: {v}" for k, v in list(self.failed.items())[:5])
        super().__init__(f"{stage}: {len(failed)} shard(s) failed on each of {tries} tries: "
                         f"{', '.join(self.failed)} ({shown}); fix the cause and rerun: finished shards are kept")


def _one_line(err: BaseException) -> str:
    """The error a task raised (not Ray's wrapper and its remote traceback), on one line."""
    cause = getattr(err, "cause", None) or err
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[-1] if text else ''}"[:300]


def _drive(calls: dict[str, tuple], submit, retries: int, desc: str, unit: str, slots: list | None = None) -> dict:
    """Run every entry of `calls` (name → args) through `submit(args, slot)` (→ an ObjectRef), at most one per slot
    at a time (None: all at once); an entry that fails (an exception, a dead worker) is tried again, `retries` times.
    Returns name → result; raises `ShardsFailed` naming the entries that failed on every try, after the others."""
    ray = ray_init()
    queue, tries, running = collections.deque(calls), collections.Counter(), {}
    free = None if slots is None else list(slots)
    results, failed = {}, {}

    def finish_one() -> None:
        while True:
            while queue and (free is None or free):
                name, slot = queue.popleft(), None if free is None else free.pop(0)
                tries[name] += 1
                running[submit(calls[name], slot)] = (name, slot)
            [ref], _ = ray.wait(list(running), num_returns=1)
            name, slot = running.pop(ref)
            if free is not None:
                free.append(slot)
            try:
                results[name] = ray.get(ref)
                return
            except ray.exceptions.RayError as err:
                if tries[name] <= retries:
                    logger.warning("%s: %s failed (try %d of %d), trying again: %s", desc, name, tries[name],
                                   retries + 1, _one_line(err))
                    queue.append(name)
                    continue
                failed[name] = _one_line(err)
                return

    for _ in progress.bar(range(len(calls)), desc, unit):
        finish_one()
    if failed:
        raise ShardsFailed(desc, failed, retries + 1)
    return results


def enter(cwd: str) -> None:
    """Work in the driver's folder `cwd` (relative paths in configs mean the same on every worker), when this node
    has it."""
    if os.path.isdir(cwd):
        os.chdir(cwd)


def _in_dir(cwd: str, fn, *args):
    enter(cwd)
    return fn(*args)


def run_tasks(fn, calls: dict[str, tuple], retries: int, desc: str, unit: str = "shard", **options) -> dict:
    """`fn(*args)` as one Ray task per entry of `calls` (name → args; `options`: Ray's, e.g. num_cpus,
    runtime_env), each entry tried `retries` more times when it fails. Returns name → result (see `_drive`). Tasks
    run in the driver's folder (`enter`)."""
    ray = ray_init()
    remote, cwd = ray.remote(_in_dir).options(max_retries=0, **remote_options(**options)), os.getcwd()
    return _drive(calls, lambda args, _slot: remote.remote(cwd, fn, *args), retries, desc, unit)


def start_actors(cls, args: tuple, count: int, restarts: int, **options) -> list:
    """`count` Ray actors of class `cls` built with `args` (each loads its model once); a dead one restarts up to
    `restarts` times. `options`: Ray's (num_cpus, num_gpus, runtime_env). `cls.__init__` should call `enter` with
    the driver's folder (relative paths)."""
    ray = ray_init()
    actor = ray.remote(cls).options(max_restarts=restarts, max_task_retries=0, **remote_options(**options))
    return [actor.remote(*args) for _ in range(count)]


def run_on_actors(actors: list, method: str, calls: dict[str, tuple], retries: int, desc: str,
                  unit: str = "shard") -> dict:
    """`actor.<method>(*args)` for every entry of `calls` (name → args), one entry per actor at a time, each tried
    `retries` more times when it fails (on any actor). Returns name → result (see `_drive`)."""
    return _drive(calls, lambda args, actor: getattr(actor, method).remote(*args), retries, desc, unit, actors)


def pool_size(actors: int, num_gpus: float, cpus_per_actor: int = 2) -> tuple[int, float, int]:
    """(actors, GPUs per actor, CPUs per actor) of an actor pool on the cluster: `num_gpus` per actor when it has
    GPUs (0 without), and with `actors` = 0 as many as its GPUs hold (one per `cpus_per_actor` CPUs without GPUs)."""
    ray = ray_init()
    res = ray.cluster_resources()
    gpus, cpus = res.get("GPU", 0), int(res.get("CPU", 1))
    per_gpu = num_gpus if gpus and num_gpus > 0 else 0.0
    if actors <= 0:
        actors = max(1, int(gpus // per_gpu) if per_gpu else cpus // cpus_per_actor)
    return actors, per_gpu, max(1, min(cpus_per_actor, cpus // actors))
