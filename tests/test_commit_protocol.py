"""The commit protocol (engine.commit) crashed at each of its steps, then resumed.

Real Kafka in, the real S3 server's lake out, ``thermocline run`` in its own process: the crash
hook (``THERMOCLINE_CRASH_AT``) ends the process with ``os._exit`` right after a given step of a
checkpoint, as a power cut would (no cleanup, nothing flushed). A second run resumes (in this
test session's Ray: ``tests.kafka_helpers.run_here``; a restart needs no Ray of its own). Then
cold events, dead letters and warm outputs are each in the lake exactly once, the warm outputs
equal a recompute, the hot state equals an uninterrupted run's, the group's offsets are at the
end, and the four documented readers see committed rows only, never a file the crash left staged.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import s3fs
from deltalake import DeltaTable

from engine.commit import CRASH_ENV
from engine.delta import delta_storage_options
from engine.lake import scope
from engine.pipeline import Pipeline, RunSummary
from tests.kafka_helpers import (
    end_and_committed,
    expected,
    group_shares,
    hot_state_from_checkpoints,
    ids,
    lake_table,
    pipeline_config,
    produce,
    read_by_every_reader,
    run_here,
    wait_for,
    workload,
)
from tests.test_kafka import NOW, check_hot
from tests.test_pipeline import check_kpis

#: After each step of the second checkpoint that moved (the lake writer, flushing every 2,000
#: rows here, has flushed before it, so the run resumes from a position): hot snapshot pieces
#: written (data files staged, nothing prepared: they stay staged for good), prepare records
#: written (recovery finishes the checkpoint), the cold events committed but not the warm
#: outputs and alerts. After the pointers, before Kafka: tests/test_kafka.py's lost commit;
#: after Kafka's commit, a restart resumes from a finished checkpoint, as in its SIGKILL test.
STEPS = ["snapshot@2", "prepared@2", "committed:events@2"]


def staged_not_committed(fs: s3fs.S3FileSystem, lake: str, storage: dict, table: str) -> int:
    """Data files in a table's folder that its Delta log does not reference."""
    fs.invalidate_cache()
    root = f"{lake}/{table}".removeprefix("s3://")
    present = {p for p in fs.find(root) if p.endswith(".parquet") and "/_delta_log/" not in p}
    if not fs.exists(f"{root}/_delta_log"):
        return len(present)
    uri = f"{lake}/{table}"
    found = DeltaTable(uri, storage_options=delta_storage_options(lake, storage))
    committed = {u.removeprefix("s3://") for u in found.file_uris()}
    return len(present - committed)


