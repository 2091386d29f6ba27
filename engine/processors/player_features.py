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
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from engine.processors.base import HotProcessor, register_hot
from routers import TIME_TYPE, EventSchema

__all__ = ["ALERT_SCHEMA", "PlayerFeatures"]

_MINUTE_MS: Final[int] = 60_000
_WINDOW: Final[int] = 5  # minutes
_NONE: Final[int] = np.iinfo(np.int64).min // 2  # "no value" that survives subtraction

ALERT_SCHEMA: Final[pa.Schema] = pa.schema(
    [("player_id", pa.string()), ("minute", TIME_TYPE), ("purchases", pa.int64())]
)


@register_hot("player_features")
class PlayerFeatures(HotProcessor):
    """Per-player features; options: ``alert_purchases`` (default 3)."""

    def __init__(self, schema: EventSchema, **options: Any) -> None:
        super().__init__(schema, **options)
        self.alert_purchases = int(options.get("alert_purchases", 3))
        self._index = pd.Index([], dtype=object)
        self._size = 0
        self._cols: dict[str, np.ndarray] = {}
        self._grow(1024)

    def _grow(self, capacity: int) -> None:
        def grown(name: str, shape: tuple[int, ...], fill: int) -> np.ndarray:
            new = np.full(shape, fill, dtype=np.int64)
            if name in self._cols:
                old = self._cols[name]
                new[: len(old)] = old
            return new

        spec = {
            "events_total": ((capacity,), 0),
            "purchases_total": ((capacity,), 0),
            "last_time": ((capacity,), _NONE),
            "session_start": ((capacity,), _NONE),
            "last_level": ((capacity,), 0),
            "slot_minute": ((capacity, _WINDOW), _NONE),
            "slot_events": ((capacity, _WINDOW), 0),
            "slot_purchases": ((capacity, _WINDOW), 0),
        }
        self._cols = {name: grown(name, shape, fill) for name, (shape, fill) in spec.items()}

    def _ids(self, keys: pa.Array) -> np.ndarray:
        """Dense id of each key, adding new keys at the end."""
        values = keys.to_numpy(zero_copy_only=False)
        ids = self._index.get_indexer(values)
        new = ids < 0
        if new.any():
            fresh = pd.unique(values[new])
            self._index = self._index.append(pd.Index(fresh, dtype=object))
            self._size = len(self._index)
            if self._size > len(self._cols["events_total"]):
                self._grow(max(self._size, 2 * len(self._cols["events_total"])))
            ids[new] = self._index.get_indexer(values[new])
        return ids.astype(np.int64)

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        if batch.num_rows == 0:
            return None
        s = self.schema
        ids = self._ids(batch.column(s.key))  # may grow the arrays: take them after
        c = self._cols
        times = pc.cast(batch.column(s.time), pa.int64()).to_numpy(zero_copy_only=False)
        kinds = batch.column(s.type)
        purchase = pc.equal(kinds, "purchase").to_numpy(zero_copy_only=False)
        n = self._size

        c["events_total"][:n] += np.bincount(ids, minlength=n)
        c["purchases_total"][:n] += np.bincount(ids[purchase], minlength=n)
        np.maximum.at(c["last_time"], ids, times)
        starts = pc.equal(kinds, "session_start").to_numpy(zero_copy_only=False)
        np.maximum.at(c["session_start"], ids[starts], times[starts])
        if "level" in batch.schema.names:
            ups = pc.and_(pc.equal(kinds, "level_up"), batch.column("level").is_valid())
            ups_np = ups.to_numpy(zero_copy_only=False)
            levels = pc.filter(batch.column("level"), ups).to_numpy(zero_copy_only=False)
            np.maximum.at(c["last_level"], ids[ups_np], levels.astype(np.int64))
        return self._window(ids, times // _MINUTE_MS, purchase)

    def _window(
        self, ids: np.ndarray, minutes: np.ndarray, purchase: np.ndarray
    ) -> pa.RecordBatch | None:
        c = self._cols
        # One row per (key, minute) of the batch.
        pair = ids * (1 << 32) + (minutes - minutes.min())
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
                pa.array(self._index.values[uid[crossed]], pa.string()),
                pa.array(umin[crossed] * _MINUTE_MS, pa.int64()).cast(TIME_TYPE),
                pa.array(before[crossed] + buys[crossed]),
            ],
            schema=ALERT_SCHEMA,
        )

    def snapshot(self) -> pa.Table:
        n, c = self._size, self._cols
        columns: dict[str, pa.Array] = {self.schema.key: pa.array(self._index.values, pa.string())}
        for name, values in c.items():
            if values.ndim == 1:
                columns[name] = pa.array(values[:n])
            else:  # the per-minute ring: one fixed-size list per key
                flat = pa.array(values[:n].reshape(-1))
                columns[name] = pa.FixedSizeListArray.from_arrays(flat, _WINDOW)
        return pa.table(columns)

    def restore(self, rows: pa.Table) -> None:
        if rows.num_rows == 0:
            return
        ids = self._ids(rows.column(self.schema.key).combine_chunks())
        c = self._cols
        for name in c:
            column = rows.column(name).combine_chunks()
            if c[name].ndim == 1:
                c[name][ids] = column.to_numpy()
            else:
                c[name][ids] = column.flatten().to_numpy().reshape(-1, _WINDOW)

    def state(self) -> pa.Table:
        n, c = self._size, self._cols
        last = c["last_time"][:n]
        in_window = c["slot_minute"][:n] > (last // _MINUTE_MS - _WINDOW)[:, None]
        start = c["session_start"][:n]
        session = np.where(start > _NONE, np.maximum(last - start, 0), 0) / 1000
        return pa.table(
            {
                self.schema.key: pa.array(self._index.values, pa.string()),
                "events_total": c["events_total"][:n],
                "purchases_total": c["purchases_total"][:n],
                "events_5m": (c["slot_events"][:n] * in_window).sum(axis=1),
                "purchases_5m": (c["slot_purchases"][:n] * in_window).sum(axis=1),
                "session_length_s": session,
                "last_level": c["last_level"][:n],
                "last_event_time": pa.array(last, pa.int64()).cast(TIME_TYPE),
            }
        )
