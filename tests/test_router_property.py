"""``classify`` agrees with a plain row-by-row reference on random events and random policies."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from typing import Any

import pyarrow as pa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from routers import TEMPERATURES, Router, parse_duration_ms

NOW = datetime(2026, 11, 26, 12, 0, tzinfo=timezone.utc)
NOW_MS = int(NOW.timestamp() * 1000)
TIERS = ["vip", "free", "gold", "test-1", "Vip"]
PATTERNS = ["^v", "ee", "^test-", "[0-9]$", "i"]
DURATIONS = ["250ms", "30s", "15m", "1h", "2h", "7d"]

# -- random events ----------------------------------------------------------------------------

events = st.lists(
    st.fixed_dictionaries(
        {
            "tier": st.none() | st.sampled_from(TIERS),
            "level": st.none() | st.integers(-5, 120),
            "score": st.none() | st.floats(-1, 2, allow_nan=False),
            "age_s": st.none() | st.integers(0, 10 * 86_400),
        }
    ),
    max_size=60,
)


def to_batch(rows: list[dict[str, Any]]) -> pa.RecordBatch:
    times = [None if r["age_s"] is None else NOW - timedelta(seconds=r["age_s"]) for r in rows]
    return pa.record_batch(
        {
            "tier": pa.array([r["tier"] for r in rows], pa.string()),
            "level": pa.array([r["level"] for r in rows], pa.int64()),
            "score": pa.array([r["score"] for r in rows], pa.float64()),
            "event_time": pa.array(times, pa.timestamp("ms", "UTC")),
        }
    )


# -- random policies --------------------------------------------------------------------------

string_leaf = st.one_of(
    st.builds(
        lambda op, v: {"field": "tier", op: v},
        st.sampled_from(["eq", "ne", "gt", "lte"]),
        st.sampled_from(TIERS),
    ),
    st.builds(
        lambda op, v: {"field": "tier", op: v},
        st.sampled_from(["in", "not_in"]),
        st.lists(st.sampled_from(TIERS), min_size=1, max_size=3),
    ),
    st.builds(lambda p: {"field": "tier", "matches": p}, st.sampled_from(PATTERNS)),
)
number_leaf = st.one_of(
    st.builds(
        lambda f, op, v: {"field": f, op: v},
        st.sampled_from(["level", "score"]),
        st.sampled_from(["eq", "ne", "gt", "gte", "lt", "lte"]),
        st.integers(-2, 100),
    ),
    st.builds(
        lambda op, v: {"field": "level", op: v},
        st.sampled_from(["in", "not_in"]),
        st.lists(st.integers(0, 100), min_size=1, max_size=3),
    ),
)
other_leaf = st.one_of(
    st.builds(
        lambda f, v: {"field": f, "exists": v},
        st.sampled_from(["tier", "level", "ghost"]),
        st.booleans(),
    ),
    st.builds(
        lambda op, v: {"field": "ghost", op: v},
        st.sampled_from(["eq", "gt", "ne"]),
        st.integers(0, 3),
    ),
    st.builds(
        lambda op, d: {"age": {op: d}},
        st.sampled_from(["gt", "gte", "lt", "lte"]),
        st.sampled_from(DURATIONS),
    ),
)
conditions = st.recursive(
    st.one_of(string_leaf, number_leaf, other_leaf),
    lambda inner: st.one_of(
        st.builds(lambda cs: {"all": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda cs: {"any": cs}, st.lists(inner, min_size=1, max_size=3)),
        st.builds(lambda c: {"not": c}, inner),
    ),
    max_leaves=6,
)
policies = st.builds(
    lambda rules, default: {
        "default": default,
        "rules": [
            {"name": f"r{i}", "route": route, "when": when} for i, (route, when) in enumerate(rules)
        ],
    },
    st.lists(st.tuples(st.sampled_from(TEMPERATURES), conditions), max_size=6),
    st.sampled_from(TEMPERATURES),
)

# -- the reference: one row at a time, in plain Python ----------------------------------------


def matches(cond: dict[str, Any], row: dict[str, Any]) -> bool:
    if "all" in cond:
        return all(matches(c, row) for c in cond["all"])
    if "any" in cond:
        return any(matches(c, row) for c in cond["any"])
    if "not" in cond:
        return not matches(cond["not"], row)
    if "age" in cond:
        ((op, text),) = cond["age"].items()
        if row["age_s"] is None:
            return False
        return compare(op, row["age_s"] * 1000, parse_duration_ms(text))
    ((op, lit),) = ((k, v) for k, v in cond.items() if k != "field")
    value = row.get(cond["field"])
    if op == "exists":
        return (value is not None) == lit
    if value is None:
        return False
    if op == "in":
        return value in lit
    if op == "not_in":
        return value not in lit
    if op == "matches":
        return re.search(lit, value) is not None
    return compare(op, value, lit)


def compare(op: str, a: Any, b: Any) -> bool:
    return {"eq": a == b, "ne": a != b, "gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]


def reference(policy: dict[str, Any], rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for row in rows:
        for rule in policy["rules"]:
            if matches(rule["when"], row):
                out.append(rule["route"])
                break
        else:
            out.append(policy["default"])
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(policy=policies, rows=events)
def test_classify_equals_row_by_row_reference(
    policy: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    router = Router.from_dict(policy)
    batch = to_batch(rows)
    assert router.classify(batch, now=NOW).to_pylist() == reference(policy, rows)
    # Counts by rule add up to the rows, and match the reference's deciding rules.
    assert sum(router.last_counts.values()) == len(rows)


@settings(max_examples=150, deadline=None)
@given(policy=policies, rows=events)
def test_split_conserves_rows_and_order(policy: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    router = Router.from_dict(policy)
    batch = to_batch(rows).append_column("n", pa.array(range(len(rows)), pa.int64()))
    parts = router.split(batch, now=NOW)
    expected = reference(policy, rows)
    assert set(parts) == set(TEMPERATURES)
    for temperature, part in parts.items():
        assert part.column("n").to_pylist() == [
            i for i, t in enumerate(expected) if t == temperature
        ]
    assert sum(p.num_rows for p in parts.values()) == len(rows)
