"""Per-key state as numpy arrays indexed by a dense key id: the core of the built-in hot
processors (engine.processors.player_features, engine.processors.day_features).

A batch is applied with a few vectorized operations whatever its size: the processor looks up
the dense id of every row's key (new keys numbered after the ones held), reads and checks
everything, then adds the new keys and updates the arrays. Dropping keys compacts the arrays
(memory goes back).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from engine.processors.base import HotProcessor, coerce

__all__ = ["Column", "KeyedArrays", "KeyedProcessor", "restore_rows", "snapshot_rows"]

#: Rows allocated at least: a fresh or compacted instance does not regrow on every batch.
_MIN_CAPACITY: Final[int] = 1024
#: Recent keys are merged into the large index past this many (or a quarter of it): a rebuild
#: of the small one per call stays cheap, the large one's rebuilds stay rare.
_MERGE_RECENT: Final[int] = 4096

#: A state column: (values per key, fill for "no value", numpy dtype).
Column = tuple[int, float, type]


class KeyedArrays:
    """Dense ids for string keys and, per key, a row of each column in ``columns``.

    Example:
        >>> state = KeyedArrays({"n": (1, 0, np.int64)})
        >>> ids, fresh = state.lookup(np.array(["a", "b", "a"], dtype=object))
        >>> state.add(fresh)
        >>> np.add.at(state.cols["n"], ids, 1)
        >>> state.keys().tolist(), state.cols["n"][: state.size].tolist()
        (['a', 'b'], [2, 1])
        >>> state.drop(state.ids_of(np.array(["a"], dtype=object))), state.keys().tolist()
        (1, ['b'])
    """

    def __init__(self, columns: Mapping[str, Column]) -> None:
        self.columns = dict(columns)
        # Keys by dense id in two indexes: a large one rebuilt rarely and the recent additions,
        # rebuilt on each add (small). Rebuilding one index per batch with new keys cost
        # O(all keys) per call: 5-10 ms at 100K keys, which throttled small batches.
        self._index = pd.Index([], dtype=object)
        self._recent = pd.Index([], dtype=object)
        #: Keys held (ids ``0 .. size - 1``).
        self.size = 0
        #: The arrays, ``capacity`` rows each (only the first ``size`` hold keys).
        self.cols: dict[str, np.ndarray] = {}
        self.cols = self._resized(_MIN_CAPACITY)

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays and the key index (not counting the key strings)."""
        indexes = int(self._index.nbytes) + int(self._recent.nbytes)
        return sum(values.nbytes for values in self.cols.values()) + indexes

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Dense id of each key; new keys get the next ids, in order of first appearance
        (returned, to :meth:`add` once the batch is known to apply). Changes nothing."""
        ids = self.ids_of(keys)
        new = ids < 0
        if not new.any():
            return ids, keys[:0]
        codes, fresh = pd.factorize(keys[new])
        ids[new] = self.size + codes
        return ids, np.asarray(fresh, dtype=object)

    def add(self, fresh: np.ndarray) -> None:
        """Append new keys (ids ``size ..``), growing the arrays first."""
        if len(fresh) == 0:
            return
        size = self.size + len(fresh)
        capacity = len(next(iter(self.cols.values())))
        if size > capacity:
            self.cols = self._resized(max(size, 2 * capacity))
        # Object dtype on purpose: pandas 3 would make an appended Index Arrow-backed ``str``,
        # whose hash table is slower to build and holds a Python copy of every key anyway.
        recent = np.concatenate([self._recent.to_numpy(dtype=object), fresh])
        if len(recent) > max(_MERGE_RECENT, len(self._index) // 4):  # amortized: O(1) per key
            merged = np.concatenate([self._index.to_numpy(dtype=object), recent])
            self._index = pd.Index(merged, dtype=object)
            self._recent = pd.Index([], dtype=object)
        else:
            self._recent = pd.Index(recent, dtype=object)
        self.size = size

    def ids_of(self, keys: np.ndarray) -> np.ndarray:
        """Dense id of each key (-1 for keys not held)."""
        wanted = pd.Index(keys, dtype=object)
        ids = self._index.get_indexer(wanted).astype(np.int64)
        missing = ids < 0
        if missing.any() and len(self._recent):
            found = self._recent.get_indexer(wanted[missing]).astype(np.int64)
            ids[missing] = np.where(found >= 0, found + len(self._index), -1)
        return ids

    def keys(self) -> np.ndarray:
        """Every key held, by dense id."""
        return np.concatenate(
            [self._index.to_numpy(dtype=object), self._recent.to_numpy(dtype=object)]
        )

    def view(self, name: str) -> np.ndarray:
        """Column ``name``'s rows of the keys held."""
        return self.cols[name][: self.size]

    def drop(self, ids: np.ndarray) -> int:
        """Remove keys by id: compact the arrays to the keys left and rebuild the index."""
        if len(ids) == 0:
            return 0
        keep = np.ones(self.size, dtype=bool)
        keep[ids] = False
        left = int(keep.sum())
        cols = self._resized(max(left, _MIN_CAPACITY), keep)
        index = pd.Index(self.keys()[keep], dtype=object)
        self.cols, self._index, self.size = cols, index, left
        self._recent = pd.Index([], dtype=object)
        return len(keep) - left

    def _resized(self, capacity: int, keep: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """New arrays of ``capacity`` rows holding the current keys (only ``keep`` if given)."""
        cols = {}
        for name, (width, fill, dtype) in self.columns.items():
            shape = (capacity,) if width == 1 else (capacity, width)
            new: np.ndarray = np.full(shape, fill, dtype=dtype)
            if name in self.cols:
                old = self.cols[name][: self.size]
                if keep is not None:
                    old = old[keep]
                new[: len(old)] = old
            cols[name] = new
        return cols


def snapshot_rows(state: KeyedArrays, key: str) -> pa.Table:
    """Every key's arrays as rows (a column of width > 1 as a fixed-size list per key)."""
    columns: dict[str, pa.Array] = {key: pa.array(state.keys(), pa.string())}
    for name, (width, _, _) in state.columns.items():
        values = state.view(name)
        if width == 1:
            columns[name] = pa.array(values)
        else:
            columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), width)
    return pa.table(columns)


