"""Decoding NDJSON in bulk: good rows typed, every bad line kept as a dead letter with a reason."""

from __future__ import annotations

import json
import random
from datetime import datetime, timezone

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routers import TIME_TYPE, EventSchema, Router, decode_ndjson, new_contract


def event(i: int, **overrides: object) -> bytes:
    body = {
        "event_id": f"e{i}",
        "player_id": f"p{i % 7}",
        "event_time": 1_764_000_000_000 + i,
        "event_type": "level_up",
        "level": i % 50,
        "engagement_score": 0.5,
    }
    body.update(overrides)
    return json.dumps({k: v for k, v in body.items() if v is not ...}).encode()


BAD = {
    b"{not json": "invalid_json",
    b'{"event_id": "x", "player_id": "p",': "invalid_json",
    b"[1, 2, 3]": "not_an_object",
    b"42": "not_an_object",
}


def test_clean_block_decodes_in_one_piece() -> None:
    data = b"\n".join(event(i) for i in range(100)) + b"\n"
    out = decode_ndjson(data)
    assert out.good.num_rows == 100 and out.dead.num_rows == 0
    assert out.good.schema.field("event_time").type == TIME_TYPE
    assert out.good.column("event_id").to_pylist() == [f"e{i}" for i in range(100)]
    assert out.good.column("level").to_pylist() == [i % 50 for i in range(100)]  # payload untouched
    assert out.good_lines.tolist() == list(range(100))


def test_malformed_lines_mixed_into_good_ones() -> None:
    lines: list[bytes] = []
    expected_dead: list[tuple[bytes, str]] = []
    rng = random.Random(7)
    bad_kinds = [
        *BAD.items(),
        (event(10_001, player_id=...), "missing_field:player_id"),
        (event(10_002, event_id=None), "missing_field:event_id"),
        (event(10_003, event_time=...), "missing_field:event_time"),
        (event(10_004, event_type=...), "missing_field:event_type"),
        (event(10_005, player_id=12.5), "bad_type:player_id"),
        (event(10_006, event_time="not a time"), "bad_type:event_time"),
        (event(10_007, event_time=True), "bad_type:event_time"),
        (event(10_008, level="high"), "bad_type:level"),
    ]
    good_ids = []
    for i in range(2_000):
        if rng.random() < 0.05:
            raw, reason = rng.choice(bad_kinds)
            lines.append(raw)
            expected_dead.append((raw, reason))
        else:
            lines.append(event(i))
            good_ids.append(f"e{i}")
    out = Router.from_yaml("rules: []").decode(b"\n".join(lines))
    assert out[0].num_rows + out[1].num_rows == len(lines)
    assert out[0].column("event_id").to_pylist() == good_ids
    dead = list(
        zip(out[1].column("raw").to_pylist(), out[1].column("reason").to_pylist(), strict=True)
    )
    assert dead == expected_dead


def test_iso_strings_and_epoch_millis_in_one_block() -> None:
    when = datetime(2026, 11, 26, 10, 30, 0, 123_000, tzinfo=timezone.utc)
    millis = int(when.timestamp() * 1000)
    lines = [
        event(1, event_time="2026-11-26T10:30:00.123Z"),
        event(2, event_time=millis),
        event(3, event_time="2026-11-26T12:30:00.123+02:00"),
        event(4, event_time="2026-11-26T10:30:00.123"),  # no zone: taken as UTC
        event(5, event_time=millis + 0.9),  # fractional epoch millis are truncated
        event(6, event_time="2026-11-26T10:30:00.123456Z"),  # microseconds are truncated
    ]
    out = decode_ndjson(b"\n".join(lines))
    assert out.dead.num_rows == 0
    assert out.good.column("event_time").to_pylist() == [when] * 6
    assert out.good.column("event_id").to_pylist() == ["e1", "e2", "e3", "e4", "e5", "e6"]


def test_blank_lines_are_not_events_and_raw_bytes_are_exact() -> None:
    raw_bad = b'  {"event_id": \xff broken  '
    data = b"\n\n" + event(1) + b"\n   \n" + raw_bad + b"\n\r\n" + event(2)
    out = decode_ndjson(data)
    assert out.good.column("event_id").to_pylist() == ["e1", "e2"]
    assert out.dead.column("raw").to_pylist() == [raw_bad]
    assert out.dead.column("line").to_pylist() == [1]
    assert out.lines == 3


def test_custom_roles() -> None:
    schema = EventSchema(id="id", key="user", time="ts", type="kind")
    data = (
        b'{"id":"a","user":"u","ts":1764000000,"kind":"k"}\n{"id":"b","ts":1764000000,"kind":"k"}'
    )
    out = decode_ndjson(data, schema)
    assert out.good.column("user").to_pylist() == ["u"]
    assert out.dead.column("reason").to_pylist() == ["missing_field:user"]


