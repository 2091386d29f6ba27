"""A processor that raises on some rows never stops the run: those rows, and only they, are dead."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from engine.pipeline import Pipeline
from engine.sources import FileSource
from tests.test_pipeline import NOW, make_config

pytestmark = pytest.mark.usefixtures("ray_local")

T0 = int(NOW.timestamp() * 1000) - 10_000  # fresh: no age rule sends them cold


def write_events(path: Path, n: int, poison: set[int]) -> None:
    lines = []
    for i in range(n):
        kind = "purchase" if i % 2 else "level_up"  # purchases go hot, level-ups warm
        lines.append(
            json.dumps(
                {"event_id": f"e{i}", "player_id": f"p{i % 13}", "event_time": T0 + i,
                 "event_type": kind, "tier": "poison" if i in poison else "free", "level": i % 9}
            )
        )  # fmt: skip
    path.write_text("\n".join(lines) + "\n")


def test_rows_a_processor_raises_on_become_dead_letters_and_the_rest_is_processed(
    tmp_path: Path,
) -> None:
    events = tmp_path / "events.ndjson"
    poison = {7, 8, 501, 1_200}  # hot (odd) and warm (even) rows, in different blocks
    write_events(events, 2_000, poison)
    lake = tmp_path / "lake"
    config = make_config(
        lake,
        hot={"processor": "tests.poison:PickyFeatures"},
        warm={"processor": "tests.poison:PickyKpis"},
    )
    pipeline = Pipeline(config, source=FileSource(events, block_rows=300), clock=lambda: NOW)
    summary = pipeline.run()

    assert summary.events_in == 2_000
    assert summary.dead_letter == len(poison)
    assert summary.hot + summary.warm + summary.cold + summary.dead_letter == 2_000
    dead = pq.read_table(lake / "_dead_letter").to_pylist()
    assert sorted(json.loads(d["raw"])["event_id"] for d in dead) == sorted(f"e{i}" for i in poison)
    reasons = {d["reason"] for d in dead}
    assert reasons == {
        "processor_error:hot:ValueError: tier 'poison' is not a tier",
        "processor_error:warm:ValueError: tier 'poison' is not a tier",
    }
    # Every other hot row reached the state, once.
    state = pipeline.hot_state()
    assert pc.sum(state["events_total"]).as_py() == summary.hot == 1_000 - 2


def test_state_ttl_drops_keys_idle_in_event_time(tmp_path: Path) -> None:
    events = tmp_path / "events.ndjson"
    old = [
        {"event_id": f"o{i}", "player_id": f"old{i}", "event_time": T0 - 7_200_000,
         "event_type": "purchase"}
        for i in range(10)
    ]  # fmt: skip
    new = [
        {"event_id": f"n{i}", "player_id": f"new{i % 5}", "event_time": T0 + i,
         "event_type": "purchase"}
        for i in range(1_400)
    ]  # fmt: skip
    events.write_text("\n".join(json.dumps(e) for e in old + new) + "\n")

    def keys(ttl: str | None) -> set[str]:  # ~6 lines a block: > 64 hot calls, a TTL check
        config = make_config(tmp_path / f"lake-{ttl}", hot={"state_ttl": ttl, "actors": 1})
        pipeline = Pipeline(config, source=FileSource(events, block_rows=2), clock=lambda: NOW)
        pipeline.run()
        return set(pipeline.hot_state()["player_id"].to_pylist())

    assert keys(None) == {f"old{i}" for i in range(10)} | {f"new{i}" for i in range(5)}
    assert keys("1h") == {f"new{i}" for i in range(5)}  # 2 h idle in event time: dropped