@pytest.mark.parametrize("step", STEPS)
def test_a_crash_at_each_step_loses_and_doubles_nothing(
    step: str,
    request: pytest.FixtureRequest,
    kafka_bootstrap: str,
    topic: str,
    s3_lake: tuple[str, dict],
    cli_config: Callable[..., tuple[Path, str]],
    cli_runs: Callable[..., Any],
) -> None:
    lake, storage = s3_lake
    lines = workload(16_000, seed=21)
    produce(kafka_bootstrap, topic, lines)
    want, malformed = expected(lines)
    config, group = cli_config(idle_timeout="4s", max_records=1_000, cold={"flush_rows": 2_000})
    fs = s3fs.S3FileSystem(**storage)

    crashed = cli_runs(config, "crashed", env={CRASH_ENV: step})
    crashed.process.wait(timeout=180)
    log = crashed.log.read_text()
    assert crashed.process.returncode == 75, log[-3000:]
    assert f"crash hook: exiting after {step.split('@')[0]}" in log
    crashed.kill()  # its Ray, left running by a driver that died at once
    if step.startswith(("snapshot", "prepared")):  # that checkpoint's files: staged, unseen
        assert staged_not_committed(fs, lake, storage, "events") > 0

    # Where each partition resumes: after the lake writer's position in its last pointer (or
    # in the prepare record recovery finishes), from 0 without one.
    fs.invalidate_cache()
    state = f"{lake}/_state/kafka-test".removeprefix("s3://")
    finished = "PREPARED" if step.startswith(("prepared", "committed")) else "CURRENT"
    resume = sum(
        json.loads(fs.cat(path))["feeds"]["cold"] + 1
        for path in fs.glob(f"{state}/*/epoch-*/{finished}.json")  # one run: one epoch each
    )
    # The crash was a process's; the restart runs in this session's Ray (run_here).
    request.getfixturevalue("ray_local")
    resumed = run_here(config, storage)
    assert resumed["events_in"] == 16_000 - resume  # from the checkpoint, not from the start

    fs.invalidate_cache()
    cold = lake_table(fs, lake, "events")
    assert ids(cold) == ids(want["cold"])  # each cold event exactly once
    dead = lake_table(fs, lake, "_dead_letter")
    pairs = set(zip(dead["partition"].to_pylist(), dead["offset"].to_pylist(), strict=True))
    assert dead.num_rows == len(pairs) == malformed  # each dead letter once
    check_kpis(lake_table(fs, lake, "warm/minute_kpis"), want["warm"])  # equal a recompute
    check_hot(hot_state_from_checkpoints(fs, lake), want["hot"])  # as if never interrupted
    end, committed = end_and_committed(kafka_bootstrap, topic, group)
    assert committed == end

    if step.startswith("snapshot"):  # files the crash left staged are still there, unseen
        assert staged_not_committed(fs, lake, storage, "events") > 0
        seen = read_by_every_reader(lake, storage, "events")
        assert seen == {r: ids(want["cold"]) for r in ("deltalake", "duckdb", "polars", "ray")}


def test_a_member_paused_past_its_session_is_fenced_off(
    kafka_bootstrap: str,
    topic: str,
    s3_lake: tuple[str, dict],
    cli_config: Callable[..., tuple[Path, str]],
    cli_runs: Callable[..., Any],
) -> None:
    """Member A stalls (SIGSTOP) mid-stream with rows read but not committed; the group gives
    its partitions to B, which claims them, reads on and checkpoints; A comes back (SIGCONT) and
    its late checkpoint is fenced off: the lake, the positions and the state are as if A had
    never come back."""
    lake, storage = s3_lake
    lines = workload(30_000, seed=17)
    want, _ = expected(lines)
    config, group = cli_config(idle_timeout="120s", max_records=1_000)
    fs = s3fs.S3FileSystem(**storage)

    def committed_total() -> int:
        return sum(c or 0 for c in end_and_committed(kafka_bootstrap, topic, group)[1].values())

    a = cli_runs(config, "a")
    wait_for(lambda: group_shares(kafka_bootstrap, group) == [6], 180, "A owning all")
    produce(kafka_bootstrap, topic, lines[:15_000])
    wait_for(lambda: committed_total() >= 3_000, 120, "A checkpointing")
    a.pause()  # mid-stream: A holds rows it read and has not committed
    b = cli_runs(config, "b")
    # A misses its session timeout (6 s): B alone owns every partition, and claims them.
    wait_for(lambda: group_shares(kafka_bootstrap, group) == [6], 120, "B owning all")
    produce(kafka_bootstrap, topic, lines[15_000:])
    wait_for(lambda: committed_total() == 30_000, 180, "B done")
    a.resume()  # A's next checkpoint finds its partitions claimed by B
    wait_for(lambda: "was given to another member" in a.log.read_text(), 60, "A fenced off")
    wait_for(lambda: sorted(group_shares(kafka_bootstrap, group)) == [3, 3], 120, "A rejoined")
    for run in (a, b):
        run.terminate()
    for run in (a, b):
        run.result(timeout=240)
    fs.invalidate_cache()
    assert ids(lake_table(fs, lake, "events")) == ids(want["cold"])  # A's stale rows: none
    dead = lake_table(fs, lake, "_dead_letter")
    pairs = set(zip(dead["partition"].to_pylist(), dead["offset"].to_pylist(), strict=True))
    assert dead.num_rows == len(pairs)
    check_kpis(lake_table(fs, lake, "warm/minute_kpis"), want["warm"])
    end, committed = end_and_committed(kafka_bootstrap, topic, group)
    assert committed == end and sum(end.values()) == 30_000
    check_hot(hot_state_from_checkpoints(fs, lake), want["hot"])


