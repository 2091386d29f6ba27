"""CPU priority on a shared node: hot actors at the driver's priority, warm and cold below."""

from __future__ import annotations

import os

import pytest
import ray

from engine.cold import ColdWriter
from engine.hot import HotActor
from engine.priority import THROUGHPUT_STEP, WORKER_NICENESS, run_lowered
from routers import EventSchema

pytestmark = pytest.mark.usefixtures("ray_local")


def _niceness(_self: object = None) -> int:
    return os.getpriority(os.PRIO_PROCESS, 0)  # Linux: the calling thread's


@ray.remote
def _lowered_then_own() -> tuple[int, int]:
    """A warm micro-batch's priority, and its worker thread's own afterwards."""
    return run_lowered(_niceness), _niceness()


def test_hot_actors_run_at_worker_priority_and_the_lake_writer_below(tmp_path) -> None:
    # Ray's own default puts every worker at niceness 15, below the driver, which then preempts
    # the hot actors whenever both want a core (hot p99 2x higher, engine.priority).
    hot = HotActor.remote("player_features", EventSchema(), {})
    writer = ColdWriter.remote(str(tmp_path), {}, "s", "p", EventSchema(), (), 10, 1 << 30, 10.0)
    assert ray.get(hot.__ray_call__.remote(_niceness)) == WORKER_NICENESS
    assert ray.get(writer.__ray_call__.remote(_niceness)) == WORKER_NICENESS + THROUGHPUT_STEP
    ray.kill(hot)
    ray.kill(writer)


def test_warm_work_runs_lower_and_leaves_its_pooled_worker_as_it_was() -> None:
    # Ray may later give the same worker process to a hot actor: it must not inherit the step.
    for lowered, own in ray.get([_lowered_then_own.remote() for _ in range(4)]):
        assert lowered == WORKER_NICENESS + THROUGHPUT_STEP
        assert own == WORKER_NICENESS
