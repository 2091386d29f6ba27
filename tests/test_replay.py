"""The replay job (jobs.replay, the kappa half) on a real lake archived by the real pipeline:
an unchanged policy reproduces the first run's outputs exactly; a changed one re-routes every
archived event as the router says; outputs never mix; a lake without an archive is named."""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from kafka import KafkaAdminClient
from kafka.admin import NewTopic

from engine.config import PipelineConfig, load_config
from engine.lake import EVENTS_DIR, Lake
from engine.pipeline import Pipeline
from engine.processors import merge_kpis
from engine.serving import ServingView
from engine.sources import SyntheticSource
from engine.sources.lake import LakeSource
from jobs.replay import main, replay_uri
from routers import Router, decode_ndjson, new_contract
from tests.kafka_helpers import arrival_ms, produce, run_here, workload

pytestmark = pytest.mark.usefixtures("ray_local")

START = datetime(2026, 11, 20, 0, 5, tzinfo=timezone.utc)
DAYS = ("2026-11-18", "2026-11-20")  # stale events reach two days back
POLICY: dict[str, Any] = {
    "schema": {"columns": {"level": "int64", "amount": "double"}},
    "default": "warm",
    "rules": [
        {"name": "money", "route": "hot", "when": {"field": "event_type", "in": ["purchase"]}},
        {"name": "live-starts", "route": "hot", "when": {"all": [
            {"field": "event_type", "eq": "session_start"}, {"age": {"lte": "30s"}}]}},
        {"name": "stale", "route": "cold", "when": {"age": {"gt": "1h"}}},
        {"name": "social", "route": "cold", "when": {"field": "event_type", "eq": "social"}},
    ],
}  # fmt: skip


def config(lake: str, policy: dict[str, Any] = POLICY, archive: str = "all") -> dict[str, Any]:
    return {
        "policy": policy,
        "hot": {"actors": 2, "key_groups": 32},
        # Size triggers only, as a test's runs must cut alike; the merged KPIs are compared.
        "warm": {"max_batch_rows": 3_000, "max_delay": "1h"},
        "cold": {"lake_uri": lake, "archive": archive, "flush_interval": "1h"},
        "progress_every_s": 0,
    }


def stream(events: int = 10_000) -> SyntheticSource:
    return SyntheticSource(
        events=events, players=600, seed=5, start_ms=int(START.timestamp() * 1000),
        block_rows=2_500, partitions=2, late_share=0.2, stale_share=0.2, drift=0.4,
        malformed_share=0.01, numeric_id_share=0.3, missing_share=0.2,
    )  # fmt: skip


def first_run(root: Path, archive: str = "all", events: int = 10_000) -> tuple[Path, Any]:
    """The real pipeline over a drifting, hostile synthetic stream in two source partitions;
    the config file it ran with, and its summary."""
    data = config(str(root / "lake"), archive=archive)
    # The clock is the wall clock; routing must not depend on it (it is days past the events).
    summary = Pipeline(PipelineConfig.from_dict(data), source=stream(events)).run()
    path = root / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, summary


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any], str]:
    code = main(list(args))
    out = capsys.readouterr()
    lines = out.out.strip().splitlines()
    return code, json.loads(lines[-1]) if lines else {}, out.err


def lake_rows(uri: str, table: str) -> pa.Table:
    return Lake(uri).read(table)


def comparable_state(uri: str) -> list[dict[str, Any]]:
    return lake_rows(uri, "state/player_features").sort_by("player_id").to_pylist()


def comparable_kpis(uri: str) -> list[dict[str, Any]]:
    merged = merge_kpis(lake_rows(uri, "warm/minute_kpis"))
    return merged.sort_by([("minute", "ascending"), ("event_type", "ascending"),
                           ("level", "ascending")]).to_pylist()  # fmt: skip


def events_by_id(uri: str) -> dict[str, dict[str, Any]]:
    rows = lake_rows(uri, EVENTS_DIR).drop_columns(["source_partition", "source_offset"])
    return {r["event_id"]: r for r in rows.to_pylist()}


