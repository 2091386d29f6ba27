"""Real Kafka in, real S3 lake out: offsets, exactly-once lake, crash and resume, group takeover."""

from __future__ import annotations

import json
import os
import signal
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pandas as pd
import psutil
import pyarrow.compute as pc
import pytest
import ray
import s3fs
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from engine.config import PipelineConfig
from engine.pipeline import Pipeline, source_from_config
from routers import decode_ndjson
from tests.kafka_helpers import (
    POLICY,
    CliRun,
    current_pointers,
    end_and_committed,
    expected,
    group_shares,
    group_state,
    hot_state_from_checkpoints,
    ids,
    lake_table,
    produce,
    wait_for,
    workload,
)
from tests.test_processors import expected_features

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def expected_hot_state(hot) -> pd.DataFrame:
    df = hot.set_column(
        hot.schema.get_field_index("event_time"), "event_time", pc.cast(hot["event_time"], "int64")
    ).to_pandas()
    return expected_features(df)


def check_hot(state, hot) -> None:
    got = state.to_pandas().set_index("player_id").sort_index()
    want = expected_hot_state(hot)
    pd.testing.assert_frame_equal(got[want.columns], want, check_dtype=False)


@pytest.mark.usefixtures("ray_local")
def test_kafka_to_s3_lake(kafka_bootstrap: str, topic: str, s3_lake: tuple[str, dict]) -> None:
    lake, storage = s3_lake
    lines = workload(60_000, seed=11)
    produce(kafka_bootstrap, topic, lines)
    want, malformed = expected(lines)
    group = f"g-{uuid.uuid4().hex[:8]}"
    alerts_topic = f"{topic}-alerts"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(alerts_topic, num_partitions=1, replication_factor=1)])
    admin.close()
    config = PipelineConfig.from_dict(
        {
            "name": "kafka-test",
            "source": {
                "kind": "kafka",
                "bootstrap": kafka_bootstrap,
                "topics": [topic],
                "group": group,
                "start": "earliest",
                "idle_timeout": "3s",
                "max_records": 10_000,
            },
            "policy": POLICY,
            "hot": {"actors": 2, "key_groups": 64},
            "cold": {"lake_uri": lake, "storage_options": storage, "flush_rows": 30_000},
            "checkpoint_interval": "1s",
            "alerts_topic": alerts_topic,
            "progress_every_s": 0,
        }
    )
    pipeline = Pipeline(config, clock=lambda: NOW)
    summary = pipeline.run()

    assert summary.events_in == 60_000
    assert summary.dead_letter == malformed > 400  # 1% malformed
    assert summary.checkpoints >= 2
    fs = s3fs.S3FileSystem(**storage)
    cold = lake_table(fs, lake, "events")
    assert ids(cold) == ids(want["cold"])  # every cold event exactly once
    assert set(cold.column_names) >= {"kafka_partition", "kafka_offset", "kafka_key", "dt", "hour"}
    dead = lake_table(fs, lake, "_dead_letter")
    assert dead.num_rows == malformed
    raws = dead["raw"].to_pylist()
    dead_lines = set(raws)
    assert sorted(raws) == sorted(line for line in lines if line in dead_lines)
    pairs = set(zip(dead["partition"].to_pylist(), dead["offset"].to_pylist(), strict=True))
    assert len(pairs) == malformed  # each with its own topic-partition and offset
    end, committed = end_and_committed(kafka_bootstrap, topic, group)
    assert committed == end and sum(end.values()) == 60_000
    check_hot(pipeline.hot_state(), want["hot"])
    # Each hot actor wrote its own snapshot pieces (2 actors: at most 2 per partition), and the
    # checkpoints equal the live state; the summary says what the last one cost.
    pointers = current_pointers(fs, f"{lake.removeprefix('s3://')}/_state", "kafka-test")
    assert len(pointers) == 6
    assert all(1 <= len(json.loads(fs.cat(p))["hot"]) <= 2 for p in pointers)
    check_hot(hot_state_from_checkpoints(fs, lake), want["hot"])
    assert summary.checkpoint["snapshot_rows"] > 0 and summary.checkpoint["max_ms"] > 0

    # Hot alerts went to Kafka too, each confirmed before the offsets were committed.
    lake_alerts = lake_table(fs, lake, "hot/player_features")
    assert summary.alerts == lake_alerts.num_rows > 0
    consumer = KafkaConsumer(
        alerts_topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=3_000,
    )
    produced = [json.loads(m.value) for m in consumer]
    consumer.close()
    assert sorted((a["player_id"], a["purchases"]) for a in produced) == sorted(
        zip(lake_alerts["player_id"].to_pylist(), lake_alerts["purchases"].to_pylist(), strict=True)
    )

    # Read back as users would: Ray Data and DuckDB, straight from the S3 server.
    dataset = ray.data.read_parquet(lake + "/events", filesystem=fs)
    assert dataset.count() == want["cold"].num_rows
    con = duckdb.connect()
    con.register_filesystem(fs)
    ((rows, distinct),) = con.sql(
        "select count(*), count(distinct event_id) "
        f"from read_parquet('{lake}/events/**/*.parquet', hive_partitioning=true)"
    ).fetchall()
    assert rows == distinct == want["cold"].num_rows


