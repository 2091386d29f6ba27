"""Built-in warm processor: per-minute KPIs per event type and level.

Each micro-batch yields *mergeable* partial rows per (minute, event_type, level): ``events``,
``engagement_sum``, ``engagement_count`` and ``players`` (the distinct player ids of that
micro-batch, so distinct counts stay exact across micro-batches). :func:`merge_kpis` folds the
partials of all micro-batches into the final KPIs: events, distinct players, mean engagement.

Any column type is taken (see :func:`~engine.processors.base.coerce`), and the output schema is
:data:`KPI_SCHEMA` whatever the input types: ``level`` is parsed and floored to int64 (a level
that is not a number groups as null), ``engagement_score`` parsed to float64 (a score that is not
a number is not in the sum nor the count), players compared as strings. A row without a usable
event time has no minute and is not counted.
"""

from __future__ import annotations

from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.processors.base import WarmProcessor, coerce_column, register_warm
from routers import TIME_TYPE

__all__ = ["KPI_SCHEMA", "MinuteKpis", "merge_kpis"]

_GROUP = ["minute", "event_type", "level"]

#: The partial rows of one micro-batch, whatever the types of its input columns.
KPI_SCHEMA: Final[pa.Schema] = pa.schema(
    [
        ("minute", TIME_TYPE),
        ("event_type", pa.string()),
        ("level", pa.int64()),
        ("events", pa.int64()),
        ("engagement_sum", pa.float64()),
        ("engagement_count", pa.int64()),
        ("players", pa.list_(pa.string())),
    ]
)


@register_warm("minute_kpis")
class MinuteKpis(WarmProcessor):
    """Partial per-minute KPIs of one micro-batch (see the module docstring).

    Example:
        >>> from routers import EventSchema
        >>> batch = pa.record_batch(
        ...     {
        ...         "player_id": [1, 2, 2],
        ...         "event_time": pa.array([0, 1_000, 61_000], TIME_TYPE),
        ...         "event_type": ["match_end"] * 3,
        ...         "level": ["3", "3.0", "max"],
        ...         "engagement_score": ["0.5", "high", "1"],
        ...     }
        ... )
        >>> out = MinuteKpis(EventSchema()).process(batch)
        >>> out.schema == KPI_SCHEMA
        True
        >>> out.select(["level", "events", "engagement_count"]).to_pydict()
        {'level': [3, None], 'events': [2, 1], 'engagement_count': [1, 1]}
        >>> out["players"].to_pylist()  # distinct per group
        [['1', '2'], ['2']]
    """

    def process(self, batch: pa.RecordBatch) -> pa.Table:
        s = self.schema
        table = pa.table(
            {
                "minute": pc.floor_temporal(coerce_column(batch, s.time, TIME_TYPE), unit="minute"),
                "event_type": coerce_column(batch, s.type, pa.string()),
                "level": coerce_column(batch, "level", pa.int64()),
                "player": coerce_column(batch, s.key, pa.string()),
                "score": coerce_column(batch, "engagement_score", pa.float64()),
            }
        )
        table = table.filter(table["minute"].is_valid())
        out = table.group_by(_GROUP, use_threads=False).aggregate(
            [
                ([], "count_all"),
                ("score", "sum"),
                ("score", "count"),
                ("player", "distinct"),
            ]
        )
        out = out.rename_columns(
            [*_GROUP, "events", "engagement_sum", "engagement_count", "players"]
        ).sort_by([(c, "ascending") for c in _GROUP])
        return out.select(KPI_SCHEMA.names).cast(KPI_SCHEMA)


def merge_kpis(partials: pa.Table) -> pa.Table:
    """Final KPIs from the partial rows of any number of micro-batches.

    Returns:
        One row per (minute, event_type, level): ``events``, ``players`` (distinct),
        ``mean_engagement``; sorted by the group columns.
    """
    # Arrow's join never matches null keys; events without a level are a group of their own.
    no_level = pa.scalar(np.iinfo(np.int64).min, pa.int64())
    partials = partials.set_column(
        partials.schema.get_field_index("level"),
        "level",
        pc.fill_null(pc.cast(partials["level"], pa.int64()), no_level),
    )
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
            "minute": merged["minute"],
            "event_type": merged["event_type"],
            "level": pc.if_else(pc.equal(merged["level"], no_level), None, merged["level"]),
            "events": merged["events_sum"],
            "players": pc.fill_null(merged["player_count_distinct"], 0),
            "mean_engagement": mean,
        }
    ).sort_by([(c, "ascending") for c in _GROUP])
