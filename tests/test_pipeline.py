"""The pipeline end to end on a real local Ray: nothing lost, nothing duplicated, bounded."""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from engine.checkpoint import Checkpoints
from engine.config import PipelineConfig
from engine.lake import Lake, scope
from engine.pipeline import Pipeline
from engine.processors import merge_kpis
from engine.sources import FileSource, MemorySource, SyntheticSource
from routers import Router, concat_conformed, decode_ndjson, new_contract
from tests.test_processors import expected_features

pytestmark = pytest.mark.usefixtures("ray_local")

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
START_MS = int((NOW - timedelta(minutes=3)).timestamp() * 1000)
POLICY: dict[str, Any] = {
    "default": "warm",
    "rules": [
        {
            "name": "monetization",
            "route": "hot",
            "when": {"field": "event_type", "in": ["purchase", "refund"]},
        },
        {"name": "stale", "route": "cold", "when": {"age": {"gt": "1h"}}},
        {"name": "late", "route": "cold", "when": {"age": {"gt": "4m"}}},
        {"name": "starts", "route": "hot", "when": {"field": "event_type", "eq": "session_start"}},
        {"name": "social", "route": "cold", "when": {"field": "event_type", "eq": "social"}},
    ],
}


def make_config(lake: Path, **sections: dict[str, Any]) -> PipelineConfig:
    data: dict[str, Any] = {
        "policy": POLICY,
        "hot": {"actors": 2, "key_groups": 64},
        # Size triggers only (no time trigger in a test run), so reruns cut the same boundaries.
        "warm": {"max_batch_rows": 4_000, "max_delay": "1h"},
        "cold": {"lake_uri": str(lake), "flush_rows": 5_000, "flush_interval": "1h"},
        "progress_every_s": 0,
    }
    for name, values in sections.items():
        data[name] = {**data.get(name, {}), **values}
    return PipelineConfig.from_dict(data)


def synthetic(events: int = 24_000) -> SyntheticSource:
    return SyntheticSource(
        events=events, players=1_500, seed=7, start_ms=START_MS, block_rows=2_000,
        late_share=0.1, stale_share=0.05, malformed_share=0.01, iso_time_share=0.1,
    )  # fmt: skip


def expected_split(source: SyntheticSource) -> tuple[dict[str, pa.Table], list[bytes]]:
    """What each path should receive: the same blocks decoded and routed here, in the test."""
    router = Router.from_dict(POLICY)
    contract = new_contract(router.policy.schema)  # one per stream, as the pipeline keeps
    parts: dict[str, list[pa.RecordBatch]] = {"hot": [], "warm": [], "cold": []}
    dead: list[bytes] = []
    for block in source.blocks():
        assert block.data is not None
        decoded = decode_ndjson(block.data, contract=contract)
        dead += decoded.dead.column("raw").to_pylist()
        good = decoded.good
        for name, values in block.meta.items():  # the arrival time age rules measure from
            good = good.append_column(name, values.take(pa.array(decoded.good_lines)))
        for temperature, part in router.split(good, now=NOW).items():
            parts[temperature].append(part)
    tables = {t: concat_conformed(b).combine_chunks() for t, b in parts.items()}
    return tables, dead


def read(lake: Path, table: str) -> pa.Table:
    """A lake table's committed rows, as a Delta reader sees them."""
    return Lake(str(lake)).read(table)


def lake_ids(lake: Path) -> list[str]:
    return sorted(read(lake, "events").column("event_id").to_pylist())


