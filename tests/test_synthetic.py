"""SyntheticSource: heterogeneous, realistic game telemetry, deterministic per seed (no Ray)."""

from __future__ import annotations

import json
from collections import Counter
from datetime import datetime
from typing import Any

import pyarrow as pa
import pytest

from engine.config import PipelineConfig
from engine.sources import ARRIVAL_COLUMN, EVENT_MIX, SourceBlock, SyntheticSource

START_MS = 1_764_000_000_000
ALWAYS = {"event_id", "player_id", "event_time", "event_type"}
COMMON = {"tier", "region", "platform", "app_version", "quality_score", "engagement_score"}
PER_TYPE = {
    "session_start": {"session_id", "platform", "app_version"},
    "session_end": {"session_id", "platform", "app_version", "session_length_s"},
    "purchase": {"amount", "currency", "item"},
    "level_up": {"level"},
    "match_end": {"duration", "result", "kills"},
    "social": {"partner_id", "action"},
    "refund": {"amount", "currency"},
}
TYPE_FIELDS = set().union(*PER_TYPE.values()) - COMMON
DRIFT_FIELDS = {"ab_bucket", "device"}
LOW, HIGH = 7_340_000_000_000_000, 9_100_000_000_000_001


def source(**knobs: Any) -> SyntheticSource:
    args: dict[str, Any] = {
        "events": 20_000, "players": 5_000, "seed": 3, "start_ms": START_MS, "block_rows": 4_000,
        "malformed_share": 0.0,
    }  # fmt: skip
    return SyntheticSource(**{**args, **knobs})


def blocks(src: SyntheticSource) -> list[SourceBlock]:
    return [b for b in src.blocks() if b is not None]


def events(src: SyntheticSource) -> list[dict[str, Any]]:
    return [json.loads(line) for b in blocks(src) for line in (b.data or b"").splitlines()]


def seq(event: dict[str, Any]) -> int:
    return int(event["event_id"][1:])


def event_ms(value: Any) -> float:
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1000
    return value * 1000 if value < 1e11 else value  # epoch seconds or milliseconds


@pytest.fixture(scope="module")
def default_events() -> list[dict[str, Any]]:
    return events(source())


def test_same_seed_same_bytes_and_blocks_stand_alone() -> None:
    first, again = blocks(source(malformed_share=0.01)), blocks(source(malformed_share=0.01))
    assert [b.data for b in first] == [b.data for b in again]
    assert [b.meta[ARRIVAL_COLUMN] for b in first] == [b.meta[ARRIVAL_COLUMN] for b in again]
    # A block is a function of (seed, start, its first event): rendered alone, it is the same.
    assert source(malformed_share=0.01).block_bytes(8_000, 4_000) == first[2].data
    other = blocks(source(seed=4, malformed_share=0.01))
    assert all(a.data != b.data for a, b in zip(first, other, strict=True))


def test_every_line_is_json_but_the_malformed_share() -> None:
    clean = [line for b in blocks(source()) for line in (b.data or b"").splitlines()]
    spoilt = [
        line for b in blocks(source(malformed_share=0.02)) for line in (b.data or b"").splitlines()
    ]
    assert len(clean) == len(spoilt) == 20_000
    for line in clean:
        assert isinstance(json.loads(line), dict)
    # The malformed draw is made whatever the share: the other lines are the same bytes.
    changed = [(a, b) for a, b in zip(clean, spoilt, strict=True) if a != b]
    assert 0.015 * 20_000 < len(changed) < 0.025 * 20_000
    kinds: Counter[str] = Counter()
    for good, bad in changed:
        if bad == b"this is not json":
            kinds["not_json"] += 1
        elif good.startswith(bad) and len(bad) == 40:
            kinds["truncated"] += 1
        else:
            event, original = json.loads(bad), json.loads(good)
            if event.get("event_time") == "soon":
                kinds["bad_time"] += 1
            else:
                assert "player_id" not in event
                assert event == {k: v for k, v in original.items() if k != "player_id"}
                kinds["no_player"] += 1
    assert set(kinds) == {"not_json", "truncated", "bad_time", "no_player"}


