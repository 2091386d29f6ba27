"""``thermocline serve`` against the real broker of the test session, as a client sees it:
events come out on the topics exactly as the router classifies them, keyed by player; keys,
limits and malformed input behave as documented; many concurrent clients lose nothing; posted
events reach the lake and hot state through the pipeline, and its alerts come back pushed."""

from __future__ import annotations

import asyncio
import functools
import gzip
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest
import websockets
import yaml
from confluent_kafka import Producer

from engine.config import PipelineConfig
from engine.lake import Lake
from engine.pipeline import Pipeline
from engine.serve import SLOW_CLIENT_CLOSE
from engine.sources import SyntheticSource
from routers import Router, decode_ndjson
from routers.records import NotAJsonArray, join_records, split_json_array
from tests.serve_helpers import (
    DEMO,
    KEY,
    OTHER_KEY,
    RunningService,
    create_topics,
    ndjson,
    post,
    read_topics,
    running_service,
    serve_config,
    topic_names,
)

TEMPERATURES = ("hot", "warm", "cold")


@pytest.fixture(scope="module")
def tmp_module(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="module")
def topics(kafka_bootstrap: str) -> dict[str, str]:
    names = topic_names()
    create_topics(kafka_bootstrap, names.values())
    return names


@pytest.fixture(scope="module")
def service(
    kafka_bootstrap: str, topics: dict[str, str], tmp_module: Path
) -> Iterator[RunningService]:
    config = serve_config(tmp_module, kafka_bootstrap, topics, rate_limit="100000/second")
    with running_service(config, tmp_module) as running:
        yield running


def telemetry(events: int, seed: int) -> list[bytes]:
    """Game events as clients send them: per-type fields, optional ones missing, numeric ids,
    ISO and epoch times, a few malformed lines (the synthetic source's realistic mix)."""
    now_ms = int(time.time() * 1000)
    source = SyntheticSource(
        events=events, players=200, seed=seed, start_ms=now_ms - 60_000, numeric_id_share=0.3,
        iso_time_share=0.3, malformed_share=0.02, block_rows=events,
    )  # fmt: skip
    return source.block_bytes(0, events).split(b"\n")


#: Events real clients send that a naive reader gets wrong, each in a JSON array body.
HOSTILE = [
    b'{"event_id": "x1", "player_id": "p\xff\xfe", "event_time": 1, "event_type": "level_up"}',
    b'{"event_id": "x2", "player_id": "p-1", "event_time": "2026-11-27T10:00:00Z", "event_type": "chat", "text": "a\nb"}',  # noqa: E501
    b'{\n  "event_id": "x3",\n  "player_id": 123456789012,\n  "event_time": %d,\n  "event_type": "purchase",\n  "amount": 4.99\n}',  # noqa: E501
    b'"not an object"',
    b'{"event_id": "x4", "event_time": 1764000000000, "event_type": "purchase"}',
    b'{"event_id": "x5", "player_id": "p-2", "event_time": 1764000000000, "event_type": "level_up", "level": "max"}',  # noqa: E501
    b"",
    b'{"event_id": "x6", "player_id": "p-3", "event_time": 1764000000000, "event_type": "social", "s": "],[{\\"}"}',  # noqa: E501
]


def _framable(line: bytes) -> bool:
    try:
        return len(split_json_array(b"[" + line + b"]")) == 1
    except NotAJsonArray:
        return False


def _plain(line: bytes) -> bool:
    """A line the stdlib's json re-encodes to the same event (for an NDJSON body built by
    json.dumps, as many clients build theirs)."""
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


@functools.cache
def _demo_router() -> Router:
    return Router.from_dict(yaml.safe_load(DEMO.read_text())["policy"])


