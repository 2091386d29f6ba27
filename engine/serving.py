"""The serving view of the lambda architecture: per player, the batch view beside the speed view.

- **Batch view**: the day features ``jobs.daily_features`` writes to the lake's Delta table
  ``features/daily`` (complete, recomputable, a day behind): the latest day there, or one asked
  for.
- **Speed view**: the hot path's per-player state (``hot.processor``'s ``state()``), as of the
  pipeline's last checkpoint (every ``checkpoint_interval``, seconds behind the stream), read
  from the lake's ``_state`` area by any process while the pipeline runs; for a bounded run,
  which keeps no checkpoints, the state it wrote at its end (``state/<hot name>``).

:meth:`ServingView.players` joins the two on the player id: batch columns under their own names
(``dt`` is the day they describe), speed columns prefixed ``live_``; a player known to one view
only has nulls for the other's columns. Player ids are matched as the pipeline normalizes them:
integers as their decimal digits.

``thermocline query --config PIPELINE.yaml --player ID ...`` prints it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.checkpoint import Checkpoints
from engine.config import PipelineConfig
from engine.lake import STATE_DIR, Lake

__all__ = [
    "BATCH_FEATURES_TABLE",
    "BATCH_STATS_TABLE",
    "LIVE_PREFIX",
    "ServingView",
    "Views",
]

#: The batch view: one partition (``dt``) per day, one row per player (jobs.daily_features).
BATCH_FEATURES_TABLE: Final[str] = "features/daily"
#: The statistics each day's features were normalized with.
BATCH_STATS_TABLE: Final[str] = "features/daily_stats"
#: Prefix of the speed view's columns in :meth:`ServingView.players`.
LIVE_PREFIX: Final[str] = "live_"


@dataclass(frozen=True)
class Views:
    """The batch view (``features/daily`` rows of ``batch_day``) and the speed view (hot state,
    and where it was read from: :meth:`ServingView.speed`), as read at one time."""

    batch: pa.Table
    batch_day: str | None
    speed: pa.Table
    speed_from: dict[str, Any]


class ServingView:
    """Batch and speed views of one pipeline's lake (see the module docs).

    Example:
        >>> import tempfile
        >>> config = PipelineConfig.from_dict({"cold": {"lake_uri": tempfile.mkdtemp()}})
        >>> ServingView(config).players(["p1"]).to_pylist()  # nothing computed yet
        [{'player_id': 'p1'}]
    """

    def __init__(self, config: PipelineConfig) -> None:
        import engine.processors  # noqa: F401 - registers the built-in processors
        from engine.processors import hot_processor

        self.config = config
        cold = config.cold
        self.lake = Lake(cold.lake_uri, dict(cold.storage_options))
        #: The pipeline's name as a run derives it: ``name``, else its source's kind.
        self.pipeline = config.name or config.source.kind
        self.key = config.policy.schema.key
        self._processor = hot_processor(config.hot.processor)
        #: Where a bounded run leaves its state (engine.pipeline: ``state/<hot name>``).
        self.state_table = f"{STATE_DIR}/{config.hot.lake_name}"

    def speed(self) -> tuple[pa.Table, dict[str, Any]]:
        """The hot state, one row per player, and where it is from (``checkpoints`` with each
        partition's position, or the bounded run's ``state`` table, or nothing yet)."""
        snapshot, positions = Checkpoints(self.lake, self.pipeline).current_hot()
        if positions:
            processor = self._processor(self.config.policy.schema, **self.config.hot.options)
            if snapshot.num_rows:
                processor.restore(snapshot.drop_columns(["__partition"]))
            return processor.state(), {"from": "checkpoints", "positions": positions}
        state = self.lake.read(self.state_table)
        if state.num_rows:
            return state, {"from": self.state_table}
        return pa.table({}), {"from": None}

    def batch(self, day: str | None = None) -> tuple[pa.Table, str | None]:
        """The batch features of ``day`` (default: the latest day there is), and that day."""
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        from engine.delta import delta_storage_options

        options = delta_storage_options(self.lake.uri, self.lake.storage_options) or None
        try:
            table = DeltaTable(f"{self.lake.uri}/{BATCH_FEATURES_TABLE}", storage_options=options)
        except TableNotFoundError:
            return pa.table({}), None
        if day is None:
            adds = pa.table(table.get_add_actions(flatten=True))
            days = adds["partition.dt"].drop_null() if adds.num_rows else pa.array([], pa.string())
            day = pc.max(days).as_py() if len(days) else None
            if day is None:
                return pa.table({}), None
        rows = table.to_pyarrow_table(filters=[("dt", "=", day)])
        return rows, day

    def read(self, day: str | None = None) -> Views:
        """Both views, read once (:meth:`batch` of ``day``, :meth:`speed`)."""
        batch, batch_day = self.batch(day)
        speed, speed_from = self.speed()
        return Views(batch, batch_day, speed, speed_from)

    def players(
        self, ids: Sequence[str | int], day: str | None = None, views: Views | None = None
    ) -> pa.Table:
        """One row per id asked for, in that order: batch columns, then ``live_`` speed ones
        (from ``views`` when given, else read now)."""
        wanted = pa.table({self.key: pa.array([str(i) for i in ids], pa.string())})
        read = views or self.read(day)
        batch, speed = read.batch, read.speed
        out = wanted.append_column("__order", pa.array(range(len(ids)), pa.int64()))
        if batch.num_columns:  # the day's columns, also when no player has that day
            out = out.join(_keyed(batch, self.key), self.key, join_type="left outer")
        if speed.num_columns:
            live = _keyed(speed, self.key)
            live = live.rename_columns(
                [n if n == self.key else f"{LIVE_PREFIX}{n}" for n in live.column_names]
            )
            out = out.join(live, self.key, join_type="left outer")
        return out.sort_by("__order").drop_columns(["__order"])

    def merged(
        self, ids: Sequence[str | int], day: str | None = None, views: Views | None = None
    ) -> pa.Table:
        """Per id asked for, in that order, the additive day features (engine.processors.
        day_features.ADDITIVE, ``engagement_mean``, ``max_level``) over the batch view's day
        and every later day the speed view holds: the batch row of ``day`` (default: the latest
        in ``features/daily``; its end is the watermark) plus the hot state's days after it.
        ``batch_day`` says which day the batch part is (null: none yet, the speed view alone).

        Needs ``hot.processor: day_features`` (its state keeps events by day) and the events the
        features count routed to the hot path. An event of the batch day or before that arrives
        after the batch job ran counts in neither view until the job runs that day again.

        Raises:
            ValueError: the hot processor keeps no days.
        """
        from engine.processors.day_features import ADDITIVE

        wanted = [str(i) for i in ids]
        read = views or self.read(day)
        batch, batch_day, speed = read.batch, read.batch_day, read.speed
        if speed.num_columns and "day" not in speed.column_names:
            raise ValueError(
                f"the serving view's merge needs hot.processor: day_features (this pipeline's is"
                f" {self.config.hot.processor}, whose state keeps no days); use players() for"
                " the two views side by side"
            )
        n = len(wanted)
        totals = {name: np.zeros(n) for name in ADDITIVE}
        level = np.full(n, np.nan)
        if batch.num_rows:
            rows = _keyed(batch, self.key)
            at = _positions(wanted, rows[self.key])
            found = at >= 0
            for name in ADDITIVE:
                if name == "engagement_sum":
                    values = _numbers(rows["engagement_mean"]) * _numbers(rows["engagement_n"])
                    values = np.nan_to_num(values)
                else:
                    values = np.nan_to_num(_numbers(rows[name]))
                totals[name][found] += values[at[found]]
            level[found] = _numbers(rows["max_level"])[at[found]]
        if speed.num_rows:
            rows = _keyed(speed, self.key)
            at = _positions(wanted, rows[self.key])
            found = at >= 0
            days = _ring(rows["day"], pa.int32())
            after = -np.inf if batch_day is None else _epoch_day(batch_day)
            newer = (days > after) & ~np.isnan(days)
            for name in ADDITIVE:
                values = np.where(newer, np.nan_to_num(_ring(rows[name])), 0).sum(axis=1)
                totals[name][found] += values[at[found]]
            levels = np.where(newer, _ring(rows["max_level"]), np.nan)
            with np.errstate(all="ignore"):
                live = np.fmax.reduce(levels, axis=1, initial=np.nan)
            level[found] = np.fmax(level[found], live[at[found]])
        engagement_n = totals["engagement_n"]
        with np.errstate(all="ignore"):
            mean = np.where(engagement_n > 0, totals["engagement_sum"] / engagement_n, np.nan)
        columns: dict[str, pa.Array] = {self.key: pa.array(wanted, pa.string())}
        for name in ADDITIVE:
            if name != "engagement_sum":
                kind = pa.float64() if name == "spend" else pa.int64()
                columns[name] = pa.array(totals[name]).cast(kind)
        columns["engagement_mean"] = pa.array(mean, mask=np.isnan(mean))
        columns["max_level"] = pa.array(level, mask=np.isnan(level))
        columns["batch_day"] = pa.array([batch_day] * n, pa.string())
        return pa.table(columns)


def _positions(wanted: list[str], keys: pa.ChunkedArray) -> np.ndarray:
    """For each wanted id, its row in ``keys`` (-1: absent)."""
    found = pc.index_in(pa.array(wanted, pa.string()), value_set=keys.combine_chunks())
    return pc.fill_null(found, -1).to_numpy(zero_copy_only=False).astype(np.int64)


def _numbers(values: pa.ChunkedArray) -> np.ndarray:
    """``values`` as float64, nulls as NaN."""
    return pc.cast(values, pa.float64()).to_numpy(zero_copy_only=False).astype(np.float64)


def _ring(values: pa.ChunkedArray, kind: pa.DataType | None = None) -> np.ndarray:
    """A column of equal-length lists (fixed-size from the checkpoints' state, plain lists from
    a bounded run's state table: Delta has no fixed-size list) as a (rows, width) float64
    array, nulls as NaN; ``kind``: cast the values first (dates to their day numbers)."""
    lists = values.combine_chunks()
    if len(lists) == 0:
        return np.zeros((0, 1))
    flat = lists.flatten()
    if kind is not None:
        flat = flat.cast(kind)
    return _numbers(pa.chunked_array([flat])).reshape(len(lists), -1)


def _epoch_day(day: str) -> int:
    """Days since 1970-01-01 of an ISO date."""
    return (date.fromisoformat(day) - date(1970, 1, 1)).days


def _keyed(table: pa.Table, key: str) -> pa.Table:
    """``table`` with its key column as strings (ids normalized as the pipeline does)."""
    index = table.schema.get_field_index(key)
    return table.set_column(index, key, pc.cast(table[key], pa.string()))
