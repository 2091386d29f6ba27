"""The processors of docs/processors.md: one hot (keyed state), one warm (a micro-batch aggregate).

Name this module in a pipeline config and the names below work from the CLI::

    processors: [examples.game_processors]
    hot: {processor: spend_tracker}
    warm: {processor: type_counts, output_name: type_counts}

Both are vectorized (Arrow kernels over the batch, never a Python loop per event), and both
take whatever type a client sent (``coerce_column``): bad values are skipped, never raised on.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from engine.processors import HotProcessor, WarmProcessor, register_hot, register_warm
from engine.processors.base import coerce_column
from routers import EventSchema

__all__ = ["SpendTracker", "TypeCounts"]

#: The state of one player: purchases, total spend, highest level reached.
_STATE = pa.schema(
    [("player_id", pa.string()), ("purchases", pa.int64()), ("spend", pa.float64()),
     ("max_level", pa.int64())]
)  # fmt: skip


@register_hot("spend_tracker")
class SpendTracker(HotProcessor):
    """Per player: purchases, total spend and highest level; an alert row when a player's spend
    crosses ``big_spender`` (an option, default 100) in this batch.

    Example:
        >>> from routers import EventSchema
        >>> tracker = SpendTracker(EventSchema(), big_spender=10)
        >>> batch = pa.record_batch({
        ...     "player_id": ["p1", "p1", "p2"], "event_type": ["purchase"] * 3,
        ...     "amount": ["4.99", "7", "oops"], "level": [3, None, 8]})  # as clients send it
        >>> tracker.process(batch).to_pylist()
        [{'player_id': 'p1', 'spend': 11.99}]
        >>> tracker.state().sort_by("player_id").to_pylist()[1]
        {'player_id': 'p2', 'purchases': 1, 'spend': 0.0, 'max_level': 8}
    """

    def __init__(self, schema: EventSchema, **options: Any) -> None:
        super().__init__(schema, **options)
        self.big_spender = float(options.get("big_spender", 100.0))
        self._state = _STATE.empty_table()

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        # Compute everything first, then replace the state in one assignment: a call that
        # raises leaves the state as it was (the engine then isolates the bad rows).
        purchase = pc.equal(coerce_column(batch, self.schema.type, pa.string()), "purchase")
        purchase = pc.fill_null(purchase, False)
        amount = pc.if_else(purchase, coerce_column(batch, "amount", pa.float64()), 0.0)
        rows = pa.table({
            "player_id": coerce_column(batch, self.schema.key, pa.string()),
            "purchases": pc.cast(purchase, pa.int64()),
            "spend": pc.fill_null(amount, 0.0),
            "max_level": coerce_column(batch, "level", pa.int64()),
        })  # fmt: skip
        # Clear over fast: merging with the whole state is O(keys) per batch. For millions of
        # keys, index the state (engine.processors.PlayerFeatures keeps a two-level key index).
        before = self._spend_of(rows["player_id"])
        merged = _merge(pa.concat_tables([self._state, rows]))
        self._state = merged
        after = self._spend_of(rows["player_id"])
        crossed = pc.and_(
            pc.less(before, self.big_spender), pc.greater_equal(after, self.big_spender)
        )
        alerts = pa.table({"player_id": rows["player_id"], "spend": after}).filter(crossed)
        alerts = alerts.group_by("player_id", use_threads=False).aggregate([("spend", "max")])
        return pa.record_batch(
            [alerts["player_id"].combine_chunks(), alerts["spend_max"].combine_chunks()],
            names=["player_id", "spend"],
        ) if alerts.num_rows else None  # fmt: skip

    def _spend_of(self, players: pa.ChunkedArray | pa.Array) -> pa.Array:
        """Each player's spend in the current state (0 when unknown)."""
        index = pc.index_in(players, value_set=self._state["player_id"])
        return pc.fill_null(pc.take(self._state["spend"], index), 0.0)

    def state(self) -> pa.Table:
        return self._state

    def snapshot(self) -> pa.Table:
        return self._state  # the state is its own snapshot: one row per key

    def restore(self, rows: pa.Table) -> None:
        self._state = _merge(
            pa.concat_tables([self._state, rows.select(_STATE.names).cast(_STATE)])
        )

    def release(self, keys: pa.Array) -> int:
        gone = pc.is_in(self._state["player_id"], value_set=pc.cast(keys, pa.string()))
        self._state = self._state.filter(pc.invert(gone))
        return int(pc.sum(gone).as_py() or 0)


def _merge(rows: pa.Table) -> pa.Table:
    """One row per player: purchases and spend summed, the highest level kept."""
    merged = rows.group_by("player_id", use_threads=False).aggregate(
        [("purchases", "sum"), ("spend", "sum"), ("max_level", "max")]
    )
    return pa.table(
        [
            merged["player_id"],
            merged["purchases_sum"],
            merged["spend_sum"],
            merged["max_level_max"],
        ],
        schema=_STATE,
    )


@register_warm("type_counts")
class TypeCounts(WarmProcessor):
    """Events per event-time minute and event type in one micro-batch (partial counts: add
    them up across micro-batches when reading the output).

    Example:
        >>> from routers import EventSchema, TIME_TYPE
        >>> batch = pa.record_batch({
        ...     "event_time": pa.array([0, 1_000, 61_000], TIME_TYPE),
        ...     "event_type": ["purchase", "purchase", "social"]})
        >>> TypeCounts(EventSchema()).process(batch).to_pylist()[0]["events"]
        2
    """

    def process(self, batch: pa.RecordBatch) -> pa.Table:
        minute = pc.floor_temporal(batch.column(self.schema.time), unit="minute")
        kinds = coerce_column(batch, self.schema.type, pa.string())
        table = pa.table(
            {"minute": minute, "event_type": kinds, "events": pa.nulls(len(kinds), pa.int64())}
        )
        counts = table.group_by(["minute", "event_type"], use_threads=False).aggregate(
            [([], "count_all")]
        )
        return counts.rename_columns(["minute", "event_type", "events"]).sort_by(
            [("minute", "ascending"), ("event_type", "ascending")]
        )
