"""The lake's archived events as a source: a range of days re-read in the stream's own order.

A pipeline with ``cold.archive: all`` keeps every good event in the lake's events table with its
place in the stream (``source_partition``, ``source_offset``) and its ``arrival_time``. This
source reads the days asked for, from one table version, and gives each source partition's
events back in offset order, as batches: the pipeline routes them by their recorded arrival
times (age rules do not read the clock), so a replay with an unchanged policy routes every event
as the first run did, and hot state, whose updates depend on the order of a player's events,
is rebuilt in the same order (jobs.replay).

Memory: one source partition's events of the range are held at a time (read, then sorted);
replay a long range in pieces of days, or from a pipeline with more source partitions.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from engine.lake import EVENTS_DIR, Lake
from engine.sources.base import Source, SourceBlock
from routers.errors import ThermoclineError

__all__ = ["ARCHIVE_COLUMNS", "LakeSource", "NotAnArchiveError"]

#: Columns the archive adds to the events (and the lake's partition columns): not the events'.
ARCHIVE_COLUMNS: Final[tuple[str, ...]] = (
    "dt",
    "hour",
    "route",
    "source_partition",
    "source_offset",
)


class NotAnArchiveError(ThermoclineError):
    """The events table does not record the stream's order (not written with archive: all)."""


class LakeSource(Source):
    """Events of the days ``first_day`` to ``last_day`` (inclusive, ``dt`` of the event time)
    from the lake's events table at ``version`` (default: the latest, fixed when read).

    Each source partition of the original stream is a partition here, under its own name;
    offsets are the events' ranks in it (0, 1, ...: contiguous, the dead letters of the first
    run are not in the lake), so the same range of the same version always yields the same
    blocks (``replay_id``) and a re-run of a replay commits nothing twice.

    Example:
        >>> import tempfile
        >>> from engine.delta import LakeTables
        >>> from engine.lake import COLD
        >>> lake = Lake(tempfile.mkdtemp())
        >>> t = pa.table({"event_id": ["b", "a"], "source_partition": ["0", "0"],
        ...               "source_offset": [9, 4], "event_time": pa.array(
        ...                   [1_764_000_000_000] * 2, pa.timestamp("ms", "UTC"))})
        >>> files = lake.stage_partitioned(t, "event_time", "doc", "0")
        >>> LakeTables(lake, "doc").commit("events", files, {}, (), ("dt", "hour"), fence=False)
        []
        >>> [b.batch["event_id"].to_pylist() for b in LakeSource(lake, "2025-11-24").blocks()]
        [['a', 'b']]
    """

    name = "replay"

    def __init__(
        self,
        lake: Lake,
        first_day: str,
        last_day: str | None = None,
        block_rows: int = 50_000,
        version: int | None = None,
    ) -> None:
        from deltalake import DeltaTable

        from engine.delta import delta_storage_options

        self.lake = lake
        self.first_day, self.last_day = first_day, last_day or first_day
        self.block_rows = block_rows
        self._table = DeltaTable(
            f"{lake.uri}/{EVENTS_DIR}",
            version=version,
            storage_options=delta_storage_options(lake.uri, lake.storage_options) or None,
        )
        #: The table version read (fixed at construction: later commits are not seen).
        self.version: int = self._table.version()
        names = self._table.schema().to_arrow().names
        missing = [c for c in ("source_partition", "source_offset") if c not in names]
        if missing:
            raise NotAnArchiveError(
                f"lake {lake.uri}: its events table has no {' or '.join(missing)}: it does not"
                " record the stream's order. Fix: run the pipeline with cold.archive: all; a"
                " replay covers events archived since."
            )

    @property
    def replay_id(self) -> str:
        return f"lake-v{self.version}-{self.first_day}-{self.last_day}"

    def _days(self) -> ds.Expression:
        return (ds.field("dt") >= self.first_day) & (ds.field("dt") <= self.last_day)

    def partitions(self) -> list[str]:
        """The source partitions holding events of the range, sorted."""
        dataset = self._table.to_pyarrow_dataset()
        found = dataset.to_table(columns=["source_partition"], filter=self._days())
        names = pc.unique(found["source_partition"].drop_null()).to_pylist()
        return sorted(names)

    def blocks(self) -> Iterator[SourceBlock | None]:
        dataset = self._table.to_pyarrow_dataset()
        keep = [n for n in dataset.schema.names if n not in ARCHIVE_COLUMNS]
        for partition in self.partitions():
            if self.stopping:
                return
            rows = dataset.to_table(
                columns=[*keep, "source_offset"],
                filter=self._days() & (ds.field("source_partition") == partition),
            )
            rows = rows.sort_by("source_offset").drop_columns(["source_offset"])
            rows = _without_empty_columns(rows)
            for start in range(0, rows.num_rows, self.block_rows):
                if self.stopping:
                    return
                part = rows.slice(start, self.block_rows).combine_chunks()
                batch = part.to_batches()[0] if part.num_rows else None
                if batch is None:
                    continue
                last = start + batch.num_rows - 1
                yield SourceBlock(partition, start, last, batch=batch)


def _without_empty_columns(rows: pa.Table) -> pa.Table:
    """``rows`` without the columns null throughout: a column the table grew later (the
    stream's schema grew after the range) was not in these events, as the first run saw them."""
    empty = [n for n in rows.column_names if rows[n].null_count == rows.num_rows > 0]
    return rows.drop_columns(empty) if empty else rows
