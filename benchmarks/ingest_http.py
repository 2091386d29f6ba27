"""The ingestion service under load: events/s and request latency for batches of 100 events.

``thermocline serve`` runs as users run it (its own process, one uvicorn worker) against a real
broker (``KAFKA_BOOTSTRAP``, else one started here); every request is answered only after Kafka
acknowledged its events. The load comes from a minimal asyncio HTTP/1.1 client (keep-alive
connections, pre-built requests) so that the client takes little of the machine's 2 cores.

1. **Sweep**: closed loop at increasing concurrency (connections each sending their next batch
   when the last is answered): events/s, p50 and p99 latency per step. The knee is the step of
   the highest throughput whose p99 is within the target.
2. **Paced**: open loop at fixed rates (requests scheduled evenly over the connections); latency
   counts from each request's scheduled time, so a backlog shows in p99 (no coordinated
   omission).
3. **Producers**: the same acknowledged batches of 100 produced by confluent-kafka and by
   kafka-python (the choice of the service's producer), in paired alternating rounds.

Results: ``results/ingest_http.json`` and ``results/ingest_http.png``.

    python -m benchmarks.ingest_http                    # make bench-ingest
    python -m benchmarks.ingest_http --seconds 1 --concurrency 1 4 --rates 5000   # smoke
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from benchmarks._common import RESULTS, emit
from engine.sources import SyntheticSource
from routers.records import NotAJsonArray, split_json_array
from scripts.services import free_port, start_kafka

ROOT = Path(__file__).resolve().parents[1]
KEY = "bench-key"
TARGET_EVENTS_S = 50_000
TARGET_P99_MS = 50.0


def _bodies(count: int, per_body: int = 100) -> list[bytes]:
    """``count`` JSON array bodies of realistic telemetry (numeric ids, ISO times, ...)."""
    now_ms = int(time.time() * 1000)
    source = SyntheticSource(
        events=count * per_body * 2, players=100_000, seed=7, start_ms=now_ms - 60_000,
        numeric_id_share=0.2, iso_time_share=0.2, malformed_share=0.001,
        block_rows=count * per_body * 2,
    )  # fmt: skip
    lines = []
    for line in source.block_bytes(0, count * per_body * 2).split(b"\n"):
        try:  # the framing a client's serializer gives (no line cut short)
            if len(split_json_array(b"[" + line + b"]")) == 1:
                lines.append(line)
        except NotAJsonArray:
            pass
    return [
        b"[" + b",".join(lines[i : i + per_body]) + b"]"
        for i in range(0, count * per_body, per_body)
    ]


def _request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /v1/events HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nX-API-Key: {KEY}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _exchange(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
) -> int:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _closed_loop(
    port: int, requests: list[bytes], connections: int, seconds: float
) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop = time.perf_counter() + seconds

    async def connection(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        i = offset
        while time.perf_counter() < stop:
            started = time.perf_counter()
            status = await _exchange(reader, writer, requests[i % len(requests)])
            latencies.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1
            i += connections
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(connection(c) for c in range(connections)))
    return _summary(latencies, statuses, time.perf_counter() - began, connections=connections)


async def _paced(
    port: int, requests: list[bytes], connections: int, rate_events: float, seconds: float
) -> dict[str, Any]:
    interval = 100 / rate_events  # a request carries 100 events
    total = int(seconds / interval)
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    began = time.perf_counter() + 0.2

    async def connection(offset: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for n in range(offset, total, connections):
            due = began + n * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            status = await _exchange(reader, writer, requests[n % len(requests)])
            latencies.append(time.perf_counter() - due)  # from when it should have been sent
            statuses[status] = statuses.get(status, 0) + 1
        writer.close()

    await asyncio.gather(*(connection(c) for c in range(connections)))
    record = _summary(latencies, statuses, time.perf_counter() - began, connections=connections)
    record["target_events_s"] = rate_events
    return record


def _summary(
    latencies: list[float], statuses: dict[int, int], seconds: float, **extra: Any
) -> dict[str, Any]:
    ms = np.array(latencies) * 1000
    ok = statuses.get(200, 0)
    return {
        **extra,
        "requests": len(latencies),
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "events_s": round(ok * 100 / seconds),
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "max_ms": round(float(ms.max()), 2) if len(ms) else None,
    }


def _producer_round(bootstrap: str, topic: str, values: list[bytes], library: str) -> float:
    """Events/s producing ``values`` in acknowledged batches of 100 (as the service does)."""
    send: Callable[[bytes, bytes], object]
    if library == "confluent-kafka":
        producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2,
                             "enable.idempotence": True, "compression.type": "lz4"})  # fmt: skip
        send, flush, close = (lambda v, k: producer.produce(topic, v, k)), producer.flush, None
    else:
        from kafka import KafkaProducer

        other = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2,
                              compression_type="lz4")  # fmt: skip
        send, flush, close = (lambda v, k: other.send(topic, v, k)), other.flush, other.close
    started = time.perf_counter()
    for i in range(0, len(values), 100):
        for value in values[i : i + 100]:
            send(value, b"k%d" % (i % 977))
        flush()
    elapsed = time.perf_counter() - started
    if close is not None:
        close()
    return len(values) / elapsed


def _framework_round(requests: int = 20_000) -> dict[str, float]:
    """Microseconds per request of the framework alone: Starlette's routing and response vs a
    bare ASGI callable, both driven in-process (no socket), for a POST with a small body."""
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response
    from starlette.routing import Route

    async def endpoint(request: Request) -> Response:
        await request.body()
        return Response(b"{}", media_type="application/json")

    starlette_app = Starlette(routes=[Route("/v1/events", endpoint, methods=["POST"])])

    async def bare_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})  # fmt: skip
        await send({"type": "http.response.body", "body": b"{}"})

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": "/v1/events", "raw_path": b"/v1/events",
             "query_string": b"", "root_path": "", "headers": [(b"x-api-key", b"k")],
             "server": ("127.0.0.1", 8080), "client": ("127.0.0.1", 1)}  # fmt: skip

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"[]", "more_body": False}

    async def send(_message: dict[str, Any]) -> None:
        return None

    async def drive(app: Any) -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await app(dict(scope), receive, send)
        return (time.perf_counter() - started) / requests * 1e6

    out = {}
    for name, app in (("starlette", starlette_app), ("bare_asgi", bare_app)):
        out[f"{name}_us"] = round(min(asyncio.run(drive(app)) for _ in range(3)), 1)
    return out


def _plot(sweep: list[dict[str, Any]], paced: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    conc = [s["connections"] for s in sweep]
    left.plot(conc, [s["events_s"] / 1000 for s in sweep], "o-", label="events/s (K)")
    left.axhline(TARGET_EVENTS_S / 1000, color="grey", ls="--", label="target 50K/s")
    left.set_xscale("log", base=2)
    left.set_xlabel("concurrent connections (closed loop)")
    left.set_ylabel("thousand events/s")
    twin = left.twinx()
    twin.plot(conc, [s["p99_ms"] for s in sweep], "s-", color="tab:red", label="p99 ms")
    twin.plot(conc, [s["p50_ms"] for s in sweep], "^-", color="tab:orange", label="p50 ms")
    twin.set_ylabel("latency, ms")
    left.legend(loc="upper left")
    twin.legend(loc="lower right")
    left.set_title("Sweep: batches of 100 events")
    rates = [p["target_events_s"] / 1000 for p in paced]
    right.plot(rates, [p["p99_ms"] for p in paced], "s-", color="tab:red", label="p99")
    right.plot(rates, [p["p50_ms"] for p in paced], "^-", color="tab:orange", label="p50")
    right.axhline(TARGET_P99_MS, color="grey", ls="--", label="p99 target")
    right.set_yscale("log")
    right.set_xlabel("paced rate, thousand events/s (open loop)")
    right.set_ylabel("latency from scheduled send, ms")
    right.legend()
    right.set_title("Paced")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per step")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 2, 4, 8, 16, 32, 64])
    parser.add_argument("--rates", type=float, nargs="+", default=[25_000, 40_000, 50_000, 60_000])
    parser.add_argument("--paced-connections", type=int, default=64)
    parser.add_argument("--producer-events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3, help="producer rounds")
    parser.add_argument("--framework-requests", type=int, default=20_000)
    parser.add_argument(
        "--producer", action="append", default=[], metavar="KEY=VALUE",
        help="a librdkafka setting for the service's producer (serve.producer), repeatable",
    )  # fmt: skip
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP")
    if not bootstrap:
        broker = start_kafka()
        bootstrap = broker.address
    try:
        return _measure(args, bootstrap)
    finally:
        if broker is not None:
            broker.stop()


def _measure(args: argparse.Namespace, bootstrap: str) -> int:
    tmp = Path(tempfile.mkdtemp(prefix="tc-bench-ingest-"))
    prefix = f"bench{uuid.uuid4().hex[:6]}"
    topics = {t: f"{prefix}.{t}" for t in ("hot", "warm", "cold", "dead", "producers")}
    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(t, 6, 1) for t in topics.values()]).values():
        future.result(30)
    config = yaml.safe_load((ROOT / "examples" / "demo.yaml").read_text())
    config["serve"] = {
        "bootstrap": bootstrap,
        "topics": {t: topics[t] for t in ("hot", "warm", "cold", "dead")},
        "api_keys": [KEY],
        "rate_limit": "1000000/second",
        "producer": dict(setting.split("=", 1) for setting in args.producer),
    }
    (tmp / "serve.yaml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = (tmp / "serve.log").open("wb")
    service = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--config", str(tmp / "serve.yaml"),
         "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or service.poll() is not None:
                raise RuntimeError((tmp / "serve.log").read_text())
            time.sleep(0.2)
        bodies = _bodies(min(500, max(20, int(max(args.rates) * args.seconds / 100))))
        requests = [_request(port, b) for b in bodies]
        asyncio.run(_closed_loop(port, requests, 8, 1.0))  # warm-up
        sweep = []
        for connections in args.concurrency:
            step = asyncio.run(_closed_loop(port, requests, connections, args.seconds))
            print(f"sweep {connections:3d} connections: {step}", file=sys.stderr)
            sweep.append(step)
        paced = []
        for rate in args.rates:
            step = asyncio.run(_paced(port, requests, args.paced_connections, rate, args.seconds))
            print(f"paced {rate:,.0f} events/s: {step}", file=sys.stderr)
            paced.append(step)
    finally:
        service.terminate()
        service.wait(30)

    values = [v for b in bodies for v in split_json_array(b)][: args.producer_events]
    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        pair = {}
        for library in ("confluent-kafka", "kafka-python"):
            pair[library] = _producer_round(bootstrap, topics["producers"], values, library)
        rounds.append(pair)
    ratios = [r["confluent-kafka"] / r["kafka-python"] for r in rounds]

    framework = _framework_round(args.framework_requests)
    within = [s for s in sweep if s["p99_ms"] is not None and s["p99_ms"] <= TARGET_P99_MS]
    knee = max(within, key=lambda s: s["events_s"]) if within else None
    paced_ok = [
        p for p in paced if p["p99_ms"] is not None and p["p99_ms"] <= TARGET_P99_MS
        and p["statuses"].keys() == {"200"}
    ]  # fmt: skip
    record = {
        "cpus": os.cpu_count(),
        "producer_settings": config["serve"]["producer"],
        "events_per_request": 100,
        "bytes_per_request": round(statistics.mean(map(len, bodies))),
        "sweep": sweep,
        "paced": paced,
        "knee": knee,
        "best_paced_within_target": max((p["target_events_s"] for p in paced_ok), default=None),
        "target": {"events_s": TARGET_EVENTS_S, "p99_ms": TARGET_P99_MS},
        "target_met": bool(knee and knee["events_s"] >= TARGET_EVENTS_S),
        "framework_us_per_request": framework,
        "producers": {
            "rounds": rounds,
            "median_ratio_confluent_over_kafka_python": round(statistics.median(ratios), 2),
        },
    }
    args.results.mkdir(parents=True, exist_ok=True)
    _plot(sweep, paced, args.results / "ingest_http.png")
    emit("ingest_http", record, args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
