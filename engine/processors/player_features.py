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

from engine.processors.base import HotProcessor, coerce, coerce_column, register_hot
from routers import TIME_TYPE, EventSchema

__all__ = ["ALERT_SCHEMA", "PlayerFeatures"]

_MINUTE_MS: Final[int] = 60_000
_WINDOW: Final[int] = 5  # minutes
_NONE: Final[int] = np.iinfo(np.int64).min // 2  # "no value" that survives subtraction
#: Event times beyond ±2**53 ms (285,000 years) are garbage; keeping them out keeps every
#: difference of two times (and ``_NONE``) inside int64.
_TIME_BOUND: Final[int] = 2**53
#: Rows allocated at least: a fresh or compacted instance does not regrow on every batch.
_MIN_CAPACITY: Final[int] = 1024
#: Recent keys are merged into the large index past this many (or a quarter of it): a rebuild
#: of the small one per call stays cheap, the large one's rebuilds stay rare.
_MERGE_RECENT: Final[int] = 4096
#: State column -> (values per key, fill for "no value").
_COLUMNS: Final[dict[str, tuple[int, int]]] = {
    "events_total": (1, 0),
    "purchases_total": (1, 0),
    "last_time": (1, _NONE),
    "session_start": (1, _NONE),
    "last_level": (1, 0),
    "slot_minute": (_WINDOW, _NONE),
    "slot_events": (_WINDOW, 0),
    "slot_purchases": (_WINDOW, 0),
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
class PlayerFeatures(HotProcessor):
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
        # Keys by dense id in two indexes: a large one rebuilt rarely and the recent additions,
        # rebuilt on each add (small). Rebuilding one index per batch with new keys cost
        # O(all keys) per call: 5-10 ms at 100K keys, which throttled small batches.
        self._index = pd.Index([], dtype=object)
        self._recent = pd.Index([], dtype=object)
        self._size = 0
        self._cols: dict[str, np.ndarray] = {}
        self._cols = self._resized(_MIN_CAPACITY)

    @property
    def nbytes(self) -> int:
        """Bytes held by the state arrays and the key index (not counting the key strings)."""
        indexes = int(self._index.nbytes) + int(self._recent.nbytes)
        return sum(values.nbytes for values in self._cols.values()) + indexes

    # --- reading (no state change) ---------------------------------------------------------

    def _lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense id of each key; new keys get the next ids, in order of first appearance."""
        ids = self._ids_of(keys)
        new = ids < 0
        if not new.any():
            return ids, keys[:0]
        codes, fresh = pd.factorize(keys[new])
        ids[new] = self._size + codes
        return ids, np.asarray(fresh, dtype=object)

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
        ids, fresh = self._lookup(keys.to_numpy(zero_copy_only=False))
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

    def _add(self, fresh: np.ndarray) -> None:
        """Append new keys (ids ``size ..``), growing the arrays first."""
        if len(fresh) == 0:
            return
        size = self._size + len(fresh)
        capacity = len(self._cols["events_total"])
        if size > capacity:
            self._cols = self._resized(max(size, 2 * capacity))
        # Object dtype on purpose: pandas 3 would make an appended Index Arrow-backed ``str``,
        # whose hash table is slower to build and holds a Python copy of every key anyway.
        recent = np.concatenate([self._recent.to_numpy(dtype=object), fresh])
        if len(recent) > max(_MERGE_RECENT, len(self._index) // 4):  # amortized: O(1) per key
            merged = np.concatenate([self._index.to_numpy(dtype=object), recent])
            self._index = pd.Index(merged, dtype=object)
            self._recent = pd.Index([], dtype=object)
        else:
            self._recent = pd.Index(recent, dtype=object)
        self._size = size

    def _ids_of(self, keys: np.ndarray) -> np.ndarray:
        """Dense id of each key (-1 for keys not held)."""
        wanted = pd.Index(keys, dtype=object)
        ids = self._index.get_indexer(wanted).astype(np.int64)
        missing = ids < 0
        if missing.any() and len(self._recent):
            found = self._recent.get_indexer(wanted[missing]).astype(np.int64)
            ids[missing] = np.where(found >= 0, found + len(self._index), -1)
        return ids

    def _keys(self) -> np.ndarray:
        """Every key held, by dense id."""
        return np.concatenate(
            [self._index.to_numpy(dtype=object), self._recent.to_numpy(dtype=object)]
        )

    def _resized(self, capacity: int, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """New arrays of ``capacity`` rows holding the current keys (only ``keep`` if given)."""
        cols = {}
        for name, (width, fill) in _COLUMNS.items():
            shape = (capacity,) if width == 1 else (capacity, width)
            new = np.full(shape, fill, dtype=np.int64)
            if name in self._cols:
                old = self._cols[name][: self._size]
                if keep is not None:
                    old = old[keep]
                new[: len(old)] = old
            cols[name] = new
        return cols

    def process(self, batch: pa.RecordBatch) -> pa.RecordBatch | None:
        if batch.num_rows == 0:
            return None
        rows = self._read(batch)  # everything that can fail on data, before any change
        if rows is None:
            return None
        self._add(rows.fresh)
        c, n, ids, times = self._cols, self._size, rows.ids, rows.times
        c["events_total"][:n] += np.bincount(ids, minlength=n)
        c["purchases_total"][:n] += np.bincount(ids[rows.purchase], minlength=n)
        np.maximum.at(c["last_time"], ids, times)
        np.maximum.at(c["session_start"], ids[rows.start], times[rows.start])
        np.maximum.at(c["last_level"], ids[rows.level_up], rows.levels)
        return self._window(ids, times // _MINUTE_MS, rows.purchase)

    def _window(
        self, ids: np.ndarray, minutes: np.ndarray, purchase: np.ndarray
    ) -> pa.RecordBatch | None:
        c = self._cols
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
                pa.array(self._keys()[uid[crossed]], pa.string()),
                pa.array(umin[crossed] * _MINUTE_MS, pa.int64()).cast(TIME_TYPE),
                pa.array(before[crossed] + buys[crossed]),
            ],
            schema=ALERT_SCHEMA,
        )

    # --- dropping keys ---------------------------------------------------------------------

    def release(self, keys: pa.Array) -> int:
        values = coerce(keys, pa.string())
        values = pc.drop_null(values).to_numpy(zero_copy_only=False)
        ids = self._ids_of(values)
        return self._drop(ids[ids >= 0])

    def expire(self, before_ms: int) -> int:
        last = self._cols["last_time"][: self._size]
        return self._drop(np.flatnonzero(last < before_ms))

    def _drop(self, ids: np.ndarray) -> int:
        """Remove keys by id: compact the arrays to the keys left and rebuild the index."""
        if len(ids) == 0:
            return 0
        keep = np.ones(self._size, dtype=bool)
        keep[ids] = False
        left = int(keep.sum())
        cols = self._resized(max(left, _MIN_CAPACITY), keep)
        index = pd.Index(self._keys()[keep], dtype=object)
        self._cols, self._index, self._size = cols, index, left
        self._recent = pd.Index([], dtype=object)
        return len(keep) - left

    # --- snapshots and views -----------------------------------------------------------------

    def snapshot(self) -> pa.Table:
        n, c = self._size, self._cols
        columns: dict[str, pa.Array] = {self.schema.key: pa.array(self._keys(), pa.string())}
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
        keys = coerce(rows.column(self.schema.key), pa.string()).to_numpy(zero_copy_only=False)
        values = {}
        for name, (width, _) in _COLUMNS.items():
            column = rows.column(name).combine_chunks()
            if width == 1:
                values[name] = column.to_numpy(zero_copy_only=False)
            else:
                values[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
        ids, fresh = self._lookup(keys)
        self._add(fresh)
        for name, column in values.items():
            self._cols[name][ids] = column

    def state(self) -> pa.Table:
        n, c = self._size, self._cols
        last = c["last_time"][:n]
        in_window = c["slot_minute"][:n] > (last // _MINUTE_MS - _WINDOW)[:, None]
        start = c["session_start"][:n]
        session = np.where(start > _NONE, np.maximum(last - start, 0), 0) / 1000
        return pa.table(
            {
                self.schema.key: pa.array(self._keys(), pa.string()),
                "events_total": c["events_total"][:n],
                "purchases_total": c["purchases_total"][:n],
                "events_5m": (c["slot_events"][:n] * in_window).sum(axis=1),
                "purchases_5m": (c["slot_purchases"][:n] * in_window).sum(axis=1),
                "session_length_s": session,
                "last_level": c["last_level"][:n],
                "last_event_time": pa.array(last, pa.int64()).cast(TIME_TYPE),
            }
        )