def test_empty_and_all_bad_blocks() -> None:
    empty = decode_ndjson(b"")
    assert empty.good.num_rows == 0 and empty.dead.num_rows == 0
    all_bad = decode_ndjson(b"x\ny\n")
    assert all_bad.good.num_rows == 0
    assert all_bad.dead.column("reason").to_pylist() == ["invalid_json", "invalid_json"]


line_kinds = st.sampled_from(["good", "iso", *range(len(BAD)), "missing", "badtype", "blank"])


@settings(max_examples=200, deadline=None)
@given(st.lists(line_kinds, max_size=40))
def test_no_line_is_lost_or_duplicated(kinds: list) -> None:
    check_every_line_accounted_for(kinds)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("iso_share", [0.02, 0.3, 0.5, 0.97])
def test_large_blocks_mixing_time_kinds_keep_every_line(seed: int, iso_share: float) -> None:
    # Hundreds of lines, so that both ways of leaving lines out run: blanking a few bad ones,
    # and gathering one time kind's lines (dozens to hundreds) into a block of their own.
    rng = random.Random(seed)
    others = ["good", *range(len(BAD)), "missing", "badtype", "blank"]
    kinds = [
        "iso" if rng.random() < iso_share else rng.choice(["good"] * 30 + others)
        for _ in range(rng.randint(150, 600))
    ]
    check_every_line_accounted_for(kinds)


def check_every_line_accounted_for(kinds: list) -> None:
    lines, good_ids, good_times, dead, dead_lines = [], [], [], [], []
    bad_items = list(BAD.items())
    for i, kind in enumerate(kinds):
        if kind == "blank":
            lines.append(b"  ")
            continue
        if kind == "good":
            lines.append(event(i))
            good_ids.append(f"e{i}")
            good_times.append(1_764_000_000_000 + i)
        elif kind == "iso":
            lines.append(event(i, event_time="2026-01-01T00:00:00.007Z"))
            good_ids.append(f"e{i}")
            good_times.append(1_767_225_600_007)
        elif kind == "missing":
            lines.append(event(i, player_id=...))
            dead.append("missing_field:player_id")
        elif kind == "badtype":
            lines.append(event(i, event_type=3))
            dead.append("bad_type:event_type")
        else:
            lines.append(bad_items[kind][0])
            dead.append(bad_items[kind][1])
        if kind not in ("good", "iso"):
            dead_lines.append(lines[-1])
    out = decode_ndjson(b"\n".join(lines))
    assert out.good.column("event_id").to_pylist() == good_ids
    millis = out.good.column("event_time").cast(pa.int64()).to_pylist()
    assert millis == good_times
    assert out.dead.column("reason").to_pylist() == dead
    assert out.dead.column("raw").to_pylist() == dead_lines
    assert out.lines == len(good_ids) + len(dead)
    assert isinstance(out.good, pa.RecordBatch)


def test_undeclared_integers_beyond_2_53_are_dead_letters_never_a_crash() -> None:
    """An undeclared number column widens to double (a later 4.99); a 64-bit integer has no
    exact double, at the top level or nested. It used to raise ArrowInvalid in the driver once
    the column had widened, stopping the pipeline on every restart."""
    schema = EventSchema()
    contract = new_contract(schema)
    big = 2**53 + 3

    def line(event_id: str, **fields: object) -> bytes:
        base = {"event_id": event_id, "player_id": "p", "event_time": 1_764_000_000_000}
        return json.dumps({**base, "event_type": "x", **fields}).encode()

    def decode(*lines: bytes) -> tuple[list, list]:
        out = decode_ndjson(b"\n".join(lines), schema, contract=contract)
        return out.good["event_id"].to_pylist(), out.dead["reason"].to_pylist()

    assert decode(line("a", ref=big), line("b", ref=12)) == (["b"], ["bad_type:ref"])
    assert decode(line("c", ref=4.99)) == (["c"], [])  # widened to double
    assert decode(line("d", ref=big), line("e", ref=-big), line("f", ref=2**53)) == (
        ["f"],
        ["bad_type:ref", "bad_type:ref"],
    )
    assert contract.schema.field("ref").type == pa.float64()
    nested = decode(line("g", stats={"ids": [1, big]}), line("h", stats={"ids": [2]}))
    assert nested == (["h"], ["bad_type:stats"])
    declared = EventSchema(columns=(("ref", "int64"),))
    out = decode_ndjson(line("i", ref=big), declared, contract=new_contract(declared))
    assert out.good["ref"].to_pylist() == [big]  # declared: exact
