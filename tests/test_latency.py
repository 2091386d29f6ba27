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


def test_a_paced_source_marks_when_each_event_was_due() -> None:
    # Blocks already due are handed out merged; each event keeps its own due time, so a block's
    # later events are not charged the wait of its first one (nor spared their own).
    import time

    from engine.sources import MemorySource, SourceBlock

    rate = 20_000.0
    lines = b"\n".join(b"{}" for _ in range(100))
    blocks = [SourceBlock("0", i * 100, i * 100 + 99, data=lines) for i in range(10)]
    before = time.time() * 1000
    found = list(MemorySource(blocks, rate=rate, max_rows=1_000).blocks())
    due = np.concatenate([b.due_ms.to_numpy() for b in found if b is not None])
    assert len(due) == 1_000
    assert np.allclose(np.diff(due), 1000 / rate, atol=1e-3)  # every 50 µs, across blocks
    assert before - 1 <= due[0] <= before + 100
    for block in found:
        assert block is not None and block.due_s == block.due_ms[0].as_py() / 1000


def test_hot_latency_counts_each_row_from_its_own_due_time() -> None:
    import time

    import pyarrow as pa

    from engine.hot import _HotActor
    from routers import EventSchema

    actor = _HotActor("player_features", EventSchema(), {})
    now = time.time() * 1000
    rows = pa.record_batch(
        {
            "event_id": ["e1", "e2", "e3", "e4"],
            "player_id": ["p1", "p2", "p1", "p3"],
            "event_time": pa.array([int(now)] * 4, pa.int64()).cast(pa.timestamp("ms", "UTC")),
            "event_type": ["purchase"] * 4,
        }
    )
    due = pa.array([now - 400.0, now - 300.0, now - 200.0, now - 100.0])
    result = actor.process(rows, due, "0")
    assert result.latency.count == 4
    assert 400 <= result.latency.max < 400 + 1_000  # the oldest row, plus this call's time
    assert result.latency.min is not None and 100 <= result.latency.min < result.latency.max
    one_time = actor.process(rows, now - 50.0, "0")  # one due time for every row
    assert one_time.latency.count == 4 and one_time.latency.min == one_time.latency.max
