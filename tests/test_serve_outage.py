"""The ingestion service while its broker is down: 503 with Retry-After and nothing accepted;
once the broker is back, the service recovers by itself (no restart). Its own broker, stopped
and started again, so that the session's broker serves the other tests undisturbed."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from scripts.services import Service, start_kafka
from tests.serve_helpers import (
    create_topics,
    post,
    read_topics,
    running_service,
    serve_config,
    topic_names,
)
from tests.test_serve import telemetry


@pytest.fixture(scope="module")
def broker() -> Iterator[Service]:
    service = start_kafka()
    yield service
    service.stop()


def test_broker_down_503_nothing_accepted_then_back_without_restart(
    broker: Service, tmp_path: Path
) -> None:
    names = topic_names()
    create_topics(broker.address, names.values(), partitions=2)
    config = serve_config(tmp_path, broker.address, names, delivery_timeout="3s",
                          breaker_failures=1, breaker_cooldown="1s")  # fmt: skip
    lines = [x for x in telemetry(400, seed=21) if x.startswith(b"{") and x.endswith(b"}")]
    bodies = [b"\n".join(lines[i : i + 20]) for i in range(0, 300, 20)]
    ndjson = {"content-type": "application/x-ndjson"}
    accepted: list[bytes] = []
    with running_service(config, tmp_path) as service:
        assert post(service, bodies[0], **ndjson).status_code == 200
        accepted.append(bodies[0])

        broker.halt()
        started = time.monotonic()
        refused = post(service, bodies[1], **ndjson)
        assert refused.status_code == 503, refused.text
        assert int(refused.headers["retry-after"]) >= 1
        assert time.monotonic() - started < 3 + 5  # the delivery timeout, not forever
        # The breaker is open now: refused at once, Kafka left alone; not ready.
        started = time.monotonic()
        assert post(service, bodies[2], **ndjson).status_code == 503
        assert time.monotonic() - started < 1
        ready = httpx.get(f"{service.url}/readyz", timeout=10)
        assert ready.status_code == 503 and ready.json()["problems"]
        assert service.metric("thermocline_serve_breaker_open") == 1

        broker.restart()
        deadline = time.monotonic() + 90
        statuses = []
        for body in bodies[3:]:  # a client retrying its batch until it is taken
            while True:
                status = post(service, body, **ndjson).status_code
                statuses.append(status)
                if status == 200:
                    accepted.append(body)
                    break
                assert status == 503 and time.monotonic() < deadline, statuses
                time.sleep(0.5)
        assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
        assert service.metric("thermocline_serve_breaker_open") == 0

    got = read_topics(broker.address, [names[t] for t in ("hot", "warm", "cold", "dead")])
    produced = Counter(r.value for records in got.values() for r in records)
    # Exactly the events of the requests answered 200: none of the refused ones.
    assert produced == Counter(x for body in accepted for x in body.split(b"\n"))