def reference(record: bytes, arrival_ms: int) -> tuple[str, str | None]:
    """What the router makes of one event on its own: ``("hot"|"warm"|"cold", key)`` or
    ``("dead", reason)``: the reference the service's grouped decoding must agree with."""
    router = _demo_router()
    data, raw_lines = join_records([record])
    decoded = decode_ndjson(data, router.policy.schema, raw_lines=raw_lines)
    if decoded.dead.num_rows:
        return "dead", decoded.dead.column("reason")[0].as_py()
    good = decoded.good.append_column(
        router.policy.schema.arrival, pa.array([arrival_ms]).cast(pa.timestamp("ms", "UTC"))
    )
    return router.classify(good)[0].as_py(), good.column("player_id")[0].as_py()


def test_events_land_on_their_topics_exactly_as_classified_keyed_by_player(
    service: RunningService, topics: dict[str, str], kafka_bootstrap: str
) -> None:
    lines = telemetry(600, seed=3)
    # A JSON array body comes from a client's serializer: its framing is whole (the line cut
    # short that an NDJSON writer can produce has no place in it), its events not always good.
    framed = [x for x in lines if _framable(x)]
    hostile = [h % int(time.time() * 1000) if b"%d" in h else h for h in HOSTILE]
    bodies = [
        (b"[" + b",".join(framed[0:100]) + b"]", {}),
        (b"[" + b",\n ".join(framed[100:200] + hostile) + b"]", {}),
        (ndjson(json.loads(x) for x in lines[200:300] if _plain(x)), {}),
        (b"\n".join(lines[300:400]), {"content-type": "application/x-ndjson"}),
        (gzip.compress(b"[" + b",".join(framed[400:500]) + b"]"), {"content-encoding": "gzip"}),
        (gzip.compress(b"\n".join(lines[500:600])), {"content-encoding": "gzip",
                                                     "content-type": "application/x-ndjson"}),
    ]  # fmt: skip
    sent: list[bytes] = []
    totals: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    for body, headers in bodies:
        response = post(service, body, **headers)
        assert response.status_code == 200, response.text
        answer = response.json()
        totals.update({k: answer[k] for k in (*TEMPERATURES, "dead", "accepted")})
        reasons.update(answer["dead_reasons"])
        raw = gzip.decompress(body) if headers.get("content-encoding") else body
        if raw.startswith(b"["):
            sent += split_json_array(raw)
        else:
            sent += [x for x in raw.split(b"\n") if x.strip()]
    assert totals["accepted"] + totals["dead"] == len(sent)
    assert totals["dead"] >= len(HOSTILE) - 2  # x3 and x6 are good events

    got = read_topics(kafka_bootstrap, [topics[t] for t in (*TEMPERATURES, "dead")])
    by_temperature = {t: got[topics[t]] for t in (*TEMPERATURES, "dead")}
    assert {t: len(r) for t, r in by_temperature.items()} == {
        t: totals[t] for t in (*TEMPERATURES, "dead")
    }
    # Nothing lost, nothing twice, nothing changed: the values are the events' exact bytes.
    produced = Counter(r.value for rs in by_temperature.values() for r in rs)
    assert produced == Counter(sent)
    # Each event where the router sends it on its own, keyed by its (normalized) player id.
    partitions: dict[bytes, set[int]] = {}
    for temperature, records in by_temperature.items():
        for r in records:
            kind, detail = reference(r.value, r.timestamp)
            assert kind == temperature, (r.value, kind, detail)
            if temperature == "dead":
                assert r.key is None and r.headers["reason"].decode() == detail
            else:
                assert r.key == str(detail).encode(), r.value
                partitions.setdefault(r.key, set()).add(r.partition)
    assert all(len(p) == 1 for p in partitions.values())  # a player's events in one partition
    assert len(partitions) > 50
    assert sum(reasons.values()) == totals["dead"]
    assert service.metric("thermocline_serve_events_total", temperature="hot") == totals["hot"]


