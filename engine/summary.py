"""What a run reports: live progress, checkpoint cost, and the summary ``thermocline run`` prints.

Plain data, apart from the pipeline that fills it: :class:`Progress` goes to the progress
callback while a run goes on, :class:`RunSummary` is returned at its end (``to_json()`` is what
``thermocline run --json`` prints), :class:`CheckpointStats` accumulates what checkpoints cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["CheckpointStats", "Progress", "RunSummary"]


@dataclass
class Progress:
    """A live view of the pipeline, passed to the progress callback."""

    elapsed_s: float
    events_in: int
    routed: dict[str, int]
    dead_letter: int
    done: dict[str, int]
    hot_calls_in_flight: int
    warm_buffered_rows: int
    warm_tasks_in_flight: int
    cold_calls_in_flight: int
    open_blocks: int


@dataclass
class CheckpointStats:
    """What checkpoints cost, in seconds: whole (the drain included), their snapshot step alone
    (actors writing their pieces) and their commit step (prepare records, one Delta commit per
    table written to, the pointers), with the largest snapshot's size and the most files one
    commit carried."""

    last_s: float = 0.0
    max_s: float = 0.0
    total_s: float = 0.0
    snapshot_max_s: float = 0.0
    snapshot_rows: int = 0
    snapshot_bytes: int = 0
    commit_max_s: float = 0.0
    commit_files_max: int = 0

    def record(
        self, seconds: float, snapshot_s: float, rows: int, size: int, commit_s: float, files: int
    ) -> None:
        self.last_s = seconds
        self.max_s = max(self.max_s, seconds)
        self.total_s += seconds
        self.snapshot_max_s = max(self.snapshot_max_s, snapshot_s)
        if rows >= self.snapshot_rows:
            self.snapshot_rows, self.snapshot_bytes = rows, size
        self.commit_max_s = max(self.commit_max_s, commit_s)
        self.commit_files_max = max(self.commit_files_max, files)

    def to_json(self) -> dict[str, float | int]:
        return {
            "last_ms": round(self.last_s * 1000, 1),
            "max_ms": round(self.max_s * 1000, 1),
            "total_ms": round(self.total_s * 1000, 1),
            "snapshot_max_ms": round(self.snapshot_max_s * 1000, 1),
            "snapshot_rows": self.snapshot_rows,
            "snapshot_bytes": self.snapshot_bytes,
            "commit_max_ms": round(self.commit_max_s * 1000, 1),
            "commit_files_max": self.commit_files_max,
        }


@dataclass
class RunSummary:
    """What a run did; ``to_json()`` is what ``thermocline run --json`` prints."""

    events_in: int
    hot: int
    warm: int
    cold: int
    dead_letter: int
    per_rule: dict[str, int]
    elapsed_s: float
    lake_uri: str
    done_positions: dict[str, int]
    hot_latency_ms: dict[str, float | None]
    alerts: int
    outputs: dict[str, str]
    bounds: dict[str, int] = field(default_factory=dict)
    checkpoints: int = 0
    #: Checkpoint cost (see :class:`CheckpointStats`); empty without checkpoints.
    checkpoint: dict[str, float | int] = field(default_factory=dict)
    #: Seconds from the start (paths deployed) to the first block read: connecting, joining a
    #: consumer group, the first fetch. None when nothing was read.
    first_block_s: float | None = None
    #: Rows each rule could not compare (a column of another kind than its literal).
    type_mismatches: dict[str, int] = field(default_factory=dict)
    #: How many times a payload column's type widened in the stream's schema contract.
    schema_changes: int = 0
    #: The run was stopped (``Source.stop``, e.g. on SIGINT) before its source was exhausted.
    stopped: bool = False

    @property
    def events_per_s(self) -> float:
        return self.events_in / self.elapsed_s if self.elapsed_s else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "events_in": self.events_in,
            "hot": self.hot,
            "warm": self.warm,
            "cold": self.cold,
            "dead_letter": self.dead_letter,
            "per_rule": self.per_rule,
            "elapsed_s": round(self.elapsed_s, 3),
            "events_per_s": round(self.events_per_s),
            "lake_uri": self.lake_uri,
            "hot_latency_ms": self.hot_latency_ms,
            "alerts": self.alerts,
            "outputs": self.outputs,
            "done_positions": self.done_positions,
            "bounds": self.bounds,
            "checkpoints": self.checkpoints,
            "checkpoint": self.checkpoint,
            "first_block_s": None if self.first_block_s is None else round(self.first_block_s, 3),
            "type_mismatches": self.type_mismatches,
            "schema_changes": self.schema_changes,
            "stopped": self.stopped,
        }
