"""Helpers for the Kafka tests: produce the workload, compute what should come out, run the CLI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from engine.lake import Lake
from engine.processors import PlayerFeatures
from engine.sources import SyntheticSource
from routers import EventSchema, Router, decode_ndjson

ROOT = Path(__file__).resolve().parents[1]
# Age rules included: they measure event time against arrival (the record timestamp), so a
# restarted pipeline routes every event as an uninterrupted one.
POLICY: dict[str, Any] = {
    "default": "warm",
    "schema": {"columns": {"partner_id": "string", "amount": "double", "level": "int64"}},
    "rules": [
        {
            "name": "monetization",
            "route": "hot",
            "when": {"field": "event_type", "in": ["purchase", "refund"]},
        },
        {"name": "stale", "route": "cold", "when": {"age": {"gt": "1h"}}},
        {"name": "late", "route": "cold", "when": {"age": {"gt": "2m"}}},
        {"name": "starts", "route": "hot", "when": {"field": "event_type", "eq": "session_start"}},
        {"name": "social", "route": "cold", "when": {"field": "event_type", "eq": "social"}},
        {"name": "test-traffic", "route": "cold", "when": {"field": "region", "matches": "^test-"}},
    ],
}
# Record timestamps must be recent: the broker deletes records older than its retention (7 days)
# by their timestamps. The hour this session started, so every test of it agrees.
START_MS = int(time.time() * 1000) // 3_600_000 * 3_600_000
_EVENT_ID = re.compile(rb'"event_id":"e(\d+)"')
_PLAYER = re.compile(rb'"player_id":"?([^",}]+)')  # string or integer ids


def workload(events: int, seed: int) -> list[bytes]:
    source = SyntheticSource(
        events=events,
        players=3_000,
        seed=seed,
        block_rows=10_000,
        start_ms=START_MS,
        malformed_share=0.01,
    )
    return [line for b in source.blocks() for line in (b.data or b"").splitlines()]


def produce(bootstrap: str, topic: str, lines: list[bytes]) -> None:
    """Produce lines keyed by player (as a real producer of player events would)."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, linger_ms=10, batch_size=1 << 20, acks="all"
    )
    for line in lines:
        found = _PLAYER.search(line)
        key = found.group(1) if found else None
        producer.send(topic, value=line, key=key, timestamp_ms=arrival_ms(line))
    producer.flush()
    producer.close()


def arrival_ms(line: bytes) -> int:
    """When the synthetic client sent this event (its record timestamp): event i at
    ``START_MS + floor(i * 0.02)`` (engine.sources.synthetic); lines without an id: the start."""
    found = _EVENT_ID.search(line)
    return START_MS + (int(int(found.group(1)) * 0.02) if found else 0)


def expected(lines: list[bytes]) -> tuple[dict[str, pa.Table], int]:
    router = Router.from_dict(POLICY)
    decoded = decode_ndjson(b"\n".join(lines), router.policy.schema)
    arrival = [arrival_ms(lines[i]) for i in decoded.good_lines.tolist()]
    good = decoded.good.append_column(
        "arrival_time", pa.array(arrival, pa.int64()).cast(pa.timestamp("ms", "UTC"))
    )
    # A far-off clock: routing must come from the arrival times alone.
    parts = router.split(good, now=datetime(2000, 1, 1, tzinfo=timezone.utc))
    return {t: pa.Table.from_batches([b]) for t, b in parts.items()}, decoded.dead.num_rows


def end_and_committed(
    bootstrap: str, topic: str, group: str
) -> tuple[dict[int, int], dict[int, int | None]]:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)
    partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    end = {tp.partition: off for tp, off in consumer.end_offsets(partitions).items()}
    committed = {tp.partition: consumer.committed(tp) for tp in partitions}
    consumer.close()
    return end, committed


def _describe_group(bootstrap: str, group: str) -> Any:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        (info,) = admin.describe_consumer_groups([group])
    finally:
        admin.close()
    return info


def group_shares(bootstrap: str, group: str) -> list[int]:
    """Partitions owned by each member of a stable group (empty while it is rebalancing)."""
    try:
        info = _describe_group(bootstrap, group)
    except KafkaError:  # e.g. no coordinator for a group nobody has joined yet
        return []
    if info.state != "Stable":
        return []
    return sorted(
        sum(
            len(parts)
            for _, parts in (m.member_assignment.assignment if m.member_assignment else [])
        )
        for m in info.members
    )


