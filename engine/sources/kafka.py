"""Kafka source (kafka-python): a consumer group member yielding one block per partition per poll.

Positions are Kafka offsets; a partition is named ``{topic}-{partition}``. Records are joined and
decoded together (one NDJSON block per partition per poll); key, partition, offset and timestamp
become per-line columns. Offsets are committed only by :meth:`KafkaSource.commit`, which the
pipeline calls after a checkpoint; never automatically.

Rebalances follow kafka-python's ``ConsumerRebalanceListener`` contract: both callbacks run inside
``poll()``, in the consumer's thread (the pipeline's driver). Before partitions are revoked the
pipeline drains and checkpoints them (``on_revoke``); when partitions are assigned it says where
each resumes (``on_assign``), which this source applies with ``seek``.

kafka-python 2.x, not 3.0: 3.0 moves network IO to a thread of its own, refuses blocking calls in
listeners, and its consumer stalled in ``fetch_records`` in our two-member test (the same shape
as upstream issues #3106 and #3121).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
from kafka import ConsumerRebalanceListener, KafkaConsumer, OffsetAndMetadata, TopicPartition
from kafka.errors import CommitFailedError, RebalanceInProgressError

from engine.sources.base import Source, SourceBlock

__all__ = ["KafkaSource", "partition_name"]

log = logging.getLogger(__name__)

#: Columns added to every decoded row from its Kafka record.
META_TYPES = {
    "kafka_key": pa.binary(),
    "kafka_partition": pa.int32(),
    "kafka_offset": pa.int64(),
    "kafka_timestamp": pa.timestamp("ms", "UTC"),
}


def partition_name(topic: str, partition: int) -> str:
    return f"{topic}-{partition}"


class _Listener(ConsumerRebalanceListener):
    """kafka-python calls these inside ``poll()``, on the pipeline's driver thread.

    Both may block (drain, checkpoint, commit, offset lookups): that is the contract of the
    listener, and the consumer's heartbeat thread keeps the membership alive meanwhile (up to
    ``max_poll_interval_ms``).
    """

    def __init__(self, source: KafkaSource) -> None:
        self.source = source

    def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Finish (drain and checkpoint) what was read from these partitions, then commit it.
        if revoked and self.source.on_revoke is not None:
            self.source.on_revoke(sorted(partition_name(tp.topic, tp.partition) for tp in revoked))

    def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        if assigned:
            self.source._assigned(sorted(assigned))


class KafkaSource(Source):
    """Consume ``topics`` as a member of ``group``.

    Args:
        bootstrap: ``host:port[,host:port]``.
        topics: topics to subscribe to.
        group: consumer group id.
        start: where partitions without a committed offset start: ``earliest`` or ``latest``;
            ``committed`` means earliest when nothing is committed; an int is a timestamp (epoch
            ms) looked up with ``offsets_for_times``.
        max_records: records per poll (the most a block can hold).
        idle_timeout_s: stop after this long without records while owning partitions (None: run
            until closed).
        max_events: stop after this many records (None: no limit).
        config: extra ``KafkaConsumer`` settings (e.g. security); never logged.

    Example:
        >>> KafkaSource("127.0.0.1:9092", ["events"], "g", start="earliest").name
        'kafka'
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        group: str,
        start: str | int = "committed",
        max_records: int = 20_000,
        poll_timeout_ms: int = 200,
        idle_timeout_s: float | None = None,
        max_events: int | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topics = list(topics)
        self.group = group
        self.start = start
        self.max_records = max_records
        self.poll_timeout_ms = poll_timeout_ms
        self.idle_timeout_s = idle_timeout_s
        self.max_events = max_events
        self.config = dict(config or {})
        self._consumer: KafkaConsumer | None = None
        self._stopping = False
        self.records_read = 0

    @property
    def checkpointed(self) -> bool:
        return True

    def _connect(self) -> KafkaConsumer:
        """A consumer that has not subscribed yet (``blocks`` subscribes once it is stored)."""
        reset = "latest" if self.start == "latest" else "earliest"
        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group,
            enable_auto_commit=False,  # commits follow checkpoints only
            auto_offset_reset=reset,
            max_poll_records=self.max_records,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=16 << 20,
            **self.config,
        )
        return consumer

    def _assigned(self, assigned: list[TopicPartition]) -> None:
        consumer = self._consumer
        assert consumer is not None
        defaults = self._default_positions(consumer, assigned)
        resume = self.on_assign(dict(defaults)) if self.on_assign is not None else defaults
        for tp in assigned:
            consumer.seek(tp, resume.get(partition_name(tp.topic, tp.partition), 0))

    def _default_positions(
        self, consumer: KafkaConsumer, assigned: list[TopicPartition]
    ) -> dict[str, int]:
        """Next offset to read per partition by this source's own rules (commit, else start)."""
        first = consumer.beginning_offsets(assigned)
        end = consumer.end_offsets(assigned)
        at_time = (
            consumer.offsets_for_times({tp: self.start for tp in assigned})
            if isinstance(self.start, int)
            else {}
        )
        positions = {}
        for tp in assigned:
            committed = None if self.start in ("earliest", "latest") else consumer.committed(tp)
            if committed is not None:
                position = committed
            elif self.start == "latest":
                position = end[tp]
            elif isinstance(self.start, int):
                found = at_time.get(tp)
                position = found.offset if found is not None else end[tp]
            else:
                position = first[tp]
            positions[partition_name(tp.topic, tp.partition)] = position
        return positions

    def stop(self) -> None:
        self._stopping = True

    def close(self) -> None:
        """Leave the group and disconnect (after the last commit)."""
        if self._consumer is not None:
            self._consumer.close(autocommit=False)
            self._consumer = None

    def commit(self, positions: dict[str, int]) -> None:
        if self._consumer is None or not positions:
            return
        owned = {partition_name(tp.topic, tp.partition): tp for tp in self._consumer.assignment()}
        offsets = {
            owned[name]: OffsetAndMetadata(last + 1, "", -1)
            for name, last in positions.items()
            if name in owned
        }
        if not offsets:
            return
        try:
            self._consumer.commit(offsets)
        except (RebalanceInProgressError, CommitFailedError) as exc:
            # The group is rebalancing: the next poll() runs it, and the revocation commits
            # again. Nothing is lost meanwhile: recovery resumes from the checkpoint in the lake.
            log.warning("commit skipped during a rebalance (%s); the revocation commits", exc)

    def blocks(self) -> Iterator[SourceBlock | None]:
        consumer = self._connect()
        self._consumer = consumer
        consumer.subscribe(self.topics, listener=_Listener(self))
        idle_since = time.monotonic()
        while not self._stopping:
            if self.max_events is not None and self.records_read >= self.max_events:
                return
            polled = consumer.poll(timeout_ms=self.poll_timeout_ms, max_records=self.max_records)
            if not polled:
                if not consumer.assignment():  # joining: idle time counts once we own some
                    idle_since = time.monotonic()
                elif (
                    self.idle_timeout_s is not None
                    and time.monotonic() - idle_since > self.idle_timeout_s
                ):
                    return
                yield None  # quiet: let the pipeline run its timers
                continue
            idle_since = time.monotonic()
            for tp, records in polled.items():
                if records:
                    self.records_read += len(records)
                    yield _block(tp, records)