def test_keys_limits_and_malformed_bodies(kafka_bootstrap: str, tmp_module: Path) -> None:
    names = topic_names()
    create_topics(kafka_bootstrap, names.values(), partitions=1)
    config = serve_config(
        tmp_module, kafka_bootstrap, names, api_keys=[KEY, OTHER_KEY], rate_limit="4/second",
        max_body_bytes=4096, max_events=10, max_event_bytes=300,
    )  # fmt: skip
    now = int(time.time() * 1000)
    good = [g for g in telemetry(40, seed=5) if len(g) < 300 and reference(g, now)[0] != "dead"]
    good = good[:5]
    with running_service(config, tmp_module) as service:
        array = b"[" + b",".join(good) + b"]"
        assert post(service, array, key=None).status_code == 401
        assert post(service, array, key="wrong").status_code == 401
        assert post(service, array, key=KEY[:-1]).status_code == 401
        too_many = b"[" + b",".join([good[0]] * 11) + b"]"
        refused = post(service, too_many, key=OTHER_KEY)
        assert refused.status_code == 413 and refused.json()["reason"] == "too_many_events"
        big = b"[" + b" " * 5000 + b"]"
        assert post(service, big, key=OTHER_KEY).status_code == 413
        bomb = gzip.compress(b"[" + b" " * 2_000_000 + b"]")
        assert len(bomb) < 4096
        refused = post(service, bomb, key=OTHER_KEY, **{"content-encoding": "gzip"})
        assert refused.status_code == 413
        time.sleep(1.1)  # a fresh rate window for what follows
        large = good[0][:-1] + b', "pad": "' + b"x" * 400 + b'"}'
        answer = post(service, b"[" + large + b"," + good[1] + b"]", key=OTHER_KEY)
        assert answer.status_code == 200, answer.text
        assert answer.json()["dead_reasons"] == {f"too_large:{len(large)} bytes": 1}
        assert answer.json()["accepted"] == 1
        cases = [
            (b"[" + good[0], {}, 400),  # not closed
            (b"not json at all", {"content-type": "application/json"}, 200),  # one dead line
            (b"\x1f\x8b garbage", {"content-encoding": "gzip"}, 400),
            (array, {"content-encoding": "br"}, 415),
        ]
        time.sleep(1.1)
        statuses = [post(service, body, key=OTHER_KEY, **h).status_code for body, h, _ in cases]
        assert statuses == [c[2] for c in cases]
        # NDJSON: each bad line is a dead letter on its own, the rest accepted.
        time.sleep(1.1)
        mixed = b"\n".join([good[2], b"{broken", good[3], b'{"event_id": 1}'])
        answer = post(service, mixed, key=OTHER_KEY, **{"content-type": "application/x-ndjson"})
        assert answer.status_code == 200
        assert answer.json()["accepted"] == 2 and answer.json()["dead"] == 2
        assert [e["index"] for e in answer.json()["errors"]] == [1, 3]
        # Rate limit per key: over 4 a second, 429 with Retry-After; the other key unaffected.
        time.sleep(1.1)
        burst = [post(service, b"[]", key=KEY) for _ in range(8)]
        limited = [r for r in burst if r.status_code == 429]
        assert len(limited) >= 3 and all(int(r.headers["retry-after"]) >= 1 for r in limited)
        assert post(service, b"[]", key=OTHER_KEY).status_code == 200
        assert service.metric("thermocline_serve_rejects_total", reason="unauthorized") == 3
        assert service.metric("thermocline_serve_rejects_total", reason="rate_limited") == len(
            limited
        )
        got = read_topics(kafka_bootstrap, [names[t] for t in (*TEMPERATURES, "dead")])
        values = [r.value for rs in got.values() for r in rs]
        # Only what was answered 200 was produced: 2 + 1 (not json) + 4 (NDJSON) records.
        assert len(values) == 7
        dead = got[names["dead"]]
        truncated = [r for r in dead if r.headers["reason"].startswith(b"too_large")]
        assert [r.value for r in truncated] == [large[:300]]
        assert b"not json at all" in values and b"{broken" in values


