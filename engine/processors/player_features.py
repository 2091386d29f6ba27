"""Built-in hot processor: real-time per-player features from game events, and purchase alerts.

Features per player (all in event time, so a replay gives the same answer):

- ``events_total``, ``purchases_total``;
- ``events_5m``, ``purchases_5m``: events in the player's last five event-time minutes, i.e. with
  ``minute(t) > minute(T) - 5`` where ``T`` is the player's latest event time;
- ``session_length_s``: ``T`` minus the player's latest ``session_start`` (0 without one);
- ``last_level``: the highest level of the player's ``level_up`` events (0 without one);
- an alert row when a player's purchases within one event-time minute pass ``alert_purchases``.

State is numpy arrays indexed by a dense key id; a batch is applied with a few vectorized
operations whatever its size. The 5-minute window is a ring of five per-minute buckets: a bucket
is overwritten only by a newer minute five or more minutes later, when the old one has left the
window for good, so late events inside the window are counted and the result is exact.

Any column type is taken (see :func:`~engine.processors.base.coerce`): keys are compared as
strings (``12`` and ``"12"`` are one player), ``level`` is parsed and floored (``"12"``, 12.7 ->
12) and a level that is not a number is not counted; a row without a key or a usable event time
is skipped. Nothing is changed before the whole batch is read, so a failing ``process`` leaves
the state as it was. ``release`` and ``expire`` compact the arrays (memory goes back).
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

__all__ = ["ALERT_SCHEMA", "PlayerFeatures"]

_MINUTE_MS: Final[int] = 60_000
_WINDOW: Final[int] = 5  # minutes
_NONE: Final[int] = np.iinfo(np.int64).min // 2  # "no value" that survives subtraction
#: Event times beyond ±2**53 ms (285,000 years) are garbage; keeping them out keeps every
#: difference of two times (and ``_NONE``) inside int64.
_TIME_BOUND: Final[int] = 2**53
#: State column -> (values per key, fill for "no value", dtype).
_COLUMNS: Final[dict[str, Column]] = {
    "events_total": (1, 0, np.int64),
    "purchases_total": (1, 0, np.int64),
    "last_time": (1, _NONE, np.int64),
    "session_start": (1, _NONE, np.int64),
    "last_level": (1, 0, np.int64),
    "slot_minute": (_WINDOW, _NONE, np.int64),
    "slot_events": (_WINDOW, 0, np.int64),
    "slot_purchases": (_WINDOW, 0, np.int64),
}

ALERT_SCHEMA: Final[pa.Schema] = pa.schema(
    [("player_id", pa.string()), ("minute", TIME_TYPE), ("purchases", pa.int64())]
)


@dataclass(frozen=True)
class _Rows:
    """A batch read into numpy, before any state is touched."""

    ids: np.ndarray  # dense id per row; new keys numbered from the current size
    fresh: np.ndarray  # new keys, in the order of their ids
    times: np.ndarray  # epoch ms
    purchase: np.ndarray  # bool per row
    start: np.ndarray  # bool per row: a session_start
    level_up: np.ndarray  # bool per row: a level_up with a usable level
    levels: np.ndarray  # the levels of the level_up rows


@register_hot("player_features")
class PlayerFeatures(KeyedProcessor):
    """Per-player features (see the module docstring); options: ``alert_purchases`` (default 3).

    Example:
        >>> from routers import EventSchema
        >>> batch = pa.record_batch(
        ...     {
        ...         "player_id": [7, 7, 8],  # ints: read as the strings "7" and "8"
        ...         "event_time": pa.array([0, 1_000, 2_000], TIME_TYPE),
        ...         "event_type": ["level_up", "level_up", "session_start"],
        ...         "level": ["12", "max", None],  # "max" is not a level: not counted
        ...     }
        ... )
        >>> features = PlayerFeatures(EventSchema())
        >>> features.process(batch) is None  # no purchase alert
        True
        >>> features.state().select(["player_id", "events_total", "last_level"]).to_pydict()
        {'player_id': ['7', '8'], 'events_total': [2, 1], 'last_level': [12, 0]}
        >>> features.expire(before_ms=1_500), features.state()["player_id"].to_pylist()
        (1, ['8'])
    """

    def __init__(self, schema: EventSchema, **options: Any) -> None:
        super().__init__(schema, **options)
        self.alert_purchases = int(options.get("alert_purchases", 3))
        self._state = KeyedArrays(_COLUMNS)

    # --- reading (no state change) ---------------------------------------------------------

    def _read(self, batch: pa.RecordBatch) -> _Rows | None:
        s = self.schema
        keys = coerce_column(batch, s.key, pa.string())
        millis = pc.cast(coerce_column(batch, s.time, TIME_TYPE), pa.int64())
        usable = pc.and_(
            keys.is_valid(),
            pc.fill_null(
                pc.and_(pc.greater(millis, -_TIME_BOUND), pc.less(millis, _TIME_BOUND)),
                False,
            ),
        )
        kinds = coerce_column(batch, s.type, pa.string())
        levels = coerce_column(batch, "level", pa.int64())
        if not pc.all(usable).as_py():
            keys, millis, kinds, levels = (
                pc.filter(a, usable) for a in (keys, millis, kinds, levels)
            )
        if len(keys) == 0:
            return None

        def kind_is(name: str) -> pa.Array:
            return pc.fill_null(pc.equal(kinds, name), False)

        level_up = pc.and_(kind_is("level_up"), levels.is_valid())
        ids, fresh = self._state.lookup(keys.to_numpy(zero_copy_only=False))
        return _Rows(
            ids=ids,
            fresh=fresh,
            times=millis.to_numpy(zero_copy_only=False).astype(np.int64),
            purchase=kind_is("purchase").to_numpy(zero_copy_only=False),
            start=kind_is("session_start").to_numpy(zero_copy_only=False),
            level_up=level_up.to_numpy(zero_copy_only=False),
            levels=pc.filter(levels, level_up).to_numpy(zero_copy_only=False).astype(np.int64),
        )

    # --- applying ----------------------------------------------------------------------------

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        if batch.num_rows == 0:
            return None
        rows = self._read(batch)  # everything that can fail on data, before any change
        if rows is None:
            return None
        self._state.add(rows.fresh)
        c, n, ids, times = self._state.cols, self._state.size, rows.ids, rows.times
        c["events_total"][:n] += np.bincount(ids, minlength=n)
        c["purchases_total"][:n] += np.bincount(ids[rows.purchase], minlength=n)
        np.maximum.at(c["last_time"], ids, times)
        np.maximum.at(c["session_start"], ids[rows.start], times[rows.start])
        np.maximum.at(c["last_level"], ids[rows.level_up], rows.levels)
        return self._window(ids, times // _MINUTE_MS, rows.purchase)

    def _window(
        self, ids: np.ndarray, minutes: np.ndarray, purchase: np.ndarray
    ) -> pa.RecordBatch | None:
        c = self._state.cols
        # One row per (key, minute) of the batch; minutes numbered densely so the pair code
        # stays small whatever the times are.
        codes, distinct = pd.factorize(minutes)
        pair = ids * len(distinct) + codes
        unique, first, inverse = np.unique(pair, return_index=True, return_inverse=True)
        uid, umin = ids[first], minutes[first]
        events = np.bincount(inverse, minlength=len(unique))
        buys = np.bincount(inverse, weights=purchase, minlength=len(unique)).astype(np.int64)
        # Minutes that are still inside each key's window after this batch.
        latest = c["last_time"][uid] // _MINUTE_MS
        keep = umin > latest - _WINDOW
        uid, umin, events, buys = uid[keep], umin[keep], events[keep], buys[keep]
        slot = umin % _WINDOW
        same = c["slot_minute"][uid, slot] == umin
        before = np.where(same, c["slot_purchases"][uid, slot], 0)
        c["slot_events"][uid, slot] = np.where(same, c["slot_events"][uid, slot], 0) + events
        c["slot_purchases"][uid, slot] = before + buys
        c["slot_minute"][uid, slot] = umin
        crossed = (before <= self.alert_purchases) & (before + buys > self.alert_purchases)
        if not crossed.any():
            return None
        return pa.RecordBatch.from_arrays(
            [
                pa.array(self._state.keys()[uid[crossed]], pa.string()),
                pa.array(umin[crossed] * _MINUTE_MS, pa.int64()).cast(TIME_TYPE),
                pa.array(before[crossed] + buys[crossed]),
            ],
            schema=ALERT_SCHEMA,
        )

    # --- views ------------------------------------------------------------------------------

    def state(self) -> pa.Table:
        k = self._state
        last = k.view("last_time")
        in_window = k.view("slot_minute") > (last // _MINUTE_MS - _WINDOW)[:, None]
        start = k.view("session_start")
        session = np.where(start > _NONE, np.maximum(last - start, 0), 0) / 1000
        return pa.table(
            {
                self.schema.key: pa.array(k.keys(), pa.string()),
                "events_total": k.view("events_total"),
                "purchases_total": k.view("purchases_total"),
                "events_5m": (k.view("slot_events") * in_window).sum(axis=1),
                "purchases_5m": (k.view("slot_purchases") * in_window).sum(axis=1),
                "session_length_s": session,
                "last_level": k.view("last_level"),
                "last_event_time": pa.array(last, pa.int64()).cast(TIME_TYPE),
            }
        )
