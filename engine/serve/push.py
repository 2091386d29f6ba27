"""The push channel: the hot path's output rows (alerts, feature updates) sent to the clients
of the player they are about, as they happen.

One consumer thread reads the push topic (the pipeline's ``alerts_topic``, keyed by player) from
its end, in a consumer group of its own (every service process sees every message) and hands
each poll's messages to the event loop, which puts each on the queues of that player's
connections. A queue is bounded: a connection that falls ``limit`` messages behind is dropped
(the handler closes it), so a slow client never makes the service buffer without bound.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections import defaultdict

from confluent_kafka import Consumer, KafkaError, TopicPartition

__all__ = ["PushHub", "PushFeed", "Subscription"]

log = logging.getLogger(__name__)


class Subscription:
    """One connection's queue of pushed messages; ``dropped`` is set when it fell behind."""

    def __init__(self, player: str, limit: int) -> None:
        self.player = player
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=limit)
        self.dropped = asyncio.Event()


class PushHub:
    """Connections by player; :meth:`publish` fans a message out to a player's connections.

    Example:
        >>> import asyncio
        >>> async def demo():
        ...     hub = PushHub(limit=1)
        ...     sub = hub.subscribe("p1")
        ...     hub.publish([("p1", b"a"), ("p2", b"b"), ("p1", b"c")])
        ...     return sub.queue.get_nowait(), sub.dropped.is_set(), hub.dropped
        >>> asyncio.run(demo())
        (b'a', True, 1)
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._by_player: defaultdict[str, set[Subscription]] = defaultdict(set)
        self.delivered = 0
        self.dropped = 0

    @property
    def connections(self) -> int:
        return sum(map(len, self._by_player.values()))

    def subscribe(self, player: str) -> Subscription:
        subscription = Subscription(player, self.limit)
        self._by_player[player].add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._by_player.get(subscription.player)
        if subscribers is not None:
            subscribers.discard(subscription)
            if not subscribers:
                del self._by_player[subscription.player]

    def publish(self, messages: list[tuple[str, bytes]]) -> None:
        """Queue each ``(player, payload)`` for the player's connections (event loop thread)."""
        for player, payload in messages:
            for subscription in self._by_player.get(player, ()):
                if subscription.dropped.is_set():
                    continue
                try:
                    subscription.queue.put_nowait(payload)
                    self.delivered += 1
                except asyncio.QueueFull:
                    subscription.dropped.set()
                    self.dropped += 1


class PushFeed:
    """Reads the push topic on a thread of its own and publishes to a :class:`PushHub`.

    Args:
        bootstrap: Kafka ``host:port``.
        topic: the hot path's output topic, keyed by player.
        hub: where messages go.
        loop: the event loop the hub lives on.
    """

    def __init__(
        self, bootstrap: str, topic: str, hub: PushHub, loop: asyncio.AbstractEventLoop
    ) -> None:
        self.topic = topic
        self._hub = hub
        self._loop = loop
        self.assigned = threading.Event()
        self._stop = threading.Event()
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                # A group of its own: every service process sees every message, from now on.
                "group.id": f"thermocline-serve-{uuid.uuid4().hex}",
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                # Pushed updates are live: small fetch waits keep their latency low.
                "fetch.wait.max.ms": 50,
                "fetch.queue.backoff.ms": 10,
            }
        )
        self._thread = threading.Thread(target=self._run, name="push-feed", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._consumer.subscribe([self.topic], on_assign=self._on_assign)
        try:
            while not self._stop.is_set():
                messages = self._consumer.consume(num_messages=1000, timeout=0.1)
                batch: list[tuple[str, bytes]] = []
                for message in messages:
                    error = message.error()
                    if error is not None:
                        if error.code() != KafkaError._PARTITION_EOF:
                            log.warning("push feed: %s", error)
                        continue
                    key, value = message.key(), message.value()
                    if key is None or value is None:
                        continue  # not about a player: nobody to push it to
                    batch.append((key.decode("utf-8", "replace"), value))
                if batch and not self._loop.is_closed():
                    self._loop.call_soon_threadsafe(self._hub.publish, batch)
        finally:
            self._consumer.close()

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # The topic's end now, explicitly: "latest" alone is looked up after the assignment,
        # so an update produced between the two (after /readyz said ready) would be skipped.
        for partition in partitions:
            partition.offset = consumer.get_watermark_offsets(partition, timeout=10)[1]
        consumer.assign(partitions)
        self.assigned.set()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
