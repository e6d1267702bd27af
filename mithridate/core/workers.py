"""Worker processes that end with the run that started them."""

from __future__ import annotations

import os
import threading


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
