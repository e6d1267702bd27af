"""Where a stage's units of work run: in this process ("local") or on a Ray cluster ("ray").

Ray is an optional extra (`pip install "mithridate[ray]"`). The cluster is the one `RAY_ADDRESS` names (unset: a
local cluster started for this process). Usage statistics are off unless the user turned them on. The choice is a
runtime field of each stage's config: switching engine resumes the same folder, and both engines write the same files.
"""

from __future__ import annotations

import logging
import os
from typing import Literal

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
Engine = Literal[ENGINES]
EXTRA = 'pip install "mithridate[ray]"'


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
        kwargs = {"address": address} if address else {"num_cpus": num_cpus, "include_dashboard": False}
        ray.init(log_to_driver=False, logging_level=logging.WARNING, **kwargs)
        logger.info("ray: %s (%s CPUs)", address or "local cluster", ray.cluster_resources().get("CPU"))
    return ray