@pytest.mark.usefixtures("ray_local")
def test_a_commit_lost_in_a_crash_is_made_on_resume(
    kafka_bootstrap: str, topic: str, s3_lake: tuple[str, dict]
) -> None:
    """A crash after a checkpoint is saved but before its offsets are committed: the next run
    resumes from the checkpoint (reading nothing again) and commits those offsets itself.

    A SIGKILL cannot be timed to land between the two steps, so the first run uses the real
    source with its ``commit`` turned into a no-op: exactly what such a crash leaves behind.
    """
    lake, storage = s3_lake
    lines = workload(20_000, seed=14)
    produce(kafka_bootstrap, topic, lines)
    want, _ = expected(lines)
    group = f"g-{uuid.uuid4().hex[:8]}"
    config = PipelineConfig.from_dict(
        {
            "name": "kafka-test",
            "source": {
                "kind": "kafka",
                "bootstrap": kafka_bootstrap,
                "topics": [topic],
                "group": group,
                "start": "earliest",
                "idle_timeout": "5s",  # covers the first fetch on a loaded machine
            },
            "policy": POLICY,
            "hot": {"actors": 2, "key_groups": 64},
            "cold": {"lake_uri": lake, "storage_options": storage},
            "progress_every_s": 0,
        }
    )
    crashed = source_from_config(config)
    crashed.commit = lambda positions: None  # type: ignore[method-assign]
    assert Pipeline(config, source=crashed, clock=lambda: NOW).run().events_in == 20_000
    _, committed = end_and_committed(kafka_bootstrap, topic, group)
    assert set(committed.values()) == {None}  # the crash: nothing committed

    resumed = Pipeline(config, clock=lambda: NOW)
    assert resumed.run().events_in == 0  # resumed from the checkpoints: nothing read again
    end, committed = end_and_committed(kafka_bootstrap, topic, group)
    assert committed == end and sum(end.values()) == 20_000
    fs = s3fs.S3FileSystem(**storage)
    assert ids(lake_table(fs, lake, "events")) == ids(want["cold"])
    check_hot(resumed.hot_state(), want["hot"])  # restored from the checkpoints


def checkpoints(fs: s3fs.S3FileSystem, state: str) -> int:
    fs.invalidate_cache()  # s3fs caches listings; the pipeline writes from other processes
    return len(current_pointers(fs, state))


def test_sigkill_mid_stream_then_resume(
    kafka_bootstrap: str,
    topic: str,
    s3_lake: tuple[str, dict],
    cli_config: Callable[..., tuple[Path, str]],
    cli_runs: Callable[[Path, str], CliRun],
) -> None:
    lake, storage = s3_lake
    lines = workload(60_000, seed=12)
    produce(kafka_bootstrap, topic, lines)
    want, _ = expected(lines)
    config, group = cli_config(idle_timeout="4s", max_records=1_000)
    fs = s3fs.S3FileSystem(**storage)
    state = f"{lake}/_state".removeprefix("s3://")

    first = cli_runs(config, "first")
    wait_for(lambda: checkpoints(fs, state) >= 3, 120, "a first checkpoint")
    first.kill()  # SIGKILL, mid-stream
    _, committed = end_and_committed(kafka_bootstrap, topic, group)
    done_before = sum(c or 0 for c in committed.values())
    assert 0 < done_before < 60_000, "the crash must land mid-stream"

    second = cli_runs(config, "second").result(timeout=240)
    assert 0 < second["events_in"] <= 60_000 - done_before + 20_000  # resumed, not from scratch
    fs.invalidate_cache()
    assert ids(lake_table(fs, lake, "events")) == ids(want["cold"])  # exactly once after the crash
    end, committed = end_and_committed(kafka_bootstrap, topic, group)
    assert committed == end
    check_hot(hot_state_from_checkpoints(fs, lake), want["hot"])  # as if never interrupted