def test_fields_per_type(default_events: list[dict[str, Any]]) -> None:
    kinds = Counter(e["event_type"] for e in default_events)
    assert set(kinds) == set(EVENT_MIX) == set(PER_TYPE)
    for kind, share in EVENT_MIX.items():
        assert abs(kinds[kind] / len(default_events) - share) < 0.015
    missing: Counter[str] = Counter()
    for event in default_events:
        fields = set(event)
        own = PER_TYPE[event["event_type"]]
        assert fields >= ALWAYS
        assert own <= fields, event
        assert not (fields & TYPE_FIELDS) - own, event  # no other type's fields
        assert not fields - ALWAYS - COMMON - own, event  # nothing else (no drift)
        missing.update(COMMON - fields)
        assert isinstance(event["event_id"], str) and isinstance(event["event_type"], str)
    for name in COMMON:  # session events always carry platform and app_version
        optional = len(default_events)
        if name in ("platform", "app_version"):
            optional -= kinds["session_start"] + kinds["session_end"]
        assert abs(missing[name] / optional - 0.1) < 0.015, name


def test_value_kinds(default_events: list[dict[str, Any]]) -> None:
    def kinds_of(field: str) -> set[type]:
        return {type(e[field]) for e in default_events if field in e}

    for field in ("amount", "duration", "session_length_s"):
        assert kinds_of(field) == {int, float}, field  # whole numbers sent as ints, the rest not
    assert kinds_of("level") == kinds_of("kills") == {int}
    assert kinds_of("event_time") == {int}
    assert kinds_of("player_id") == kinds_of("partner_id") == {int, str}
    assert {e["currency"] for e in default_events if "currency" in e} >= {"USD", "EUR", "JPY"}
    assert {e["result"] for e in default_events if "result" in e} == {"win", "loss", "draw"}
    assert {e["action"] for e in default_events if "action" in e} == {"invite", "chat", "gift"}
    for event in default_events:
        if event.get("currency") == "JPY":
            assert isinstance(event["amount"], int)
        if "session_id" in event:
            assert len(event["session_id"]) == 16
            int(event["session_id"], 16)
        for score in ("quality_score", "engagement_score"):
            assert 0 <= event.get(score, 0) < 1


def test_at_least_two_field_orders(default_events: list[dict[str, Any]]) -> None:
    orders = Counter(
        tuple(k for k in event if k in ALWAYS) for event in default_events
    )  # dicts keep the order of the line
    assert orders.keys() == {
        ("event_id", "player_id", "event_time", "event_type"),
        ("event_type", "event_time", "player_id", "event_id"),
    }
    assert min(orders.values()) > 0.1 * len(default_events)


def test_numeric_ids_at_their_share_exact_beyond_2_pow_53() -> None:
    found = events(source(numeric_id_share=0.3, players=20_000))
    numeric = [e["player_id"] for e in found if isinstance(e["player_id"], int)]
    assert abs(len(numeric) / len(found) - 0.3) < 0.03
    assert max(numeric) > 2**53 > min(numeric)
    big = [i for i in numeric if i > 2**53]
    assert any(float(i) != i for i in big)  # not representable as a float64, still exact here

    def index(player: int | str) -> tuple[int, str]:
        """A player's index and kind; numeric ids must be in one of the two account ranges."""
        if isinstance(player, str):
            assert player.startswith("p")
            return int(player[1:]), "str"
        if player >= HIGH:
            assert (player - HIGH) % 2 == 0
            return (player - HIGH) // 2, "high"
        assert LOW <= player < LOW + 20_000
        return player - LOW, "low"

    kind: dict[int, str] = {}
    for event in found:
        for field in ("player_id", "partner_id"):
            if field in event:
                i, k = index(event[field])
                assert 0 <= i < 20_000
                assert kind.setdefault(i, k) == k  # a player keeps its id (and partners see it)
    assert set(kind.values()) == {"str", "low", "high"}
    assert not any(isinstance(e["player_id"], int) for e in events(source(numeric_id_share=0)))
    all_numeric = events(source(numeric_id_share=1))
    assert all(isinstance(e["player_id"], int) for e in all_numeric)


