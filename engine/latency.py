"""A fixed-size latency histogram: log-linear buckets, constant memory, mergeable, picklable.

The layout is HdrHistogram's, in integer microseconds: values below ``2 * SUB_BUCKETS`` µs have
buckets 1 µs wide; above, each power of two ``[2**e, 2**(e+1))`` is cut into ``SUB_BUCKETS``
equal buckets, so a bucket is at most ``1 / SUB_BUCKETS`` of its lower bound wide. A percentile
is reported as the middle of its bucket, clamped to the exact minimum and maximum seen (which are
also the answers for the first and last ranks), hence within :data:`RELATIVE_ERROR` of the true
order statistic (nearest rank) for values of ``SUB_BUCKETS`` µs and more, and within half a
microsecond below that.

Every histogram has the same layout, so merging two is adding two arrays, and a hot actor can
return its histogram to the driver (a few KB pickled: only non-empty buckets are sent).
"""

from __future__ import annotations

from typing import Any, Final

import numpy as np
import numpy.typing as npt

__all__ = [
    "HIGHEST_MS",
    "LOWEST_MS",
    "RELATIVE_ERROR",
    "SUB_BUCKETS",
    "LatencyHistogram",
]

#: Buckets per power of two (a power of two itself): 32 keeps reported values within 1.6% with
#: 896 buckets in all (7 KB); 64 would halve the error for twice the size.
SUB_BUCKETS: Final[int] = 32
_SHIFT: Final[int] = SUB_BUCKETS.bit_length() - 1  # log2(SUB_BUCKETS)
#: 2**32 µs (71.6 minutes): above an hour, a latency is an outage, not a distribution to resolve.
_TOP_POWER: Final[int] = 32
_HIGHEST_US: Final[int] = (1 << _TOP_POWER) - 1
_BUCKETS: Final[int] = 2 * SUB_BUCKETS + (_TOP_POWER - 1 - _SHIFT) * SUB_BUCKETS

#: The smallest resolved value (1 µs); smaller and negative values (clock skew) share bucket 0.
LOWEST_MS: Final[float] = 0.001
#: Values above this land in the top bucket (their exact maximum is still kept).
HIGHEST_MS: Final[float] = _HIGHEST_US / 1000
#: Bound on ``|reported - true| / true`` for values of at least ``SUB_BUCKETS`` µs.
RELATIVE_ERROR: Final[float] = 1 / (2 * SUB_BUCKETS)


def _layout() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Lower bound and width of every bucket, in µs."""
    low = np.arange(2 * SUB_BUCKETS, dtype=np.float64)
    width = np.ones(2 * SUB_BUCKETS)
    for power in range(_SHIFT + 1, _TOP_POWER):
        step = float(1 << (power - _SHIFT))
        low = np.concatenate([low, (1 << power) + step * np.arange(SUB_BUCKETS)])
        width = np.concatenate([width, np.full(SUB_BUCKETS, step)])
    return low, width


_LOW_US, _WIDTH_US = _layout()
_MID_MS: Final[npt.NDArray[np.float64]] = (_LOW_US + _WIDTH_US / 2) / 1000
assert len(_MID_MS) == _BUCKETS


def _bucket(values_ms: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Bucket index of each value (vectorized)."""
    us = np.clip(np.floor(values_ms * 1000), 0, _HIGHEST_US).astype(np.int64)
    # frexp is exact here: us < 2**32 is an exact float64; power = floor(log2(us)).
    power = np.frexp(us.astype(np.float64))[1].astype(np.int64) - 1
    linear = us < 2 * SUB_BUCKETS
    power = np.where(linear, _SHIFT + 1, power)
    sub = us >> (power - _SHIFT)  # in [SUB_BUCKETS, 2 * SUB_BUCKETS) above the linear range
    logarithmic = 2 * SUB_BUCKETS + (power - _SHIFT - 1) * SUB_BUCKETS + (sub - SUB_BUCKETS)
    return np.where(linear, us, logarithmic)


