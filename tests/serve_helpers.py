"""The ingestion service as users run it (``thermocline serve`` in a process of its own), and
Kafka helpers to read back exactly what it produced."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from scripts.services import free_port

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "examples" / "demo.yaml"
KEY = "test-key-1"
OTHER_KEY = "test-key-2"


def create_topics(bootstrap: str, names: Iterable[str], partitions: int = 3, **config: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(n, partitions, 1, config=config) for n in names])
    for future in futures.values():
        future.result(30)


def topic_names(prefix: str | None = None) -> dict[str, str]:
    """Fresh topic names for one service: hot, warm, cold, dead and push."""
    prefix = prefix or f"t{uuid.uuid4().hex[:8]}"
    return {t: f"{prefix}.{t}" for t in ("hot", "warm", "cold", "dead", "push")}


@dataclass
class Record:
    topic: str
    partition: int
    key: bytes | None
    value: bytes
    headers: dict[str, bytes]
    timestamp: int


def read_topics(
    bootstrap: str, topics: Iterable[str], timeout: float = 30
) -> dict[str, list[Record]]:
    """Every record of ``topics`` from the beginning to their current end, by topic."""
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex}",
         "enable.auto.commit": False}
    )  # fmt: skip
    out: dict[str, list[Record]] = {}
    try:
        wanted: list[TopicPartition] = []
        for topic in topics:
            out[topic] = []
            meta = consumer.list_topics(topic, timeout=10).topics[topic]
            for p in meta.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high > low:
                    wanted.append(TopicPartition(topic, p, low))
        ends = {
            (tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1]
            for tp in wanted
        }
        consumer.assign(wanted)
        positions = {k: 0 for k in ends}
        deadline = time.monotonic() + timeout
        while any(positions[k] < ends[k] for k in ends):
            assert time.monotonic() < deadline, f"not all read: {positions} of {ends}"
            for m in consumer.consume(1000, 0.5):
                if m.error():
                    continue
                positions[(m.topic(), m.partition())] = m.offset() + 1
                out[m.topic()].append(
                    Record(m.topic(), m.partition(), m.key(), m.value(),
                           dict(m.headers() or []), m.timestamp()[1])
                )  # fmt: skip
    finally:
        consumer.close()
    return out


def serve_config(tmp: Path, bootstrap: str, topics: dict[str, str], **serve: Any) -> Path:
    """The demo's policy with a ``serve`` section writing to ``topics``."""
    config = yaml.safe_load(DEMO.read_text())
    config["alerts_topic"] = topics["push"]
    config["serve"] = {
        "bootstrap": bootstrap,
        "topics": {t: topics[t] for t in ("hot", "warm", "cold", "dead")},
        "api_keys": [KEY],
        **serve,
    }
    path = tmp / f"serve-{uuid.uuid4().hex[:6]}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@dataclass
class RunningService:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text

    def metric(self, name: str, **labels: str) -> float:
        """One sample of ``/metrics`` (0 when absent)."""
        want = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
        )
        for line in self.metrics().splitlines():
            if line.startswith(want + " "):
                return float(line.split()[-1])
        return 0.0


@contextmanager
def running_service(
    config: Path, tmp: Path, env: dict[str, str] | None = None, ready: bool = True
) -> Iterator[RunningService]:
    """``thermocline serve --config CONFIG`` on a free port; stopped (SIGTERM by pid) after."""
    port = free_port()
    log = tmp / f"serve-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "serve", "--config", str(config), "--port", str(port)],
        stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, **(env or {})},
    )  # fmt: skip
    service = RunningService(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, log.read_text()
            try:
                status = httpx.get(f"{service.url}/readyz" if ready else f"{service.url}/healthz",
                                   timeout=2).status_code  # fmt: skip
                if status == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready in 60 s:\n{log.read_text()}"
            time.sleep(0.2)
        yield service
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


def post(
    service: RunningService, body: bytes, key: str | None = KEY, **headers: str
) -> httpx.Response:
    all_headers = {"content-type": "application/json", **headers}
    if key is not None:
        all_headers["x-api-key"] = key
    return httpx.post(f"{service.url}/v1/events", content=body, headers=all_headers, timeout=60)


def ndjson(events: Iterable[dict[str, Any]]) -> bytes:
    return b"\n".join(json.dumps(e).encode() for e in events)