def restore_rows(state: KeyedArrays, rows: pa.Table, key: str) -> None:
    """Put :func:`snapshot_rows` rows back (their keys' rows replaced or added)."""
    if rows.num_rows == 0:
        return
    keys = coerce(rows.column(key), pa.string()).to_numpy(zero_copy_only=False)
    values = {}
    for name, (width, _, _) in state.columns.items():
        column = rows.column(name).combine_chunks()
        if width == 1:
            values[name] = column.to_numpy(zero_copy_only=False)
        else:
            values[name] = column.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)
    ids, fresh = state.lookup(keys)
    state.add(fresh)
    for name, column in values.items():
        state.cols[name][ids] = column


class KeyedProcessor(HotProcessor):
    """A hot processor whose state is a :class:`KeyedArrays` (``self._state``) with a
    ``last_time`` column (epoch ms of each key's newest event): releasing, expiring,
    snapshotting and restoring keys are the same for all of them."""

    _state: KeyedArrays

    @property
    def nbytes(self) -> int:
        """Bytes held by the state arrays and the key index (not counting the key strings)."""
        return self._state.nbytes

    def release(self, keys: pa.Array) -> int:
        values = pc.drop_null(coerce(keys, pa.string())).to_numpy(zero_copy_only=False)
        ids = self._state.ids_of(values)
        return self._state.drop(ids[ids >= 0])

    def expire(self, before_ms: int) -> int:
        return self._state.drop(np.flatnonzero(self._state.view("last_time") < before_ms))

    def snapshot(self) -> pa.Table:
        return snapshot_rows(self._state, self.schema.key)

    def restore(self, rows: pa.Table) -> None:
        restore_rows(self._state, rows, self.schema.key)