def group_state(bootstrap: str, group: str) -> tuple[str, int]:
    """The group's state (``Stable``, ``Empty``, ...) and how many members it has."""
    info = _describe_group(bootstrap, group)
    return info.state, len(info.members)


def lake_table(fs: Any, lake: str, directory: str) -> pa.Table:
    """A lake table's committed rows, read as a Delta reader does (uncommitted files unseen)."""
    return Lake(lake, fs.storage_options).read(directory)


def current_pointers(fs: Any, state: str, pipeline: str = "*") -> list[str]:
    """Each partition's pointer in its current owner's epoch folder
    (``_state/{pipeline}/{partition}/epoch-{E}/CURRENT.json``, E from ``OWNER.json``)."""
    found = []
    for owner in fs.glob(f"{state}/{pipeline}/*/OWNER.json"):
        folder = owner.rsplit("/", 1)[0]
        pointer = f"{folder}/epoch-{json.loads(fs.cat(owner))['epoch']}/CURRENT.json"
        if fs.exists(pointer):
            found.append(pointer)
    return found


def hot_state_from_checkpoints(fs: Any, lake: str, pipeline: str = "*") -> pa.Table:
    """Rebuild the hot state from the last checkpoint of every partition (of one pipeline, or
    of every one), as a restore would."""
    processor = PlayerFeatures(EventSchema())
    root = f"{lake}/_state".removeprefix("s3://")
    fs.invalidate_cache()
    for pointer in current_pointers(fs, root, pipeline):
        for piece in json.loads(fs.cat(pointer))["hot"]:  # one per hot actor holding keys
            rows = pq.read_table(f"{lake.removeprefix('s3://')}/{piece}", filesystem=fs)
            processor.restore(rows.drop_columns(["__partition"]))
    return processor.state()


def write_config(folder: Path, **source: Any) -> Path:
    import yaml

    config = {
        "name": "kafka-test",
        "source": {"kind": "kafka", "start": "earliest", **source},
        "policy": POLICY,
        "hot": {"actors": 2, "key_groups": 64},
        "warm": {"max_batch_rows": 20_000, "max_delay": "1s"},
        "cold": {
            "lake_uri": source.pop("lake"),
            "flush_rows": 20_000,
            "flush_interval": "1s",
            "storage_options": {"client_kwargs": {"endpoint_url": source.pop("endpoint")}},
        },
        "checkpoint_interval": "500ms",
        "progress_every_s": 2,  # a timeline in the logs
    }
    # A killed member's partitions move on after 6 s (the broker's minimum) instead of 45 s.
    # A member that dies mid-rebalance holds the group for max_poll_interval (300 s by default).
    consumer = {
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 1_000,
        "max_poll_interval_ms": 30_000,
    }
    consumer.update(source.pop("consumer", {}))
    config["cold"].update(source.pop("cold", {}))  # type: ignore[attr-defined]
    config["source"] = {"kind": "kafka", "start": "earliest", "consumer": consumer, **source}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_here(config: Path, storage: dict[str, Any]) -> dict[str, Any]:
    """What ``thermocline run --config config --json`` prints, run in this test session's Ray
    (the ``ray_local`` fixture): a restart that needs no Ray of its own to resume from the
    checkpoints a crashed ``CliRun`` left. ``storage``: the lake's options with credentials
    (the session's Ray workers may have started before the S3 fixture set them in the
    environment, where the CLI's own Ray finds them)."""
    from engine.config import load_config
    from engine.pipeline import Pipeline

    loaded = load_config(config)
    cold = loaded.cold.model_copy(update={"storage_options": storage})
    pipeline = Pipeline(loaded.model_copy(update={"cold": cold}))
    try:
        summary = pipeline.run()
    finally:
        pipeline.close()
    # As the CLI, which exits 1 when the paths do not account for every event read.
    assert summary.hot + summary.warm + summary.cold + summary.dead_letter == summary.events_in
    return summary.to_json()