def test_archive_all_puts_every_good_event_in_the_lake_once_with_its_route(
    tmp_path: Path,
) -> None:
    """cold.archive: all: the lake holds every good event (the batch jobs' master dataset),
    each once and with the temperature it was routed to; the paths get what they got before."""
    lake = tmp_path / "lake"
    expected, expected_dead = expected_split(synthetic(8_000))
    config = make_config(lake, cold={"archive": "all"})
    summary = Pipeline(config, source=synthetic(8_000), clock=lambda: NOW).run()
    assert (summary.hot, summary.warm, summary.cold) == tuple(
        expected[t].num_rows for t in ("hot", "warm", "cold")
    )
    rows = read(lake, "events").to_pylist()
    assert sorted((r["event_id"], r["route"]) for r in rows) == sorted(
        (i, t) for t in ("hot", "warm", "cold") for i in expected[t]["event_id"].to_pylist()
    )
    assert len(rows) == 8_000 - len(expected_dead)
    # Each row's place in the stream: its line's offset in its source partition.
    contract = new_contract(Router.from_dict(POLICY).policy.schema)
    offsets = {}
    for block in synthetic(8_000).blocks():
        assert block is not None and block.data is not None
        decoded = decode_ndjson(block.data, contract=contract)
        ids = decoded.good["event_id"].to_pylist()
        offsets |= {i: block.first_offset + n for i, n in zip(ids, decoded.good_lines, strict=True)}
    assert {r["event_id"]: (r["source_partition"], r["source_offset"]) for r in rows} == {
        i: ("0", n) for i, n in offsets.items()
    }
    check_warm(lake, expected["warm"])  # the warm path's outputs are unchanged


def test_an_events_own_route_field_does_not_collide_with_the_archives(tmp_path: Path) -> None:
    """A racing game's events carry "route" (and a client sends "Source_Offset"): archived, they
    keep their values as "route_event" and "Source_Offset_event" beside the archive's own
    columns, instead of a duplicate column stopping the lake writer on every restart."""
    t = int(NOW.timestamp() * 1000)
    lines = [
        {"event_id": "a", "player_id": "p1", "event_time": t, "event_type": "race_end",
         "route": "A12", "Source_Offset": 5},
        {"event_id": "b", "player_id": "p2", "event_time": t, "event_type": "purchase",
         "route": "B7"},
    ]  # fmt: skip
    path = tmp_path / "events.ndjson"
    path.write_bytes(b"".join(json.dumps(line).encode() + b"\n" for line in lines))
    config = make_config(tmp_path / "lake", cold={"archive": "all"})
    summary = Pipeline(config, source=FileSource(path), clock=lambda: NOW).run()
    assert (summary.events_in, summary.dead_letter) == (2, 0)
    rows = read(tmp_path / "lake", "events").sort_by("event_id").to_pylist()
    assert [(r["route"], r["route_event"], r["source_offset"]) for r in rows] == [
        ("warm", "A12", 0), ("hot", "B7", 1)
    ]  # fmt: skip
    assert rows[0]["Source_Offset_event"] == 5 and rows[1]["Source_Offset_event"] is None