@pytest.fixture(scope="module")
def archived(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    return first_run(tmp_path_factory.mktemp("first"))


def test_an_unchanged_policy_reproduces_the_first_runs_outputs(
    archived: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path, first = archived
    lake = str(path.parent / "lake")
    code, result, err = run(
        capsys, "--config", str(path), "--day", DAYS[0], "--until", DAYS[1], "--name", "same",
        "--block-rows", "1500",
    )  # fmt: skip
    assert code == 0, err
    output = replay_uri(lake, "same")
    assert result["output"] == output
    replayed = result["run"]
    # Every good event of the first run, routed as it was (the dead letters never reached the
    # lake: nothing to replay of them).
    assert replayed["events_in"] == first.events_in - first.dead_letter > 0
    assert (replayed["hot"], replayed["warm"], replayed["cold"]) == (
        first.hot, first.warm, first.cold
    )  # fmt: skip
    assert replayed["dead_letter"] == 0
    assert events_by_id(output) == events_by_id(lake)  # same rows, values, routes
    assert comparable_state(output) == comparable_state(lake)  # hot state, player by player
    # Warm results, minute by minute; means to within float rounding: the replay's micro-batches
    # are cut elsewhere (its blocks hold no dead letters), so partial sums add up in another order.
    got, want = comparable_kpis(output), comparable_kpis(lake)
    assert [{**r, "mean_engagement": None} for r in got] == [
        {**r, "mean_engagement": None} for r in want
    ]
    for mine, theirs in zip(got, want, strict=True):
        if theirs["mean_engagement"] is None:
            assert mine["mean_engagement"] is None
        else:
            assert mine["mean_engagement"] == pytest.approx(theirs["mean_engagement"], rel=1e-12)


def test_the_lake_source_gives_each_partitions_events_back_in_stream_order(
    archived: tuple[Path, Any],
) -> None:
    """The processors compared above happen not to depend on the order of a player's events;
    a user's may, so the order itself is checked: each source partition's good events, in the
    order the stream had them."""
    path, _ = archived
    source = LakeSource(Lake(str(path.parent / "lake")), DAYS[0], DAYS[1], block_rows=1_000)
    contract = new_contract(Router.from_dict(POLICY).policy.schema)
    want: dict[str, list[str]] = {}
    for block in stream().blocks():
        assert block is not None and block.data is not None
        good = decode_ndjson(block.data, contract=contract).good
        want.setdefault(block.partition, []).extend(good["event_id"].to_pylist())
    got: dict[str, list[str]] = {}
    offsets: dict[str, list[int]] = {}
    for block in source.blocks():
        assert block is not None and block.batch is not None
        got.setdefault(block.partition, []).extend(block.batch["event_id"].to_pylist())
        offsets.setdefault(block.partition, []).append(block.first_offset)
        assert "route" not in block.batch.schema.names  # the archive's own columns left out
    assert got == want and len(want) == 2
    assert offsets == {p: list(range(0, len(ids), 1_000)) for p, ids in want.items()}


def test_a_changed_policy_reroutes_every_archived_event_as_its_router_says(
    archived: tuple[Path, Any], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = archived
    lake = str(path.parent / "lake")
    changed = {**POLICY, "rules": [
        {"name": "social-live", "route": "hot", "when": {"field": "event_type", "eq": "social"}},
        *POLICY["rules"],
    ]}  # fmt: skip
    new = tmp_path / "new.yaml"
    new.write_text(yaml.safe_dump(config(lake, changed)))
    code, result, err = run(capsys, "--config", str(new), "--day", DAYS[0], "--until", DAYS[1])
    assert code == 0, err
    assert result["output"].startswith(f"{lake}/replays/v")  # the default name: version, days
    # What the new router makes of the archived events, each at its recorded arrival time.
    events = lake_rows(lake, EVENTS_DIR)
    batch = events.drop_columns(["route"]).combine_chunks().to_batches()[0]
    parts = Router.from_dict(changed).split(batch)
    want = {t: sorted(p["event_id"].to_pylist()) for t, p in parts.items()}
    got = lake_rows(result["output"], EVENTS_DIR)
    for temperature in ("hot", "warm", "cold"):
        mask = pc.equal(got["route"], temperature)
        assert sorted(got.filter(mask)["event_id"].to_pylist()) == want[temperature]
    social = pc.equal(got["event_type"], "social")
    assert set(got.filter(social)["route"].to_pylist()) == {"hot"}
    assert result["run"]["hot"] == len(want["hot"]) > 0
    # The first run's outputs are untouched.
    assert set(lake_rows(lake, EVENTS_DIR).filter(pc.equal(events["event_type"], "social"))[
        "route"].to_pylist()) == {"cold"}  # fmt: skip


def test_an_existing_output_is_refused_unless_replaced(
    archived: tuple[Path, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = archived
    lake = str(path.parent / "lake")
    args = ["--config", str(path), "--day", DAYS[0], "--name", "twice"]  # a day of few events
    assert run(capsys, *args)[0] == 0
    before = events_by_id(replay_uri(lake, "twice"))
    with pytest.raises(SystemExit) as refused:
        main(args)
    assert refused.value.code == 2 and "--replace" in capsys.readouterr().err
    code, result, _ = run(capsys, *args, "--replace")
    assert code == 0
    assert events_by_id(replay_uri(lake, "twice")) == before  # rebuilt, not appended to
    assert result["run"]["events_in"] == len(before)


def test_a_lake_without_an_archive_is_named_with_the_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = first_run(tmp_path, archive="cold", events=2_000)
    with pytest.raises(SystemExit) as refused:
        main(["--config", str(path), "--day", DAYS[1]])
    assert refused.value.code == 2
    assert "cold.archive: all" in capsys.readouterr().err


# -- a range of Kafka offsets ------------------------------------------------------------------


def test_a_kafka_range_replays_to_the_streaming_runs_outputs(
    kafka_bootstrap: str,
    topic: str,
    cli_config: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A streaming run over a topic, then its whole range replayed from the log: the same
    counts, the same cold events and the same hot state (the first run's from its checkpoints);
    and a replay from a time reads exactly the records stamped from then on."""
    lines = workload(6_000, seed=41)
    produce(kafka_bootstrap, topic, lines)
    path, _group = cli_config(idle_timeout="4s", max_records=2_000)
    data = yaml.safe_load(path.read_text())
    # The job's Ray workers (this test session's) started before the S3 credentials were set.
    data["cold"]["storage_options"].update(
        key=os.environ["AWS_ACCESS_KEY_ID"], secret=os.environ["AWS_SECRET_ACCESS_KEY"]
    )
    data["alerts_topic"] = f"{topic}-alerts"  # live consumers read it: a replay must not write
    data["hot"]["options"] = {"alert_purchases": 0}  # an alert per player-minute with purchases
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    admin.create_topics([NewTopic(data["alerts_topic"], num_partitions=1, replication_factor=1)])
    admin.close()
    path.write_text(yaml.safe_dump(data))
    config = load_config(path)
    # In this session's Ray, as the replays below (`thermocline run` in its own process, with
    # its own Ray, is what tests/test_kafka.py and tests/test_commit_protocol.py run).
    first = run_here(path, dict(config.cold.storage_options))
    alerts = count_records(kafka_bootstrap, data["alerts_topic"])
    assert first["alerts"] == alerts > 0
    lake = config.cold.lake_uri
    options = dict(config.cold.storage_options)

    code, result, err = run(capsys, "--config", str(path), "--kafka-from", "earliest",
                            "--name", "all")  # fmt: skip
    assert code == 0, err
    replayed = result["run"]
    assert sum(b - a for a, b in result["ranges"].values()) == len(lines)
    for count in ("events_in", "hot", "warm", "cold", "dead_letter"):
        assert replayed[count] == first[count], count
    output = Lake(replay_uri(lake, "all"), options)
    before = sorted(Lake(lake, options).read(EVENTS_DIR)["event_id"].to_pylist())
    assert sorted(output.read(EVENTS_DIR)["event_id"].to_pylist()) == before
    streamed, where = ServingView(config).speed()
    assert where["from"] == "checkpoints"
    state = output.read("state/player_features")
    assert state.sort_by("player_id").to_pylist() == streamed.sort_by("player_id").to_pylist()
    assert replayed["alerts"] == first["alerts"]  # the same alerts, into the replay's lake only
    assert output.read("hot/player_features").num_rows == first["alerts"]
    assert count_records(kafka_bootstrap, data["alerts_topic"]) == alerts  # none published

    middle = arrival_ms(lines[len(lines) // 2])
    since = datetime.fromtimestamp(middle / 1000, timezone.utc).isoformat()
    code, result, err = run(capsys, "--config", str(path), "--kafka-from", since, "--name", "half")
    assert code == 0, err
    # Kafka's rule (offsets_for_times): per partition, from the first record stamped at or after
    # the time on, including later records stamped earlier (lines without an id are stamped
    # at the start).
    want = 0
    for stamps in record_stamps(kafka_bootstrap, topic).values():
        first = next((i for i, stamp in enumerate(stamps) if stamp >= middle), len(stamps))
        want += len(stamps) - first
    assert want < len(lines)
    assert result["run"]["events_in"] == want


def count_records(bootstrap: str, topic: str) -> int:
    return sum(len(stamps) for stamps in record_stamps(bootstrap, topic).values())


def record_stamps(bootstrap: str, topic: str) -> dict[int, list[int]]:
    """Each partition's record timestamps, in offset order."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
    consumer.assign(parts)
    consumer.seek_to_beginning()
    ends = consumer.end_offsets(parts)
    found: dict[int, list[int]] = {tp.partition: [] for tp in parts}
    while any(consumer.position(tp) < ends[tp] for tp in parts):
        for tp, records in consumer.poll(timeout_ms=1_000).items():
            found[tp.partition] += [r.timestamp for r in records]
    consumer.close()
    return found
