"""LatencyHistogram against numpy on the same values: error bound, merge, constant size."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from engine.latency import LOWEST_MS, RELATIVE_ERROR, SUB_BUCKETS, LatencyHistogram

QS = [0, 1, 10, 25, 50, 75, 90, 99, 99.9, 99.99, 100]


def assert_within_bound(histogram: LatencyHistogram, values: np.ndarray, weights=None) -> None:
    for q in QS:
        true = float(np.percentile(values, q, method="inverted_cdf", weights=weights))
        got = histogram.percentile(q)
        assert got is not None
        # Relative bound from SUB_BUCKETS µs up, half a microsecond below (1 µs wide buckets).
        bound = max(abs(true) * RELATIVE_ERROR, LOWEST_MS / 2) * (1 + 1e-9)
        assert abs(got - true) <= bound, (q, got, true, bound)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_percentiles_within_relative_error_of_numpy(seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Median ~3 ms, tails from microseconds to minutes: every part of the layout is used.
    values = rng.lognormal(mean=1.0, sigma=2.5, size=200_000)
    histogram = LatencyHistogram()
    for chunk in np.array_split(values, 7):
        histogram.record(chunk)
    assert histogram.count == len(values)
    assert histogram.max == values.max()
    assert histogram.min == values.min()
    assert histogram.mean == pytest.approx(values.mean())
    assert_within_bound(histogram, values)
    assert histogram.percentile(100) == values.max()  # clamped to the exact extremes
    assert histogram.percentile(0) == values.min()


def test_weights_count_like_repeated_values() -> None:
    rng = np.random.default_rng(5)
    values = rng.lognormal(mean=0.0, sigma=1.5, size=20_000)
    weights = rng.integers(0, 50, size=len(values))
    weighted = LatencyHistogram()
    weighted.record_many(values, weights)
    repeated = LatencyHistogram()
    repeated.record(np.repeat(values, weights))
    assert weighted == repeated
    assert weighted.count == int(weights.sum())
    assert_within_bound(weighted, np.repeat(values, weights))

    scalar = LatencyHistogram()
    scalar.record(7.5, weight=3)
    assert (scalar.count, scalar.percentile(50)) == (3, 7.5)


def test_merge_equals_recording_both_and_survives_pickling() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.lognormal(0.5, 2.0, 50_000), rng.lognormal(2.0, 1.0, 30_000)
    left, right, both = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    left.record(a)
    right.record(b)
    both.record(np.concatenate([a, b]))
    shipped = pickle.loads(pickle.dumps(right))  # as a Ray actor would return it
    assert shipped == right
    assert left.merge(shipped) == both
    for q in QS:
        assert left.percentile(q) == both.percentile(q)
    assert left.merge(LatencyHistogram()) == both  # merging an empty one changes nothing


def test_negative_nan_and_out_of_range_values() -> None:
    histogram = LatencyHistogram()
    histogram.record(np.array([-5.0, -0.0001, 0.0, np.nan, np.inf, 10.0, 1e9]))
    assert histogram.count == 5  # NaN and inf are ignored
    assert histogram.min == -5.0  # clock skew: counted low, the exact minimum is kept
    assert histogram.percentile(0) == -5.0
    assert histogram.percentile(50) == pytest.approx(LOWEST_MS / 2)  # the lowest bucket
    assert histogram.percentile(100) == 1e9  # beyond the top bucket: clamped to the exact max
    with pytest.raises(ValueError, match="percentile"):
        histogram.percentile(101)
    with pytest.raises(ValueError, match="weight"):
        histogram.record(1.0, weight=-1)
    with pytest.raises(ValueError, match="weights"):
        histogram.record_many([1.0, 2.0], [1])
    empty = LatencyHistogram()
    assert (empty.count, empty.max, empty.percentile(50)) == (0, None, None)


def test_size_is_constant_after_ten_million_records() -> None:
    histogram = LatencyHistogram()
    nbytes = histogram.nbytes
    rng = np.random.default_rng(11)
    for _ in range(10):
        histogram.record(rng.lognormal(1.0, 3.0, 1_000_000))
    assert histogram.count == 10_000_000
    assert histogram.nbytes == nbytes
    # Pickled: at most one (uint16 index, int64 count) pair per bucket, plus a fixed envelope.
    assert len(pickle.dumps(histogram)) <= nbytes * 10 // 8 + 1_024
    assert nbytes <= 2 * SUB_BUCKETS * 32 * 8  # a few KB, whatever was recorded
