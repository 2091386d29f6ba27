"""Kafka ingest: the full pipeline vs a bare kafka-python consumer that only polls and decodes.

One JSON record (also ``results/kafka_ingest.json``). Uses ``KAFKA_BOOTSTRAP`` if set, else starts
a broker (``scripts.services``, jars from ``make kafka-jars``). One topic is filled with
``--events`` synthetic events; both readers stop after reading all of them, in ``--rounds``
alternating rounds (the machine's drift hits both alike). The ratio is the median of the
per-round paired ratios; rates are medians over the rounds, from
each reader's first block on; the whole-run figures (joining the group and the first fetch
included) are recorded beside them.

    python -m benchmarks.kafka_ingest                   # make bench-kafka
    python -m benchmarks.kafka_ingest --events 20000    # smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import ray
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from benchmarks._common import RESULTS, emit
from engine.config import load_config
from engine.pipeline import Pipeline, init_local_ray
from engine.sources import SyntheticSource
from routers import DecodeHints, decode_ndjson, new_contract
from scripts.services import start_kafka

ROOT = Path(__file__).resolve().parents[1]


def fill(bootstrap: str, topic: str, events: int, partitions: int) -> float:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20)
    started = time.perf_counter()
    source = SyntheticSource(events=events, block_rows=50_000, seed=5, malformed_share=0.001)
    sent = 0
    for block in source.blocks():
        for line in (block.data or b"").splitlines():
            producer.send(topic, value=line, partition=sent % partitions)
            sent += 1
    producer.flush()
    producer.close()
    return time.perf_counter() - started


def bare(bootstrap: str, topic: str, events: int) -> dict[str, float]:
    """A consumer that polls, joins each partition's values and decodes them (no pipeline)."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=20_000,
        fetch_max_bytes=64 << 20,
        max_partition_fetch_bytes=16 << 20,
    )
    # The pipeline's decode: the demo's schema (declared columns), one contract for the stream.
    schema = load_config(ROOT / "examples" / "demo.yaml").policy.schema
    contract = new_contract(schema)
    hints: dict[int, DecodeHints] = {}
    seen = good = 0
    first: float | None = None
    started = time.perf_counter()
    while seen < events:
        for tp, records in consumer.poll(timeout_ms=200, max_records=20_000).items():
            if first is None:
                first = time.perf_counter()
            data = b"\n".join(r.value for r in records)
            good += decode_ndjson(
                data, schema, hints.setdefault(tp.partition, DecodeHints()), contract
            ).good.num_rows
            seen += len(records)
    ended = time.perf_counter()
    consumer.close()
    assert good > 0.99 * events and first is not None
    return _rates(events, ended - started, first - started)


def pipeline(bootstrap: str, topic: str, events: int) -> dict:
    """The full pipeline (examples/demo.yaml) reading the topic; its summary plus rates."""
    lake = tempfile.mkdtemp(prefix="tc-bench-kafka-")
    try:
        config = load_config(
            ROOT / "examples" / "demo.yaml",
            {
                "name": "kafka-bench",
                "source.kind": "kafka",
                "source.bootstrap": bootstrap,
                "source.topics": [topic],
                "source.group": f"bench-{uuid.uuid4().hex[:6]}",
                "source.start": "earliest",
                "source.max_events": events,
                "cold.lake_uri": lake,
                "progress_every_s": 0,
            },
        )
        summary = Pipeline(config).run()
        assert summary.events_in == events
        assert summary.hot + summary.warm + summary.cold + summary.dead_letter == events
        assert summary.first_block_s is not None
        return {**summary.to_json(), **_rates(events, summary.elapsed_s, summary.first_block_s)}
    finally:
        shutil.rmtree(lake, ignore_errors=True)


