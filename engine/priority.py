"""CPU priority on a shared node: the hot path (a latency target) ahead of warm and cold.

Ray starts its workers at niceness 15 (its ``worker_niceness``), below the driver at 0, so the
driver, which decodes every event, preempted the hot actors whenever both wanted a core: at half
of the measured throughput on 2 cores, hot p99 was 220-290 ms with Ray's default and 75-118 ms
with workers at 0 (three paired runs each). The embedded local Ray therefore starts its workers at
0 (:data:`WORKER_NICENESS`, see ``engine.cluster.init_local_ray``), and the throughput paths step
down from whatever their worker has, by :data:`THROUGHPUT_STEP`, so the order holds on a cluster
started with other settings too.

Linux keeps niceness per thread. A warm micro-batch runs in a worker process that Ray may later
give to a hot actor, so it lowers only a thread of its own (:func:`run_lowered`); the lake writer
is an actor with a process of its own, and lowers the thread its calls run on
(:func:`lower_this_thread`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["THROUGHPUT_STEP", "WORKER_NICENESS", "lower_this_thread", "run_lowered"]

#: Niceness of the embedded local Ray's workers (Ray's own default is 15).
WORKER_NICENESS = 0
#: How much lower than its worker a throughput path runs (niceness, capped at 19).
THROUGHPUT_STEP = 10
_LOWEST = 19

R = TypeVar("R")


def lower_this_thread(step: int = THROUGHPUT_STEP) -> int:
    """Lower the calling thread's CPU priority by ``step`` (niceness up, at most 19); returns
    the new niceness. Raising niceness needs no privilege."""
    niceness = min(_LOWEST, os.getpriority(os.PRIO_PROCESS, 0) + step)
    os.setpriority(os.PRIO_PROCESS, 0, niceness)
    return niceness


def run_lowered(fn: Callable[..., R], *args: Any, step: int = THROUGHPUT_STEP) -> R:
    """``fn(*args)`` on a new thread of lower priority, so the calling thread keeps its own.

    Example:
        >>> import os
        >>> before = os.getpriority(os.PRIO_PROCESS, 0)
        >>> run_lowered(lambda: os.getpriority(os.PRIO_PROCESS, 0)) == min(19, before + 10)
        True
        >>> os.getpriority(os.PRIO_PROCESS, 0) == before
        True
    """
    outcome: list[Any] = []

    def body() -> None:
        try:
            lower_this_thread(step)
            outcome.append((True, fn(*args)))
        except BaseException as exc:  # raised again in the calling thread
            outcome.append((False, exc))

    thread = threading.Thread(target=body, name="thermocline-lowered")
    thread.start()
    thread.join()
    ok, value = outcome[0]
    if not ok:
        raise value
    return value