class LatencyHistogram:
    """Counts of latencies (milliseconds) in fixed log-linear buckets; memory is constant.

    Not thread-safe; one owner records, others receive copies (pickling) and :meth:`merge` them.
    NaN and infinite values are ignored; negative values count in the lowest bucket.

    Example:
        >>> import numpy as np
        >>> h = LatencyHistogram()
        >>> h.record(np.array([1.0, 2.0, 3.0, 250.0]))
        >>> h.record(2.0, weight=6)  # e.g. one call that applied 6 rows
        >>> h.count, h.max
        (10, 250.0)
        >>> abs(h.percentile(50) - 2.0) <= 2.0 * RELATIVE_ERROR
        True
        >>> h.percentile(100)
        250.0
        >>> other = LatencyHistogram()
        >>> other.record_many(np.array([5.0, -0.3]), np.array([2, 1]))
        >>> h.merge(other).count
        13
        >>> h.min
        -0.3
        >>> LatencyHistogram().percentile(99) is None
        True
    """

    __slots__ = ("_count", "_counts", "_max", "_min", "_sum")

    def __init__(self) -> None:
        self._counts = np.zeros(_BUCKETS, dtype=np.int64)
        self._count = 0
        self._sum = 0.0
        self._min = float("inf")
        self._max = float("-inf")

    def record(self, values_ms: npt.ArrayLike, weight: int = 1) -> None:
        """Count each value ``weight`` times.

        Args:
            values_ms: one latency or an array of them, in milliseconds.
            weight: how many events each value stands for (e.g. rows of a batch), ``>= 0``.

        Raises:
            ValueError: on a negative weight.
        """
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        values = self._finite(values_ms)
        if weight == 0 or len(values) == 0:
            return
        self._counts += np.bincount(_bucket(values), minlength=_BUCKETS) * weight
        self._note(values, len(values) * weight, float(values.sum()) * weight)

    def record_many(self, values_ms: npt.ArrayLike, weights: npt.ArrayLike) -> None:
        """Count ``values_ms[i]`` ``weights[i]`` times (same lengths; weights ``>= 0``).

        Raises:
            ValueError: on different lengths or a negative weight.
        """
        values = np.atleast_1d(np.asarray(values_ms, dtype=np.float64))
        counts = np.atleast_1d(np.asarray(weights, dtype=np.int64))
        if values.shape != counts.shape:
            raise ValueError(f"{len(values)} values but {len(counts)} weights")
        if (counts < 0).any():
            raise ValueError(f"weights must be >= 0, got {int(counts.min())}")
        keep = np.isfinite(values) & (counts > 0)
        values, counts = values[keep], counts[keep]
        if len(values) == 0:
            return
        np.add.at(self._counts, _bucket(values), counts)
        self._note(values, int(counts.sum()), float(np.dot(values, counts)))

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        """Add ``other``'s counts to this histogram; returns ``self``."""
        self._counts += other._counts
        self._count += other._count
        self._sum += other._sum
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        return self

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100, nearest rank) in ms, or ``None`` when empty.

        Raises:
            ValueError: when ``q`` is outside [0, 100].
        """
        if not 0 <= q <= 100:
            raise ValueError(f"percentile must be in [0, 100], got {q}")
        if self._count == 0:
            return None
        rank = max(1, int(np.ceil(q / 100 * self._count)))
        if rank == 1:
            return self._min
        if rank == self._count:
            return self._max
        bucket = int(np.searchsorted(np.cumsum(self._counts), rank))
        return float(min(max(_MID_MS[bucket], self._min), self._max))

    @property
    def count(self) -> int:
        """How many values were recorded (with their weights)."""
        return self._count

    @property
    def max(self) -> float | None:
        """The exact largest value recorded (ms), or ``None`` when empty."""
        return self._max if self._count else None

    @property
    def min(self) -> float | None:
        """The exact smallest value recorded (ms), or ``None`` when empty."""
        return self._min if self._count else None

    @property
    def mean(self) -> float | None:
        """The exact mean (ms), or ``None`` when empty."""
        return self._sum / self._count if self._count else None

    @property
    def nbytes(self) -> int:
        """Bytes held by the bucket counts: the same for every histogram."""
        return int(self._counts.nbytes)

    def _finite(self, values_ms: npt.ArrayLike) -> npt.NDArray[np.float64]:
        values = np.atleast_1d(np.asarray(values_ms, dtype=np.float64)).reshape(-1)
        return values[np.isfinite(values)]

    def _note(self, values: npt.NDArray[np.float64], count: int, total: float) -> None:
        self._count += count
        self._sum += total
        self._min = min(self._min, float(values.min()))
        self._max = max(self._max, float(values.max()))

    def __getstate__(self) -> dict[str, Any]:
        nonzero = np.flatnonzero(self._counts).astype(np.uint16)
        return {
            "buckets": nonzero,
            "counts": self._counts[nonzero],
            "summary": (self._count, self._sum, self._min, self._max),
        }

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._counts = np.zeros(_BUCKETS, dtype=np.int64)
        self._counts[state["buckets"]] = state["counts"]
        self._count, self._sum, self._min, self._max = state["summary"]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return (
            np.array_equal(self._counts, other._counts)
            and (self._count, self._min, self._max) == (other._count, other._min, other._max)
            and bool(np.isclose(self._sum, other._sum))
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if not self._count:
            return "LatencyHistogram(count=0)"
        p50, p99 = self.percentile(50), self.percentile(99)
        return (
            f"LatencyHistogram(count={self._count}, p50={p50:.3f} ms, p99={p99:.3f} ms,"
            f" max={self._max:.3f} ms)"
        )