def test_drift_strings_and_new_fields_only_from_mid_stream() -> None:
    calm, drifted = events(source()), events(source(drift=0.5))
    midpoint = 10_000

    def strings(found: list[dict[str, Any]], field: str) -> list[dict[str, Any]]:
        return [e for e in found if isinstance(e.get(field), str)]

    assert not strings(calm, "level") and not strings(calm, "amount")
    assert not any(DRIFT_FIELDS & set(e) for e in calm)
    assert all(e.get("app_version") != "2.0.0" for e in calm)

    levels, amounts = strings(drifted, "level"), strings(drifted, "amount")
    assert levels and amounts
    assert {e["level"] for e in levels} & {"max"}
    assert all(e["level"] == "max" or e["level"].isdigit() for e in levels)
    assert all(float(e["amount"]) > 0 for e in amounts)
    new = [e for e in drifted if DRIFT_FIELDS & set(e)]
    assert all(seq(e) >= midpoint for e in [*levels, *amounts, *new])
    late_half = [e for e in drifted if seq(e) >= midpoint]
    assert abs(len(new) / len(late_half) - 0.5) < 0.03
    for event in new:
        assert set(event) >= DRIFT_FIELDS
        assert event["ab_bucket"] in ("A", "B", "control")
        assert set(event["device"]) == {"model", "os", "installed_at", "cohort_day"}
        installed = datetime.fromisoformat(event["device"]["installed_at"])
        assert event["device"]["cohort_day"] == f"{installed:%Y-%m-%d}"
        assert event.get("app_version", "2.0.0") == "2.0.0"
    # Drift changes nothing before mid-stream.
    assert calm[:midpoint] == drifted[:midpoint]


def test_arrival_meta_is_monotonic_and_never_before_the_event() -> None:
    src = source(partitions=3, late_share=0.2, stale_share=0.1, iso_time_share=0.2,
                 epoch_seconds_share=0.2)  # fmt: skip
    found = blocks(src)
    last: dict[str, int] = {}
    times: Counter[type] = Counter()
    for block in found:
        arrival = block.meta[ARRIVAL_COLUMN]
        assert arrival.type == pa.timestamp("ms", "UTC")
        assert block.due_s is None
        ms = arrival.cast(pa.int64()).to_numpy()
        assert len(ms) == block.events == len((block.data or b"").splitlines())
        assert (ms[1:] >= ms[:-1]).all()
        assert ms[0] >= last.get(block.partition, ms[0])
        last[block.partition] = int(ms[-1])
        for line, at in zip((block.data or b"").splitlines(), ms, strict=True):
            event = json.loads(line)
            i = seq(event)
            assert at == START_MS + int(i * 0.02)  # 50K events per second of game time
            times[type(event["event_time"])] += 1
            assert event_ms(event["event_time"]) <= at + 1e-3
    assert set(last) == {"0", "1", "2"}
    assert times.keys() == {int, str, float}  # ms, ISO-8601, epoch seconds


def test_paced_arrival_follows_the_wall_clock() -> None:
    import time

    rate = 100_000.0
    before = time.time()
    found = blocks(source(events=2_000, block_rows=500, rate=rate))
    for block in found:
        assert block.due_s is not None
        ms = block.meta[ARRIVAL_COLUMN].cast(pa.int64()).to_numpy()
        assert abs(ms[0] - block.due_s * 1000) <= 1
        assert (ms[1:] >= ms[:-1]).all()
        assert abs((ms[-1] - ms[0]) - 499 * 1000 / rate) <= 1
    first_due = found[0].due_s
    assert first_due is not None and before <= first_due <= before + 1
    dues = [b.due_s or 0.0 for b in found]
    assert dues == sorted(dues) and abs(dues[1] - dues[0] - 500 / rate) < 1e-6


def test_config_knobs_reach_the_source() -> None:
    from engine.pipeline import source_from_config
    from engine.sources import BackgroundSource

    defaults = PipelineConfig.from_dict({}).source
    assert (defaults.numeric_id_share, defaults.drift, defaults.missing_share) == (0.2, 0.0, 0.1)
    assert defaults.epoch_seconds_share == 0.0
    config = PipelineConfig.from_dict(
        {"source": {"numeric_id_share": 0.5, "drift": 0.25, "missing_share": 0.0,
                    "epoch_seconds_share": 0.1, "events": 10}}
    )  # fmt: skip
    background = source_from_config(config, start_ms=START_MS)
    assert isinstance(background, BackgroundSource)  # generated beside the driver
    src = background.inner
    assert isinstance(src, SyntheticSource)
    knobs = (src.numeric_id_share, src.drift, src.missing_share, src.epoch_seconds_share)
    assert knobs == (0.5, 0.25, 0.0, 0.1)
    with pytest.raises(ValueError, match="drift"):
        PipelineConfig.from_dict({"source": {"drift": 1.5}})


def test_custom_mix_types_without_payload_get_the_common_fields() -> None:
    found = events(source(event_mix={"purchase": 1, "login": 3}, events=4_000, block_rows=1_000))
    kinds = Counter(e["event_type"] for e in found)
    assert kinds.keys() == {"purchase", "login"}
    assert abs(kinds["login"] / len(found) - 0.75) < 0.03
    for event in found:
        own = PER_TYPE.get(event["event_type"], set())
        assert set(event) - ALWAYS - COMMON == own - COMMON
