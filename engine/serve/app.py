"""The ingestion service's HTTP and WebSocket endpoints (Starlette on uvicorn).

- ``POST /v1/events``: a JSON array or NDJSON body of events (``Content-Encoding: gzip``
  optional); each event is decoded, routed, and produced to its temperature's topic keyed by
  player, dead letters to the dead-letter topic; answered once Kafka acknowledged all of them,
  with counts per temperature and per dead-letter reason.
- ``GET /v1/stream/{player_id}``: the player's pushed updates, over WebSocket, or as
  server-sent events when the request is a plain GET (``Accept: text/event-stream``).
- ``GET /healthz`` (alive), ``GET /readyz`` (Kafka reachable, topics there, breaker closed),
  ``GET /metrics`` (Prometheus).

Starlette rather than a bare ASGI handler: routing, WebSocket and streaming responses, for
about 10 us a request more than a bare ASGI callable (measured by benchmarks/ingest_http.py:
nothing next to decoding and producing). orjson for the responses and pushed frames.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import math
import time
import zlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

import numpy as np
import orjson
from limits import parse as parse_rate
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from engine.config import ServeConfig
from engine.serve.breaker import CircuitBreaker
from engine.serve.ingest import GroupDecoder, Routed
from engine.serve.metrics import ServeMetrics
from engine.serve.producer import DeliveryFailed, EventProducer, Message, MessageRefused
from engine.serve.push import PushFeed, PushHub, Subscription
from routers import Router, parse_duration_ms
from routers.records import NotAJsonArray, TooManyElements, split_json_array, split_lines

__all__ = ["API_KEY_HEADER", "SLOW_CLIENT_CLOSE", "IngestService"]

log = logging.getLogger(__name__)

#: The request header carrying the API key.
API_KEY_HEADER = "x-api-key"
#: WebSocket close code of a connection dropped for falling behind (1013: try again later).
SLOW_CLIENT_CLOSE = 1013
#: At most this many dead letters are itemized in a response (all are counted).
_ITEMIZED = 100
#: How often the broker is checked for readiness while all is well (seconds).
_CHECK_EVERY = 10.0
_NO_KEY = f"missing or wrong API key (header {API_KEY_HEADER})"
#: gzip members read from one body at most.
_GZIP_MEMBERS = 16


class _Refused(Exception):
    """A request refused as a whole: its status, a reason for metrics and a message."""

    def __init__(self, status: int, reason: str, message: str, retry_after: float = 0) -> None:
        super().__init__(message)
        self.status, self.reason, self.retry_after = status, reason, retry_after


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(data), status, headers, media_type="application/json")


class IngestService:
    """The service: router, producer, breaker, rate limiter, push hub, metrics; see the module.

    Args:
        config: the ``serve`` section.
        router: the pipeline's routing policy.
        bootstrap: Kafka ``host:port``.
        api_keys: accepted keys (at least one).
        push_topic: topic of the hot path's output rows (None: no push channel).

    Example:
        >>> from routers import Router
        >>> service = IngestService(ServeConfig(), Router.from_yaml("default: warm"),
        ...                         bootstrap="127.0.0.1:9092", api_keys=("k",))
        >>> sorted({r.path for r in service.app.routes})
        ['/healthz', '/metrics', '/readyz', '/v1/events', '/v1/stream/{player_id}']
    """

    def __init__(
        self,
        config: ServeConfig,
        router: Router,
        bootstrap: str,
        api_keys: Sequence[str],
        push_topic: str | None = None,
    ) -> None:
        if not api_keys:
            raise ValueError("at least one API key")
        self.config = config
        self.bootstrap = bootstrap
        self.push_topic = push_topic
        self._keys = [key.encode() for key in api_keys]
        self.decoder = GroupDecoder(router, config.group_max_events)
        self.breaker = CircuitBreaker(
            config.breaker_failures, parse_duration_ms(config.breaker_cooldown) / 1000
        )
        self.metrics = ServeMetrics()
        self._rate = parse_rate(config.rate_limit)
        self._limiter = MovingWindowRateLimiter(MemoryStorage())
        self.hub = PushHub(config.push_queue)
        self.producer: EventProducer | None = None
        self.feed: PushFeed | None = None
        self.missing_topics: set[str] | None = None  # None: not checked yet
        self.kafka_error: str | None = "not checked yet"
        self.app = Starlette(
            routes=[
                Route("/v1/events", self.post_events, methods=["POST"]),
                Route("/v1/stream/{player_id}", self.stream_sse, methods=["GET"]),
                WebSocketRoute("/v1/stream/{player_id}", self.stream_ws),
                Route("/healthz", self.healthz, methods=["GET"]),
                Route("/readyz", self.readyz, methods=["GET"]),
                Route("/metrics", self.metrics_page, methods=["GET"]),
            ],
            lifespan=self._lifespan,
        )

    # -- life cycle ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        timeout = parse_duration_ms(self.config.delivery_timeout) / 1000
        self.producer = EventProducer(
            self.bootstrap, timeout, dict(self.config.producer),
            on_all_brokers_down=functools.partial(loop.call_soon_threadsafe, self._trip),
        )  # fmt: skip
        if self.push_topic:
            self.feed = PushFeed(self.bootstrap, self.push_topic, self.hub, loop)
        watcher = asyncio.create_task(self._watch_kafka())
        try:
            yield
        finally:
            watcher.cancel()
            if self.feed is not None:
                await asyncio.to_thread(self.feed.close)
            await asyncio.to_thread(self.producer.close)

    def _trip(self) -> None:
        self.breaker.trip()
        self.metrics.breaker_open.set(1)

    async def _watch_kafka(self) -> None:
        """Check the broker and the topics now and then; probe it while the breaker is open."""
        last = -math.inf
        while True:
            if self.breaker.probe_due() or time.monotonic() - last > _CHECK_EVERY:
                last = time.monotonic()
                await self._check_kafka()
            await asyncio.sleep(0.2)

    async def _check_kafka(self) -> None:
        assert self.producer is not None
        try:
            topics = await asyncio.to_thread(self.producer.topics, 2.0)
        except Exception as exc:  # the broker is unreachable: KafkaException, timeouts
            self.kafka_error = f"Kafka at {self.bootstrap} unreachable: {exc}"
            return
        self.kafka_error = None
        wanted = {*self.config.topics.model_dump().values(), *filter(None, [self.push_topic])}
        self.missing_topics = wanted - topics
        if self.breaker.state == "open":
            self.breaker.record_success()
            self.metrics.breaker_open.set(0)

    # -- POST /v1/events ----------------------------------------------------------------------

    async def post_events(self, request: Request) -> Response:
        started = time.perf_counter()
        receive_ms = time.time_ns() // 1_000_000
        try:
            self._authorize(request.headers.get(API_KEY_HEADER))
            self._limit(request.headers.get(API_KEY_HEADER, ""))
            if self.breaker.state == "open":
                raise _Refused(503, "kafka_unavailable", "Kafka is unavailable; retry later",
                               self.breaker.retry_after())  # fmt: skip
            body = await self._body(request)
            records = self._records(body, request.headers.get("content-type", ""))
            response = await self._ingest(records, receive_ms)
        except _Refused as refused:
            self.metrics.rejects.labels(refused.reason).inc()
            headers = {}
            if refused.status in (429, 503):
                headers["Retry-After"] = str(max(1, math.ceil(refused.retry_after)))
            response = _json({"error": str(refused), "reason": refused.reason},
                             refused.status, headers)  # fmt: skip
        except ClientDisconnect:  # gone mid-upload (mobile networks): nobody to answer
            self.metrics.rejects.labels("client_gone").inc()
            response = Response(status_code=400)
        except Exception:  # a bug: logged, counted, answered; the service goes on
            log.exception("POST /v1/events failed")
            response = _json({"error": "internal error; retry later", "reason": "internal"}, 500)
        self.metrics.requests.labels("/v1/events", str(response.status_code)).inc()
        self.metrics.latency.observe(time.perf_counter() - started)
        return response

    def _authorize(self, given: str | None) -> None:
        # Every key is compared, in constant time, whichever matches: the timing says nothing.
        # Starlette decodes header bytes as latin-1: back to the bytes the client sent.
        candidate = (given or "").strip().encode("latin-1", "replace")
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(candidate, key)
        if not given or not matched:
            raise _Refused(401, "unauthorized", _NO_KEY)

    def _limit(self, key: str) -> None:
        # The limiter's key is a digest-free stand-in: the key's index among the configured ones.
        slot = str(self._keys.index(key.strip().encode("latin-1", "replace")))
        if not self._limiter.hit(self._rate, slot):
            reset, _ = self._limiter.get_window_stats(self._rate, slot)
            raise _Refused(429, "rate_limited", f"over the rate limit of {self.config.rate_limit}",
                           reset - time.time())  # fmt: skip

    async def _body(self, request: Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _Refused(413, "body_too_large", f"body over {limit} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _Refused(413, "body_too_large", f"body over {limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding in ("gzip", "x-gzip"):
            body = _gunzip(body, limit)
        elif encoding not in ("identity", ""):
            raise _Refused(415, "bad_body", f"Content-Encoding {encoding!r}: use gzip or none")
        # A UTF-8 byte order mark (some .NET and Windows writers add one) is not part of JSON.
        return body[3:] if body.startswith(b"\xef\xbb\xbf") else body

    def _records(self, body: bytes, content_type: str) -> list[bytes]:
        if "ndjson" not in content_type.lower() and body.lstrip()[:1] == b"[":
            try:
                records = split_json_array(body, max_elements=self.config.max_events)
            except TooManyElements as exc:
                raise _Refused(413, "too_many_events", str(exc)) from None
            except NotAJsonArray as exc:
                raise _Refused(
                    400,
                    "bad_body",
                    f"body is not a JSON array ({exc}); send NDJSON to have each bad line"
                    " dead-lettered alone",
                ) from None
        else:
            # CRLF-delimited NDJSON: the CR ends the line, it is not part of the event.
            records = split_lines(body.replace(b"\r\n", b"\n") if b"\r" in body else body)
        if len(records) > self.config.max_events:
            limit = self.config.max_events
            raise _Refused(413, "too_many_events", f"{len(records)} events, at most {limit}")
        return records

    async def _ingest(self, records: list[bytes], receive_ms: int) -> Response:
        limit = self.config.max_event_bytes
        sizes = np.fromiter(map(len, records), dtype=np.int64, count=len(records))
        large = np.flatnonzero(sizes > limit)
        if len(large):
            kept = np.flatnonzero(sizes <= limit)
            routed = await self.decoder.route([records[i] for i in kept], receive_ms)
            routed = _renumbered(routed, kept)
            routed.dead += [
                (int(i), records[i][:limit], f"too_large:{int(sizes[i])} bytes") for i in large
            ]
        else:
            routed = await self.decoder.route(records, receive_ms)
        topics = self.config.topics
        messages: list[Message] = [
            (getattr(topics, temperature), records[index], key, None)
            for temperature, rows in routed.good.items()
            for index, key in rows
        ]
        messages += [
            (topics.dead, raw, None, [("reason", reason.encode())])
            for _, raw, reason in routed.dead
        ]
        assert self.producer is not None
        try:
            await self.producer.send(messages, receive_ms)
        except MessageRefused as exc:  # the event, not the broker: no retry helps
            raise _Refused(
                413,
                "event_too_large",
                f"Kafka refused an event as too large ({exc}); lower serve.max_event_bytes"
                " below the topics' max.message.bytes",
            ) from None
        except DeliveryFailed as exc:
            self.breaker.record_failure()
            if self.breaker.state == "open":
                self.metrics.breaker_open.set(1)
            raise _Refused(
                503,
                "kafka_unavailable",
                f"Kafka did not acknowledge the events ({exc}); retry later",
                self.breaker.retry_after() or 1,
            ) from None
        self.breaker.record_success()
        counts = routed.counts()
        for temperature, rows in routed.good.items():
            self.metrics.events.labels(temperature).inc(len(rows))
        self.metrics.events.labels("dead").inc(len(routed.dead))
        for _, _, reason in routed.dead:
            self.metrics.dead_letters.labels(reason.split(":", 1)[0]).inc()
        counts["errors"] = [
            {"index": index, "reason": reason}
            for index, _, reason in sorted(routed.dead)[:_ITEMIZED]
        ]
        return _json(counts)

    # -- push channel -------------------------------------------------------------------------

    async def stream_ws(self, websocket: WebSocket) -> None:
        if not self._key_ok(websocket.headers.get(API_KEY_HEADER)):
            await websocket.send_denial_response(_json({"error": _NO_KEY}, 401))
            return
        if self.hub.connections >= self.config.push_connections:
            await websocket.send_denial_response(self._full())
            return
        await websocket.accept()
        subscription = self._subscribe(websocket.path_params["player_id"])

        async def send() -> None:
            while True:
                payload = await subscription.queue.get()
                await websocket.send_text(payload.decode("utf-8", "replace"))

        async def receive() -> None:
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    await websocket.receive_text()  # clients say nothing; this sees them go

        tasks = [asyncio.create_task(t) for t in (send(), receive(), subscription.dropped.wait())]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if tasks[2] in done:  # fell behind: dropped with a close code
                self.metrics.push_dropped.inc()
                tasks[0].cancel()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        websocket.close(SLOW_CLIENT_CLOSE, "too slow: fell behind"), 10
                    )
        finally:
            for task in tasks:
                task.cancel()
            self._unsubscribe(subscription)

    async def stream_sse(self, request: Request) -> Response:
        if not self._key_ok(request.headers.get(API_KEY_HEADER)):
            return _json({"error": _NO_KEY}, 401)
        if self.hub.connections >= self.config.push_connections:
            return self._full()
        subscription = self._subscribe(request.path_params["player_id"])

        async def events() -> AsyncIterator[bytes]:
            try:
                yield b": connected\n\n"
                while not subscription.dropped.is_set():
                    try:
                        payload = await asyncio.wait_for(subscription.queue.get(), 15)
                    except asyncio.TimeoutError:
                        yield b": keep-alive\n\n"
                        continue
                    line = payload.replace(b"\r", b" ").replace(b"\n", b" ")
                    yield b"data: " + line + b"\n\n"
                self.metrics.push_dropped.inc()  # fell behind: the stream ends
            finally:
                self._unsubscribe(subscription)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store"})  # fmt: skip

    def _full(self) -> Response:
        self.metrics.rejects.labels("push_full").inc()
        limit = self.config.push_connections
        return _json({"error": f"{limit} push connections open; retry later"}, 503,
                     {"Retry-After": "5"})  # fmt: skip

    def _key_ok(self, given: str | None) -> bool:
        try:
            self._authorize(given)
        except _Refused:
            self.metrics.rejects.labels("unauthorized").inc()
            return False
        return True

    def _subscribe(self, player: str) -> Subscription:
        subscription = self.hub.subscribe(player)
        self.metrics.push_connections.set(self.hub.connections)
        return subscription

    def _unsubscribe(self, subscription: Subscription) -> None:
        self.hub.unsubscribe(subscription)
        self.metrics.push_connections.set(self.hub.connections)

    # -- health -------------------------------------------------------------------------------

    async def healthz(self, _request: Request) -> Response:
        return _json({"status": "alive"})

    async def readyz(self, _request: Request) -> Response:
        problems = []
        if self.kafka_error:
            problems.append(self.kafka_error)
        if self.missing_topics:
            problems.append(f"missing topics: {', '.join(sorted(self.missing_topics))}; create them"
                            " (kafka-topics.sh --create --topic NAME)")  # fmt: skip
        if self.breaker.state == "open":
            problems.append("circuit breaker open: Kafka failed to acknowledge")
        if self.feed is not None and not self.feed.assigned.is_set():
            problems.append(f"push feed not yet assigned {self.push_topic}")
        if problems:
            return _json({"status": "not ready", "problems": problems}, 503)
        return _json({"status": "ready"})

    async def metrics_page(self, _request: Request) -> Response:
        return Response(generate_latest(self.metrics.registry), media_type=CONTENT_TYPE_LATEST)


def _gunzip(data: bytes, limit: int) -> bytes:
    """Every member of a gzip body (writers may concatenate several, at most
    ``_GZIP_MEMBERS``), never more than ``limit`` + 1 bytes inflated (a gzip bomb stops
    there)."""
    out: list[bytes] = []
    size = 0
    for _ in range(_GZIP_MEMBERS):
        inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = inflate.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise _Refused(400, "bad_body", f"body is not valid gzip: {exc}") from None
        size += len(chunk)
        out.append(chunk)
        if size > limit:
            raise _Refused(413, "body_too_large", f"body over {limit} bytes decompressed")
        if not inflate.eof:
            raise _Refused(400, "bad_body", "gzip body is truncated")
        data = inflate.unused_data
        if not data.strip(b"\x00"):  # padding after the last member, as gzip(1) allows
            return b"".join(out)
    # Each member copies the rest of the body: many tiny ones would cost quadratic time.
    raise _Refused(400, "bad_body", f"more than {_GZIP_MEMBERS} gzip members in one body")


def _renumbered(routed: Routed, kept: np.ndarray) -> Routed:
    """``routed`` of the kept events, with indices of the whole request."""
    index = kept.tolist()
    out = Routed()
    out.good = {t: [(index[i], key) for i, key in rows] for t, rows in routed.good.items()}
    out.dead = [(index[i], raw, reason) for i, raw, reason in routed.dead]
    return out