def test_the_reader_leaves_the_group_when_its_driver_dies(
    kafka_bootstrap: str,
    topic: str,
    cli_config: Callable[..., tuple[Path, str]],
    cli_runs: Callable[[Path, str], CliRun],
) -> None:
    """Only the driver is SIGKILLed, not its children: its Kafka reader process notices, leaves
    the group and exits, instead of living on as a member that holds partitions nobody reads."""
    produce(kafka_bootstrap, topic, workload(5_000, seed=15))
    config, group = cli_config(idle_timeout="300s")
    run = cli_runs(config, "run")
    wait_for(lambda: group_shares(kafka_bootstrap, group) == [6], 120, "one member, 6 partitions")
    driver = psutil.Process(run.process.pid)
    readers = [p for p in driver.children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(readers) == 1
    os.kill(driver.pid, signal.SIGKILL)
    _, alive = psutil.wait_procs(readers, timeout=15)
    assert not alive, "the reader outlived its driver"
    wait_for(lambda: group_state(kafka_bootstrap, group) == ("Empty", 0), 15, "an empty group")


def test_two_processes_share_then_take_over(
    kafka_bootstrap: str,
    topic: str,
    s3_lake: tuple[str, dict],
    cli_config: Callable[..., tuple[Path, str]],
    cli_runs: Callable[[Path, str], CliRun],
) -> None:
    lake, storage = s3_lake
    lines = workload(60_000, seed=13)
    want, _ = expected(lines)
    config, group = cli_config(idle_timeout="120s", max_records=2_000)
    fs = s3fs.S3FileSystem(**storage)
    state = f"{lake}/_state".removeprefix("s3://")
    a = cli_runs(config, "a")
    b = cli_runs(config, "b")

    def stable_pair() -> bool:
        return group_shares(kafka_bootstrap, group) == [3, 3]

    def committed_total() -> int:
        return sum(c or 0 for c in end_and_committed(kafka_bootstrap, topic, group)[1].values())

    wait_for(stable_pair, 180, "two members with three partitions each")
    produce(kafka_bootstrap, topic, lines[:30_000])  # both members process their share
    wait_for(lambda: committed_total() == 30_000, 120, "first half done")
    wait_for(lambda: checkpoints(fs, state) == 6, 60, "checkpoints of all partitions")
    assert stable_pair()  # A is a settled member owning partitions when it dies
    a.kill()
    produce(kafka_bootstrap, topic, lines[30_000:])  # A's partitions get events only B can read
    # Everything committed: B has taken over A's partitions and caught up (only B can commit).
    wait_for(lambda: committed_total() == 60_000, 180, "B catching up")
    b.terminate()
    summary = b.result(timeout=240)
    assert len(summary["done_positions"]) == 6  # B ended up with every partition
    fs.invalidate_cache()
    assert ids(lake_table(fs, lake, "events")) == ids(want["cold"])
    end, committed = end_and_committed(kafka_bootstrap, topic, group)
    assert committed == end and sum(end.values()) == 60_000
    check_hot(hot_state_from_checkpoints(fs, lake), want["hot"])


def test_start_positions(kafka_bootstrap: str, topic: str) -> None:
    """earliest, latest, committed and a timestamp, on a real broker (no pipeline needed)."""
    from engine.sources.kafka import KafkaSource

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    # An hour ago: a record older than the broker's retention can be deleted in the middle of
    # the test (its log start offset jumped to the last record once, in a long full run).
    base = int(time.time() * 1000) - 3_600_000
    for i in range(12):  # partition 0 only, timestamps one second apart
        producer.send(topic, value=b'{"n":%d}' % i, partition=0, timestamp_ms=base + 1_000 * i)
    producer.flush()

    # Each read stops at the count it expects, so the idle timeout is only a bound for a read
    # that goes wrong: joining the group and the first fetch took over 9 s in full CI runs on a
    # loaded 2-core machine, and a short idle timeout then saw nothing.
    def offsets(start, group: str, expect: int) -> list[int]:
        source = KafkaSource(
            kafka_bootstrap, [topic], group, start=start, idle_timeout_s=60.0, max_events=expect
        )
        try:
            return [o for b in source.blocks() if b for o in b.meta["kafka_offset"].to_pylist()]
        finally:
            source.close()  # leave the group

    assert offsets("earliest", "g-early", 12) == list(range(12))
    # A timestamp start looks its offsets up (offsets_for_times); a wrong start would show as
    # other offsets first (too early) or nothing within the bound (too late).
    assert offsets(base + 8_000, "g-time", 4) == [8, 9, 10, 11]
    # "latest" starts at the end: a record produced once the group owns the partition is the
    # first one read, and nothing before it.
    late = KafkaSource(kafka_bootstrap, [topic], "g-late", start="latest", idle_timeout_s=60.0)

    def produce_once_owned(positions: dict[str, int]) -> dict[str, int]:
        producer.send(topic, value=b'{"n":12}', partition=0).get(timeout=30)
        return positions  # where "latest" put each partition, before this record

    late.on_assign = produce_once_owned
    try:
        seen_late = next(b for b in late.blocks() if b).meta["kafka_offset"].to_pylist()
    finally:
        late.close()
    assert seen_late == [12]
    source = KafkaSource(
        kafka_bootstrap, [topic], "g-commit", start="committed", idle_timeout_s=60.0
    )
    seen = []
    for block in source.blocks():
        if block is None:
            continue
        seen += block.meta["kafka_offset"].to_pylist()
        source.commit({block.partition: 4})  # done through offset 4
        source.stop()
    source.close()
    assert seen[0] == 0
    assert offsets("committed", "g-commit", 8) == list(range(5, 13))


@pytest.mark.timeout(90)
def test_a_dead_reader_fails_the_source_loudly(kafka_bootstrap: str, topic: str) -> None:
    """The reader process dies (the OOM killer, say) halfway through sending a block: blocks()
    raises at once instead of waiting forever for the rest of the block."""
    from engine.sources.kafka import KafkaSource

    produce(kafka_bootstrap, topic, workload(20_000, seed=16))
    # ~0.5-1 MB blocks and one slot: the reader is blocked mid-block on the 64 KB pipe.
    source = KafkaSource(
        kafka_bootstrap, [topic], f"g-{uuid.uuid4().hex[:8]}", start="earliest",
        max_records=5_000, prefetch=1, idle_timeout_s=60,
    )  # fmt: skip
    blocks = source.blocks()
    assert next(b for b in blocks if b is not None).events > 0
    time.sleep(0.5)  # the next block is on its way
    os.kill(source._process.pid, signal.SIGKILL)
    with pytest.raises(RuntimeError, match="reader process exited unexpectedly"):
        for _ in blocks:
            pass
    source.close()


def test_block_keeps_one_line_per_record() -> None:
    """Odd record values never shift lines against offsets (no broker needed: plain records)."""
    from types import SimpleNamespace

    from kafka import TopicPartition

    from engine.sources.kafka import records_block

    good = b'{"event_id":"e","player_id":"p","event_time":1764000000000,"event_type":"x"}'
    values = [good, b"", None, b"  ", b'{"a":\n1}', good]
    records = [
        SimpleNamespace(value=v, offset=10 + i, timestamp=0, key=None) for i, v in enumerate(values)
    ]
    block = records_block(TopicPartition("t", 0), records)
    assert block.data is not None
    # Not events (empty, tombstone, blank): a placeholder line, their exact bytes kept apart.
    assert block.data.split(b"\n") == [good, b"\x00", b"\x00", b"\x00", b'{"a": 1}', good]
    assert block.raw_lines == {1: b"", 2: b"", 3: b"  ", 4: b'{"a":\n1}'}
    decoded = decode_ndjson(block.data, raw_lines=block.raw_lines)
    assert decoded.dead["raw"].to_pylist() == [b"", b"", b"  ", b'{"a":\n1}']
    assert decoded.lines == len(records)
    assert [block.meta["kafka_offset"][i].as_py() for i in decoded.dead["line"].to_pylist()] == [
        11,
        12,
        13,
        14,
    ]