def _block(tp: TopicPartition, records: list[Any]) -> SourceBlock:
    """One partition's records as one NDJSON block plus their metadata columns."""
    # kafka-python hands out one object per record; one pass gathers what the bulk decode needs.
    values, offsets, stamps, keys = zip(
        *[(r.value, r.offset, r.timestamp, r.key) for r in records], strict=True
    )
    data = _join_lines(values)
    meta = {
        "kafka_key": pa.array(keys, pa.binary()),
        "kafka_partition": pa.array(np.full(len(records), tp.partition, dtype=np.int32)),
        "kafka_offset": pa.array(np.array(offsets, dtype=np.int64)),
        "kafka_timestamp": pa.array(np.array(stamps, dtype=np.int64)).cast(
            META_TYPES["kafka_timestamp"]
        ),
    }
    return SourceBlock(
        partition=partition_name(tp.topic, tp.partition),
        first_offset=int(offsets[0]),
        last_offset=int(offsets[-1]),
        data=data,
        meta=meta,
    )


_SPACE = np.frombuffer(b" \t\r\n", dtype=np.uint8)


def _join_lines(values: tuple[bytes | None, ...]) -> bytes:
    """Values joined by newlines, exactly one line per record.

    Checked in bulk on the joined bytes: as many newlines as separators, and no line empty or
    starting with whitespace. Only when that fails are the values fixed one by one: a raw newline
    is JSON whitespace, so it becomes a space; an empty or blank value becomes ``null`` (a dead
    letter, not a skipped line).
    """
    try:
        data = b"\n".join(values)  # type: ignore[arg-type]
    except TypeError:  # a None value (tombstone)
        data = b""
    else:
        arr = np.frombuffer(data, dtype=np.uint8)
        starts = np.concatenate(([0], np.flatnonzero(arr == ord("\n")) + 1))
        one_per_record = len(starts) == len(values) and len(arr) and (starts < len(arr)).all()
        if one_per_record and not np.isin(arr[starts], _SPACE).any():
            return data
    return b"\n".join(v.replace(b"\n", b" ") if v and v.strip() else b"null" for v in values)
