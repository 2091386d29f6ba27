"""Input built to hurt: nesting deep enough to overflow a parser's stack, framing that costs
quadratic time, uploads cut short, events the broker refuses. Each is one dead letter or one
refused request; the process and every other request go on (found by an adversarial review)."""

from __future__ import annotations

import gzip
import os
import signal
import socket
import time
from pathlib import Path

import pytest

from routers import decode_ndjson
from routers.decode import MAX_DEPTH
from routers.records import join_records, max_depth
from tests.serve_helpers import (
    KEY,
    RunningService,
    create_topics,
    post,
    read_topics,
    running_service,
    serve_config,
    topic_names,
)

GOOD = b'{"event_id":"e1","player_id":7,"event_time":1764000000000,"event_type":"login"}'


def _nested(depth: int, pretty: bool = False) -> bytes:
    opening = b"[\n" if pretty else b"["
    return (
        b'{"event_id":"d","player_id":"p","event_time":1764000000000,"event_type":"x","a":'
        + opening * depth + b"]" * depth + b"}"
    )  # fmt: skip


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 1_000, 10_000, 1_000_000])
def test_an_event_nested_too_deep_is_one_dead_letter(depth: int) -> None:
    # 10,000 levels crashed the process inside Arrow; 1,000 raised RecursionError.
    deep = _nested(depth)
    out = decode_ndjson(b"\n".join([GOOD, b"", deep, GOOD]))
    assert out.good.num_rows == 2
    assert out.dead.column("reason").to_pylist() == ["too_deep"]
    assert out.dead.column("raw").to_pylist() == [deep]
    # Spread over lines (a Kafka record or an array element): one dead letter as well.
    data, raw_lines = join_records([GOOD, _nested(depth, pretty=True)])
    out = decode_ndjson(data, raw_lines=raw_lines)
    assert out.good.num_rows == 1 and out.dead.num_rows == 1


def test_nesting_up_to_the_limit_and_brackets_in_strings_are_fine() -> None:
    at_limit = _nested(MAX_DEPTH - 1)  # the event object is one level
    in_strings = GOOD[:-1] + b',"chat":"' + b"[{" * 500 + b'"}'
    assert max_depth(at_limit) == MAX_DEPTH and max_depth(in_strings) == 1
    out = decode_ndjson(b"\n".join([at_limit, in_strings]))
    assert out.dead.num_rows == 0 and out.good.num_rows == 2


@pytest.fixture(scope="module")
def service(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> RunningService:
    tmp = tmp_path_factory.mktemp("hostile")
    names = topic_names()
    # Topics that take messages up to 25 KB: an event under max_event_bytes but over that.
    create_topics(kafka_bootstrap, names.values(), partitions=1, **{"max.message.bytes": "25000"})
    config = serve_config(tmp, kafka_bootstrap, names, max_event_bytes=40_000,
                          breaker_failures=1, delivery_timeout="2s")  # fmt: skip
    with running_service(config, tmp) as running:
        running.topics = names  # type: ignore[attr-defined]
        yield running


def test_a_deep_event_does_not_take_the_service_or_its_neighbours_down(
    service: RunningService, kafka_bootstrap: str
) -> None:
    body = b"[" + GOOD + b"," + _nested(10_000) + b"]"
    answer = post(service, body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["dead_reasons"] == {"too_deep": 1} and answer.json()["accepted"] == 1
    assert post(service, b"[" + GOOD + b"]").status_code == 200
    assert service.process.poll() is None


def test_many_gzip_members_are_refused_before_they_cost_quadratic_time(
    service: RunningService,
) -> None:
    body = gzip.compress(b"[" + GOOD + b"]") + gzip.compress(b"") * 5_000
    started = time.monotonic()
    answer = post(service, body, **{"content-encoding": "gzip"})
    assert answer.status_code == 400 and "gzip members" in answer.json()["error"]
    assert time.monotonic() - started < 5


def test_an_upload_cut_short_leaves_no_traceback(service: RunningService) -> None:
    port = int(service.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /v1/events HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode()
            + b"\r\nContent-Length: 1000\r\n\r\n[" + GOOD[:20]
        )  # fmt: skip
    deadline = time.monotonic() + 10
    while not service.metric("thermocline_serve_rejects_total", reason="client_gone"):
        assert time.monotonic() < deadline, service.log.read_text()[-2000:]
        time.sleep(0.2)
    assert "Traceback" not in service.log.read_text()


def test_an_event_the_broker_refuses_is_413_and_leaves_the_breaker_closed(
    service: RunningService, kafka_bootstrap: str
) -> None:
    # Incompressible: the broker's limit applies to the compressed batch.
    large = GOOD[:-1] + b',"pad":"' + os.urandom(15_000).hex().encode() + b'"}'
    refused = post(service, b"[" + GOOD + b"," + large + b"]")
    assert refused.status_code == 413 and refused.json()["reason"] == "event_too_large"
    assert service.metric("thermocline_serve_breaker_open") == 0
    assert post(service, b"[" + GOOD + b"]").status_code == 200  # the broker is fine
    names = service.topics  # type: ignore[attr-defined]
    values = [r.value for rs in read_topics(kafka_bootstrap, list(names.values())).values()
              for r in rs]  # fmt: skip
    assert large not in values


def test_sigterm_ends_even_with_a_push_stream_open(kafka_bootstrap: str, tmp_path: Path) -> None:
    names = topic_names()
    create_topics(kafka_bootstrap, names.values(), partitions=1)
    config = serve_config(tmp_path, kafka_bootstrap, names, delivery_timeout="1s")
    with running_service(config, tmp_path) as service:
        port = int(service.url.rsplit(":", 1)[1])
        sse = socket.create_connection(("127.0.0.1", port))
        sse.sendall(
            b"GET /v1/stream/p1 HTTP/1.1\r\nHost: x\r\nX-API-Key: %s\r\n\r\n" % KEY.encode()
        )
        received = b""
        while b"connected" not in received:
            received += sse.recv(1000)
        started = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        # Drained, then uvicorn re-raises the signal: the status says what stopped it.
        assert service.process.wait(20) in (0, -signal.SIGTERM)
        assert time.monotonic() - started < 1 + 1 + 5  # the delivery timeout + grace
        sse.close()