@pytest.mark.usefixtures("ray_local")
def test_two_pipelines_share_one_lake_and_one_topic(
    kafka_bootstrap: str, topic: str, s3_lake: tuple[str, dict]
) -> None:
    """Pipelines ``a`` and ``b`` read the same topic (each in its own group) into one lake:
    each commits its own positions to the tables and keeps its own checkpoints; neither's rows,
    positions or state are touched by the other."""
    lake, storage = s3_lake
    lines = workload(10_000, seed=23)
    produce(kafka_bootstrap, topic, lines)
    want, malformed = expected(lines)

    def run(name: str) -> RunSummary:
        config = pipeline_config(name, kafka_bootstrap, topic, lake, storage)
        pipeline = Pipeline(config, clock=lambda: NOW)
        try:
            return pipeline.run()
        finally:
            pipeline.close()

    a, b = run("a"), run("b")
    assert a.cold == b.cold == want["cold"].num_rows
    fs = s3fs.S3FileSystem(**storage)
    events = lake_table(fs, lake, "events")
    per_id = Counter(events["event_id"].to_pylist())
    assert set(per_id) == set(ids(want["cold"])) and set(per_id.values()) == {2}  # once each
    end, _ = end_and_committed(kafka_bootstrap, topic, f"g-unused-{uuid.uuid4().hex[:6]}")
    table = DeltaTable(f"{lake}/events", storage_options=delta_storage_options(lake, storage))
    for name in ("a", "b"):
        positions = {i: table.transaction_version(scope(name, f"{topic}-{i}")) for i in end}
        assert positions == {i: n - 1 for i, n in end.items()}, name
        check_hot(hot_state_from_checkpoints(fs, lake, name), want["hot"])
    assert lake_table(fs, lake, "_dead_letter").num_rows == 2 * malformed


@pytest.mark.usefixtures("ray_local")
def test_checkpoints_do_not_cut_cold_files(
    kafka_bootstrap: str, topic: str, s3_lake: tuple[str, dict]
) -> None:
    """The lake writer stages files when its buffers fill or age, not because a checkpoint came:
    with triggers no run reaches, the many checkpoints of a run write no cold file, the last
    one (which flushes, as before a revocation) writes one per source partition and hour; every
    event once, and the offsets at the end."""
    lake, storage = s3_lake
    lines = workload(10_000, seed=29)
    produce(kafka_bootstrap, topic, lines)
    want, _ = expected(lines)
    config = pipeline_config(
        "quiet-lake", kafka_bootstrap, topic, lake, storage,
        source={"max_records": 500},
        cold={"flush_rows": 1_000_000, "flush_interval": "1h"},
        checkpoint_interval="200ms",
    )  # fmt: skip
    group = config.source.group
    pipeline = Pipeline(config, clock=lambda: NOW)
    try:
        summary = pipeline.run()
    finally:
        pipeline.close()
    assert summary.checkpoints >= 5
    fs = s3fs.S3FileSystem(**storage)
    events = lake_table(fs, lake, "events")
    assert ids(events) == ids(want["cold"])
    hours = {(row["dt"], row["hour"]) for row in events.select(["dt", "hour"]).to_pylist()}
    table = DeltaTable(f"{lake}/events", storage_options=delta_storage_options(lake, storage))
    assert len(table.file_uris()) <= 6 * len(hours)
    end, committed = end_and_committed(kafka_bootstrap, topic, group)
    assert committed == end
