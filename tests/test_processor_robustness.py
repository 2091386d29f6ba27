"""The built-in processors on drifting column types, and hot state that gives memory back.

No Ray: processors are plain code. Clients drift, so a column may arrive as int64, double,
string, bool, null, a struct, or not at all; the processors must count the usable values and
never raise.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from engine.processors import MinuteKpis, PlayerFeatures, merge_kpis, player_features
from engine.processors.minute_kpis import KPI_SCHEMA
from routers import TIME_TYPE, EventSchema
from tests.test_processors import events, expected_features, to_batch

SCHEMA = EventSchema()
BASE = 1_764_000_000_000


def batch(level: pa.Array | None = None, **columns: pa.Array | list) -> pa.RecordBatch:
    """Four level_up events of two players one second apart; ``level`` and roles overridable."""
    data: dict[str, pa.Array | list] = {
        "event_id": ["e0", "e1", "e2", "e3"],
        "player_id": ["p1", "p1", "p2", "p2"],
        "event_time": pa.array([BASE + 1_000 * i for i in range(4)], pa.int64()).cast(TIME_TYPE),
        "event_type": ["level_up"] * 4,
    }
    if level is not None:
        data["level"] = level
    data.update(columns)
    return pa.record_batch(data)


def features(*batches: pa.RecordBatch) -> pd.DataFrame:
    processor = PlayerFeatures(SCHEMA)
    for b in batches:
        processor.process(b)
    return processor.state().to_pandas().set_index("player_id").sort_index()


LEVELS = {
    "string": (pa.array(["12", "max", " 7 ", "3.9"]), {"p1": 12, "p2": 7}),
    "double": (pa.array([12.7, float("nan"), -1.5, 3.0]), {"p1": 12, "p2": 3}),
    "int": (pa.array([5, 9, None, 2]), {"p1": 9, "p2": 2}),
    "bool": (pa.array([True, False, True, None]), {"p1": 0, "p2": 0}),
    "null": (pa.nulls(4), {"p1": 0, "p2": 0}),
    "struct": (pa.array([{"v": 1}, {"v": 2}, None, {"v": 3}]), {"p1": 0, "p2": 0}),
    "dictionary": (pa.array(["4", "x", "6", "5"]).dictionary_encode(), {"p1": 4, "p2": 6}),
    "missing": (None, {"p1": 0, "p2": 0}),
}


@pytest.mark.parametrize("kind", list(LEVELS))
def test_player_features_take_any_level_type(kind: str) -> None:
    level, expected = LEVELS[kind]
    state = features(batch(level))
    assert state["events_total"].to_dict() == {"p1": 2, "p2": 2}  # every row counts as an event
    assert state["last_level"].to_dict() == expected  # only numeric levels count as levels


def test_player_features_keys_of_any_type_are_one_player_as_strings() -> None:
    as_int = batch(player_id=pa.array([7, 7, 8, 8], pa.int64()))
    as_string = batch(player_id=["7", "7", "8", "8"])
    as_int32 = batch(player_id=pa.array([7, 7, 8, 8], pa.int32()))
    state = features(as_int, as_string, as_int32)
    assert state["events_total"].to_dict() == {"7": 6, "8": 6}
    processor = PlayerFeatures(SCHEMA)
    processor.process(as_int)
    assert processor.state().schema.field("player_id").type == pa.string()


def test_player_features_skip_rows_without_key_or_time_and_odd_event_types() -> None:
    b = batch(
        player_id=pa.array(["p1", None, "p2", "p2"]),
        event_time=pa.array([BASE, None, BASE + 2_000, BASE + 3_000], pa.int64()),  # epoch ms
        event_type=pa.array([None, "purchase", "purchase", "session_start"]),
    )
    state = features(b)
    assert state["events_total"].to_dict() == {"p1": 1, "p2": 2}
    assert state["purchases_total"].to_dict() == {"p1": 0, "p2": 1}
    assert state["session_length_s"].to_dict() == {"p1": 0.0, "p2": 0.0}
    # All rows unusable: nothing changes, nothing raises.
    empty = batch(player_id=pa.array([{"k": 1}] * 4), event_type=pa.nulls(4))
    assert features(empty).empty


@pytest.mark.parametrize(
    "time",
    [
        pa.array([(BASE + 1_000 * i) * 1_000 for i in range(4)], pa.timestamp("us")),  # naive
        pa.array([(BASE + 1_000 * i) * 1_000_000 for i in range(4)], pa.timestamp("ns", "UTC")),
        pa.array([BASE + 1_000 * i for i in range(4)], pa.int64()),
        pa.array([BASE + 1_000 * i + 0.75 for i in range(4)], pa.float64()),  # floored
    ],
)
def test_player_features_take_other_time_types(time: pa.Array) -> None:
    level = pa.array([1, 2, 3, 4])
    reference = features(batch(level))
    got = features(batch(level, event_time=time))
    pd.testing.assert_frame_equal(got, reference)


def test_player_features_equal_pandas_when_types_drift_between_batches() -> None:
    df = events(3_000, seed=4)
    expected = expected_features(df)
    processor = PlayerFeatures(SCHEMA)
    for i, chunk in enumerate(np.array_split(np.arange(len(df)), 6)):
        b = to_batch(df.iloc[chunk])
        level = b.column("level")
        drifted = [level, level.cast(pa.string()), level.cast(pa.float64()) + 0.25][i % 3]
        b = b.set_column(b.schema.get_field_index("level"), "level", drifted)
        processor.process(b)
    state = processor.state().to_pandas().set_index("player_id").sort_index()
    pd.testing.assert_frame_equal(state[expected.columns], expected, check_dtype=False)


def test_a_failing_process_leaves_the_state_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    processor, _ = populated(players=200, seed=10)
    before = processor.snapshot()
    real = player_features.coerce_column

    def failing(batch: pa.RecordBatch, name: str, to: pa.DataType) -> pa.Array:
        if name == "level":  # read last: keys, times and new ids are computed already
            raise RuntimeError("boom")
        return real(batch, name, to)

    monkeypatch.setattr(player_features, "coerce_column", failing)
    new_players = events(500, seed=11, players=400)  # half of them unknown so far
    with pytest.raises(RuntimeError, match="boom"):
        processor.process(to_batch(new_players))
    assert processor.snapshot().equals(before)


def kpi_batch(level: pa.Array | None, score: pa.Array | None, **roles: pa.Array) -> pa.RecordBatch:
    b = batch(level, **roles)
    if score is not None:
        b = b.append_column("engagement_score", score)
    return b


@pytest.mark.parametrize(
    ("level", "score", "levels", "score_sum", "score_count"),
    [
        (pa.array(["3", "3.5", "max", None]), pa.array(["0.5", "high", "1", None]),
         [3, None], 1.5, 2),
        (pa.array([3.9, 3.0, 4.0, 4.2]), pa.array([0.5, 0.25, float("nan"), 1.0]),
         [3, 4], 1.75, 3),
        (pa.nulls(4), pa.array([True, False, True, True]), [None], 0.0, 0),
        (pa.array([{"a": 1}] * 4), pa.array([1, 2, 3, 4], pa.int32()), [None], 10.0, 4),
        (None, None, [None], 0.0, 0),
    ],
)  # fmt: skip
def test_minute_kpis_take_any_type_and_keep_their_schema(
    level: pa.Array | None,
    score: pa.Array | None,
    levels: list[int | None],
    score_sum: float,
    score_count: int,
) -> None:
    out = MinuteKpis(SCHEMA).process(kpi_batch(level, score, player_id=pa.array([1, 1, 2, 2])))
    assert out.schema == KPI_SCHEMA
    assert sorted(out["level"].to_pylist(), key=lambda v: (v is None, v)) == levels
    assert pc.sum(out["events"]).as_py() == 4
    assert (pc.sum(out["engagement_sum"]).as_py() or 0.0) == pytest.approx(score_sum)
    assert pc.sum(out["engagement_count"]).as_py() == score_count
    assert sorted({p for ps in out["players"].to_pylist() for p in ps}) == ["1", "2"]


def test_minute_kpis_of_drifting_batches_concatenate_and_merge() -> None:
    good = kpi_batch(pa.array([3, 3, 4, 4]), pa.array([0.5, 0.5, 1.0, 1.0]))
    drifted = kpi_batch(pa.array(["3", "3", "4", "x"]), pa.array(["0.5", "0.5", "1", "?"]))
    empty = kpi_batch(None, None).slice(0, 0)
    partials = [MinuteKpis(SCHEMA).process(b) for b in (good, drifted, empty)]
    assert all(p.schema == KPI_SCHEMA for p in partials)
    merged = merge_kpis(pa.concat_tables(partials)).to_pandas()
    by_level = merged.set_index("level", drop=False)
    assert by_level.loc[3, "events"] == 4
    assert by_level.loc[4, "events"] == 3
    assert by_level.loc[4, "mean_engagement"] == pytest.approx(1.0)


def populated(players: int, seed: int) -> tuple[PlayerFeatures, pd.DataFrame]:
    df = events(20 * players, seed=seed, players=players)
    processor = PlayerFeatures(SCHEMA)
    for chunk in np.array_split(np.arange(len(df)), 5):
        processor.process(to_batch(df.iloc[chunk]))
    return processor, df


def test_release_drops_keys_and_shrinks_the_arrays() -> None:
    processor, df = populated(players=3_000, seed=5)
    before = processor.nbytes
    gone = [f"p{k}" for k in range(2_500)]
    # Keys held, keys never seen, and a null: only the held ones count.
    released = processor.release(pa.array([*gone, "nobody", None]))
    assert released == 2_500
    state = processor.state().to_pandas().set_index("player_id").sort_index()
    kept = df[~df.player_id.isin(gone)]
    expected = expected_features(kept)
    pd.testing.assert_frame_equal(state[expected.columns], expected, check_dtype=False)
    # Compacted: it holds no more than an instance that never saw the released keys.
    never = PlayerFeatures(SCHEMA)
    never.process(to_batch(kept))
    assert processor.nbytes == never.nbytes < before / 3
    assert processor.release(pa.array(gone)) == 0  # idempotent

    # Released players start afresh; the kept ones carry on; ids stay consistent after compaction.
    more = events(1_000, seed=6, players=3_000)
    processor.process(to_batch(more))
    expected = expected_features(pd.concat([kept, more]))
    state = processor.state().to_pandas().set_index("player_id").sort_index()
    pd.testing.assert_frame_equal(state[expected.columns], expected, check_dtype=False)


def test_release_takes_keys_of_any_type() -> None:
    processor = PlayerFeatures(SCHEMA)
    processor.process(batch(player_id=pa.array([1, 1, 2, 3])))
    assert processor.release(pa.chunked_array([pa.array([1], pa.int64()), pa.array([3])])) == 2
    assert processor.state()["player_id"].to_pylist() == ["2"]


def test_expire_drops_keys_last_seen_before_the_cutoff() -> None:
    processor, df = populated(players=500, seed=7)
    last = df.groupby("player_id").event_time.max()
    cutoff = int(last.quantile(0.5))
    assert processor.expire(cutoff) == int((last < cutoff).sum())
    state = processor.state().to_pandas().set_index("player_id").sort_index()
    expected = expected_features(df[df.player_id.isin(last[last >= cutoff].index)])
    pd.testing.assert_frame_equal(state[expected.columns], expected, check_dtype=False)
    assert processor.expire(cutoff) == 0


def test_snapshot_restore_round_trip_after_compaction() -> None:
    processor, _ = populated(players=3_000, seed=8)
    processor.release(pa.array([f"p{k}" for k in range(0, 3_000, 2)]))
    snapshot = processor.snapshot()
    copy = PlayerFeatures(SCHEMA)
    copy.restore(snapshot.slice(0, 700))
    copy.restore(snapshot.slice(700))
    more = to_batch(events(1_000, seed=9, players=3_000))
    processor.process(more)
    copy.process(more)
    left = processor.state().sort_by("player_id").to_pandas()
    right = copy.state().sort_by("player_id").to_pandas()
    pd.testing.assert_frame_equal(left, right)


def test_a_hot_actor_releases_the_keys_of_revoked_partitions() -> None:
    from engine.hot import _HotActor  # the actor's class, run in this process

    actor = _HotActor("player_features", EventSchema(), {})
    t = pa.array([1_764_000_000_000] * 2, pa.int64()).cast(pa.timestamp("ms", "UTC"))

    def batch(keys: list[str]) -> pa.RecordBatch:
        return pa.record_batch(
            {"event_id": keys, "player_id": keys, "event_time": t, "event_type": ["x", "x"]}
        )

    actor.process(batch(["a1", "a2"]), 0.0, "topic-0")
    actor.process(batch(["b1", "b2"]), 0.0, "topic-1")
    assert actor.release(["topic-0"]) == 2
    assert sorted(actor.state()["player_id"].to_pylist()) == ["b1", "b2"]
    assert sorted(actor.partition_of) == ["b1", "b2"]
    assert actor.release(["topic-0"]) == 0