def test_many_concurrent_clients_lose_nothing(
    service: RunningService, topics: dict[str, str], kafka_bootstrap: str
) -> None:
    lines = [x for x in telemetry(10_500, seed=11) if _framable(x)]
    clients, per_client = 20, 5
    bodies = [b"[" + b",".join(lines[i : i + 100]) + b"]" for i in range(0, len(lines), 100)]
    bodies = bodies[: clients * per_client]
    before = read_topics(kafka_bootstrap, [topics[t] for t in (*TEMPERATURES, "dead")])
    counted = {t: len(before[topics[t]]) for t in (*TEMPERATURES, "dead")}

    headers = {"x-api-key": KEY, "content-type": "application/json"}

    async def client(mine: list[bytes], http: httpx.AsyncClient) -> list[dict[str, Any]]:
        answers = []
        for body in mine:
            r = await http.post(f"{service.url}/v1/events", content=body, headers=headers)
            assert r.status_code == 200, r.text
            answers.append(r.json())
        return answers

    async def load() -> list[dict[str, Any]]:
        limits = httpx.Limits(max_connections=clients)
        async with httpx.AsyncClient(timeout=60, limits=limits) as http:
            parts = await asyncio.gather(
                *(client(bodies[c::clients], http) for c in range(clients))
            )
        return [a for part in parts for a in part]

    answers = asyncio.run(load())
    assert len(answers) == len(bodies)
    accepted = {t: sum(a[t] for a in answers) for t in (*TEMPERATURES, "dead")}
    after = read_topics(kafka_bootstrap, [topics[t] for t in (*TEMPERATURES, "dead")])
    assert {t: len(after[topics[t]]) - counted[t] for t in (*TEMPERATURES, "dead")} == accepted
    assert sum(accepted.values()) == sum(len(split_json_array(b)) for b in bodies)


@pytest.mark.usefixtures("ray_local")
def test_posted_events_reach_the_lake_and_hot_state_and_alerts_come_back_pushed(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    names = topic_names()
    create_topics(kafka_bootstrap, names.values(), partitions=2)
    player = f"whale-{uuid.uuid4().hex[:6]}"
    now = datetime.now(timezone.utc)
    purchases = [
        {"event_id": f"buy-{i}", "player_id": player, "event_time": now.isoformat(),
         "event_type": "purchase", "amount": 4.99, "currency": "EUR", "item": "gems"}
        for i in range(5)
    ]  # fmt: skip
    others = [x for x in telemetry(400, seed=31) if _framable(x)]
    policy = yaml.safe_load(DEMO.read_text())["policy"]
    pipeline_config = PipelineConfig.from_dict(
        {
            "name": "http-e2e",
            "source": {"kind": "kafka", "bootstrap": kafka_bootstrap, "start": "earliest",
                       "topics": [names[t] for t in TEMPERATURES],
                       "group": f"e2e-{uuid.uuid4().hex[:6]}", "idle_timeout": "4s"},
            "policy": policy,
            "alerts_topic": names["push"],
            "hot": {"processor": "player_features", "options": {"alert_purchases": 3}},
            "cold": {"lake_uri": str(tmp_path / "lake")},
            "checkpoint_interval": "1s",
            "progress_every_s": 0,
        }
    )  # fmt: skip
    config = serve_config(tmp_path, kafka_bootstrap, names)
    with running_service(config, tmp_path) as service:

        async def scenario() -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Any]]:
            ws_url = service.url.replace("http://", "ws://") + f"/v1/stream/{player}"
            async with (
                websockets.connect(ws_url, additional_headers={"x-api-key": KEY}) as ws,
                httpx.AsyncClient(timeout=120) as http,
                http.stream("GET", f"{service.url}/v1/stream/{player}",
                            headers={"x-api-key": KEY}) as sse,
            ):  # fmt: skip
                body = (
                    b"[" + b",".join([*others, *map(str.encode, map(json.dumps, purchases))]) + b"]"
                )
                posted = await http.post(f"{service.url}/v1/events", content=body,
                                         headers={"x-api-key": KEY})  # fmt: skip
                assert posted.status_code == 200, posted.text
                run = threading.Thread(target=pipeline.run, daemon=True)
                run.start()
                pushed = [json.loads(await asyncio.wait_for(ws.recv(), 90))]
                streamed = []
                async for line in sse.aiter_lines():
                    if line.startswith("data: "):
                        streamed.append(json.loads(line.removeprefix("data: ")))
                        break
                await asyncio.to_thread(run.join, 120)
                return pushed, streamed, posted.json()

        pipeline = Pipeline(pipeline_config)
        try:
            pushed, streamed, answer = asyncio.run(scenario())
            hot = {r["player_id"]: r for r in pipeline.hot_state().to_pylist()}
        finally:
            pipeline.close()
    assert pushed[0]["player_id"] == player and pushed[0]["purchases"] == 5
    assert streamed == pushed  # the SSE fallback carries the same update
    assert hot[player]["purchases_total"] == 5
    # Every event the service accepted reached its path: cold ones in the lake, exactly.
    cold = Lake(str(tmp_path / "lake")).read("events")
    assert cold.num_rows == answer["cold"]
    accepted = answer["accepted"]
    assert sum(int(r["events_total"]) for r in hot.values()) == answer["hot"]
    assert accepted == answer["hot"] + answer["warm"] + answer["cold"]


