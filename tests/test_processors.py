"""The built-in processors against a pandas recompute, in-process (no Ray: they are plain code)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from engine.processors import MinuteKpis, PlayerFeatures, merge_kpis
from routers import TIME_TYPE, EventSchema

SCHEMA = EventSchema()
KINDS = np.array(["session_start", "level_up", "purchase", "match_end", "social"])


def events(n: int, seed: int, players: int = 50, span_min: int = 30) -> pd.DataFrame:
    """Random events over ``span_min`` minutes, delivered in a shuffled (out-of-order) sequence."""
    rng = np.random.default_rng(seed)
    base = 1_764_000_000_000
    return pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(n)],
            "player_id": [f"p{k}" for k in rng.integers(0, players, n)],
            "event_time": base + rng.integers(0, span_min * 60_000, n),
            "event_type": KINDS[rng.integers(0, len(KINDS), n)],
            "level": rng.integers(1, 60, n),
            "engagement_score": rng.random(n).round(3),
        }
    )


def to_batch(df: pd.DataFrame) -> pa.RecordBatch:
    batch = pa.RecordBatch.from_pandas(df, preserve_index=False)
    i = batch.schema.get_field_index("event_time")
    return batch.set_column(
        i, "event_time", pc.cast(batch["event_time"], pa.int64()).cast(TIME_TYPE)
    )


def expected_features(df: pd.DataFrame) -> pd.DataFrame:
    """Each player's features recomputed from all of its events, by pandas group-bys."""
    player = df.player_id
    last = df.groupby(player)["event_time"].transform("max")
    # Each player's own last 5 minutes, up to its newest event.
    recent = df.event_time // 60_000 > last // 60_000 - 5
    purchase = df.event_type == "purchase"
    by_player = df.groupby(player)
    starts = df[df.event_type == "session_start"].groupby("player_id")["event_time"].max()
    ups = df[df.event_type == "level_up"].groupby("player_id")["level"].max()
    out = pd.DataFrame(
        {
            "events_total": by_player.size(),
            "purchases_total": purchase.groupby(player).sum().astype(int),
            "events_5m": recent.groupby(player).sum().astype(int),
            "purchases_5m": (recent & purchase).groupby(player).sum().astype(int),
        }
    )
    last_time = by_player["event_time"].max()
    out["session_length_s"] = ((last_time - starts) / 1000).reindex(out.index).fillna(0.0)
    out["last_level"] = ups.reindex(out.index).fillna(0).astype(int)
    out.index.name = "player_id"
    return out.sort_index()


def test_player_features_equal_pandas_with_out_of_order_batches() -> None:
    df = events(5_000, seed=1)
    processor = PlayerFeatures(SCHEMA)
    for chunk in np.array_split(np.arange(len(df)), 37):  # uneven batches, arrival order shuffled
        processor.process(to_batch(df.iloc[chunk]))
    state = processor.state().to_pandas().set_index("player_id").sort_index()
    expected = expected_features(df)
    pd.testing.assert_frame_equal(state[expected.columns], expected, check_dtype=False)


def test_purchase_alert_fires_once_when_a_minute_passes_the_threshold() -> None:
    base = 1_764_000_000_000
    df = pd.DataFrame(
        {
            "event_id": [f"e{i}" for i in range(6)],
            "player_id": ["whale"] * 5 + ["minnow"],
            "event_time": [base + 1_000 * i for i in range(5)] + [base],
            "event_type": ["purchase"] * 6,
            "level": [1] * 6,
            "engagement_score": [0.5] * 6,
        }
    )
    processor = PlayerFeatures(SCHEMA, alert_purchases=3)
    first = processor.process(to_batch(df.iloc[:3]))
    second = processor.process(to_batch(df.iloc[3:]))
    assert first is None
    assert second is not None
    assert second.column("player_id").to_pylist() == ["whale"]
    assert second.column("purchases").to_pylist() == [5]


def test_minute_kpis_merge_equals_pandas() -> None:
    df = events(4_000, seed=2, span_min=10)
    processor = MinuteKpis(SCHEMA)
    partials = [
        processor.process(to_batch(df.iloc[c])) for c in np.array_split(np.arange(len(df)), 7)
    ]
    merged = merge_kpis(pa.concat_tables(partials)).to_pandas()

    df = df.assign(minute=pd.to_datetime(df.event_time // 60_000 * 60_000, unit="ms", utc=True))
    expected = (
        df.groupby(["minute", "event_type", "level"])
        .agg(events=("event_id", "size"), players=("player_id", "nunique"),
             mean_engagement=("engagement_score", "mean"))
        .reset_index()
    )  # fmt: skip
    merged["minute"] = merged["minute"].astype(expected["minute"].dtype)
    pd.testing.assert_frame_equal(merged, expected, check_dtype=False)


def test_player_features_snapshot_restore_round_trip() -> None:
    df = events(3_000, seed=3)
    first = PlayerFeatures(SCHEMA)
    first.process(to_batch(df.iloc[:2_000]))
    snapshot = first.snapshot()
    second = PlayerFeatures(SCHEMA)
    # Restore in two halves (as per-partition snapshots arrive), then carry on with new events.
    second.restore(snapshot.slice(0, snapshot.num_rows // 2))
    second.restore(snapshot.slice(snapshot.num_rows // 2))
    for processor in (first, second):
        processor.process(to_batch(df.iloc[2_000:]))
    left = first.state().sort_by("player_id").to_pandas()
    right = second.state().sort_by("player_id").to_pandas()
    pd.testing.assert_frame_equal(left, right)
