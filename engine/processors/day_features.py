"""Built-in hot processor: per player and event-time day, the additive part of the day features
``jobs.daily_features`` computes, so the serving view can merge the batch view with it.

For each player it keeps a ring of the last ``days`` (default 3) event-time days (UTC) it saw;
per day, over the events whose ``quality_score`` is above ``quality_min`` (0.8, as the batch
job):

- ``events``; ``events_<type>`` for each of :data:`EVENT_TYPES`;
- ``engagement_sum`` and ``engagement_n`` (``engagement_score``, null and NaN skipped);
- ``spend`` (``amount`` of purchases), ``max_level`` (of level_up events), ``invites`` and
  ``chats`` (social events by ``action``).

These add up (a max for ``max_level``) across days and with the batch job's rows, which the
distinct counts (sessions, partners) and the session-length statistics would not: those stay
batch-only. A day slot is overwritten only by a day ``days`` or more days newer, so events up
to ``days - 1`` days late still count; older ones are dropped (the batch view has them).

Values are read as the batch job reads them: ``level`` and ``amount`` as numbers (``"12"`` is
12; ``"max"`` is no level), keys as strings (``12`` and ``"12"`` are one player).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from engine.processors.base import coerce_column, register_hot
from engine.processors.keyed import Column, KeyedArrays, KeyedProcessor
from routers import TIME_TYPE, EventSchema

__all__ = ["ADDITIVE", "EVENT_TYPES", "DayFeatures"]

#: The event types counted one by one (``events_<type>``), here and in jobs.daily_features.
EVENT_TYPES: Final[tuple[str, ...]] = (
    "session_start",
    "session_end",
    "level_up",
    "purchase",
    "refund",
    "match_end",
    "social",
)
#: Per-day values that combine by adding across days (``max_level``: by the maximum).
ADDITIVE: Final[tuple[str, ...]] = (
    "events",
    *(f"events_{t}" for t in EVENT_TYPES),
    "engagement_sum",
    "engagement_n",
    "spend",
    "invites",
    "chats",
)
_DAY_MS: Final[int] = 86_400_000
_NONE: Final[int] = np.iinfo(np.int64).min // 2
_TIME_BOUND: Final[int] = 2**53
_FLOATS: Final[frozenset[str]] = frozenset({"engagement_sum", "spend"})


def _columns(days: int) -> dict[str, Column]:
    columns: dict[str, Column] = {"last_time": (1, _NONE, np.int64), "day": (days, _NONE, np.int64)}
    for name in ADDITIVE:
        columns[name] = (days, 0.0, np.float64) if name in _FLOATS else (days, 0, np.int64)
    columns["max_level"] = (days, np.nan, np.float64)
    return columns


@dataclass(frozen=True)
class _Partials:
    """One row per (key, day) of a batch (the latest day per key and ring slot only)."""

    ids: np.ndarray
    fresh: np.ndarray
    days: np.ndarray
    values: dict[str, np.ndarray]
    max_level: np.ndarray
    last_time: np.ndarray  # per batch row's key: newest event time, for ``expire``
    row_ids: np.ndarray


@register_hot("day_features")
class DayFeatures(KeyedProcessor):
    """Per player, the last ``days`` event days' additive features (see the module docs).

    Options: ``days`` (3), ``quality_min`` (0.8).

    Example:
        >>> from routers import EventSchema
        >>> t = pa.array([0, 1_000, 86_400_000], TIME_TYPE)  # two days
        >>> batch = pa.record_batch({
        ...     "player_id": [7, 7, 7], "event_time": t, "quality_score": [0.9, 0.5, 0.95],
        ...     "event_type": ["purchase", "purchase", "level_up"], "amount": ["4.5", "9", None],
        ...     "level": [None, None, "12"]})
        >>> features = DayFeatures(EventSchema())
        >>> features.process(batch)
        >>> row = features.state().to_pylist()[0]
        >>> [str(d) for d in row["day"] if d], row["spend"][:2], row["max_level"][:2]
        (['1970-01-01', '1970-01-02'], [4.5, 0.0], [None, 12.0])
    """

    def __init__(self, schema: EventSchema, **options: Any) -> None:
        super().__init__(schema, **options)
        self.days = int(options.get("days", 3))
        self.quality_min = float(options.get("quality_min", 0.8))
        if self.days < 1:
            raise ValueError(f"day_features: days must be at least 1, got {self.days}")
        self._state = KeyedArrays(_columns(self.days))

    def _read(self, batch: pa.RecordBatch) -> _Partials | None:
        """The batch's per-(key, day) partials; changes nothing."""
        s = self.schema
        keys = coerce_column(batch, s.key, pa.string())
        millis = pc.cast(coerce_column(batch, s.time, TIME_TYPE), pa.int64())
        quality = coerce_column(batch, "quality_score", pa.float64())
        # A device clock set years ahead would take a ring slot until that day comes, and push
        # out the real days mapped to it: an event dated after the day after its arrival is
        # left out (the batch view has it).
        arrival = pc.cast(coerce_column(batch, s.arrival, TIME_TYPE), pa.int64())
        plausible = pc.fill_null(
            pc.less(pc.divide(millis, _DAY_MS), pc.add(pc.divide(arrival, _DAY_MS), 2)), True
        )
        keep = pc.and_(
            plausible,
            pc.and_(
                pc.and_(
                    keys.is_valid(), pc.fill_null(pc.greater(quality, self.quality_min), False)
                ),
                pc.fill_null(
                    pc.and_(pc.greater(millis, -_TIME_BOUND), pc.less(millis, _TIME_BOUND)), False
                ),
            ),
        )
        columns = {
            "kind": coerce_column(batch, s.type, pa.string()),
            "engagement": coerce_column(batch, "engagement_score", pa.float64()),
            "amount": coerce_column(batch, "amount", pa.float64()),
            "level": coerce_column(batch, "level", pa.float64()),
            "action": coerce_column(batch, "action", pa.string()),
        }
        keys, millis = pc.filter(keys, keep), pc.filter(millis, keep)
        columns = {n: pc.filter(c, keep) for n, c in columns.items()}
        if len(keys) == 0:
            return None

        def flag(values: pa.Array) -> np.ndarray:
            return pc.fill_null(values, False).to_numpy(zero_copy_only=False)

        def numbers(values: pa.Array, where: np.ndarray, fill: float) -> np.ndarray:
            found = pc.fill_null(values, fill).to_numpy(zero_copy_only=False).astype(np.float64)
            return np.where(where & np.isfinite(found), found, fill)

        kind = {t: flag(pc.equal(columns["kind"], t)) for t in EVENT_TYPES}
        engagement = columns["engagement"]
        engaged = flag(pc.is_finite(engagement))
        social = kind["social"]
        per_row = {
            "events": np.ones(len(keys)),
            **{f"events_{t}": mask.astype(np.float64) for t, mask in kind.items()},
            "engagement_sum": numbers(engagement, engaged, 0.0),
            "engagement_n": engaged.astype(np.float64),
            "spend": numbers(columns["amount"], kind["purchase"], 0.0),
            "invites": (social & flag(pc.equal(columns["action"], "invite"))).astype(np.float64),
            "chats": (social & flag(pc.equal(columns["action"], "chat"))).astype(np.float64),
        }
        level = numbers(columns["level"], kind["level_up"], np.nan)
        ids, fresh = self._state.lookup(keys.to_numpy(zero_copy_only=False))
        times = millis.to_numpy(zero_copy_only=False).astype(np.int64)
        days = times // _DAY_MS
        # One partial per (key, day): days numbered densely, so the pair code stays small.
        codes, distinct = pd.factorize(days)
        pair = ids * len(distinct) + codes
        unique, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
        values = {
            n: np.bincount(inverse, weights=w, minlength=len(unique)) for n, w in per_row.items()
        }
        top = np.full(len(unique), np.nan)
        np.fmax.at(top, inverse, level)
        uid, uday = ids[first], days[first]
        # Two days of one key in one ring slot: only the newer stays (the older one has left
        # the ring for good, as it would have in two batches).
        slot = uday % self.days
        order = np.lexsort((uday, uid * self.days + slot))
        code = (uid * self.days + slot)[order]
        last = np.r_[code[1:] != code[:-1], True]
        chosen = order[last]
        return _Partials(
            ids=uid[chosen],
            fresh=fresh,
            days=uday[chosen],
            values={n: v[chosen] for n, v in values.items()},
            max_level=top[chosen],
            last_time=times,
            row_ids=ids,
        )

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        if batch.num_rows == 0:
            return None
        found = self._read(batch)  # everything that can fail on data, before any change
        if found is None:
            return None
        k = self._state
        k.add(found.fresh)
        np.maximum.at(k.cols["last_time"], found.row_ids, found.last_time)
        uid, day = found.ids, found.days
        slot = day % self.days
        held = k.cols["day"][uid, slot]
        newer, same = day > held, day == held
        apply = newer | same
        uid, slot, day = uid[apply], slot[apply], day[apply]
        reset = newer[apply]
        for name, partial in found.values.items():
            column = k.cols[name]
            before = np.where(reset, 0, column[uid, slot])
            column[uid, slot] = before + partial[apply].astype(column.dtype)
        levels = k.cols["max_level"]
        before = np.where(reset, np.nan, levels[uid, slot])
        levels[uid, slot] = np.fmax(before, found.max_level[apply])
        k.cols["day"][uid, slot] = day
        return None

    def state(self) -> pa.Table:
        """One row per player: ``day`` (a list of the ring's days, null where empty) and each
        feature as a list in the same order, and ``last_event_time``."""
        k, width = self._state, self.days
        days = k.view("day")
        empty = days <= _NONE

        def ring(values: np.ndarray, kind: pa.DataType) -> pa.FixedSizeListArray:
            flat = pa.array(values.reshape(-1), kind, mask=empty.reshape(-1))
            return pa.FixedSizeListArray.from_arrays(flat, width)

        columns: dict[str, pa.Array] = {
            self.schema.key: pa.array(k.keys(), pa.string()),
            "day": ring(days.astype(np.int32), pa.date32()),
        }
        for name in ADDITIVE:
            kind = pa.float64() if name in _FLOATS else pa.int64()
            columns[name] = ring(k.view(name), kind)
        levels = k.view("max_level")
        flat = pa.array(levels.reshape(-1), pa.float64(), mask=np.isnan(levels).reshape(-1))
        columns["max_level"] = pa.FixedSizeListArray.from_arrays(flat, width)
        columns["last_event_time"] = pa.array(k.view("last_time"), pa.int64()).cast(TIME_TYPE)
        return pa.table(columns)