def test_a_client_that_falls_behind_is_dropped_with_a_close_code(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    names = topic_names()
    create_topics(kafka_bootstrap, names.values(), partitions=1)
    config = serve_config(tmp_path, kafka_bootstrap, names, push_queue=4)
    slow, fast = "slow-reader", "fast-reader"
    update = b'{"player_id": "%s", "pad": "' + b"x" * 200_000 + b'"}'
    with running_service(config, tmp_path) as service:
        url = service.url.replace("http://", "ws://") + "/v1/stream/"
        headers = {"x-api-key": KEY}

        async def scenario() -> tuple[int | None, int]:
            async with (
                websockets.connect(url + slow, additional_headers=headers, max_queue=1) as ws,
                websockets.connect(url + fast, additional_headers=headers) as other,
            ):
                producer = Producer({"bootstrap.servers": kafka_bootstrap})
                for _ in range(100):  # ~20 MB for the reader that does not read
                    producer.produce(names["push"], update % slow.encode(), slow)
                producer.produce(names["push"], update % fast.encode(), fast)
                producer.flush(30)
                received = len(await asyncio.wait_for(other.recv(), 30))
                deadline = time.monotonic() + 60
                while not service.metric("thermocline_serve_push_dropped_total"):
                    assert time.monotonic() < deadline, "the slow reader was never dropped"
                    await asyncio.sleep(0.2)
                try:
                    while True:  # what was sent before the drop, then the close
                        await asyncio.wait_for(ws.recv(), 30)
                except websockets.ConnectionClosed as closed:
                    return (closed.rcvd.code if closed.rcvd else None), received

        code, received = asyncio.run(scenario())
        assert code == SLOW_CLIENT_CLOSE
        assert received == len(update % fast.encode())  # the other connection unaffected
        assert service.metric("thermocline_serve_push_dropped_total") == 1


def test_concatenated_gzip_members_and_a_byte_order_mark_lose_no_event(
    service: RunningService, topics: dict[str, str], kafka_bootstrap: str
) -> None:
    now = int(time.time() * 1000)
    events = [e for e in telemetry(60, seed=41) if _framable(e) and reference(e, now)[0] != "dead"]
    first, second = events[:10], events[10:25]
    # What `cat a.gz b.gz` and some client libraries send: two gzip members, one body.
    body = gzip.compress(b"\n".join(first) + b"\n") + gzip.compress(b"\n".join(second))
    answer = post(service, body, **{"content-encoding": "gzip",
                                    "content-type": "application/x-ndjson"})  # fmt: skip
    assert answer.status_code == 200 and answer.json()["accepted"] == 25, answer.text
    with_bom = b"\xef\xbb\xbf[" + b",".join(events[25:30]) + b"]"
    answer = post(service, with_bom)
    assert answer.status_code == 200 and answer.json()["accepted"] == 5, answer.text
    values = {
        r.value
        for records in read_topics(kafka_bootstrap, [topics[t] for t in TEMPERATURES]).values()
        for r in records
    }
    assert set(events[:30]) <= values
