"""The service's Kafka producer (confluent-kafka): a request's events go out together, and the
request is answered only once the broker acknowledged every one of them.

confluent-kafka rather than kafka-python (measured in ``benchmarks/ingest_http.py``'s producer
round, figures in docs/architecture.md): librdkafka batches and sends on its own threads, and
one ``produce()`` call costs about a microsecond of Python, so the producer is not what limits
the service. Delivery reports are served by a thread of ours calling ``poll()``; each request
counts its reports down and resolves an asyncio future on the event loop when the last arrives.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

__all__ = ["DeliveryFailed", "EventProducer", "Message", "MessageRefused"]

log = logging.getLogger(__name__)


#: One record to produce: ``(topic, value, key, headers)``. A plain tuple: a request makes one
#: per event, and a NamedTuple's constructor cost 3.8 us of the ~10 us an event takes (profiled).
Message = tuple[str, bytes, "str | None", "list[tuple[str, str | bytes | None]] | None"]


class DeliveryFailed(Exception):
    """The broker did not acknowledge every message of a request (the first error named)."""


class MessageRefused(DeliveryFailed):
    """The broker refused a message for what it is (too large for the topic), not for being
    unavailable: retrying cannot help, and the broker is fine."""


#: Errors that are about the message, not the broker.
_REFUSED = frozenset({KafkaError.MSG_SIZE_TOO_LARGE, KafkaError.INVALID_MSG_SIZE})


class _Delivery:
    """Counts one request's delivery reports down (called on the poll thread)."""

    __slots__ = ("error", "future", "lock", "loop", "pending")

    def __init__(self, loop: asyncio.AbstractEventLoop, pending: int) -> None:
        self.loop = loop
        self.future: asyncio.Future[KafkaError | None] = loop.create_future()
        self.pending = pending
        self.error: KafkaError | None = None
        self.lock = threading.Lock()

    def __call__(self, error: KafkaError | None, _message: Any, count: int = 1) -> None:
        with self.lock:
            if error is not None and self.error is None:
                self.error = error
            self.pending -= count
            done = self.pending == 0
        if done:
            self.loop.call_soon_threadsafe(_settle, self.future, self.error)


def _settle(future: asyncio.Future[KafkaError | None], error: KafkaError | None) -> None:
    if not future.done():
        future.set_result(error)


class EventProducer:
    """Produce a request's messages and wait until all are acknowledged (or one failed).

    Args:
        bootstrap: Kafka ``host:port``.
        delivery_timeout: seconds the broker has to acknowledge a message (librdkafka's
            ``message.timeout.ms``); a message not acknowledged by then is reported failed and
            never sent afterwards.
        settings: extra librdkafka settings (override the defaults below).
        on_all_brokers_down: called (on the poll thread) when librdkafka reports that no broker
            is reachable.
    """

    def __init__(
        self,
        bootstrap: str,
        delivery_timeout: float,
        settings: dict[str, Any] | None = None,
        on_all_brokers_down: Callable[[], object] | None = None,
    ) -> None:
        self.delivery_timeout = delivery_timeout
        self._on_down = on_all_brokers_down
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            # Idempotent: the broker's acknowledgement counts, and librdkafka's own retries
            # neither duplicate nor reorder a player's events.
            "enable.idempotence": True,
            "acks": "all",
            # Java's (and kafka-python's) partitioner: a player's events land in the same
            # partition whichever of them produced it.
            "partitioner": "murmur2_random",
            # The answer waits for the acknowledgement: no Nagle delay on the broker socket
            # (measured: a lone 100-event request acknowledged in 4 ms instead of 8.5), and a
            # linger just long enough for concurrent requests to share a batch.
            "socket.nagle.disable": True,
            "linger.ms": 1,
            "compression.type": "lz4",
            "message.timeout.ms": int(delivery_timeout * 1000),
            "error_cb": self._on_error,
            **(settings or {}),
        }
        self._producer = Producer(config)
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.05)

    def _on_error(self, error: KafkaError) -> None:
        log.warning("kafka: %s", error)
        if error.code() == KafkaError._ALL_BROKERS_DOWN and self._on_down is not None:
            self._on_down()

    async def send(self, messages: Sequence[Message], timestamp_ms: int) -> None:
        """Produce ``messages`` (all with the record timestamp ``timestamp_ms``) and wait for the
        broker's acknowledgement of each.

        Raises:
            DeliveryFailed: a message was refused, timed out, or could not be queued; messages
                of the same call may have been delivered (the client's retry repeats them: the
                service is at least once, see docs/architecture.md).
        """
        if not messages:
            return
        loop = asyncio.get_running_loop()
        delivery = _Delivery(loop, len(messages))
        produce = self._producer.produce
        queued = 0
        try:
            for topic, value, key, headers in messages:
                produce(topic, value, key, on_delivery=delivery, timestamp=timestamp_ms,
                        headers=headers)  # fmt: skip
                queued += 1
        except (BufferError, KafkaException) as exc:
            if queued == 0:
                raise DeliveryFailed(f"not queued: {exc}") from None
            # The rest was not queued: counted as failed reports, so the future settles once
            # the queued ones are reported.
            failed = KafkaError(KafkaError._QUEUE_FULL, f"not queued: {exc}")
            delivery(failed, None, count=len(messages) - queued)
        try:
            error = await asyncio.wait_for(delivery.future, self.delivery_timeout + 5)
        except asyncio.TimeoutError:
            raise DeliveryFailed("no delivery report in time") from None
        if error is not None:
            if error.code() in _REFUSED:
                raise MessageRefused(error.str())
            raise DeliveryFailed(error.str())

    def topics(self, timeout: float) -> set[str]:
        """The broker's topics (blocking; raises ``KafkaException`` if it cannot be reached)."""
        metadata = self._producer.list_topics(timeout=timeout)
        return set(metadata.topics)

    def close(self, timeout: float = 10) -> None:
        """Deliver what is queued (up to ``timeout``), then stop the poll thread."""
        self._producer.flush(timeout)
        self._stop.set()
        self._poller.join()
