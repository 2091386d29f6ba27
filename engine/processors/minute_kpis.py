"""Built-in warm processor: per-minute KPIs per event type and level.

Each micro-batch yields *mergeable* partial rows per (minute, event_type, level): ``events``,
``engagement_sum``, ``engagement_count`` and ``players`` (the distinct player ids of that
micro-batch, so distinct counts stay exact across micro-batches). :func:`merge_kpis` folds the
partials of all micro-batches into the final KPIs: events, distinct players, mean engagement.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from engine.processors.base import WarmProcessor, register_warm

__all__ = ["MinuteKpis", "merge_kpis"]

_GROUP = ["minute", "event_type", "level"]


@register_warm("minute_kpis")
class MinuteKpis(WarmProcessor):
    """Partial per-minute KPIs of one micro-batch (see the module docstring)."""

    def process(self, batch: pa.RecordBatch) -> pa.Table:
        s = self.schema
        minute = pc.floor_temporal(batch.column(s.time), unit="minute")
        level = (
            batch.column("level")
            if "level" in batch.schema.names
            else pa.nulls(batch.num_rows, pa.int64())
        )
        score = (
            batch.column("engagement_score")
            if "engagement_score" in batch.schema.names
            else pa.nulls(batch.num_rows, pa.float64())
        )
        table = pa.table(
            {
                "minute": minute,
                "event_type": batch.column(s.type),
                "level": level,
                "player": batch.column(s.key),
                "score": score,
            }
        )
        out = table.group_by(_GROUP, use_threads=False).aggregate(
            [
                ([], "count_all"),
                ("score", "sum"),
                ("score", "count"),
                ("player", "distinct"),
            ]
        )
        return out.rename_columns(
            [*_GROUP, "events", "engagement_sum", "engagement_count", "players"]
        ).sort_by([(c, "ascending") for c in _GROUP])


def merge_kpis(partials: pa.Table) -> pa.Table:
    """Final KPIs from the partial rows of any number of micro-batches.

    Returns:
        One row per (minute, event_type, level): ``events``, ``players`` (distinct),
        ``mean_engagement``; sorted by the group columns.
    """
    sums = partials.group_by(_GROUP, use_threads=False).aggregate(
        [("events", "sum"), ("engagement_sum", "sum"), ("engagement_count", "sum")]
    )
    parents = pc.list_parent_indices(partials["players"])
    players = pa.table(
        {
            **{c: pc.take(partials[c], parents) for c in _GROUP},
            "player": pc.list_flatten(partials["players"]),
        }
    )
    distinct = players.group_by(_GROUP, use_threads=False).aggregate([("player", "count_distinct")])
    merged = sums.join(distinct, keys=_GROUP, join_type="left outer")
    mean = pc.divide(
        merged["engagement_sum_sum"], pc.cast(merged["engagement_count_sum"], pa.float64())
    )
    return pa.table(
        {
            **{c: merged[c] for c in _GROUP},
            "events": merged["events_sum"],
            "players": pc.fill_null(merged["player_count_distinct"], 0),
            "mean_engagement": mean,
        }
    ).sort_by([(c, "ascending") for c in _GROUP])
