"""The pipeline's Kafka reader takes records whatever codec their producer chose: gzip, snappy,
lz4 (the ingestion service's), zstd. kafka-python needs a library for each but gzip; without
them a compressed batch stopped the run (found by the HTTP end-to-end test)."""

from __future__ import annotations

import uuid

import pytest
from confluent_kafka import Producer

from engine.sources.kafka_range import KafkaRangeSource
from routers import decode_ndjson
from tests.serve_helpers import create_topics


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compressed_batches_are_read_as_any_other(kafka_bootstrap: str, codec: str) -> None:
    topic = f"codec-{codec}-{uuid.uuid4().hex[:6]}"
    create_topics(kafka_bootstrap, [topic], partitions=1)
    events = [
        b'{"event_id":"e%d","player_id":"p%d","event_time":1764000000000,"event_type":"x"}'
        % (i, i % 7)
        for i in range(500)
    ]
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "compression.type": codec,
                         "linger.ms": 20})  # fmt: skip
    for event in events:
        producer.produce(topic, event)
    assert producer.flush(30) == 0
    source = KafkaRangeSource(kafka_bootstrap, [topic])
    read = [line for block in source.blocks() if block for line in block.data.split(b"\n")]
    assert read == events
    assert decode_ndjson(b"\n".join(read)).good.num_rows == len(events)
