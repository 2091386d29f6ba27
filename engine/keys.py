"""Stable key groups: the same key maps to the same group in every process, run and machine.

Never Python's ``hash()`` (salted per process). Keys are dictionary-encoded first, so only each
distinct key is hashed (SipHash with a fixed key, from pandas), then the hashes are gathered.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

__all__ = ["actor_of_groups", "key_groups"]


def key_groups(keys: pa.Array | pa.ChunkedArray, groups: int) -> np.ndarray:
    """Key group (``0 .. groups-1``) of each key, as an int64 numpy array.

    Example:
        >>> key_groups(pa.array(["p1", "p2", "p1"]), 256).tolist()
        [97, 185, 97]
    """
    if isinstance(keys, pa.ChunkedArray):
        keys = keys.combine_chunks()
    encoded = pc.dictionary_encode(keys)
    distinct = encoded.dictionary.cast(pa.string()).to_numpy(zero_copy_only=False)
    hashes = pd.util.hash_array(distinct.astype(object), categorize=False)
    per_distinct = (hashes % np.uint64(groups)).astype(np.int64)
    return per_distinct[encoded.indices.to_numpy(zero_copy_only=False)]


def actor_of_groups(groups: int, actors: int) -> np.ndarray:
    """Owner actor of each key group: contiguous ranges, as Flink assigns key-group ranges.

    Example:
        >>> actor_of_groups(8, 3).tolist()
        [0, 0, 0, 1, 1, 1, 2, 2]
    """
    return (np.arange(groups) * actors // groups).astype(np.int64)
