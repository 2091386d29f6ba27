"""The day_features hot processor: per player and day, what the batch job computes of the same
events (checked against pandas over hostile, drifting batches in any order), the ring of days,
and its snapshots."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from engine.processors import DayFeatures
from engine.processors.day_features import ADDITIVE, EVENT_TYPES
from routers import TIME_TYPE, EventSchema

SCHEMA = EventSchema()
DAY_MS = 86_400_000
T0 = 20_412 * DAY_MS  # 2025-11-20


def hostile_rows(n: int, seed: int) -> pd.DataFrame:
    """Game events as clients send them: ids as ints or strings, numbers as text ("12",
    "max", "4.99"), NaN and missing scores, null keys, two days, every type."""
    rng = np.random.default_rng(seed)
    players = rng.integers(0, 40, n)
    kinds = rng.choice([*EVENT_TYPES, "custom"], n)
    levels = rng.choice(["3", "12", "max", None, "7.0"], n)
    amounts = rng.choice(["4.99", "5", "x", None], n)
    engagement = rng.choice([0.1, 0.5, np.nan, None, 0.9], n)
    quality = rng.choice([0.85, 0.9, 0.5, None, 0.81], n)
    return pd.DataFrame(
        {
            "player_id": [None if p == 0 else (str(p) if p % 2 else p) for p in players],
            "event_time": T0 + rng.integers(0, 2 * DAY_MS, n),
            "event_type": kinds,
            "level": levels,
            "amount": amounts,
            "engagement_score": engagement,
            "quality_score": quality,
            "action": rng.choice(["invite", "chat", "gift", None], n),
        }
    )


def values(column: pd.Series) -> list[Any]:
    """A column's values with pandas's missing markers (NaN for text in pandas 3) as None."""
    return [None if v is None or (isinstance(v, float) and math.isnan(v)) else v for v in column]


def batch(frame: pd.DataFrame) -> pa.RecordBatch:
    return pa.record_batch(
        {
            "player_id": pa.array(
                [None if v is None else str(v) for v in values(frame["player_id"])]
            ),
            "event_time": pa.array(frame["event_time"].to_numpy(), pa.int64()).cast(TIME_TYPE),
            "event_type": pa.array(values(frame["event_type"])),
            "level": pa.array(values(frame["level"]), pa.string()),
            "amount": pa.array(values(frame["amount"]), pa.string()),
            "engagement_score": pa.array(frame["engagement_score"].tolist(), pa.float64()),
            "quality_score": pa.array(frame["quality_score"].tolist(), pa.float64()),
            "action": pa.array(values(frame["action"]), pa.string()),
        }
    )


def number(text: Any) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def recompute(frame: pd.DataFrame, quality_min: float = 0.8) -> dict[tuple[str, int], dict]:
    """Per (player, day): the features, the slow obvious way."""
    out: dict[tuple[str, int], dict] = {}
    for row in frame.itertuples():
        q = row.quality_score
        if row.player_id is None or q is None or not q > quality_min:
            continue
        key = (str(row.player_id), int(row.event_time) // DAY_MS)
        f = out.setdefault(key, {n: 0 for n in ADDITIVE} | {"max_level": math.nan})
        f["events"] += 1
        if row.event_type in EVENT_TYPES:
            f[f"events_{row.event_type}"] += 1
        e = row.engagement_score
        if e is not None and math.isfinite(e):
            f["engagement_sum"] += e
            f["engagement_n"] += 1
        if row.event_type == "purchase" and math.isfinite(number(row.amount)):
            f["spend"] += number(row.amount)
        if row.event_type == "level_up" and math.isfinite(number(row.level)):
            level, top = number(row.level), f["max_level"]
            f["max_level"] = level if math.isnan(top) else max(level, top)
        if row.event_type == "social" and row.action in ("invite", "chat"):
            f["invites" if row.action == "invite" else "chats"] += 1
    return out


def per_day(processor: DayFeatures) -> dict[tuple[str, int], dict]:
    got: dict[tuple[str, int], dict] = {}
    for row in processor.state().to_pylist():
        for slot, day in enumerate(row["day"]):
            if day is None:
                continue
            epoch_day = (day - pd.Timestamp("1970-01-01").date()).days
            got[(row["player_id"], epoch_day)] = {n: row[n][slot] for n in (*ADDITIVE, "max_level")}
    return got


def same(got: dict, want: dict) -> None:
    assert got.keys() == want.keys() and want
    for key, features in want.items():
        for name, value in features.items():
            mine = got[key][name]
            if isinstance(value, float) and math.isnan(value):
                assert mine is None, (key, name)
            else:
                assert mine == pytest.approx(value), (key, name)


@pytest.mark.parametrize("rows", [257, 3_000])  # many small batches, or one holding it all
def test_features_equal_a_recompute_whatever_the_batches_and_their_order(rows: int) -> None:
    frame = hostile_rows(3_000, seed=1)
    processor = DayFeatures(SCHEMA)
    shuffled = frame.sample(frac=1.0, random_state=2)  # days and players interleaved
    for start in range(0, len(shuffled), rows):
        processor.process(batch(shuffled.iloc[start : start + rows]))
    same(per_day(processor), recompute(frame))


def test_an_old_day_leaves_the_ring_and_its_late_events_are_dropped() -> None:
    def events(days: list[int]) -> pa.RecordBatch:
        return batch(
            pd.DataFrame(
                {
                    "player_id": ["a"] * len(days), "event_time": [T0 + d * DAY_MS for d in days],
                    "event_type": ["custom"] * len(days), "level": [None] * len(days),
                    "amount": [None] * len(days), "engagement_score": [None] * len(days),
                    "quality_score": [0.9] * len(days), "action": [None] * len(days),
                }
            )
        )  # fmt: skip

    processor = DayFeatures(SCHEMA, days=3)
    processor.process(events([0, 0, 1]))
    processor.process(events([3, 0]))  # day 3 takes day 0's slot, in the same batch as a late 0
    processor.process(events([0, 1, 2]))  # day 0 is gone for good: its late event is dropped
    assert {d: f["events"] for (_, d), f in per_day(processor).items()} == {
        20_412 + 1: 2, 20_412 + 2: 1, 20_412 + 3: 1
    }  # fmt: skip


def test_snapshot_restore_release_and_expire() -> None:
    frame = hostile_rows(2_000, seed=3)
    processor = DayFeatures(SCHEMA)
    processor.process(batch(frame))
    copy = DayFeatures(SCHEMA)
    copy.restore(processor.snapshot())
    assert per_day(copy) == per_day(processor)
    held = {p for p, _ in per_day(processor)}
    released = processor.release(pa.array([7, None])) + processor.release(pa.array(["9"]))
    assert released == len({"7", "9"} & held) > 0  # ints and strings name one player
    assert {p for p, _ in per_day(processor)} == held - {"7", "9"}
    assert processor.expire(before_ms=T0 + 3 * DAY_MS) == len(held - {"7", "9"})
    assert processor.state().num_rows == 0


def test_a_batch_of_only_unusable_rows_changes_nothing() -> None:
    processor = DayFeatures(SCHEMA)
    bad = hostile_rows(50, seed=4).assign(quality_score=None)
    assert processor.process(batch(bad)) is None
    assert processor.state().num_rows == 0


def test_an_event_dated_years_ahead_takes_no_ring_slot() -> None:
    """A device clock set years ahead: that event is left out (its day is after the day after
    its arrival), so it does not hold a slot and push out the real days mapped to it."""
    days = [0, 3000, 1, 2, 3, 4, 5]  # day 3000 = 0 (mod 3): it would have taken day 0's slot
    frame = pd.DataFrame(
        {
            "player_id": ["a"] * len(days), "event_time": [T0 + d * DAY_MS for d in days],
            "event_type": ["custom"] * len(days), "level": [None] * len(days),
            "amount": [None] * len(days), "engagement_score": [None] * len(days),
            "quality_score": [0.9] * len(days), "action": [None] * len(days),
        }
    )  # fmt: skip
    arrivals = [T0 + min(d, 5) * DAY_MS + 1_000 for d in days]  # arrived on its day (or today)
    processor = DayFeatures(SCHEMA)
    for i in range(len(days)):  # one batch per event, as they arrived
        rows = batch(frame.iloc[i : i + 1])
        rows = rows.append_column("arrival_time", pa.array([arrivals[i]]).cast(TIME_TYPE))
        processor.process(rows)
    assert sorted(d - 20_412 for _, d in per_day(processor)) == [3, 4, 5]  # the last three
