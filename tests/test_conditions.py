"""Every operator, combinator, null and missing-column case of the routing conditions."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from routers import Policy, Router, RouterError, Rule

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)


def route_hot_when(when: dict) -> Router:
    return Router.from_dict(
        {"default": "cold", "rules": [{"name": "r", "route": "hot", "when": when}]}
    )


def hot_rows(when: dict, batch: pa.RecordBatch, now: datetime = NOW) -> list[bool]:
    return [t == "hot" for t in route_hot_when(when).classify(batch, now=now).to_pylist()]


TIERS = pa.record_batch({"tier": ["vip", "free", None, "gold"], "level": [10, 20, None, 30]})


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ({"field": "tier", "eq": "vip"}, [True, False, False, False]),
        ({"field": "tier", "ne": "vip"}, [False, True, False, True]),
        ({"field": "tier", "in": ["vip", "gold"]}, [True, False, False, True]),
        ({"field": "tier", "not_in": ["vip", "gold"]}, [False, True, False, False]),
        ({"field": "level", "gt": 20}, [False, False, False, True]),
        ({"field": "level", "gte": 20}, [False, True, False, True]),
        ({"field": "level", "lt": 20}, [True, False, False, False]),
        ({"field": "level", "lte": 20}, [True, True, False, False]),
        ({"field": "level", "gt": 15.5}, [False, True, False, True]),
        ({"field": "tier", "exists": True}, [True, True, False, True]),
        ({"field": "tier", "exists": False}, [False, False, True, False]),
        ({"field": "tier", "matches": "^(v|g)"}, [True, False, False, True]),
        ({"field": "tier", "matches": "ee"}, [False, True, False, False]),
    ],
)
def test_field_operators_with_nulls(when: dict, expected: list[bool]) -> None:
    assert hot_rows(when, TIERS) == expected


@pytest.mark.parametrize(
    ("op", "expected_on_missing"),
    [
        ({"eq": 1}, False),
        ({"ne": 1}, False),
        ({"in": [1]}, False),
        ({"not_in": [1]}, False),
        ({"gt": 1}, False),
        ({"matches": "x"}, False),
        ({"exists": True}, False),
        ({"exists": False}, True),
    ],
)
def test_column_the_batch_lacks(op: dict, expected_on_missing: bool) -> None:
    assert hot_rows({"field": "ghost", **op}, TIERS) == [expected_on_missing] * 4


def test_age_conditions() -> None:
    times = [NOW - timedelta(seconds=s) for s in (0, 30, 31, 3600, 3601)] + [None]
    batch = pa.record_batch({"event_time": pa.array(times, pa.timestamp("ms", "UTC"))})
    assert hot_rows({"age": {"lte": "30s"}}, batch) == [True, True, False, False, False, False]
    assert hot_rows({"age": {"lt": "30s"}}, batch) == [True, False, False, False, False, False]
    assert hot_rows({"age": {"gt": "1h"}}, batch) == [False, False, False, False, True, False]
    assert hot_rows({"age": {"gte": "1h"}}, batch) == [False, False, False, True, True, False]


def test_age_accepts_other_timestamp_units_and_epoch_millis() -> None:
    old = NOW - timedelta(hours=2)
    micros = pa.record_batch({"event_time": pa.array([old, NOW], pa.timestamp("us", "UTC"))})
    millis = pa.record_batch(
        {"event_time": [int(old.timestamp() * 1000), int(NOW.timestamp() * 1000)]}
    )
    assert hot_rows({"age": {"gt": "1h"}}, micros) == [True, False]
    assert hot_rows({"age": {"gt": "1h"}}, millis) == [True, False]


def test_age_without_time_column_never_matches() -> None:
    assert hot_rows({"age": {"gt": "1ms"}}, TIERS) == [False] * 4
    assert hot_rows({"not": {"age": {"gt": "1ms"}}}, TIERS) == [True] * 4


def test_combinators() -> None:
    both = {"all": [{"field": "tier", "eq": "vip"}, {"field": "level", "lt": 15}]}
    either = {"any": [{"field": "tier", "eq": "free"}, {"field": "level", "gt": 25}]}
    assert hot_rows(both, TIERS) == [True, False, False, False]
    assert hot_rows(either, TIERS) == [False, True, False, True]
    # A comparison on null is false, so its negation is true (two-valued, like the reference).
    assert hot_rows({"not": {"field": "tier", "eq": "vip"}}, TIERS) == [False, True, True, True]
    nested = {"all": [either, {"not": {"field": "tier", "matches": "^g"}}]}
    assert hot_rows(nested, TIERS) == [False, True, False, False]


def test_first_match_wins_and_counts_by_rule() -> None:
    router = Router.from_dict(
        {
            "default": "warm",
            "rules": [
                {"name": "vip", "route": "hot", "when": {"field": "tier", "eq": "vip"}},
                {"name": "high", "route": "cold", "when": {"field": "level", "gte": 10}},
            ],
        }
    )
    assert router.classify(TIERS, now=NOW).to_pylist() == ["hot", "cold", "warm", "cold"]
    assert router.last_counts == {"vip": 1, "high": 2, "default": 1}
    router.classify(TIERS, now=NOW)
    assert router.counts == {"vip": 2, "high": 4, "default": 2}


def test_python_form_takes_arrow_expressions() -> None:
    import pyarrow.compute as pc

    from routers import Policy, Rule, age_ms, parse_duration_ms

    policy = Policy(
        rules=(
            Rule("big-level", "hot", pc.field("level") > 15),
            Rule("stale", "cold", age_ms() > parse_duration_ms("1h")),
            Rule("yaml-style", "cold", {"field": "tier", "eq": "vip"}),
        ),
        default="warm",
    )
    batch = TIERS.append_column(
        "event_time", pa.array([NOW - timedelta(hours=2), NOW, NOW, NOW], pa.timestamp("ms", "UTC"))
    )
    assert Router(policy).classify(batch, now=NOW).to_pylist() == ["cold", "hot", "warm", "hot"]


def test_a_comparison_on_a_drifted_column_does_not_match_and_is_counted() -> None:
    # {field: level, gte: 90} once a client sent "level": "max": the column is strings now.
    router = route_hot_when({"field": "level", "gte": 90})
    drifted = pa.record_batch({"level": ["max", "12", None]})
    assert router.classify(drifted, now=NOW).to_pylist() == ["cold", "cold", "cold"]
    numbers = pa.record_batch({"level": [95, 12, None]})
    assert router.classify(numbers, now=NOW).to_pylist() == ["hot", "cold", "cold"]
    assert router.type_mismatches == {"r": 3}
    # The same under not/any: a mismatch is false, like a null, never an error.
    negated = route_hot_when({"not": {"field": "tier", "gt": 5}})
    assert negated.classify(TIERS, now=NOW).to_pylist() == ["hot"] * 4


def test_an_expression_rule_that_cannot_run_names_the_problem() -> None:
    router = Router(Policy(rules=(Rule("bad", "hot", pc.field("tier") > 5),)))
    with pytest.raises(RouterError, match="tier"):
        router.classify(TIERS, now=NOW)


def test_naive_now_is_rejected() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        route_hot_when({"age": {"gt": "1s"}}).classify(
            pa.record_batch({"event_time": pa.array([NOW], pa.timestamp("ms", "UTC"))}),
            now=datetime(2026, 1, 1),  # noqa: DTZ001 - the point of the test
        )


def test_split_keeps_every_row_once_in_order() -> None:
    router = Router.from_dict(
        {"rules": [{"name": "v", "route": "hot", "when": {"field": "tier", "in": ["vip", "gold"]}}]}
    )
    batch = TIERS.append_column("n", pa.array(range(4)))
    parts = router.split(batch, now=NOW)
    assert parts["hot"].column("n").to_pylist() == [0, 3]
    assert parts["warm"].column("n").to_pylist() == [1, 2]
    assert parts["cold"].num_rows == 0
    assert all(p.schema == batch.schema for p in parts.values())
