"""A fixed range of Kafka topics, read once: the kappa replay of the log (jobs.replay).

Unlike :class:`~engine.sources.kafka.KafkaSource` (a consumer group member that follows the
stream and commits after checkpoints), this reads every partition of the topics from a start
(the first offset at or after an event-log time, or the earliest) to an end fixed when it is
built (the offsets at an end time, or the end offsets then), with no group and no commits, in
this process. Blocks are built as the streaming source builds them (the same lines, metadata and
arrival times, a record's timestamp), so a replay routes every record as the first run did.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from engine.sources.base import Source, SourceBlock
from engine.sources.kafka import partition_name, records_block

__all__ = ["KafkaRangeSource"]


class KafkaRangeSource(Source):
    """Records of ``topics`` from ``start_ms`` (epoch ms; None: the earliest) to ``end_ms``
    (None: the end offsets when this source is built), every partition, once.

    Raises:
        ValueError: a topic the broker does not have.
    """

    name = "kafka"

    def __init__(
        self,
        bootstrap: str,
        topics: Sequence[str],
        start_ms: int | None = None,
        end_ms: int | None = None,
        max_records: int = 20_000,
        config: dict[str, Any] | None = None,
    ) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            enable_auto_commit=False,
            # A start that retention removed meanwhile: read from what is left, not the end.
            auto_offset_reset="earliest",
            max_poll_records=max_records,
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=16 << 20,
            **(config or {}),
        )
        parts = []
        for topic in topics:
            found = self._consumer.partitions_for_topic(topic)
            if not found:
                raise ValueError(f"topic {topic!r}: not on the broker at {bootstrap}")
            parts += [TopicPartition(topic, p) for p in sorted(found)]
        self._first = self._offsets(parts, start_ms, self._consumer.beginning_offsets(parts))
        self._end = self._offsets(parts, end_ms, self._consumer.end_offsets(parts))
        #: Per partition name, the range read: (first offset, end offset, exclusive).
        self.ranges = {
            partition_name(tp.topic, tp.partition): (self._first[tp], self._end[tp]) for tp in parts
        }

    def _offsets(self, parts: list[Any], at_ms: int | None, default: dict[Any, int]) -> dict:
        """Per partition, the first offset at or after ``at_ms`` (past the last record: the
        end), or ``default`` without a time."""
        if at_ms is None:
            return dict(default)
        found = self._consumer.offsets_for_times({tp: at_ms for tp in parts})
        ends = self._consumer.end_offsets(parts)
        return {tp: ends[tp] if found[tp] is None else found[tp].offset for tp in parts}

    @property
    def replay_id(self) -> str:
        """The offsets read: the same range is the same content (a compacted topic aside)."""
        spans = ",".join(f"{p}:{a}-{b}" for p, (a, b) in sorted(self.ranges.items()))
        return f"kafka[{spans}]"

    def blocks(self) -> Iterator[SourceBlock | None]:
        consumer = self._consumer
        todo = [tp for tp in self._first if self._first[tp] < self._end[tp]]
        consumer.assign(todo)
        for tp in todo:
            consumer.seek(tp, self._first[tp])
        left = set(todo)
        try:
            while left and not self.stopping:
                polled = consumer.poll(timeout_ms=1_000)
                if not polled:
                    # Nothing more below the end (its last offsets were transaction markers,
                    # or records compacted away): the partition is done.
                    left -= {tp for tp in left if consumer.position(tp) >= self._end[tp]}
                    yield None
                    continue
                for tp, records in polled.items():
                    if tp not in left:
                        continue
                    end = self._end[tp]
                    records = [r for r in records if r.offset < end]
                    if records:
                        yield records_block(tp, records)
                    if not records or records[-1].offset >= end - 1 or consumer.position(tp) >= end:
                        left.discard(tp)
                        consumer.pause(tp)
        finally:
            consumer.close()

    def close(self) -> None:
        self._consumer.close()
