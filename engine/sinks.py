"""Kafka sink for path outputs (e.g. hot alerts to a ``processed_events`` topic): an
:class:`engine.base.Sink`."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from kafka import KafkaProducer

__all__ = ["KafkaSink"]


class KafkaSink:
    """Produce rows as JSON messages, batched by the producer; :meth:`commit` checks delivery.

    Args:
        bootstrap: ``host:port``.
        topic: destination topic.
        key_column: column used as the message key (keeps a key's messages in order).
        config: extra ``KafkaProducer`` settings.
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        key_column: str | None = None,
        config: dict[str, Any] | None = None,
    ) -> None:
        self.topic = topic
        self.key_column = key_column
        self.bootstrap = bootstrap
        self.config = dict(config or {})
        self.producer: KafkaProducer | None = None
        self._pending: list[Any] = []
        self.delivered = 0

    def start(self) -> None:
        """Connect the producer."""
        self.producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            linger_ms=20,  # batch messages of one checkpoint together
            retries=5,
            **self.config,
        )

    def write(self, rows: pa.Table) -> None:
        """Queue every row of ``rows`` (one message per output row; outputs are small)."""
        if rows.num_rows == 0:
            return
        if self.producer is None:
            raise RuntimeError("KafkaSink.start() first")
        for column in rows.column_names:  # JSON needs plain types: times as ISO-8601
            if pa.types.is_timestamp(rows.schema.field(column).type):
                iso = pc.strftime(rows[column], format="%Y-%m-%dT%H:%M:%S.%fZ")
                rows = rows.set_column(rows.column_names.index(column), column, iso)
        keys = (
            rows.column(self.key_column).to_pylist() if self.key_column else [None] * rows.num_rows
        )
        for key, row in zip(keys, rows.to_pylist(), strict=True):
            payload = json.dumps(row, separators=(",", ":")).encode()
            self._pending.append(
                self.producer.send(
                    self.topic, value=payload, key=None if key is None else str(key).encode()
                )
            )

    def commit(self, timeout: float = 30) -> int:
        """Wait until every queued message is acknowledged; raise if any was not.

        Returns:
            Messages delivered by this commit.
        """
        if self.producer is None:
            return 0
        self.producer.flush(timeout)
        pending, self._pending = self._pending, []
        for future in pending:
            future.get(timeout=timeout)  # raises the delivery error, if any
        self.delivered += len(pending)
        return len(pending)

    def abort(self) -> None:
        """Drop the messages not yet delivered and disconnect at once."""
        self._pending = []
        if self.producer is not None:
            self.producer.close(timeout=0)
            self.producer = None

    def close(self) -> None:
        """Disconnect (after the last :meth:`commit`). Idempotent."""
        if self.producer is not None:
            self.producer.close()
            self.producer = None