def test_every_event_lands_once_and_outputs_equal_a_recompute(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    expected, expected_dead = expected_split(synthetic())
    pipeline = Pipeline(make_config(lake), source=synthetic(), clock=lambda: NOW)
    summary = pipeline.run()

    # Conservation: counts, and by id.
    assert summary.events_in == 24_000
    assert summary.hot + summary.warm + summary.cold + summary.dead_letter == 24_000
    assert (summary.hot, summary.warm, summary.cold) == tuple(
        expected[t].num_rows for t in ("hot", "warm", "cold")
    )
    assert summary.dead_letter == len(expected_dead) > 0
    assert lake_ids(lake) == sorted(expected["cold"].column("event_id").to_pylist())
    assert summary.done_positions == {"0": 23_999}

    # Dead letters keep their raw bytes, a reason and their source offset.
    dead = read(lake, "_dead_letter").to_pandas()
    assert sorted(dead["raw"]) == sorted(expected_dead)
    assert dead["reason"].str.match(r"^(invalid_json|missing_field:|bad_type:|bad_value:)").all()
    assert dead["offset"].between(0, 23_999).all()

    # Hot state equals a pandas recompute, for every key.
    hot = expected["hot"]
    hot_df = hot.set_column(
        hot.schema.get_field_index("event_time"),
        "event_time",
        pc.cast(hot["event_time"], pa.int64()),
    ).to_pandas()
    state = pipeline.hot_state().to_pandas().set_index("player_id").sort_index()
    want = expected_features(hot_df)
    assert state["events_total"].sum() == summary.hot
    pd.testing.assert_frame_equal(state[want.columns], want, check_dtype=False)

    # Warm KPIs equal a pandas recompute.
    check_warm(lake, expected["warm"])

    # Rerunning the same source range leaves the lake as it was: no duplicate, no loss (the
    # positions were committed with the rows; the rerun's files stay uncommitted, unseen).
    version = DeltaTable(str(lake / "events")).version()
    again = Pipeline(make_config(lake), source=synthetic(), clock=lambda: NOW).run()
    assert again.cold == summary.cold
    assert lake_ids(lake) == sorted(expected["cold"].column("event_id").to_pylist())
    assert DeltaTable(str(lake / "events")).version() == version
    check_warm(lake, expected["warm"])

    # As a user would read it: DuckDB over the Delta table's dataset.
    events = DeltaTable(str(lake / "events")).to_pyarrow_dataset()  # noqa: F841 - read by DuckDB
    ((count, distinct, hours),) = duckdb.sql(
        "select count(*), count(distinct event_id), count(distinct (dt, hour)) from events"
    ).fetchall()
    assert count == distinct == summary.cold
    assert hours > 1  # stale events spread over earlier hours


def check_warm(lake: Path, warm_rows: pa.Table) -> None:
    check_kpis(read(lake, "warm/minute_kpis"), warm_rows)


def check_kpis(kpis: pa.Table, warm_rows: pa.Table) -> None:
    """The warm path's minute KPIs (partial per micro-batch) merge to a pandas recompute."""
    merged = merge_kpis(kpis).to_pandas()
    df = warm_rows.to_pandas()
    df["minute"] = df["event_time"].dt.floor("min")
    want = (
        df.groupby(["minute", "event_type", "level"], dropna=False)
        .agg(events=("event_id", "size"), players=("player_id", "nunique"),
             mean_engagement=("engagement_score", "mean"))
        .reset_index()
    )  # fmt: skip
    merged["minute"] = merged["minute"].astype(want["minute"].dtype)
    assert merged["events"].sum() == warm_rows.num_rows
    pd.testing.assert_frame_equal(merged, want, check_dtype=False)


def test_slow_warm_processor_is_held_to_its_bounds(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    trace.mkdir()
    config = make_config(
        tmp_path / "lake",
        warm={"max_batch_rows": 1_500, "max_in_flight": 2, "processor": "tests.slow:SlowKpis",
              "options": {"trace_dir": str(trace), "seconds": 0.3}},
        hot={"max_in_flight": 2},
    )  # fmt: skip
    config = config.model_copy(update={"progress_every_s": 1e-9})
    seen: list[tuple[int, int, int]] = []
    summary = Pipeline(config, source=synthetic(12_000), clock=lambda: NOW).run(
        progress=lambda p: seen.append(
            (p.warm_buffered_rows, p.warm_tasks_in_flight, p.hot_calls_in_flight)
        )
    )
    runs = sorted(tuple(map(float, f.read_text().split())) for f in trace.iterdir())
    assert sum(int(r[2]) for r in runs) == summary.warm  # every warm row was processed once
    # Real concurrency, measured from the tasks' own start/end times.
    edges = sorted([(s, 1) for s, _, _ in runs] + [(e, -1) for _, e, _ in runs])
    assert max(np.cumsum([d for _, d in edges])) <= 2
    assert max(b for b, _, _ in seen) <= 1_500
    assert max(t for _, t, _ in seen) == 2  # the bound was reached, so it was what held
    assert max(h for _, _, h in seen) <= 2 * 2
    # Slow warm tasks held the driver back: the run took at least the serialized task time / 2.
    assert summary.elapsed_s >= 0.3 * len(runs) / 2 * 0.9


def test_hostile_partition_value_stays_inside_the_lake(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    events = tmp_path / "events.ndjson"
    hostile = ["../../etc", "..", "a/b\\c", "%2e%2e", "/abs"]
    t0 = int(NOW.timestamp() * 1000) - 2 * 3_600_000  # stale: routed cold
    lines = [
        json.dumps(
            {
                "event_id": f"h{i}",
                "player_id": "p",
                "event_time": t0,
                "event_type": "x",
                "region": r,
            }
        )
        for i, r in enumerate(hostile)
    ]
    events.write_text("\n".join(lines) + "\n")
    config = make_config(lake, cold={"partition_by": ["region"]})
    summary = Pipeline(config, source=FileSource(events), clock=lambda: NOW).run()
    assert summary.cold == len(hostile)
    root = lake.resolve()
    files = [p.resolve() for p in tmp_path.rglob("*") if p.is_file() and p != events.resolve()]
    assert files and all(root in f.parents for f in files)
    back = read(lake, "events")
    assert sorted(back.column("region").to_pylist()) == sorted(hostile)  # from the files


def test_parquet_file_source(tmp_path: Path) -> None:
    contract = new_contract(Router.from_dict(POLICY).policy.schema)
    blocks = [
        decode_ndjson(b.data, contract=contract).good for b in synthetic(6_000).blocks() if b.data
    ]
    folder = tmp_path / "in"
    folder.mkdir()
    pq.write_table(concat_conformed(blocks), folder / "events.parquet")
    summary = Pipeline(
        make_config(tmp_path / "lake"),
        source=FileSource(folder, block_rows=1_000),
        clock=lambda: NOW,
    ).run()
    total = sum(b.num_rows for b in blocks)
    assert summary.events_in == total == summary.hot + summary.warm + summary.cold
    (partition,) = summary.done_positions  # the file's path and version
    assert partition.startswith("events.parquet@")
    assert summary.done_positions[partition] == total - 1
    assert len(lake_ids(tmp_path / "lake")) == summary.cold
    assert os.path.isdir(tmp_path / "lake" / "warm" / "minute_kpis")


def test_a_path_ray_cannot_place_fails_in_time_naming_what_it_needs(
    ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # On a cluster, `hot.resources` names node types (cluster.yaml); a resource no node has used
    # to make the run wait forever. The local preflight refuses it before Ray starts; here the
    # pipeline meets such a Ray anyway (as on a cluster lacking those nodes).
    from engine import preflight
    from engine.preflight import PlacementError

    monkeypatch.setattr(preflight, "PLACEMENT_TIMEOUT_S", 3.0)
    config = PipelineConfig.from_dict(
        {"source": {"events": 100}, "hot": {"resources": {"hot_node": 1}},
         "cold": {"lake_uri": str(tmp_path / "lake")}}
    )  # fmt: skip
    started = time.monotonic()
    need = r"hot: not placed within 3 s; it needs \{'CPU': 0.25, 'hot_node': 1.0\}"
    with pytest.raises(PlacementError, match=need):
        Pipeline(config).run()
    assert time.monotonic() - started < 30


def test_the_end_of_run_state_joins_actors_that_got_no_keys(
    ray_local: None, tmp_path: Path
) -> None:
    events = tmp_path / "e.ndjson"
    line = '{"event_id":"e%d","player_id":"p1","event_time":1764000000000,"event_type":"x"}\n'
    events.write_text("".join(line % i for i in range(5)))
    config = PipelineConfig.from_dict(
        {"source": {"kind": "file", "path": str(events)}, "policy": {"default": "hot"},
         "hot": {"actors": 2, "processor": "tests.slow:CountsPerKey"},
         "cold": {"lake_uri": str(tmp_path / "lake")}}
    )  # fmt: skip
    pipeline = Pipeline(config)
    summary = pipeline.run()
    pipeline.close()
    assert summary.hot == 5
    state = read(tmp_path / "lake", "state/tests_slow_CountsPerKey")
    assert state.to_pylist() == [{"player_id": "p1", "events": 5}]


def test_micro_batches_cut_from_one_large_block_each_keep_their_output(tmp_path: Path) -> None:
    """A block holding several micro-batches' worth of warm rows is cut in pieces; every cut's
    output is kept (two cuts of one block used to get one file name, the second overwriting the
    first), and a rerun of the same range rewrites the same files."""
    lake = tmp_path / "lake"

    def source() -> SyntheticSource:
        return SyntheticSource(
            events=24_000, players=1_500, seed=7, start_ms=START_MS, block_rows=12_000,
            late_share=0.1, stale_share=0.05, malformed_share=0.01,
        )  # fmt: skip

    expected, _ = expected_split(source())
    config = make_config(lake, warm={"max_batch_rows": 1_000})
    summary = Pipeline(config, source=source(), clock=lambda: NOW).run()
    assert summary.warm == expected["warm"].num_rows > 4 * 1_000
    check_warm(lake, expected["warm"])
    files = DeltaTable(str(lake / "warm" / "minute_kpis")).file_uris()
    assert len(files) >= summary.warm // 1_000
    Pipeline(config, source=source(), clock=lambda: NOW).run()
    assert DeltaTable(str(lake / "warm" / "minute_kpis")).file_uris() == files
    check_warm(lake, expected["warm"])


def test_a_micro_batch_never_mixes_source_partitions(tmp_path: Path) -> None:
    """Recovery replays one source partition at a time, so each warm output file must hold rows
    of the one partition its name says (blocks of 3 partitions arrive interleaved here)."""
    lake = tmp_path / "lake"
    source = SyntheticSource(
        events=18_000, players=1_500, seed=3, start_ms=START_MS, block_rows=1_000, partitions=3,
        late_share=0, stale_share=0, malformed_share=0,
    )  # fmt: skip
    config = make_config(
        lake,
        policy={"default": "warm", "rules": []},
        warm={"max_batch_rows": 2_500, "processor": "tests.echo:EventIds"},
    )
    summary = Pipeline(config, source=source, clock=lambda: NOW).run()
    assert summary.warm == 18_000
    seen = []
    table = lake / "warm" / "minute_kpis"
    for uri in DeltaTable(str(table)).file_uris():
        path = Path(uri)
        ids = pq.read_table(path)["event_id"].to_pylist()
        # Block k (events 1000k .. 1000k+999) went to partition k % 3.
        partitions = {int(i[1:]) // 1_000 % 3 for i in ids}
        # Named "{pipeline}.{partition}-{first}-{last}-{row}.parquet".
        assert partitions == {int(path.name.split("-")[0].split(".")[1])}, path.name
        seen += ids
    assert sorted(seen) == sorted(f"e{i}" for i in range(18_000))  # each row once


def test_names_that_differ_by_dot_and_underscore_and_other_pipelines_stay_apart(
    tmp_path: Path,
) -> None:
    """Partitions of topics ``game.events`` and ``game_events`` (two clusters' worth: one Kafka
    cluster refuses such a pair) are named alike but for ``.`` and ``_``: their files used to
    share names, the second overwriting the first's cold events. A second pipeline, of another
    name, writing the same ranges into the same lake leaves the first one's files alone."""
    lake = tmp_path / "lake"
    blocks = [b for b in synthetic(6_000).blocks() if b is not None]
    both = [
        replace(b, partition=name) for name in ("game.events-0", "game_events-0") for b in blocks
    ]
    cold = {"default": "cold", "rules": []}

    def run(name: str) -> int:
        config = make_config(lake, policy=cold).model_copy(update={"name": name})
        return Pipeline(config, source=MemorySource(both), clock=lambda: NOW).run().cold

    def lake_rows() -> int:
        return read(lake, "events").num_rows

    a = run("a")
    assert a > 10_000 and lake_rows() == a  # both partitions' events, none overwritten
    assert run("b") == a and lake_rows() == 2 * a  # b's own files, beside a's
    assert run("a") == a and lake_rows() == 2 * a  # a rerun rewrites a's files only

    # Checkpoints: one pipeline's, of one partition, are nobody else's.
    store = Lake(str(lake))
    hot = pa.table({"player_id": ["p1"], "__partition": ["game.events-0"]})
    piece = Checkpoints(store, "a").write_snapshot("game.events-0", 99, hot)
    Checkpoints(store, "a").save({"game.events-0": 99}, {"game.events-0": [piece]})
    found = Checkpoints(store, "a").load("game.events-0")
    assert found is not None and found.position == 99
    assert Checkpoints(store, "a").load("game_events-0") is None
    assert Checkpoints(store, "b").load("game.events-0") is None
    # Positions, in the lake's tables, are per pipeline and partition, never shared.
    events = DeltaTable(str(lake / "events"))
    replay = MemorySource(both).replay_id
    partitions = ("game.events-0", "game_events-0")
    apps = [scope(f"{n}@{replay}", p) for n in "ab" for p in partitions]
    assert len(set(apps)) == 4 and all(events.transaction_version(app) == 5_999 for app in apps)