def _rates(events: int, elapsed_s: float, first_block_s: float) -> dict[str, float]:
    """Whole-run rate, and the steady rate from the first block on (joining the group and the
    first fetch excluded: both readers pay them, and they are not throughput)."""
    return {
        "events_per_s": round(events / elapsed_s),
        "steady_events_per_s": round(events / (elapsed_s - first_block_s)),
        "first_block_s": round(first_block_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--num-cpus", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="bare and pipeline, alternating")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = start_kafka()
        bootstrap = broker.address
    rounds = []
    try:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        fill_s = fill(bootstrap, topic, args.events, args.partitions)
        init_local_ray(args.num_cpus)
        # Alternating rounds on the same topic: the machine's drift hits both readers alike.
        for _ in range(args.rounds):
            rounds.append({"bare": bare(bootstrap, topic, args.events)})
            rounds[-1]["pipeline"] = pipeline(bootstrap, topic, args.events)
        ray.shutdown()
    finally:
        if broker is not None:
            broker.stop()

    def median(reader: str, key: str) -> float:
        return float(statistics.median(r[reader][key] for r in rounds))

    def paired_ratio(key: str) -> float:
        """Median over rounds of pipeline/bare within each round (the pair shares the drift)."""
        return float(statistics.median(r["pipeline"][key] / r["bare"][key] for r in rounds))

    bare_rate = median("bare", "steady_events_per_s")
    pipeline_rate = median("pipeline", "steady_events_per_s")
    last = rounds[-1]["pipeline"]
    record = {
        "events": args.events,
        "partitions": args.partitions,
        "cpus": args.num_cpus,
        "rounds": args.rounds,
        "produce_s": round(fill_s, 2),
        # Medians over the rounds, from each reader's first block on.
        "bare_consumer_events_per_s": round(bare_rate),
        "pipeline_events_per_s": round(pipeline_rate),
        "ratio": round(paired_ratio("steady_events_per_s"), 3),
        # The same over whole runs (joining the group and the first fetch included).
        "bare_consumer_whole_run_events_per_s": round(median("bare", "events_per_s")),
        "pipeline_whole_run_events_per_s": round(median("pipeline", "events_per_s")),
        "ratio_whole_run": round(paired_ratio("events_per_s"), 3),
        "first_block_s": {r: median(r, "first_block_s") for r in ("bare", "pipeline")},
        "per_round": [
            {
                "bare_steady": r["bare"]["steady_events_per_s"],
                "pipeline_steady": r["pipeline"]["steady_events_per_s"],
                "bare_whole_run": r["bare"]["events_per_s"],
                "pipeline_whole_run": r["pipeline"]["events_per_s"],
                "ratio": round(
                    r["pipeline"]["steady_events_per_s"] / r["bare"]["steady_events_per_s"], 3
                ),
            }
            for r in rounds
        ],
        "checkpoints": last["checkpoints"],
        "split": {t: last[t] for t in ("hot", "warm", "cold", "dead_letter")},
        "target_ratio": 0.9,
    }
    emit("kafka_ingest", record, args.results)
    plot(record, args.results)


def plot(record: dict, results: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.8))
    rates = [record["bare_consumer_events_per_s"], record["pipeline_events_per_s"]]
    ax.bar(["bare consumer\n(poll + decode)", "full pipeline"], rates, color=["C7", "C0"])
    for i, key in enumerate(("bare_steady", "pipeline_steady")):  # each round, as a dot
        ax.scatter([i] * len(record["per_round"]), [r[key] for r in record["per_round"]],
                   color="k", s=12, zorder=3, label="rounds" if i == 0 else None)  # fmt: skip
    ax.axhline(
        rates[0] * record["target_ratio"], color="C3", linestyle="--", label="target 0.9x bare"
    )
    ax.set_ylabel("events/s (median of rounds)")
    ax.set_title(
        f"Kafka ingest, {record['events']:,} events, {record['rounds']} rounds: "
        f"ratio {record['ratio']}",
        fontsize=10,
    )
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(results / "kafka_ingest.png", dpi=100)


if __name__ == "__main__":
    main()
