"""The checkpoint coordinator: positions, the numbered commit steps, recovery, rebalance hooks.

A pipeline's paths acknowledge the blocks they finish; the coordinator keeps, per source
partition, the two positions those acknowledgements make (``paths``: hot and warm; ``cold``: the
lake writer's staged files, :mod:`engine.positions`), takes checkpoints in the order
:mod:`engine.commit` numbers, and answers the source's rebalance hooks: before partitions are
revoked, a checkpoint with the lake writer flushed; when partitions are assigned, a claim, the
recovery of each partition's last checkpoint, and where it resumes.

It is given the running parts of its pipeline by :meth:`CheckpointCoordinator.start` (the hot
path, the committer, the source, and the pipeline's drain and output staging); its positions
exist before, so a pipeline's :meth:`~engine.pipeline.Pipeline.done_positions` always answers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from engine.commit import COLD, FEEDS, PATHS, Committer, crash_point
from engine.hot import HotPath
from engine.positions import PositionTracker
from engine.sources import Source
from engine.summary import CheckpointStats
from routers.contract import SchemaContract

__all__ = ["CheckpointCoordinator"]

_log = logging.getLogger("thermocline")


class CheckpointCoordinator:
    """Positions, checkpoints, recovery and rebalance hooks of one pipeline.

    Args:
        contract: the stream's schema contract (saved with each checkpoint, seeded from the
            checkpoint a partition resumes from).
    """

    def __init__(self, contract: SchemaContract) -> None:
        self.contract = contract
        #: Done positions of the hot and warm paths (``paths``), and of the lake writer
        #: (``cold``): see :meth:`checkpoint`.
        self.tracker = PositionTracker()
        self.cold_tracker = PositionTracker()
        #: Per source partition, the offset up to which a replay skips hot and warm rows.
        self.skip: dict[str, int] = {}
        #: Where each source partition resumed (the lake writer's position before it flushes).
        self.resumed: dict[str, int] = {}
        #: Our own last checkpoint per partition (each feed's position): our actors hold its
        #: keys' state as of then.
        self.held: dict[str, dict[str, int]] = {}
        #: Partitions another member has claimed since we did (fenced off until assigned to us
        #: again).
        self.fenced: set[str] = set()
        self.taken = 0
        self.stats = CheckpointStats()
        self._started = False

    def start(
        self,
        committer: Committer,
        hot: HotPath,
        source: Source,
        lake: tuple[str, Mapping[str, Any]],
        drain: Callable[[bool], None],
        stage_outputs: Callable[[], None],
    ) -> None:
        """The pipeline's running parts: its committer, hot path and source, its lake (URI and
        storage options, for hot snapshots), ``drain(flush_cold)`` (step 1) and
        ``stage_outputs()`` (the hot path's outputs, staged before each commit)."""
        self.committer, self.hot, self.source = committer, hot, source
        self._lake_uri, self._storage = lake
        self._drain, self._stage_outputs = drain, stage_outputs
        self._started = True

    def done_positions(self) -> dict[str, int]:
        """Highest offset per source partition that every path has finished."""
        return {
            p: min(feeds.values())
            for p, feeds in self.positions().items()
            if min(feeds.values()) >= 0
        }

    def checkpoint(self, flush_cold: bool = False) -> dict[str, int]:
        """Take a checkpoint, in this order (a crash at any step leaves the last one valid, and
        recovery finishes or forgets this one: see :mod:`engine.commit`):

        1. drain the hot and warm paths: every block read so far is applied to hot state and
           in a staged warm output; alerts and hot dead letters staged too, alerts delivered
           to Kafka. The lake writer is not flushed (unless ``flush_cold``: before partitions
           are revoked, at the end): it stages files when its buffers fill or age, so cold
           files have the size its triggers give them, not one per checkpoint; its own
           position (``cold``, every row up to it in a staged file) lags the paths' (``paths``);
        2. snapshot hot state, per source partition: each hot actor writes its own keys' rows
           to the lake, in parallel (nothing goes through the driver);
        3-5. prepare, commit each table (one Delta transaction with its feed's positions),
           point each partition at its snapshot (:class:`engine.commit.Committer`);
        6. commit to the source (Kafka) what every path has: the lower of the two positions. A
           restart resumes there, and the hot and warm paths skip the rows they already hold.

        Returns:
            The positions committed to the source (last offset per partition).
        """
        assert self._started, "start() first"
        started = time.monotonic()
        self._drain(flush_cold)
        self._stage_outputs()
        positions = self.positions()
        # Only partitions that moved since our last checkpoint of them: rewriting the others
        # would cost a snapshot each time, and would overwrite a newer checkpoint written by
        # the member that took such a partition over after a rebalance.
        moved = {p: n for p, n in positions.items() if self.held.get(p) != n}
        snapshot_s, rows, size = 0.0, 0, 0
        pieces: dict[str, list[str]] = {}
        if moved:
            saving = time.monotonic()
            pieces, rows, size = self.hot.save(
                self._lake_uri,
                dict(self._storage),
                lambda p, i: self.committer.checkpoints.snapshot_path(p, moved[p][PATHS], i),
                list(moved),
            )
            snapshot_s = time.monotonic() - saving
            crash_point("snapshot")
        # Steps 3-5: prepare, commit the tables, point (engine.commit). Fencing: a partition
        # another member has claimed was given to it while we stalled (past the group's
        # timeouts): we lost it, and must not commit it over theirs.
        committing = time.monotonic()
        result = self.committer.commit(moved, pieces, self.contract.schema)
        commit_s = time.monotonic() - committing
        for partition in result.fenced:
            self.fence(partition)
            moved.pop(partition, None)
        self.held.update(moved)
        # All of them but the fenced: a commit the last run missed (a crash between steps 5 and
        # 6) happens now.
        done = {
            p: min(feeds.values())
            for p, feeds in positions.items()
            if p not in self.fenced and min(feeds.values()) >= 0
        }
        self.source.commit(done)
        crash_point("kafka")
        self.taken += 1
        self.stats.record(
            time.monotonic() - started, snapshot_s, rows, size, commit_s, result.files
        )
        return done

    def positions(self) -> dict[str, dict[str, int]]:
        """Per source partition the paths have done some of, each feed's done position; the
        lake writer's, before its first flush of the partition, is where the partition
        resumed, less one (-1: nothing)."""
        state, cold = self.tracker.done(), self.cold_tracker.done()
        return {
            p: {COLD: cold.get(p, self.resumed.get(p, 0) - 1), PATHS: n} for p, n in state.items()
        }

    def fence(self, partition: str) -> None:
        if partition not in self.fenced:
            _log.warning(
                "checkpoint: partition %s was given to another member (we stalled and lost it):"
                " not saved or committed by us",
                partition,
            )
        self.fenced.add(partition)

    # -- rebalance hooks (called by the source from inside blocks(), in the driver's thread) --

    def on_revoke(self, partitions: list[str]) -> None:
        """Checkpoint everything (the lake writer flushed), then let ``partitions`` go."""
        # Everything read so far, from every partition, is done and committed, the lake
        # writer's buffers included: the new owner resumes where every path is.
        self.checkpoint(flush_cold=True)
        # Their keys' state is checkpointed: give the memory back (the new owner restores it).
        self.hot.release(partitions)
        self.committer.release(partitions)
        for name in partitions:
            # Not ours any more: no later checkpoint of ours may point at it (with the keys
            # released just now, its snapshot would be empty) or commit it.
            self.held.pop(name, None)
            self.skip.pop(name, None)
            self.tracker.forget(name)
            self.cold_tracker.forget(name)

    def on_assign(self, partitions: dict[str, int]) -> dict[str, int]:
        """Where each newly assigned partition resumes; claims them and restores their state.

        Args:
            partitions: name -> the source's own resume offset (committed, else its start).
        """
        assert self._started, "start() first"
        # Ours now, before their checkpoints are read: a stale former owner is fenced from here
        # (its pointer writes by the claim file, its table commits by our epoch in each table).
        self.committer.claim(list(partitions))
        resume: dict[str, int] = {}
        for name, default in partitions.items():
            self.fenced.discard(name)  # ours again: its checkpoint is read afresh below
            held = self.held.get(name)  # our own last checkpoint of it, if any
            # A checkpoint a crash interrupted after its prepare step is finished first.
            mine = held.get(PATHS) if held is not None else None
            checkpoint = self.committer.recover(name, newer_than=mine)
            if checkpoint is not None:
                # Someone (a crashed run of ours, another member) got further than our actors:
                # their checkpoint is the truth for this partition's keys.
                self.hot.restore(checkpoint.hot)
                if checkpoint.schema is not None:  # type undeclared columns as that run did
                    self.contract.seed(checkpoint.schema)
                held = checkpoint.feeds
                self.held[name] = held
            if held is not None and len(held) == len(FEEDS):
                # Our actors (restored, or our own) hold its keys as of the paths' position;
                # the lake writer had staged rows up to its own, which may be lower: the
                # source resumes after the lower, and hot and warm skip what they hold.
                resume[name] = held[COLD] + 1
                if held[COLD] < held[PATHS]:
                    self.skip[name] = held[PATHS]
                self.tracker.resume(name, held[PATHS] + 1)
            else:
                resume[name] = default
                self.tracker.resume(name, resume[name])
            self.cold_tracker.resume(name, resume[name])
            self.resumed[name] = resume[name]
        return resume