class CliRun:
    """``thermocline run`` in its own process (and its own local Ray), killable by pid."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.tmp = tempfile.mkdtemp(prefix="tc-", dir="/tmp")  # short: Ray's socket paths
        env = {
            **os.environ,
            "TMPDIR": self.tmp,
            "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
            **(env or {}),
        }
        self.log = log
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "engine.cli",
                "run",
                "--config",
                str(config),
                "--num-cpus",
                "2",
                "--json",
            ],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=log.open("wb"),
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL the driver and every process it started (its Ray), by pid."""
        self.signal_all(signal.SIGKILL)
        self.process.wait(30)

    def pause(self) -> None:
        """SIGSTOP the driver and every process it started: a member that stalls (a long GC, a
        frozen VM) and misses the group's session timeout."""
        self.signal_all(signal.SIGSTOP)

    def resume(self) -> None:
        self.signal_all(signal.SIGCONT)

    def signal_all(self, signum: int) -> None:
        """Send ``signum`` to the driver and every process it started (its Ray), by pid."""
        procs: list[psutil.Process] = []
        try:
            driver = psutil.Process(self.process.pid)
            procs = [driver, *driver.children(recursive=True)]
        except psutil.NoSuchProcess:
            pass  # already gone; its Ray may not be
        procs += [  # its Ray (socket paths under our TMPDIR), and anything orphaned with our env
            p
            for p in psutil.process_iter(["cmdline", "environ"])
            if self.tmp in " ".join(p.info["cmdline"] or [])
            or (p.info["environ"] or {}).get("TMPDIR") == self.tmp
        ]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError, psutil.NoSuchProcess):
                os.kill(proc.pid, signum)

    def terminate(self) -> None:
        """Ask for a graceful stop (SIGTERM): finish, checkpoint, print the summary."""
        os.kill(self.process.pid, signal.SIGTERM)

    def result(self, timeout: float) -> dict[str, Any]:
        try:
            out, _ = self.process.communicate(timeout=timeout)
        finally:
            self.kill()  # whatever Ray left behind
        assert self.process.returncode == 0, self.log.read_text()[-4000:]
        return json.loads(out.decode().strip().splitlines()[-1])


def wait_for(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.2)


def ids(table: pa.Table) -> list[str]:
    return sorted(table.column("event_id").to_pylist()) if table.num_rows else []


def count(values: pa.ChunkedArray) -> int:
    return int(pc.count(values).as_py())


def read_by_every_reader(lake: str, storage: dict[str, Any], table: str) -> dict[str, list[str]]:
    """``event_id`` of a lake table as each documented reader sees it (README, "Reading the
    lake"): deltalake's dataset, DuckDB over that dataset, Polars ``scan_delta``, Ray Data
    ``read_delta`` (in the Ray already running: the caller's ``ray_local``). Each must see the
    committed rows only, never a staged file."""
    import duckdb
    import polars as pl
    import ray
    from deltalake import DeltaTable

    from engine.delta import delta_storage_options

    uri = f"{lake}/{table}"
    options = delta_storage_options(lake, storage)
    dataset = DeltaTable(uri, storage_options=options).to_pyarrow_dataset()
    seen = {"deltalake": dataset.to_table(columns=["event_id"])["event_id"].to_pylist()}
    seen["duckdb"] = [r[0] for r in duckdb.sql("select event_id from dataset").fetchall()]
    seen["polars"] = (
        pl.scan_delta(uri, storage_options=options).select("event_id").collect()["event_id"]
    ).to_list()
    ray_data = ray.data.read_delta(uri, storage_options=options, columns=["event_id"])
    seen["ray"] = [row["event_id"] for row in ray_data.iter_rows()]
    return {reader: sorted(ids) for reader, ids in seen.items()}


def pipeline_config(
    name: str, bootstrap: str, topic: str, lake: str, storage: dict[str, Any], **sections: Any
) -> Any:
    """An in-process pipeline's config reading ``topic`` (from the start, a new group, ending
    after 3 quiet seconds) into ``lake``; ``sections`` override or extend each section."""
    from engine.config import PipelineConfig

    data: dict[str, Any] = {
        "name": name,
        "source": {
            "kind": "kafka",
            "bootstrap": bootstrap,
            "topics": [topic],
            "group": f"g-{name}-{os.urandom(3).hex()}",
            "start": "earliest",
            "idle_timeout": "3s",
            "max_records": 5_000,
        },
        "policy": POLICY,
        "hot": {"actors": 2, "key_groups": 64},
        "cold": {"lake_uri": lake, "storage_options": storage},
        "checkpoint_interval": "1s",
        "progress_every_s": 0,
    }
    for section, values in sections.items():
        data[section] = {**data[section], **values} if isinstance(values, dict) else values
    return PipelineConfig.from_dict(data)
